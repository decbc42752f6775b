//! Sidecar mode end to end: one real `ztunnel --mode sidecar` per pod,
//! inside the pod's network namespace, with real nft REDIRECT capture,
//! real HBONE between the two sidecars of a connection, and apps in pods.
//! No node ztunnel runs: the nodes only forward.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mesh_tests::echo::{assert_refused_at_once, echo_through, payload, App};
use mesh_tests::mesh::{assert_hbone_on_the_wire, LinkCapture, Mesh};
use mesh_tests::sidecar::{table_count, Sidecars};
use mesh_tests::{require_root, Netns, Topology};

const SERVER_PORT: u16 = 8080;
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/bank/sa/server";

/// Pods `client` (shop, node 1, sidecar-labelled), `server` (bank, node 2,
/// sidecar-labelled, behind Service VIP 10.96.0.10:80 → 8080) and `plain`
/// (legacy, node 1, no sidecar).
fn topology() -> Topology {
    Topology::builder()
        .nodes(2)
        .pod("client", 1)
        .pod("server", 2)
        .pod("plain", 1)
        .build()
        .unwrap()
}

fn config(topo: &Topology, bank_mtls: &str, policies: &str) -> String {
    let (c, s, p) = (topo.pod("client"), topo.pod("server"), topo.pod("plain"));
    format!(
        r#"
trustDomain: cluster.local
nodes:
  - {{name: node1, ip: 10.0.0.1}}
  - {{name: node2, ip: 10.0.0.2}}
namespaces:
  - {{name: shop}}
  - {{name: bank, mtls: {bank_mtls}}}
  - {{name: legacy}}
workloads:
  - {{name: client, namespace: shop, serviceAccount: client, ip: {}, node: node1, labels: {{app: client, security.istio.io/tlsMode: istio}}}}
  - {{name: server, namespace: bank, serviceAccount: server, ip: {}, node: node2, labels: {{app: server, security.istio.io/tlsMode: istio}}}}
  - {{name: plain, namespace: legacy, ip: {}, node: node1, labels: {{app: plain}}}}
services:
  - {{name: server, namespace: bank, vip: 10.96.0.10, ports: [{{port: 80, targetPort: {SERVER_PORT}}}], selector: {{app: server}}}}
policies: {policies}
"#,
        c.ip, s.ip, p.ip
    )
}

/// A mesh of `topo` (file mode, shared CA) with sidecars for `pods`.
fn start(topo: &Topology, yaml: &str, pods: &[(&str, &str)]) -> (Mesh, Sidecars) {
    let mesh = Mesh::new(topo, yaml);
    let mut sidecars = Sidecars::new(&mesh, topo.nodes().len());
    for (pod, workload) in pods {
        sidecars.start(topo.pod(pod), workload);
    }
    (mesh, sidecars)
}

/// Whether a connection was refused: an error (reset), or EOF with nothing
/// echoed.
fn refused(result: &std::io::Result<Vec<u8>>) -> bool {
    match result {
        Ok(back) => back.is_empty(),
        Err(_) => true,
    }
}

