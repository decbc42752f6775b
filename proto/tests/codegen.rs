//! The checked-in code in `src/gen/` must be exactly what the `.proto` files
//! generate. Regenerate with:
//!
//! ```sh
//! MESH_PROTO_REGENERATE=1 cargo test -p mesh-proto --test codegen
//! ```
//!
//! The pipeline is pure Rust (protox parses, prost/tonic generate), so no
//! `protoc` is needed here or at build time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &[
    "workload.proto",
    "authorization.proto",
    "ca.proto",
    "discovery.proto",
    "route.proto",
    "google/rpc/status.proto",
];
const REGENERATE_ENV: &str = "MESH_PROTO_REGENERATE";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate(out: &Path) {
    let includes = crate_dir().join("protos");
    let fds = protox::Compiler::new([&includes])
        .expect("include dir")
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)
        .unwrap_or_else(|e| panic!("compiling .proto files: {e}"))
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // The services need tonic; the messages alone do not (`mesh-model`
        // uses them without the `grpc` feature).
        .client_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        .server_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        // An ordered map encodes deterministically, so a content hash of an
        // encoded resource is a stable version. (Only resources are hashed;
        // request maps stay `HashMap`s.)
        .btree_map(".istio.workload.Workload.services")
        .out_dir(out)
        .compile_fds(fds)
        .expect("generating Rust code");
}

fn read_dir(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("reading generated dir")
        .map(|e| {
            let path = e.expect("dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).expect("reading file"))
        })
        .collect()
}

#[test]
fn generated_code_is_up_to_date() {
    let checked_in = crate_dir().join("src/gen");
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path());
    let want = read_dir(tmp.path());
    if std::env::var_os(REGENERATE_ENV).is_some() {
        std::fs::remove_dir_all(&checked_in).ok();
        std::fs::create_dir_all(&checked_in).unwrap();
        for (name, text) in &want {
            std::fs::write(checked_in.join(name), text).unwrap();
        }
        return;
    }
    let have = read_dir(&checked_in);
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&have),
        names(&want),
        "proto/src/gen/ holds other files than generation produces; \
         regenerate with `{REGENERATE_ENV}=1 cargo test -p mesh-proto --test codegen`"
    );
    for (name, text) in &want {
        assert!(
            have[name] == *text,
            "proto/src/gen/{name} is stale; regenerate with \
             `{REGENERATE_ENV}=1 cargo test -p mesh-proto --test codegen`"
        );
    }
}
