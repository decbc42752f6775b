//! gRPC through the waypoint with a real tonic service and client
//! (`mesh_tests::grpc`): client → ztunnel → waypoint → ztunnel → two tonic
//! servers. Unary, server-streaming, client-streaming and bidirectional
//! calls pass with their trailers; an upstream error keeps its status and
//! trailing metadata, and the waypoint counts it as `grpc_response_status`.
//! Same scenario as `waypoint.rs`, plus the `grpc` Service.

use std::collections::BTreeSet;

use mesh_tests::grpc::{EchoClient, Msg};
use mesh_tests::mesh::metric_sum;
use mesh_tests::require_root;
use mesh_tests::waypoint::scenario::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const HOST: &str = "grpc.shop.svc.cluster.local:50051";

fn server(text: &str) -> &str {
    text.split(':').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_shape_pass_with_their_trailers_and_status() {
    if !require_root() {
        return;
    }
    let s = Scenario::start_with(GRPC_SERVICE, &[]);
    let _apps = s.grpc_apps();
    let mut client = EchoClient::connect(s.ns("client"), HOST, GRPC_VIP.parse().unwrap())
        .await
        .expect("gRPC channel through the mesh");

    // Unary, balanced per call over the one HTTP/2 connection.
    let mut servers = BTreeSet::new();
    for i in 0..20 {
        let r = client
            .unary(Msg::text(&format!("u{i}")))
            .await
            .expect("unary through the waypoint")
            .into_inner();
        assert!(r.text.ends_with(&format!(":u{i}")), "{r:?}");
        servers.insert(server(&r.text).to_owned());
    }
    assert_eq!(servers.len(), 2, "both endpoints answered: {servers:?}");

    // Server streaming: every message, then the trailers with grpc-status 0.
    let mut stream = client
        .count(Msg {
            n: 5,
            ..Msg::default()
        })
        .await
        .expect("server streaming")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.expect("a message or the end") {
        got.push(m.text);
    }
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got[4].ends_with(":4"), "{got:?}");
    let trailers = stream.trailers().await.expect("trailers");
    assert!(trailers.is_some(), "the OK stream ended with its trailers");

    // Server streaming that fails after three messages: the status and its
    // metadata arrive in the trailers, after the messages.
    let mut stream = client
        .count(Msg {
            n: 3,
            code: Code::DataLoss as i32,
            ..Msg::default()
        })
        .await
        .expect("server streaming")
        .into_inner();
    let mut got = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("the stream ended OK after {got} messages"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, 3);
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert_eq!(status.message(), "asked to fail");
    assert_eq!(status.metadata().get("x-why").unwrap(), "asked");

    // Client streaming: all of the client's messages reach one server.
    let msgs = ["a", "b", "c", "d"].map(Msg::text).to_vec();
    let r = client
        .collect(msgs)
        .await
        .expect("client streaming")
        .into_inner();
    assert!(r.text.ends_with(":a,b,c,d"), "{r:?}");

    // Bidirectional: each message is sent only after the previous answer
    // came back, so the call really is interleaved both ways.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Msg::text("m0")).await.unwrap();
    let mut answers = client
        .chat(ReceiverStream::new(rx))
        .await
        .expect("bidirectional streaming")
        .into_inner();
    let mut chat_server = None;
    for i in 0..5 {
        let m = answers
            .message()
            .await
            .expect("an answer")
            .expect("not the end yet");
        assert!(m.text.ends_with(&format!(":m{i}")), "{m:?}");
        let from = server(&m.text).to_owned();
        assert_eq!(
            chat_server.get_or_insert_with(|| from.clone()),
            &from,
            "one stream, one server"
        );
        if i < 4 {
            tx.send(Msg::text(&format!("m{}", i + 1))).await.unwrap();
        }
    }
    drop(tx);
    assert!(answers.message().await.expect("the end").is_none());
    assert!(answers.trailers().await.expect("trailers").is_some());

    // An upstream error keeps its status, message and metadata (a
    // trailers-only reply).
    let err = client
        .unary(Msg {
            text: "missing".into(),
            code: Code::NotFound as i32,
            ..Msg::default()
        })
        .await
        .expect_err("the server's NOT_FOUND");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "asked to fail");
    assert_eq!(err.metadata().get("x-why").unwrap(), "asked");

    // The waypoint saw gRPC and counted each status.
    let ev = s.waypoint.wait_event("the NOT_FOUND call", |e| {
        e["path"] == "/mesh.test.Echo/Unary" && e["grpc_status"] == 5
    });
    assert_eq!(ev["status"], 200, "{ev}");
    assert_eq!(ev["protocol"], "HTTP/2", "{ev}");
    s.waypoint.wait_event("the DATA_LOSS stream", |e| {
        e["path"] == "/mesh.test.Echo/Count" && e["grpc_status"] == 15
    });
    let metrics = s.waypoint.metrics();
    let ok = metric_sum(
        &metrics,
        "istio_requests_total",
        Some("grpc_response_status=\"0\""),
    );
    // 20 unary, 1 OK stream, 1 client stream, 1 chat.
    assert_eq!(ok, 23, "{metrics}");
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            Some("grpc_response_status=\"5\"")
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            Some("grpc_response_status=\"15\"")
        ),
        1,
        "{metrics}"
    );
    assert!(metrics.contains("request_protocol=\"grpc\""), "{metrics}");
    assert_destination_saw_the_waypoint(&s, "echo-1");
}
