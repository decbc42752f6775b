//! Untrusted bytes: decoding anything as an xDS resource must not panic, and
//! the wire tags of the fields we depend on are the ones Istio uses.

use proptest::prelude::*;
use prost::Message;
use proto::discovery::{DeltaDiscoveryRequest, Resource};
use proto::security::Authorization;
use proto::workload::{address, Address, Workload};

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Address::decode(bytes.as_slice());
        let _ = Authorization::decode(bytes.as_slice());
        let _ = Resource::decode(bytes.as_slice());
        let _ = DeltaDiscoveryRequest::decode(bytes.as_slice());
        let _ = proto::mesh::Route::decode(bytes.as_slice());
        let _ = proto::mesh::L7Authorization::decode(bytes.as_slice());
    }

    /// Mutated valid encodings reach deeper than random bytes do.
    #[test]
    fn mutated_addresses_never_panic(
        uid in "[a-z/0-9-]{0,20}",
        ip in any::<[u8; 4]>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let addr = Address {
            r#type: Some(address::Type::Workload(Workload {
                uid,
                addresses: vec![ip.to_vec()],
                ..Workload::default()
            })),
        };
        let mut bytes = addr.encode_to_vec();
        for (idx, b) in flips {
            let i = idx.index(bytes.len());
            bytes[i] ^= b;
        }
        let _ = Address::decode(bytes.as_slice());
    }
}

/// A protobuf key for `field` with wire type length-delimited (2) or varint (0).
fn key(field: u32, wire: u32) -> Vec<u8> {
    let mut v = Vec::new();
    prost::encoding::encode_varint(u64::from(field << 3 | wire), &mut v);
    v
}

#[test]
fn workload_field_numbers_match_istio() {
    let cases: &[(&str, Workload, u32, u32)] = &[
        (
            "name",
            Workload {
                name: "x".into(),
                ..Default::default()
            },
            1,
            2,
        ),
        (
            "namespace",
            Workload {
                namespace: "x".into(),
                ..Default::default()
            },
            2,
            2,
        ),
        (
            "addresses",
            Workload {
                addresses: vec![vec![1]],
                ..Default::default()
            },
            3,
            2,
        ),
        (
            "network",
            Workload {
                network: "x".into(),
                ..Default::default()
            },
            4,
            2,
        ),
        (
            "tunnel_protocol",
            Workload {
                tunnel_protocol: 1,
                ..Default::default()
            },
            5,
            0,
        ),
        (
            "trust_domain",
            Workload {
                trust_domain: "x".into(),
                ..Default::default()
            },
            6,
            2,
        ),
        (
            "service_account",
            Workload {
                service_account: "x".into(),
                ..Default::default()
            },
            7,
            2,
        ),
        (
            "node",
            Workload {
                node: "x".into(),
                ..Default::default()
            },
            9,
            2,
        ),
        (
            "authorization_policies",
            Workload {
                authorization_policies: vec!["x".into()],
                ..Default::default()
            },
            16,
            2,
        ),
        (
            "status",
            Workload {
                status: 1,
                ..Default::default()
            },
            17,
            0,
        ),
        (
            "uid",
            Workload {
                uid: "x".into(),
                ..Default::default()
            },
            20,
            2,
        ),
    ];
    for (name, w, field, wire) in cases {
        let bytes = w.encode_to_vec();
        let k = key(*field, *wire);
        assert_eq!(
            &bytes[..k.len()],
            k.as_slice(),
            "Workload.{name} is field {field}"
        );
    }
}

#[test]
fn oneof_and_type_urls() {
    let svc = Address {
        r#type: Some(address::Type::Service(Default::default())),
    };
    assert_eq!(
        svc.encode_to_vec(),
        [2 << 3 | 2, 0],
        "Address.service is field 2"
    );
    assert_eq!(
        proto::ADDRESS_TYPE_URL,
        "type.googleapis.com/istio.workload.Address"
    );
    assert_eq!(
        proto::AUTHORIZATION_TYPE_URL,
        "type.googleapis.com/istio.security.Authorization"
    );
}

#[test]
fn port_app_protocol_is_istios() {
    use proto::workload::{AppProtocol, Port};
    let p = Port {
        app_protocol: AppProtocol::Grpc as i32,
        ..Port::default()
    };
    // Field 3, varint, value 3: Istio's `AppProtocol app_protocol = 3`.
    assert_eq!(p.encode_to_vec(), [3 << 3, 3]);
    let values = [
        (AppProtocol::Unknown, 0, "UNKNOWN"),
        (AppProtocol::Http11, 1, "HTTP11"),
        (AppProtocol::Http2, 2, "HTTP2"),
        (AppProtocol::Grpc, 3, "GRPC"),
        (AppProtocol::Tcp, 4, "TCP"),
        (AppProtocol::Tls, 5, "TLS"),
    ];
    for (v, n, name) in values {
        assert_eq!((v as i32, v.as_str_name()), (n, name));
    }
}

#[test]
fn l7_type_urls() {
    assert_eq!(
        proto::ROUTE_TYPE_URL,
        "type.googleapis.com/ambient.mesh.v1.Route"
    );
    assert_eq!(
        proto::L7_AUTHORIZATION_TYPE_URL,
        "type.googleapis.com/ambient.mesh.v1.L7Authorization"
    );
}
