//! `/config_dump`: the state in force, as JSON. Certificates are described
//! (identity, validity, chain length); private keys never appear.

use std::time::{SystemTime, UNIX_EPOCH};

use hbone::cert::WorkloadCert;
use serde::Serialize;

use mesh_model::state::{Namespace, Policy, Service, Snapshot, Workload};

#[derive(Serialize)]
struct Dump<'a> {
    node: &'a str,
    trust_domain: &'a str,
    captured_pods: Vec<String>,
    namespaces: Vec<&'a Namespace>,
    workloads: Vec<WorkloadDump<'a>>,
    services: Vec<&'a Service>,
    policies: Vec<&'a Policy>,
    certificates: Vec<CertDump>,
}

#[derive(Serialize)]
struct WorkloadDump<'a> {
    #[serde(flatten)]
    workload: &'a Workload,
    identity: String,
    ambient: bool,
}

#[derive(Serialize)]
struct CertDump {
    identity: String,
    /// Seconds since the Unix epoch.
    not_before: u64,
    not_after: u64,
    refresh_at: u64,
    chain_len: usize,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Renders the config dump. Pure.
pub fn render(
    node: &str,
    snap: &Snapshot,
    captured: &[String],
    certs: &[std::sync::Arc<WorkloadCert>],
) -> String {
    let mut certificates: Vec<CertDump> = certs
        .iter()
        .map(|c| CertDump {
            identity: c.identity().to_string(),
            not_before: unix(c.not_before()),
            not_after: unix(c.not_after()),
            refresh_at: unix(c.refresh_at()),
            chain_len: c.chain().len(),
        })
        .collect();
    certificates.sort_by(|a, b| a.identity.cmp(&b.identity));
    let dump = Dump {
        node,
        trust_domain: snap.trust_domain(),
        captured_pods: captured.to_vec(),
        namespaces: snap.namespaces().collect(),
        workloads: snap
            .workloads()
            .map(|w| WorkloadDump {
                workload: w,
                identity: w.identity().to_string(),
                ambient: snap.is_ambient(w),
            })
            .collect(),
        services: snap.services().map(|s| s.as_ref()).collect(),
        policies: snap.policies().iter().collect(),
        certificates,
    };
    serde_json::to_string_pretty(&dump).expect("dump serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbone::ca::DevCa;

    #[test]
    fn dump_lists_state_and_certificates_without_keys() {
        let snap =
            mesh_model::config::parse(include_str!("../../examples/demo-config.yaml")).unwrap();
        let ca = DevCa::generate().unwrap();
        let cert = ca
            .issue(&"spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap())
            .unwrap();
        let text = render(
            "node1",
            &snap,
            &["10.1.1.10".into()],
            &[std::sync::Arc::new(cert)],
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["node"], "node1");
        assert_eq!(v["workloads"].as_array().unwrap().len(), 10);
        assert_eq!(v["namespaces"][2]["mtls"], "Strict");
        assert_eq!(v["services"].as_array().unwrap().len(), 5);
        assert_eq!(v["policies"].as_array().unwrap().len(), 3);
        assert_eq!(
            v["certificates"][0]["identity"],
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        assert!(!text.contains("PRIVATE KEY"), "no key material");
        assert!(text.contains("\"ambient\": true"));
    }
}
