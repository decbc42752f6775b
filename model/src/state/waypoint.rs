//! The waypoint an address uses: resolved to where HBONE goes, or named
//! but missing.
//!
//! A missing waypoint (one that does not exist, has no address, or over
//! xDS has not arrived) keeps its owner in the mesh: the workload stays
//! captured and under policy, and a connection that must cross the
//! waypoint is refused with its own reason, never sent around it. (Istio
//! bypasses the waypoint instead; its users report that as a security
//! surprise.)

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::ser::SerializeMap;

use super::serialize_display;
use crate::identity::SpiffeId;

/// A waypoint proxy: where HBONE goes instead of the destination pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Waypoint {
    /// The waypoint pod's IP; HBONE goes to `address:15008`.
    pub address: IpAddr,
    /// The identity its certificate must carry.
    #[serde(serialize_with = "serialize_display")]
    pub identity: SpiffeId,
}

impl Waypoint {
    /// `address:15008`.
    pub fn hbone_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, crate::HBONE_PORT)
    }
}

/// The waypoint a workload or Service is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseWaypoint {
    /// Resolved: traffic goes to it.
    Ready(Waypoint),
    /// Named, but not known: traffic that must cross it is refused.
    /// (Boxed: rare, and twice a ready waypoint's size in every workload.)
    Missing(Box<MissingWaypoint>),
}

impl UseWaypoint {
    /// The waypoint, when it is ready.
    pub fn ready(&self) -> Option<&Waypoint> {
        match self {
            UseWaypoint::Ready(wp) => Some(wp),
            UseWaypoint::Missing(_) => None,
        }
    }

    /// What names the waypoint, when it is missing.
    pub fn missing(&self) -> Option<&MissingWaypoint> {
        match self {
            UseWaypoint::Ready(_) => None,
            UseWaypoint::Missing(m) => Some(&**m),
        }
    }
}

/// In dumps a ready waypoint is its address and identity, as before;
/// a missing one is `{"missing": "<what names it>"}`.
impl serde::Serialize for UseWaypoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UseWaypoint::Ready(wp) => wp.serialize(s),
            UseWaypoint::Missing(m) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("missing", &m.to_string())?;
                map.end()
            }
        }
    }
}

/// What names a waypoint that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MissingWaypoint {
    /// `istio.io/use-waypoint` (with `-namespace`) names a workload that
    /// does not exist or has no address (the local config).
    Named { namespace: String, name: String },
    /// xDS: an address no workload or service holds.
    Address(IpAddr),
    /// xDS: a Service (`namespace/hostname`) that is not known, or has no
    /// VIP or no endpoint.
    Service { namespace: String, hostname: String },
}

impl fmt::Display for MissingWaypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingWaypoint::Named { namespace, name } => write!(f, "{namespace}/{name}"),
            MissingWaypoint::Address(ip) => write!(f, "{ip}"),
            MissingWaypoint::Service {
                namespace,
                hostname,
            } => write!(f, "{namespace}/{hostname}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_and_names() {
        let ready = UseWaypoint::Ready(Waypoint {
            address: "10.1.1.30".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/bank/sa/waypoint"
                .parse()
                .unwrap(),
        });
        assert_eq!(
            serde_json::to_value(&ready).unwrap(),
            serde_json::json!({"address": "10.1.1.30", "identity": "spiffe://cluster.local/ns/bank/sa/waypoint"})
        );
        assert_eq!(
            ready.ready().unwrap().hbone_addr().to_string(),
            "10.1.1.30:15008"
        );
        assert!(ready.missing().is_none());
        let cases = [
            (
                MissingWaypoint::Named {
                    namespace: "bank".into(),
                    name: "wp".into(),
                },
                "bank/wp",
            ),
            (
                MissingWaypoint::Address("10.1.1.99".parse().unwrap()),
                "10.1.1.99",
            ),
            (
                MissingWaypoint::Service {
                    namespace: "bank".into(),
                    hostname: "wp.bank.svc.cluster.local".into(),
                },
                "bank/wp.bank.svc.cluster.local",
            ),
        ];
        for (m, want) in cases {
            let missing = UseWaypoint::Missing(Box::new(m.clone()));
            assert!(missing.ready().is_none());
            assert_eq!(missing.missing(), Some(&m));
            assert_eq!(
                serde_json::to_value(&missing).unwrap(),
                serde_json::json!({ "missing": want })
            );
        }
    }
}
