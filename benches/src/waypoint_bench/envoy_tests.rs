use super::*;

fn waypoint() -> Waypoint {
    Waypoint {
        name: "envoy-waypoint".into(),
        cert_chain: "/d/chain.pem".into(),
        key: "/d/key.pem".into(),
        root: "/d/root.pem".into(),
        services: vec![Service {
            name: "echo-envoy".into(),
            vip: Ipv4Addr::new(10, 96, 0, 22),
            port: 80,
            endpoints: vec![
                (Ipv4Addr::new(10, 1, 2, 10), 8080, "server".into()),
                (Ipv4Addr::new(10, 1, 2, 11), 8080, "server".into()),
            ],
        }],
    }
}

fn find<'a>(b: &'a Value, kind: &str, name: &str) -> &'a Value {
    b["static_resources"][kind]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn hcm(listener: &Value) -> &Value {
    let f = &listener["filter_chains"][0]["filters"][0];
    assert_eq!(f["name"], "envoy.filters.network.http_connection_manager");
    &f["typed_config"]
}

#[test]
fn terminates_mtls_and_connect_on_15008_for_bound_vips_only() {
    let b = bootstrap(&waypoint());
    let l = find(&b, "listeners", "connect_terminate");
    assert_eq!(l["address"]["socket_address"]["port_value"], 15008);
    let tls = &l["filter_chains"][0]["transport_socket"]["typed_config"];
    assert!(tls["@type"]
        .as_str()
        .unwrap()
        .ends_with("DownstreamTlsContext"));
    assert_eq!(tls["require_client_certificate"], true);
    let ctx = &tls["common_tls_context"];
    assert_eq!(ctx["alpn_protocols"], json!(["h2"]));
    assert_eq!(ctx["tls_params"]["tls_minimum_protocol_version"], "TLSv1_3");
    assert_eq!(
        ctx["tls_certificates"][0]["certificate_chain"]["filename"],
        "/d/chain.pem"
    );
    assert_eq!(
        ctx["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["prefix"],
        "spiffe://cluster.local/"
    );
    let h = hcm(l);
    assert_eq!(h["codec_type"], "HTTP2");
    assert_eq!(h["http2_protocol_options"]["allow_connect"], true);
    assert_eq!(h["upgrade_configs"][0]["upgrade_type"], "CONNECT");
    let vhosts = h["route_config"]["virtual_hosts"].as_array().unwrap();
    assert_eq!(vhosts.len(), 1);
    assert_eq!(
        vhosts[0]["domains"],
        json!(["10.96.0.22:80"]),
        "only the bound VIP:port"
    );
    let route = &vhosts[0]["routes"][0];
    assert_eq!(route["match"], json!({"connect_matcher": {}}));
    assert_eq!(
        route["route"]["cluster"],
        "inbound-vip|80|http|echo-envoy.shop.svc.cluster.local"
    );
    assert_eq!(
        route["route"]["upgrade_configs"][0]["upgrade_type"],
        "CONNECT"
    );
    assert!(route["route"]["upgrade_configs"][0]["connect_config"].is_object());
    assert_eq!(
        b["bootstrap_extensions"][0]["name"],
        "envoy.bootstrap.internal_listener"
    );
}

#[test]
fn the_internal_listener_routes_at_l7_with_our_routes() {
    let b = bootstrap(&waypoint());
    let name = "inbound-vip|80|http|echo-envoy.shop.svc.cluster.local";
    let l = find(&b, "listeners", name);
    assert!(l["internal_listener"].is_object());
    assert!(l.get("address").is_none());
    let h = hcm(l);
    assert_eq!(h["stat_prefix"], L7_STAT_PREFIX);
    assert_eq!(h["codec_type"], "AUTO");
    let routes = h["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .unwrap();
    let matches: Vec<&Value> = routes.iter().map(|r| &r["match"]).collect();
    assert_eq!(
        matches,
        [
            &json!({"path": "/echo"}),
            &json!({"prefix": "/bench.Echo/"})
        ]
    );
    for r in routes {
        assert_eq!(
            r["route"]["cluster"],
            "outbound|80||echo-envoy.shop.svc.cluster.local"
        );
    }
    let c = find(&b, "clusters", name);
    assert_eq!(
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["envoy_internal_address"]["server_listener_name"],
        name
    );
}

#[test]
fn each_endpoint_is_reached_over_hbone_with_its_own_identity() {
    let b = bootstrap(&waypoint());
    let svc = find(
        &b,
        "clusters",
        "outbound|80||echo-envoy.shop.svc.cluster.local",
    );
    let eps: Vec<&Value> = svc["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["endpoint"]["address"]["envoy_internal_address"]["server_listener_name"])
        .collect();
    assert_eq!(
        eps,
        [
            &json!("connect_originate|10.1.2.10:8080"),
            &json!("connect_originate|10.1.2.11:8080")
        ]
    );
    let proto = &svc["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(proto["use_downstream_protocol_config"]["http2_protocol_options"].is_object());

    let orig = find(&b, "listeners", "connect_originate|10.1.2.11:8080");
    let tcp = &orig["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(tcp["cluster"], "hbone|10.1.2.11");
    assert_eq!(tcp["tunneling_config"]["hostname"], "10.1.2.11:8080");

    let hbone = find(&b, "clusters", "hbone|10.1.2.11");
    assert_eq!(
        hbone["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"],
        json!({"address": "10.1.2.11", "port_value": 15008})
    );
    assert!(hbone["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
        ["http2_protocol_options"]
        .is_object());
    let tls = &hbone["transport_socket"]["typed_config"];
    assert!(tls["@type"]
        .as_str()
        .unwrap()
        .ends_with("UpstreamTlsContext"));
    let ctx = &tls["common_tls_context"];
    assert_eq!(
        ctx["tls_certificates"][0]["private_key"]["filename"],
        "/d/key.pem"
    );
    assert_eq!(
        ctx["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
        "spiffe://cluster.local/ns/shop/sa/server"
    );
    // One HBONE cluster per pod, whatever its ports.
    let clusters = b["static_resources"]["clusters"].as_array().unwrap();
    assert_eq!(
        clusters
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("hbone|"))
            .count(),
        2
    );
}

#[test]
fn workers_are_the_concurrency() {
    let a = args("/c.json", "/l.log", 2);
    let pos = a.iter().position(|x| x == "--concurrency").unwrap();
    assert_eq!(a[pos + 1], "2");
    assert_eq!(&a[..2], ["-c", "/c.json"]);
}

#[test]
fn routed_counts_must_match_the_requests_sent() {
    let svc = &waypoint().services[0];
    let c = svc.cluster();
    let stats = |rq: u64, cl: u64, no_route: u64| {
        format!(
            "http.inbound_vip.downstream_rq_2xx: {rq}\nhttp.inbound_vip.downstream_rq_completed: {rq}\n\
             http.inbound_vip.no_route: {no_route}\n\
             cluster.{c}.upstream_rq_2xx: {cl}\ncluster.{c}.upstream_rq_completed: {cl}\n\
             cluster.{c}.upstream_rq_5xx: 0\nhttp.connect_terminate.downstream_rq_2xx: 3\n"
        )
    };
    let before = stats(10, 10, 0);
    let cases = [
        (stats(110, 110, 0), 100, Ok(())),
        (stats(110, 109, 0), 100, Err("upstream_rq_2xx grew by 99")),
        // More than sent: something else went through (or a retry).
        (
            stats(111, 111, 0),
            100,
            Err("downstream_rq_2xx grew by 101"),
        ),
        (stats(109, 110, 0), 100, Err("downstream_rq_2xx grew by 99")),
        (stats(110, 110, 1), 100, Err("no_route grew by 1")),
        ("".to_owned(), 100, Err("no counter")),
    ];
    for (after, n, want) in cases {
        let got = check_routed(&before, &after, svc, n);
        match (got, want) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(w)) => assert!(e.contains(w), "{e} lacks {w}"),
            (g, w) => panic!("{g:?}, wanted {w:?}"),
        }
    }
    assert_eq!(stat("a.b: 7\na.bc: 9\n", "a.b"), Some(7));
    assert_eq!(stat("a.bc: 9\n", "a.b"), None);
}