/// Retries an echo from `from` to `to` until `want_ok` holds (config
/// reloads are polled), up to 5 s.
async fn eventually(from: &Netns, to: SocketAddr, want_ok: bool, what: &str) {
    let data = payload(4096);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = echo_through(from, to, &data).await;
        let ok = matches!(&r, Ok(back) if *back == data);
        if ok == want_ok && (want_ok || refused(&r)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last result {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Both sidecars logged the connection client -> `dst` (`bytes` each way)
/// with both identities, and count it as `mutual_tls`.
fn assert_mutual_tls(sidecars: &Sidecars, dst: SocketAddr, bytes: u64) {
    let out = sidecars.wait_event("client", "outbound client->server", |e| {
        e["direction"] == "outbound" && e["dst.addr"] == dst.to_string()
    });
    assert_eq!(out["src.identity"], CLIENT_ID);
    assert_eq!(out["src.workload"], "shop/client");
    assert_eq!(out["dst.identity"], SERVER_ID);
    assert_eq!(out["dst.hbone_addr"], format!("{}:15008", dst.ip()));
    assert_eq!(out["bytes_sent"], bytes);
    assert_eq!(out["response_flags"], "-");
    let inb = sidecars.wait_event("server", "inbound client->server", |e| {
        e["direction"] == "inbound" && e["src.identity"] == CLIENT_ID
    });
    assert_eq!(inb["dst.identity"], SERVER_ID);
    assert_eq!(inb["dst.workload"], "bank/server");
    assert_eq!(inb["bytes_recv"], bytes);
    for (pod, reporter) in [("client", "source"), ("server", "destination")] {
        assert_mutual_tls_metric(&sidecars.metrics(pod), reporter);
    }
}

/// `metrics` count a connection opened shop/client -> bank/server over
/// mutual TLS, reported by `reporter`.
fn assert_mutual_tls_metric(metrics: &str, reporter: &str) {
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains(&format!("reporter=\"{reporter}\""))
                && l.contains("source_principal=\"cluster.local/ns/shop/sa/client\"")
        })
        .unwrap_or_else(|| panic!("no {reporter} connection metric from client:\n{metrics}"));
    assert!(
        line.contains("destination_principal=\"cluster.local/ns/bank/sa/server\""),
        "{line}"
    );
    assert!(
        line.contains("connection_security_policy=\"mutual_tls\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_to_pod_is_mutual_tls_between_the_two_sidecars() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let yaml = config(&topo, "STRICT", "[]");
    let (_mesh, sidecars) = start(
        &topo,
        &yaml,
        &[("client", "shop/client"), ("server", "bank/server")],
    );
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    assert_eq!(table_count(&client.ns), 1);
    assert_eq!(table_count(&server.ns), 1);
    let app = App::serve(&server.ns, SERVER_PORT);

    let capture = LinkCapture::start(&topo.node(1).ns, &format!("{}-sidecar-link", topo.id()));
    let secret = b"SIDECAR-SECRET-PAYLOAD-0123456789-".repeat(100);
    let dst = SocketAddr::from((server.ip, SERVER_PORT));
    let back = echo_through(&client.ns, dst, &secret)
        .await
        .expect("echo through two sidecars");
    assert_eq!(back, secret, "byte-exact through HBONE");
    let captured = capture.finish();
    assert_hbone_on_the_wire(&captured, secret.len(), b"SIDECAR-SECRET");
    // The destination sidecar dials the app from inside the pod.
    let peers = app.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].ip(), IpAddr::V4(server.ip));

    assert_mutual_tls(&sidecars, dst, secret.len() as u64);
    let (status, dump) = sidecars
        .http_get("server", 15000, "/config_dump")
        .expect("config dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("config dump is JSON");
    let certs: Vec<&str> = dump["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .filter_map(|c| c["identity"].as_str())
        .collect();
    assert_eq!(certs, [SERVER_ID], "only the served pod's certificate");
    assert_eq!(
        dump["captured_pods"],
        serde_json::json!([server.ip.to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_vip_goes_to_an_endpoint_on_its_target_port() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let yaml = config(&topo, "STRICT", "[]");
    let (_mesh, sidecars) = start(
        &topo,
        &yaml,
        &[("client", "shop/client"), ("server", "bank/server")],
    );
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let _app = App::serve(&server.ns, SERVER_PORT);
    let data = payload(64 * 1024);
    let back = echo_through(&client.ns, "10.96.0.10:80".parse().unwrap(), &data)
        .await
        .expect("echo through the VIP");
    assert_eq!(back, data);
    let endpoint = format!("{}:{SERVER_PORT}", server.ip);
    let out = sidecars.wait_event("client", "outbound to the VIP", |e| {
        e["direction"] == "outbound"
    });
    assert_eq!(out["dst.addr"], endpoint, "endpoint picked, port mapped");
    assert_eq!(out["dst.hbone_addr"], format!("{}:15008", server.ip));
    assert_eq!(out["dst.identity"], SERVER_ID);
    let inb = sidecars.wait_event("server", "inbound from the VIP", |e| {
        e["direction"] == "inbound"
    });
    assert_eq!(inb["dst.addr"], endpoint);
    assert_eq!(inb["src.identity"], CLIENT_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_is_enforced_at_the_destination_sidecar() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let deny_client = r#"
  - name: deny-client
    namespace: bank
    action: DENY
    rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
"#;
    let allow_ns = |ns: &str| {
        format!(
            r#"
  - name: allow-ns
    namespace: bank
    action: ALLOW
    rules: [{{from: [{{source: {{namespaces: [{ns}]}}}}]}}]
"#
        )
    };
    let (mesh, sidecars) = start(
        &topo,
        &config(&topo, "STRICT", deny_client),
        &[("client", "shop/client"), ("server", "bank/server")],
    );
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let app = App::serve(&server.ns, SERVER_PORT);
    let dst = SocketAddr::from((server.ip, SERVER_PORT));

    // DENY by principal: the client sees a reset or an empty close.
    let r = echo_through(&client.ns, dst, b"must not arrive").await;
    assert!(refused(&r), "denied connection carried data: {r:?}");
    assert!(app.peers().is_empty(), "the app was reached");
    let inb = sidecars.wait_event("server", "denied inbound", |e| {
        e["direction"] == "inbound" && e["response_flags"] == "DENY"
    });
    assert_eq!(inb["src.identity"], CLIENT_ID);
    let out = sidecars.wait_event("client", "outbound refused", |e| {
        e["direction"] == "outbound" && e["response_flags"] != "-"
    });
    assert_eq!(out["dst.identity"], SERVER_ID);

    // ALLOW the client's namespace: passes.
    mesh.write_config(&config(&topo, "STRICT", &allow_ns("shop")));
    eventually(&client.ns, dst, true, "ALLOW namespace shop").await;

    // ALLOW another namespace only: no ALLOW matches, refused.
    mesh.write_config(&config(&topo, "STRICT", &allow_ns("legacy")));
    eventually(&client.ns, dst, false, "ALLOW namespace legacy only").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_and_permissive_allows_it() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (mesh, sidecars) = start(
        &topo,
        &config(&topo, "STRICT", "[]"),
        &[("server", "bank/server")],
    );
    let (plain, server) = (topo.pod("plain"), topo.pod("server"));
    let app = App::serve(&server.ns, SERVER_PORT);
    let dst = SocketAddr::from((server.ip, SERVER_PORT));

    let r = echo_through(&plain.ns, dst, b"plaintext into STRICT").await;
    assert!(refused(&r), "STRICT let plaintext through: {r:?}");
    assert!(app.peers().is_empty(), "the app was reached");
    let inb = sidecars.wait_event("server", "plaintext refused", |e| {
        e["direction"] == "inbound" && e["response_flags"] == "DENY"
    });
    assert_eq!(
        inb["src.addr"].as_str().unwrap().split(':').next(),
        Some(plain.ip.to_string().as_str())
    );

    mesh.write_config(&config(&topo, "PERMISSIVE", "[]"));
    eventually(&plain.ns, dst, true, "PERMISSIVE plaintext").await;
    let ok = sidecars.wait_event("server", "plaintext allowed", |e| {
        e["direction"] == "inbound" && e["response_flags"] == "-"
    });
    assert!(
        ok.get("src.identity").is_none(),
        "plaintext has no identity: {ok}"
    );
    let m = sidecars.metrics("server");
    assert!(
        m.contains("connection_security_policy=\"none\""),
        "plaintext metric: {m}"
    );
}

/// The uid the app runs as: not the sidecar's (root here).
const APP_UID: u32 = 65534;

/// What the app (a process in the pod running as [`APP_UID`]) gets from
/// `127.0.0.1:port` for `request` (`printf` escapes): the reply, bash's
/// error, and `exit=<status>`.
fn as_app(pod: &Netns, port: u16, request: &str) -> String {
    pod.exec(&format!(
        "setpriv --reuid={APP_UID} --regid={APP_UID} --clear-groups \
         bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} && printf \"{request}\" >&3 && cat <&3' 2>&1; \
         echo \"exit=$?\""
    ))
    .expect("run as the app")
}

/// The app shares its sidecar's network namespace, not its uid: it cannot
/// reach the sidecar's admin port (`/quitquitquit`, `/config_dump`), which
/// the sidecar's own uid (the harness, root like the sidecar) still reads;
/// the app still reaches readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_cannot_reach_its_sidecars_admin() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let yaml = config(&topo, "PERMISSIVE", "[]");
    let (_mesh, mut sidecars) = start(&topo, &yaml, &[("client", "shop/client")]);
    let pod = &topo.pod("client").ns;
    let close = "host: x\\r\\nconnection: close\\r\\n";
    for request in [
        format!("POST /quitquitquit HTTP/1.1\\r\\n{close}content-length: 0\\r\\n\\r\\n"),
        format!("GET /config_dump HTTP/1.1\\r\\n{close}\\r\\n"),
    ] {
        let out = as_app(pod, 15000, &request);
        assert!(
            out.contains("Connection refused") && !out.contains("HTTP/1.1"),
            "the app reached admin: {out}"
        );
    }
    let ready = as_app(
        pod,
        15021,
        &format!("GET /healthz/ready HTTP/1.1\\r\\n{close}\\r\\n"),
    );
    assert!(ready.contains("HTTP/1.1 200"), "{ready}");
    // The sidecar is still up, and its own uid reads admin.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sidecars.wait_ready("client");
    let (status, _dump) = sidecars
        .http_get("client", 15000, "/config_dump")
        .expect("config dump from the proxy's uid");
    assert_eq!(status, 200);
    assert!(
        !sidecars.stderr("client").contains("shutdown requested"),
        "{}",
        sidecars.stderr("client")
    );
}

/// A connection to the sidecar's own capture listeners (15001, 15006) on
/// its pod's IP, from another pod or from the pod itself, is refused at
/// once; forwarding it would land back on the sidecar, again and again,
/// until the process ran out of file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_the_sidecars_own_listeners_is_refused_not_looped() {
    if !require_root() {
        return;
    }
    let topo = topology();
    // PERMISSIVE: plaintext would otherwise be admitted and forwarded.
    let (_mesh, sidecars) = start(
        &topo,
        &config(&topo, "PERMISSIVE", "[]"),
        &[("server", "bank/server")],
    );
    let (plain, server) = (topo.pod("plain"), topo.pod("server"));
    let fds_before = sidecars.fd_count("server");
    for (from, port, path) in [
        (plain, 15001, "inbound"),
        (plain, 15006, "inbound"),
        (server, 15001, "outbound"),
        (server, 15006, "outbound"),
    ] {
        let dst = SocketAddr::from((server.ip, port));
        let started = Instant::now();
        let r = echo_through(&from.ns, dst, b"loop?").await;
        let took = started.elapsed();
        assert!(refused(&r), "{} -> {dst}: {r:?}", from.name);
        assert!(
            took < Duration::from_secs(3),
            "{} -> {dst}: refused only after {took:?}",
            from.name
        );
        let ev = sidecars.wait_event("server", "own-listener refusal", |e| {
            e["direction"] == path && e["dst.addr"] == dst.to_string()
        });
        assert_eq!(ev["response_flags"], "CONNECT", "{ev}");
        assert!(
            ev["error"]
                .as_str()
                .is_some_and(|e| e.contains("own listener")),
            "{ev}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let fds_after = sidecars.fd_count("server");
    assert!(
        fds_after < fds_before + 50,
        "the sidecar's fds went from {fds_before} to {fds_after}"
    );
    // Still serving: nothing was exhausted.
    let _app = App::serve(&server.ns, SERVER_PORT);
    eventually(
        &plain.ns,
        SocketAddr::from((server.ip, SERVER_PORT)),
        true,
        "the app after the refusals",
    )
    .await;
}

/// Kubelet probes come from the node's own IP and are not captured
/// (DESIGN §4), so STRICT does not refuse them; another pod's plaintext
/// still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_from_the_node_reach_the_app_in_a_strict_namespace() {
    probes_from_the_node_reach_the_app(false).await;
}

/// Over xDS nodes carry no address: `--node-ip` (Kubernetes: status.hostIP)
/// names the probes' source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_from_the_node_pass_over_xds_with_node_ip() {
    probes_from_the_node_reach_the_app(true).await;
}

async fn probes_from_the_node_reach_the_app(xds: bool) {
    if !require_root() {
        return;
    }
    let topo = topology();
    let yaml = config(&topo, "STRICT", "[]");
    let (node, plain, server) = (topo.node(2), topo.pod("plain"), topo.pod("server"));
    let (_mesh, _sidecars) = if xds {
        let mesh = Mesh::with_control_plane(&topo, &yaml);
        let mut sidecars = Sidecars::new(&mesh, topo.nodes().len());
        let node_ip = node.ip.to_string();
        sidecars.start_with(server, "bank/server", &["--node-ip", &node_ip]);
        sidecars.wait_ready("server");
        (mesh, sidecars)
    } else {
        start(&topo, &yaml, &[("server", "bank/server")])
    };
    let app = App::serve(&server.ns, SERVER_PORT);
    let dst = SocketAddr::from((server.ip, SERVER_PORT));
    let data = payload(1024);
    let back = echo_through(&node.ns, dst, &data)
        .await
        .expect("probe from the node");
    assert_eq!(back, data);
    let peers = app.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].ip(), IpAddr::V4(node.ip), "straight from the node");

    let r = echo_through(&plain.ns, dst, b"plaintext into STRICT").await;
    assert!(refused(&r), "STRICT let another pod's plaintext in: {r:?}");
    assert_eq!(
        app.peers().len(),
        1,
        "the app was reached by {:?}",
        app.peers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_to_a_non_mesh_destination_passes_through() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (_mesh, sidecars) = start(
        &topo,
        &config(&topo, "STRICT", "[]"),
        &[("client", "shop/client")],
    );
    let (client, plain) = (topo.pod("client"), topo.pod("plain"));
    let app = App::serve(&plain.ns, 9090);
    let data = payload(32 * 1024);
    let dst = SocketAddr::from((plain.ip, 9090));
    let back = echo_through(&client.ns, dst, &data)
        .await
        .expect("passthrough");
    assert_eq!(back, data);
    // Plain TCP from the client pod itself: the app sees the client's IP.
    assert_eq!(app.peers()[0].ip(), IpAddr::V4(client.ip));
    let out = sidecars.wait_event("client", "passthrough", |e| {
        e["direction"] == "outbound" && e["dst.addr"] == dst.to_string()
    });
    assert!(out.get("dst.hbone_addr").is_none(), "not tunnelled: {out}");
    assert_eq!(out["bytes_sent"], data.len() as u64);
    let m = sidecars.metrics("client");
    assert!(
        m.contains("connection_security_policy=\"none\""),
        "passthrough metric: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_the_rules_so_the_pod_fails_closed_and_uninstall_removes_them() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (_mesh, mut sidecars) = start(
        &topo,
        &config(&topo, "PERMISSIVE", "[]"),
        &[("server", "bank/server")],
    );
    let (plain, server) = (topo.pod("plain"), topo.pod("server"));
    let _app = App::serve(&server.ns, SERVER_PORT);
    let dst = SocketAddr::from((server.ip, SERVER_PORT));
    assert_eq!(table_count(&server.ns), 1);
    eventually(&plain.ns, dst, true, "through the sidecar").await;

    let status = sidecars.terminate("server");
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    // A restart must never open the pod: the rules stay, and with no
    // sidecar listening the redirected connection is reset at once, never
    // delivered to the app around the mesh.
    assert_eq!(table_count(&server.ns), 1, "table kept across SIGTERM");
    let stderr = sidecars.stderr("server");
    assert!(stderr.contains("capture rules kept"), "{stderr}");
    assert_refused_at_once(&plain.ns, dst, "inbound with the sidecar gone").await;
    assert_refused_at_once(
        &server.ns,
        SocketAddr::from((plain.ip, SERVER_PORT)),
        "the app's outbound with its sidecar gone",
    )
    .await;
    // `ztunnel uninstall` in the pod removes them: the app is reached
    // directly.
    let bin = mesh_tests::mesh::ztunnel_bin();
    server
        .ns
        .exec(&format!("'{}' uninstall", bin.display()))
        .expect("ztunnel uninstall in the pod");
    assert_eq!(table_count(&server.ns), 0, "table removed by uninstall");
    eventually(&plain.ns, dst, true, "direct, no sidecar").await;

    // A crash leaves the table; the restart replaces it, never duplicates.
    sidecars.start(server, "bank/server");
    sidecars.kill("server");
    assert_eq!(table_count(&server.ns), 1, "a crash leaves the table");
    sidecars.start(server, "bank/server");
    assert_eq!(
        table_count(&server.ns),
        1,
        "exactly one table after restart"
    );
    eventually(&plain.ns, dst, true, "through the restarted sidecar").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_missing_from_the_config_is_a_startup_error() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (_mesh, mut sidecars) = start(&topo, &config(&topo, "STRICT", "[]"), &[]);
    let server = topo.pod("server");
    sidecars.start_with(server, "bank/nobody", &[]);
    mesh_tests::mesh::wait_until("the sidecar exits", || {
        sidecars.stderr("server").contains("error:")
    });
    let stderr = sidecars.stderr("server");
    assert!(
        stderr.contains("workload bank/nobody (--workload) is not in the config"),
        "{stderr}"
    );
    assert_eq!(table_count(&server.ns), 0, "no capture installed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_follows_the_control_plane_over_xds() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let mesh = Mesh::with_control_plane(&topo, &config(&topo, "PERMISSIVE", "[]"));
    let mut sidecars = Sidecars::new(&mesh, topo.nodes().len());
    let (client, plain, server) = (topo.pod("client"), topo.pod("plain"), topo.pod("server"));
    // The certificates come from the control plane's CA with each node's
    // token, over marked connections that escape the pods' REDIRECT.
    sidecars.start(server, "bank/server");
    sidecars.start(client, "shop/client");
    assert_eq!(table_count(&server.ns), 1);
    let _app = App::serve(&server.ns, SERVER_PORT);
    let dst = SocketAddr::from((server.ip, SERVER_PORT));
    eventually(&plain.ns, dst, true, "PERMISSIVE over xDS").await;
    // Sidecar to sidecar: labels do not travel over xDS; the server's
    // native_tunnel does, so the client's sidecar tunnels (before it did
    // not, and the server logged plaintext from the client's IP).
    let data = payload(4096);
    let back = echo_through(&client.ns, dst, &data)
        .await
        .expect("client -> server over xDS");
    assert_eq!(back, data);
    assert_mutual_tls(&sidecars, dst, data.len() as u64);
    let deny_port = r#"
  - name: no-8080
    namespace: bank
    action: DENY
    rules: [{to: [{operation: {ports: ["8080"]}}]}]
"#;
    mesh.write_config(&config(&topo, "PERMISSIVE", deny_port));
    eventually(&plain.ns, dst, false, "a DENY pushed over xDS").await;
    let status = sidecars.terminate("server");
    assert!(status.success(), "{status}");
    assert_eq!(table_count(&server.ns), 1, "kept across SIGTERM");
}

/// Interop: an ambient pod, captured by its node's ztunnel, reaches a pod
/// that runs its own sidecar. The node ztunnel tunnels straight to the
/// pod's 15008 with the pod's identity. The sidecar pod's namespace is
/// ambient too, yet node 2's ztunnel must leave it to its sidecar (not in
/// its capture set, no certificate for it, no connection seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambient_client_reaches_a_sidecar_pod_over_hbone() {
    ambient_client_to_sidecar_pod(false).await;
}

/// The same over xDS, where only `native_tunnel` tells node 2's ztunnel
/// that the pod has its own sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambient_client_reaches_a_sidecar_pod_over_xds() {
    ambient_client_to_sidecar_pod(true).await;
}

async fn ambient_client_to_sidecar_pod(xds: bool) {
    if !require_root() {
        return;
    }
    let topo = topology();
    let yaml = config(&topo, "STRICT", "[]").replace(
        "{name: shop}",
        "{name: shop, labels: {istio.io/dataplane-mode: ambient}}",
    );
    let yaml = yaml
        .replace(
            "{name: bank, mtls: STRICT}",
            "{name: bank, labels: {istio.io/dataplane-mode: ambient}, mtls: STRICT}",
        )
        .replace(
            "labels: {app: client, security.istio.io/tlsMode: istio}",
            "labels: {app: client}",
        );
    let (mut mesh, sidecars) = if xds {
        let mesh = Mesh::with_control_plane(&topo, &yaml);
        let mut sidecars = Sidecars::new(&mesh, topo.nodes().len());
        sidecars.start(topo.pod("server"), "bank/server");
        (mesh, sidecars)
    } else {
        start(&topo, &yaml, &[("server", "bank/server")])
    };
    mesh.start_all();
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    let app = App::serve(&server.ns, SERVER_PORT);
    let (status, dump) = mesh.http_get(2, 15000, "/config_dump").expect("dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("JSON");
    assert_eq!(
        dump["captured_pods"],
        serde_json::json!([]),
        "node 2 captures no sidecar pod"
    );
    assert_eq!(dump["certificates"], serde_json::json!([]), "{dump}");

    let data = payload(4096);
    let dst = SocketAddr::from((server.ip, SERVER_PORT));
    let back = echo_through(&client.ns, dst, &data)
        .await
        .expect("ambient client -> sidecar server (STRICT)");
    assert_eq!(back, data);
    // The node ztunnel dials from the client's IP; the sidecar reaches the
    // app from inside the pod.
    assert_eq!(app.peers()[0].ip(), IpAddr::V4(server.ip));
    let out = mesh.wait_event(1, "outbound client->server", |e| {
        e["direction"] == "outbound" && e["dst.addr"] == dst.to_string()
    });
    assert_eq!(out["src.identity"], CLIENT_ID);
    assert_eq!(out["dst.identity"], SERVER_ID);
    assert_eq!(out["dst.hbone_addr"], format!("{}:15008", server.ip));
    assert_eq!(out["response_flags"], "-");
    let inb = sidecars.wait_event("server", "inbound client->server", |e| {
        e["direction"] == "inbound" && e["src.identity"] == CLIENT_ID
    });
    assert_eq!(
        inb["src.addr"]
            .as_str()
            .map(|a| a.starts_with(&format!("{}:", client.ip))),
        Some(true),
        "{inb}"
    );
    assert_eq!(inb["dst.identity"], SERVER_ID);
    assert_eq!(inb["bytes_recv"], data.len() as u64);
    assert_mutual_tls_metric(&mesh.metrics(1), "source");
    assert_mutual_tls_metric(&sidecars.metrics("server"), "destination");
    let node2 = mesh.settled_access_log(2);
    assert!(
        node2.is_empty(),
        "node 2's ztunnel saw the connection: {node2:?}"
    );
}
