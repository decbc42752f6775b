//! In-process: how long ztunnel's xDS store takes to apply a one-workload
//! delta while it holds a large mesh (the per-response CPU of every node's
//! ztunnel on each edit), with no network or control plane in the way.

use std::time::Instant;

use mesh_model::xds::store::{Applied, XdsStore};
use prost::Message;
use prost_types::Any;
use proto::discovery::Resource;
use proto::workload as pb;
use proto::ADDRESS_TYPE_URL;
use serde_json::{json, Value};

use crate::mesh::Scale;

const NAMESPACES: usize = 20;

fn resource(name: String, body: pb::address::Type) -> Resource {
    let value = pb::Address { r#type: Some(body) }.encode_to_vec();
    Resource {
        name,
        version: format!("{:016x}", value.len()),
        resource: Some(Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value,
        }),
        ..Default::default()
    }
}

fn hostname(app: usize, ns: usize) -> String {
    format!("app-{app}.ns-{ns}.svc.cluster.local")
}

/// Workload `i` (pod `name`), an endpoint of app `i / 10`'s service.
fn workload(i: usize, services: usize, name: &str) -> Resource {
    let ns = i % NAMESPACES;
    let app = (i / 10) % services.max(1);
    let uid = format!("ns-{ns}/pod-{i}");
    let mut svcs = std::collections::BTreeMap::new();
    if services > 0 {
        svcs.insert(
            format!(
                "ns-{}/{}",
                app % NAMESPACES,
                hostname(app, app % NAMESPACES)
            ),
            pb::PortList::default(),
        );
    }
    let w = pb::Workload {
        uid: uid.clone(),
        name: name.to_owned(),
        namespace: format!("ns-{ns}"),
        service_account: format!("app-{app}"),
        trust_domain: "cluster.local".into(),
        node: format!("node{}", i % 50 + 1),
        addresses: vec![vec![10, 128 + (i >> 16) as u8, (i >> 8) as u8, i as u8]],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        services: svcs,
        ..Default::default()
    };
    resource(uid, pb::address::Type::Workload(w))
}

fn service(app: usize) -> Resource {
    let ns = app % NAMESPACES;
    let s = pb::Service {
        name: format!("app-{app}"),
        namespace: format!("ns-{ns}"),
        hostname: hostname(app, ns),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, (app >> 8) as u8, app as u8],
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    };
    resource(
        format!("ns-{ns}/{}", hostname(app, ns)),
        pb::address::Type::Service(s),
    )
}

/// Applies the whole mesh, then `rounds` deltas that each rename one
/// workload; reports the time per delta, including dropping the
/// superseded snapshot (as the data path does once it lets go).
pub fn delta_apply(scale: &Scale, rounds: usize) -> Value {
    let mut store = XdsStore::default();
    let mut all: Vec<Resource> = (0..scale.workloads)
        .map(|i| workload(i, scale.services, &format!("pod-{i}")))
        .collect();
    all.extend((0..scale.services).map(service));
    let start = Instant::now();
    let first = store.apply_owned(ADDRESS_TYPE_URL, all, &[]);
    let full_ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(matches!(first, Applied::Ok(_)), "{first:?}");
    drop(first);
    let mut times: Vec<f64> = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let edit = workload(7, scale.services, &format!("renamed-{r}"));
        let start = Instant::now();
        let applied = store.apply_owned(ADDRESS_TYPE_URL, vec![edit], &[]);
        let ok = matches!(applied, Applied::Ok(_));
        drop(applied);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(ok, "delta {r} did not apply");
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let v = json!({
        "scale": scale.to_json(),
        "initial_apply_ms": round3(full_ms),
        "one_workload_delta_ms": {"p50": round3(p(0.5)), "p99": round3(p(0.99)), "rounds": rounds},
    });
    println!("store delta at {} workloads: {v}", scale.workloads);
    v
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
