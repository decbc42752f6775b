use super::*;
use prost::Message;
use prost_types::Any;
use proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use proto::discovery::Resource;
use proto::workload as pb;
use std::pin::Pin;
use std::sync::Mutex;
use tokio::net::TcpListener;

#[test]
fn backoff_doubles_from_10ms_to_15s_with_jitter() {
    let ms = |d: Duration| d.as_millis();
    assert_eq!(ms(backoff(0, 1.0)), 10);
    assert_eq!(ms(backoff(1, 1.0)), 20);
    assert_eq!(ms(backoff(5, 1.0)), 320);
    assert_eq!(ms(backoff(11, 1.0)), 15_000);
    assert_eq!(ms(backoff(40, 1.0)), 15_000);
    assert_eq!(ms(backoff(0, 0.5)), 5);
    assert_eq!(ms(backoff(0, 0.0)), 5, "jitter is clamped");
}

/// What one scripted session does.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Fails at once (connection refused).
    Fail,
    /// Gets a response (the connection is good), and is dropped `after`.
    Good { after: Duration },
}

/// Sessions for [`reconnect`] on the paused clock: each records when it
/// started and plays the next step; once the script is done, the drain is
/// signalled.
struct Sessions {
    script: std::collections::VecDeque<Step>,
    drain: Drain,
    started: Vec<tokio::time::Instant>,
    retries: Vec<Duration>,
}

impl Sessions {
    fn new(script: impl IntoIterator<Item = Step>, drain: &Drain) -> Self {
        Sessions {
            script: script.into_iter().collect(),
            drain: drain.clone(),
            started: Vec::new(),
            retries: Vec::new(),
        }
    }

    /// Virtual time between the starts of consecutive sessions.
    fn gaps(&self) -> Vec<Duration> {
        self.started.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl Session for Sessions {
    type Error = &'static str;

    async fn run_once(&mut self, backoff: &mut Backoff) -> Result<(), &'static str> {
        self.started.push(tokio::time::Instant::now());
        match self.script.pop_front() {
            Some(Step::Fail) => Err("connection refused"),
            Some(Step::Good { after }) => {
                backoff.reset();
                tokio::time::sleep(after).await;
                Err("stream reset")
            }
            None => {
                self.drain.signal();
                std::future::pending().await
            }
        }
    }

    fn disconnected(&mut self, _: &&'static str, retry_in: Duration) {
        self.retries.push(retry_in);
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn reconnects_back_off_from_10ms_doubling_to_15s() {
    let drain = Drain::new();
    let mut sessions = Sessions::new([Step::Fail; 14], &drain);
    reconnect(&mut sessions, &drain, || 1.0).await;
    let want: Vec<Duration> = [
        10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10_240, 15_000, 15_000, 15_000,
    ]
    .into_iter()
    .map(ms)
    .collect();
    assert_eq!(sessions.retries, want, "the delays announced");
    assert_eq!(sessions.gaps(), want, "the delays waited");
}

#[tokio::test(start_paused = true)]
async fn each_delay_is_jittered_down_to_half() {
    let drain = Drain::new();
    let mut sessions = Sessions::new([Step::Fail; 14], &drain);
    let mut rolls = Vec::new();
    reconnect(&mut sessions, &drain, || {
        rolls.push(jitter());
        *rolls.last().unwrap()
    })
    .await;
    let gaps = sessions.gaps();
    assert_eq!(gaps.len(), 14);
    for (i, gap) in gaps.iter().enumerate() {
        let (roll, retry) = (rolls[i], sessions.retries[i]);
        let full = ms(10 << i).min(MAX_BACKOFF);
        assert!((0.5..1.0).contains(&roll), "jitter {roll}");
        assert_eq!(retry, full.mul_f64(roll), "attempt {i}");
        assert!(retry >= full / 2 && retry <= full, "attempt {i}: {retry:?}");
        // Timers fire on whole milliseconds.
        assert!(
            *gap >= retry && *gap - retry < ms(1),
            "attempt {i}: waited {gap:?} for {retry:?}"
        );
    }
    assert!(
        rolls.windows(2).any(|w| w[0] != w[1]),
        "every delay jittered alike: {rolls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_good_session_resets_the_backoff() {
    let drain = Drain::new();
    let script = [
        Step::Fail,
        Step::Fail,
        Step::Fail,
        Step::Good {
            after: Duration::from_secs(60),
        },
        Step::Fail,
        Step::Fail,
    ];
    let mut sessions = Sessions::new(script, &drain);
    reconnect(&mut sessions, &drain, || 1.0).await;
    // 10, 20, 40 ms; the good session's minute, then 10 ms again; 20 ms.
    let want: Vec<Duration> = [10, 20, 40, 60_010, 20, 40].into_iter().map(ms).collect();
    assert_eq!(sessions.gaps(), want);
}

#[tokio::test(start_paused = true)]
async fn draining_ends_a_backoff_wait_at_once() {
    let drain = Drain::new();
    // Far more failures than the test lets happen.
    let mut sessions = Sessions::new([Step::Fail; 100], &drain);
    let t0 = tokio::time::Instant::now();
    let stop = drain.clone();
    tokio::spawn(async move {
        // The 12th session failed at 20.47 s; its 15 s wait runs to 35.47 s.
        tokio::time::sleep(Duration::from_secs(25)).await;
        stop.signal();
    });
    reconnect(&mut sessions, &drain, || 1.0).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(25), "stopped mid-wait");
    assert_eq!(sessions.started.len(), 12);
}

#[test]
fn ack_and_nack_carry_the_nonce() {
    let resp = DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        nonce: "n7".into(),
        ..Default::default()
    };
    let ack = answer(&resp, &[], None);
    assert_eq!(
        (ack.response_nonce.as_str(), ack.type_url.as_str()),
        ("n7", ADDRESS_TYPE_URL)
    );
    assert!(ack.error_detail.is_none());
    let rejected = [Rejection {
        name: "w1".into(),
        error: mesh_model::xds::store::ResourceError::Empty,
        fail_closed: None,
    }];
    let nack = answer(&resp, &rejected, Some("dup IP"));
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("w1: resource has no body"),
        "{}",
        detail.message
    );
    assert!(detail.message.contains("dup IP"), "{}", detail.message);
}

type ResponseStream =
    Pin<Box<dyn futures::Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;

type ResponseSender = mpsc::Sender<Result<DeltaDiscoveryResponse, tonic::Status>>;

/// A scripted ADS server: logs every request, and streams whatever the test
/// pushes into `responses` (one sender per accepted stream).
#[derive(Clone, Default)]
struct Scripted {
    requests: Arc<Mutex<Vec<DeltaDiscoveryRequest>>>,
    streams: Arc<Mutex<Vec<ResponseSender>>>,
    tokens: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        if let Some(t) = request.metadata().get("authorization") {
            self.tokens
                .lock()
                .unwrap()
                .push(t.to_str().unwrap_or("").to_owned());
        }
        let mut incoming = request.into_inner();
        let log = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                log.lock().unwrap().push(req);
            }
        });
        let (tx, mut rx) = mpsc::channel(8);
        self.streams.lock().unwrap().push(tx);
        let out = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

