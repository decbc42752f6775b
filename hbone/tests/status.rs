//! CONNECT response codes: policy denial, malformed requests, and requests
//! the handler never answered or could not route.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{Behavior, Mesh, TestServer};
use hbone::client::TunnelError;
use hbone::headers::{Baggage, ConnectMeta};
use http::{Method, Request, StatusCode};
use tokio::net::TcpStream;

fn assert_status(err: &TunnelError, want: StatusCode, reason: &str) {
    match err {
        TunnelError::Status { status, .. } => assert_eq!(*status, want, "{err:?}"),
        other => panic!("expected a {want} response, got {other:?}"),
    }
    assert_eq!(err.reason(), reason, "{err:?}");
}

#[tokio::test]
async fn policy_denial_is_401_deny() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Reject(StatusCode::UNAUTHORIZED)).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();
    let req = mesh.request(&server, upstream);

    let err = client.connect(&req).await.unwrap_err();
    assert_status(&err, StatusCode::UNAUTHORIZED, "DENY");
    match &err {
        TunnelError::Status {
            addr, authority, ..
        } => assert_eq!((*addr, *authority), (server.addr, upstream)),
        _ => unreachable!(),
    }
    // A denied stream is not a broken connection: the next one reuses it.
    let again = client.connect(&req).await.unwrap_err();
    assert_status(&again, StatusCode::UNAUTHORIZED, "DENY");
    let stats = client.stats();
    assert_eq!(
        (
            stats.connections,
            stats.connections_opened,
            stats.active_streams
        ),
        (1, 1, 0)
    );
    assert_eq!(server.handler.requests.load(Ordering::Relaxed), 2);
    server.assert_streams_done().await;
}

#[tokio::test]
async fn unanswered_request_is_503() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Drop).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();

    let err = client
        .connect(&mesh.request(&server, upstream))
        .await
        .unwrap_err();
    assert_status(&err, StatusCode::SERVICE_UNAVAILABLE, "CONNECT");
    assert_eq!(client.stats().active_streams, 0);
    server.assert_streams_done().await;
}

#[tokio::test]
async fn unreachable_upstream_is_503() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let client = mesh.client();

    let nowhere = common::closed_port().await;
    let err = client
        .connect(&mesh.request(&server, nowhere))
        .await
        .unwrap_err();
    assert_status(&err, StatusCode::SERVICE_UNAVAILABLE, "CONNECT");
    server.assert_streams_done().await;
}

/// An h2 client over mutual TLS with a valid mesh certificate, free to send
/// requests the HBONE client never would.
async fn raw_h2(mesh: &Mesh, server: &TestServer) -> h2::client::SendRequest<Bytes> {
    let cert = mesh.client_certs.get(&mesh.client_id).await.unwrap();
    let config = hbone::tls::client_config(&cert, std::slice::from_ref(&mesh.server_id)).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(hbone::tls::server_name(server.addr), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn status_of(send: &h2::client::SendRequest<Bytes>, req: Request<()>) -> StatusCode {
    let mut send = send.clone().ready().await.unwrap();
    let (response, _stream) = send.send_request(req, true).unwrap();
    response.await.unwrap().status()
}

#[tokio::test]
async fn malformed_requests_get_400_or_405() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream: SocketAddr = common::echo_upstream().await;
    let send = raw_h2(&mesh, &server).await;

    let get = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{upstream}/"))
        .body(())
        .unwrap();
    assert_eq!(status_of(&send, get).await, StatusCode::METHOD_NOT_ALLOWED);

    let post = Request::builder()
        .method(Method::POST)
        .uri(format!("https://{upstream}/"))
        .body(())
        .unwrap();
    assert_eq!(status_of(&send, post).await, StatusCode::METHOD_NOT_ALLOWED);

    for authority in ["example.com:80", "10.0.0.1:0", "010.0.0.1:80", "10.0.0.1"] {
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .unwrap();
        assert_eq!(
            status_of(&send, connect).await,
            StatusCode::BAD_REQUEST,
            "{authority}"
        );
    }

    // None reached the handler, and the connection still serves a good one.
    assert_eq!(server.handler.requests.load(Ordering::Relaxed), 0);
    let good = Request::builder()
        .method(Method::CONNECT)
        .uri(upstream.to_string())
        .body(())
        .unwrap();
    assert_eq!(status_of(&send, good).await, StatusCode::OK);
    assert_eq!(server.handler.requests.load(Ordering::Relaxed), 1);
    drop(send);
    server.assert_idle().await;
}

#[tokio::test]
async fn handler_sees_peer_identity_authority_and_headers() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh, Behavior::Forward).await;
    let upstream = common::echo_upstream().await;
    let client = mesh.client();
    let mut req = mesh.request(&server, upstream);
    req.meta = ConnectMeta {
        client: Some("10.1.2.3:45678".parse().unwrap()),
        host: Some("web.default.svc.cluster.local".into()),
        traceparent: Some(hbone::headers::new_traceparent()),
        baggage: Baggage {
            namespace: Some("default".into()),
            workload: Some(("deployment".into(), "client".into())),
            service_name: Some("client".into()),
            service_version: Some("v1".into()),
        },
    };
    let stream = client.connect(&req).await.unwrap();
    let got = common::echo_roundtrip(stream, &common::Pattern::new(5), 1000)
        .await
        .unwrap();
    assert_eq!(got, 1000);
    let seen = server.handler.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(mesh.client_id.clone(), upstream, req.meta)]);
}
