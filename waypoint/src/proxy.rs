//! What every CONNECT stream and request of the data path shares.

use std::sync::Arc;
use std::time::Duration;

use hbone::client::HboneClient;
use hbone::drain::Drain;
use hbone::headers::ConnectMeta;
use mesh_model::state::Snapshot;
use mesh_model::SpiffeId;
use tokio::sync::watch;

use crate::admit::Target;
use crate::record::{Downstream, Telemetry};
use crate::upstream::balancer::Balancer;
use crate::upstream::pool::{HttpPool, Version};

/// Timeouts of the data path, defaults in their modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// A whole HTTP/1.1 request head, from its first byte (slowloris).
    pub head_timeout: Duration,
    /// An undeclared port's first bytes, before it is taken for opaque TCP.
    pub detect_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            head_timeout: crate::h1::guard::HEAD_TIMEOUT,
            detect_timeout: crate::protocol::DETECT_TIMEOUT,
        }
    }
}

pub struct Proxy {
    /// The waypoint's own identity: served on 15008, presented upstream.
    pub identity: SpiffeId,
    /// The waypoint's Gateway, which L7 policies target.
    pub gateway: crate::http::plan::Gateway,
    /// The cap on mirror copies in flight.
    pub mirrors: Arc<tokio::sync::Semaphore>,
    pub tuning: Tuning,
    pub state: watch::Receiver<Arc<Snapshot>>,
    pub hbone: Arc<HboneClient>,
    pub pool: HttpPool,
    pub balancer: Balancer,
    pub telemetry: Telemetry,
    pub drain: Drain,
}

impl Proxy {
    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.borrow().clone()
    }
}

/// One accepted CONNECT stream: what its requests share.
pub struct Stream {
    pub proxy: Arc<Proxy>,
    pub target: Target,
    pub down: Arc<Downstream>,
    /// What upstream CONNECTs carry (`forwarded`, `baggage`).
    pub meta: ConnectMeta,
    pub version: Version,
    /// The HTTP/1.1 guard's verdict, when it stopped the stream.
    pub verdicts: Option<crate::h1::guard::Verdicts>,
    /// The CONNECT `:authority`: the Service VIP:port or pod IP:port.
    pub authority: std::net::SocketAddr,
}
