//! A real tonic gRPC service and client for the waypoint suites, without
//! codegen: hand-written prost messages and the four call shapes served
//! through `tonic::server::Grpc` and called through `tonic::client::Grpc`,
//! as tonic-build's output does.
//!
//! `mesh.test.Echo`:
//! - `Unary(Msg) -> Msg`: `"<server>:<text>"`; `code` ≠ 0 fails the call
//!   with that status (a trailers-only reply) and metadata `x-why: asked`;
//! - `Count(Msg) -> stream Msg`: `n` messages `"<server>:<i>"`, then the
//!   status `code` (0: OK) in the trailers, with `x-why: asked` if not OK;
//! - `Collect(stream Msg) -> Msg`: `"<server>:<texts joined by ,>"`;
//! - `Chat(stream Msg) -> stream Msg`: each message echoed as `"<server>:<text>"`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::Netns;

/// The one message of the test service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub n: u32,
    #[prost(int32, tag = "3")]
    pub code: i32,
}

impl Msg {
    pub fn text(text: &str) -> Msg {
        Msg {
            text: text.into(),
            ..Msg::default()
        }
    }
}

pub const SERVICE: &str = "mesh.test.Echo";
type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

fn asked(code: i32) -> Status {
    let mut s = Status::new(Code::from(code), "asked to fail");
    s.metadata_mut().insert("x-why", "asked".parse().unwrap());
    s
}

#[derive(Clone)]
struct Unary(&'static str);
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let server = self.0;
        Box::pin(async move {
            let m = req.into_inner();
            if m.code != 0 {
                return Err(asked(m.code));
            }
            Ok(Response::new(Msg::text(&format!("{server}:{}", m.text))))
        })
    }
}

#[derive(Clone)]
struct Count(&'static str);
impl tonic::server::ServerStreamingService<Msg> for Count {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let server = self.0;
        Box::pin(async move {
            let m = req.into_inner();
            let items = (0..m.n).map(move |i| Ok(Msg::text(&format!("{server}:{i}"))));
            let end = (m.code != 0).then(|| Err(asked(m.code)));
            let s: MsgStream = Box::pin(futures::stream::iter(items.chain(end)));
            Ok(Response::new(s))
        })
    }
}

#[derive(Clone)]
struct Collect(&'static str);
impl tonic::server::ClientStreamingService<Msg> for Collect {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let server = self.0;
        Box::pin(async move {
            let mut stream = req.into_inner();
            let mut texts = Vec::new();
            while let Some(m) = stream.message().await? {
                texts.push(m.text);
            }
            Ok(Response::new(Msg::text(&format!(
                "{server}:{}",
                texts.join(",")
            ))))
        })
    }
}

#[derive(Clone)]
struct Chat(&'static str);
impl tonic::server::StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let server = self.0;
        Box::pin(async move {
            let s: MsgStream = Box::pin(
                req.into_inner()
                    .map(move |m| m.map(|m| Msg::text(&format!("{server}:{}", m.text)))),
            );
            Ok(Response::new(s))
        })
    }
}

/// The `mesh.test.Echo` server, answering as `server`.
#[derive(Clone)]
pub struct EchoServer(pub &'static str);

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.0;
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
        let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
        Box::pin(async move {
            Ok(match method.as_str() {
                "Unary" => grpc.unary(Unary(server), req).await,
                "Count" => grpc.server_streaming(Count(server), req).await,
                "Collect" => grpc.client_streaming(Collect(server), req).await,
                "Chat" => grpc.streaming(Chat(server), req).await,
                _ => Status::unimplemented(method).into_http(),
            })
        })
    }
}

/// A tonic server for `mesh.test.Echo` on `listener`; stopped on drop.
pub struct GrpcApp {
    task: JoinHandle<()>,
}

impl GrpcApp {
    pub fn serve(listener: TcpListener, name: &'static str) -> GrpcApp {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoServer(name))
                .serve_with_incoming(incoming)
                .await;
        });
        GrpcApp { task }
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects from inside a namespace (so the pod's ztunnel captures it).
#[derive(Clone)]
struct NsConnector {
    ns: Netns,
    addr: SocketAddr,
}

impl Service<Uri> for NsConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (ns, addr) = (self.ns.clone(), self.addr);
        Box::pin(async move { ns.connect(addr).await.map(TokioIo::new) })
    }
}

/// A tonic client of `mesh.test.Echo` over one HTTP/2 connection.
#[derive(Clone)]
pub struct EchoClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

fn path(method: &str) -> PathAndQuery {
    format!("/{SERVICE}/{method}").parse().unwrap()
}

impl EchoClient {
    /// Connects to `addr` (`host` is the `:authority`) from `ns`.
    pub async fn connect(
        ns: &Netns,
        host: &str,
        addr: SocketAddr,
    ) -> Result<EchoClient, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}"))?
            .connect_with_connector(NsConnector {
                ns: ns.clone(),
                addr,
            })
            .await?;
        Ok(EchoClient {
            inner: tonic::client::Grpc::new(channel),
        })
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("not ready: {e}")))
    }

    pub async fn unary(&mut self, m: Msg) -> Result<Response<Msg>, Status> {
        self.ready().await?;
        self.inner
            .unary(Request::new(m), path("Unary"), ProstCodec::default())
            .await
    }

    pub async fn count(&mut self, m: Msg) -> Result<Response<Streaming<Msg>>, Status> {
        self.ready().await?;
        self.inner
            .server_streaming(Request::new(m), path("Count"), ProstCodec::default())
            .await
    }

    pub async fn collect(&mut self, msgs: Vec<Msg>) -> Result<Response<Msg>, Status> {
        self.ready().await?;
        let req = Request::new(futures::stream::iter(msgs));
        self.inner
            .client_streaming(req, path("Collect"), ProstCodec::default())
            .await
    }

    pub async fn chat<S>(&mut self, msgs: S) -> Result<Response<Streaming<Msg>>, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.ready().await?;
        self.inner
            .streaming(Request::new(msgs), path("Chat"), ProstCodec::default())
            .await
    }
}
