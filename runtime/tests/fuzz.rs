//! The xDS fuzz targets of `runtime/fuzz` on stable: each corpus replayed
//! and a bounded loop of arbitrary and mutated inputs per target (the
//! `fuzz-replay` crate). libFuzzer runs stay in `scripts/fuzz`.
//!
//! `write_seeds` (ignored) makes the seeds anew:
//! `cargo test -p mesh-runtime --test fuzz -- --ignored write_seeds`.

#[path = "../fuzz/checks.rs"]
mod checks;

fuzz_replay::targets! { xds_address, xds_authorization, xds_response }

use prost::Message;
use proto::discovery::DeltaDiscoveryResponse;
use proto::security as pb_sec;

fn body(r: &proto::discovery::Resource) -> Vec<u8> {
    r.resource.as_ref().unwrap().value.clone()
}

#[test]
#[ignore = "writes runtime/fuzz/corpus"]
fn write_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: Vec<u8>| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let deny_global = pb_sec::Authorization {
        name: "deny-all".into(),
        namespace: "istio-system".into(),
        scope: pb_sec::Scope::Global as i32,
        action: pb_sec::Action::Deny as i32,
        rules: vec![pb_sec::Rule::default()],
    };
    write(
        "xds_address",
        "workload",
        body(&checks::workload("c", [10, 1, 1, 3])),
    );
    write(
        "xds_address",
        "workload-same-ip",
        body(&checks::workload("c", [10, 1, 1, 1])),
    );
    write("xds_address", "service", body(&checks::service()));
    write(
        "xds_authorization",
        "allow-namespace",
        body(&checks::policy("allow", pb_sec::Action::Allow)),
    );
    write(
        "xds_authorization",
        "deny-namespace",
        body(&checks::policy("deny", pb_sec::Action::Deny)),
    );
    write(
        "xds_authorization",
        "deny-global",
        deny_global.encode_to_vec(),
    );
    let resp = |type_url: &str, resources, removed: Vec<String>, more: bool| {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: "n1".into(),
            system_version_info: if more {
                mesh_runtime::xds::client::MORE_FOLLOWS.into()
            } else {
                String::new()
            },
            resources,
            removed_resources: removed,
        }
        .encode_to_vec()
    };
    write(
        "xds_response",
        "addresses",
        resp(
            proto::ADDRESS_TYPE_URL,
            vec![checks::workload("c", [10, 1, 1, 3]), checks::service()],
            vec!["b".into()],
            false,
        ),
    );
    write(
        "xds_response",
        "address-conflict",
        resp(
            proto::ADDRESS_TYPE_URL,
            vec![checks::workload("c", [10, 1, 1, 1])],
            vec![],
            false,
        ),
    );
    write(
        "xds_response",
        "policies",
        resp(
            proto::AUTHORIZATION_TYPE_URL,
            vec![
                checks::policy("deny", pb_sec::Action::Deny),
                checks::resource(proto::AUTHORIZATION_TYPE_URL, "shop/bad", vec![0x08, 0x07]),
            ],
            vec!["shop/allow-a".into()],
            false,
        ),
    );
    write(
        "xds_response",
        "more-follows",
        resp(
            proto::ADDRESS_TYPE_URL,
            vec![checks::workload("d", [10, 1, 1, 4])],
            vec![],
            true,
        ),
    );
}