/// The server runs on its own runtime and thread, so stopping it kills
/// every connection at once, as a crashed control plane would.
struct Server {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(svc: Scripted, listener: std::net::TcpListener) -> Server {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = TcpListener::from_std(listener).unwrap();
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(AggregatedDiscoveryServiceServer::new(svc))
                    .serve_with_incoming(incoming)
                    .await;
            });
            let _ =
                rt.block_on(async { tokio::task::spawn_blocking(move || stopped.recv()).await });
            rt.shutdown_background();
        });
        Server {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

fn workload_resource(uid: &str, ip: [u8; 4]) -> Resource {
    let w = pb::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "shop".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        node: "node1".into(),
        ..Default::default()
    };
    let body = pb::Address {
        r#type: Some(pb::address::Type::Workload(w)),
    };
    Resource {
        name: uid.into(),
        version: format!("{uid}-v1"),
        resource: Some(Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: body.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn response(nonce: &str, resources: Vec<Resource>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        nonce: nonce.into(),
        resources,
        ..Default::default()
    }
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..500 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_nacks_keeps_state_and_resyncs_with_versions() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = Scripted::default();
    let server = Server::start(svc.clone(), listener);

    let (publish, mut snapshots) = mpsc::channel(8);
    let stats = Arc::new(XdsStats::default());
    let client = XdsClient {
        mark: None,
        endpoint: tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        node: Node {
            id: "ztunnel~node1".into(),
            ..Default::default()
        },
        token: Some("secret-node1".into()),
        store: XdsStore::default(),
        stats: stats.clone(),
        publish,
        synced: Default::default(),
        types: &TYPE_URLS,
    };
    let drain = Drain::new();
    let client_task = tokio::spawn(client.run(drain.clone()));

    // Both types are subscribed, wildcard, with no versions yet.
    let subs = eventually("subscriptions", || {
        let r = svc.requests.lock().unwrap();
        (r.len() >= 2).then(|| r.clone())
    })
    .await;
    let urls: Vec<&str> = subs.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(urls, TYPE_URLS);
    assert!(subs
        .iter()
        .all(|r| r.initial_resource_versions.is_empty() && r.resource_names_subscribe.is_empty()));
    assert_eq!(subs[0].node.as_ref().unwrap().id, "ztunnel~node1");
    assert_eq!(
        svc.tokens.lock().unwrap().as_slice(),
        ["Bearer secret-node1"]
    );

    // Nothing is published until every type was answered: a snapshot
    // without the policies would allow what they deny.
    let stream = svc.streams.lock().unwrap()[0].clone();
    stream
        .send(Ok(DeltaDiscoveryResponse {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            nonce: "n0".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    eventually("ACK n0", || {
        svc.requests
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.response_nonce == "n0")
            .cloned()
    })
    .await;
    assert!(
        snapshots.try_recv().is_err(),
        "published before the addresses arrived"
    );

    // A good response is applied, published and ACKed.
    stream
        .send(Ok(response(
            "n1",
            vec![
                workload_resource("a", [10, 1, 1, 1]),
                workload_resource("b", [10, 1, 1, 2]),
            ],
        )))
        .await
        .unwrap();
    let snap = snapshots.recv().await.unwrap();
    assert_eq!(snap.workloads().count(), 2);
    let ack = eventually("ACK n1", || {
        svc.requests
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.response_nonce == "n1")
            .cloned()
    })
    .await;
    assert!(ack.error_detail.is_none());

    // A bad resource is NACKed by name; the good one beside it applies.
    let mut bad = workload_resource("c", [10, 1, 1, 3]);
    bad.resource.as_mut().unwrap().value = vec![0xde, 0xad];
    stream
        .send(Ok(response(
            "n2",
            vec![bad, workload_resource("d", [10, 1, 1, 4])],
        )))
        .await
        .unwrap();
    let snap = snapshots.recv().await.unwrap();
    assert_eq!(snap.workloads().count(), 3);
    let nack = eventually("NACK n2", || {
        svc.requests
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.response_nonce == "n2")
            .cloned()
    })
    .await;
    let detail = nack.error_detail.expect("NACK carries the reason");
    assert!(
        detail.message.starts_with("c: decoding protobuf"),
        "{}",
        detail.message
    );

    // The control plane dies: nothing is withdrawn while it is gone.
    drop(stream);
    server.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        snapshots.try_recv().is_err(),
        "no snapshot change while disconnected"
    );

    // It comes back on the same address: the client resubscribes with the
    // versions it holds, so the server can send only the difference.
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let svc2 = Scripted::default();
    let server2 = Server::start(svc2.clone(), listener);
    let subs = eventually("resubscription", || {
        let r = svc2.requests.lock().unwrap();
        (r.len() >= 2).then(|| r.clone())
    })
    .await;
    let versions = &subs[0].initial_resource_versions;
    let mut names: Vec<&str> = versions.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "d"]);
    assert_eq!(versions["a"], "a-v1");
    assert!(stats.connects.load(Ordering::Relaxed) >= 2);
    assert_eq!(stats.nacks.load(Ordering::Relaxed), 1);
    assert_eq!(stats.acks.load(Ordering::Relaxed), 2);

    drain.signal();
    client_task.await.unwrap();
    server2.kill();
}

#[tokio::test]
async fn a_policy_that_fails_closed_is_nacked_and_counted_by_scope() {
    let (publish, _snapshots) = mpsc::channel(8);
    let stats = Arc::new(XdsStats::default());
    let mut client = XdsClient {
        mark: None,
        endpoint: tonic::transport::Endpoint::from_static("http://127.0.0.1:1"),
        node: Node::default(),
        token: None,
        store: XdsStore::default(),
        stats: stats.clone(),
        publish,
        synced: Default::default(),
        types: &TYPE_URLS,
    };
    let garbage = Resource {
        name: "shop/p".into(),
        version: "v1".into(),
        resource: Some(Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: vec![0xff, 0xff],
        }),
        ..Default::default()
    };
    let reply = client
        .handle(DeltaDiscoveryResponse {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            nonce: "n1".into(),
            resources: vec![garbage],
            ..Default::default()
        })
        .await;
    let detail = reply.error_detail.expect("a NACK");
    assert!(detail.message.starts_with("shop/p: "), "{}", detail.message);
    let mut registry = Registry::default();
    stats.register_all(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("xds_policies_failed_closed_total{scope=\"global\"} 1"),
        "{text}"
    );
    // The plain counters too (register_all).
    for series in [
        "xds_nacks_total 1",
        "xds_responses_total 1",
        "xds_acks_total 0",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}
