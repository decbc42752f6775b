//! Graceful drain: one signal that every listener and connection watches.
//!
//! `Drain::signal()` asks everyone to stop taking new work; `wait_idle()`
//! resolves once every outstanding [`Watch`] (one per connection) dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
    idle: Arc<Notify>,
}

/// Held for the lifetime of one unit of work (a connection).
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    _token: Arc<Token>,
}

struct Token(Arc<Notify>);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Drain {
            tx: Arc::new(tx),
            idle: Arc::new(Notify::new()),
        }
    }

    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
            _token: Arc::new(Token(self.idle.clone())),
        }
    }

    pub fn signal(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Outstanding watches (connections not yet finished), plus ours.
    pub fn outstanding(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Wait until every watch is dropped.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.tx.receiver_count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Watch {
    /// Resolves once draining started.
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Accepts on `listener` until `drain` is signalled. Each connection gets
/// TCP_NODELAY and goes to `on_accept` with its own [`Watch`], so the drain
/// waits for it. Accept errors (EMFILE and friends) back off instead of
/// spinning; `what` names the listener in the log.
pub async fn accept_until_drained<F>(
    listener: &TcpListener,
    drain: &Drain,
    what: &str,
    mut on_accept: F,
) where
    F: FnMut(TcpStream, SocketAddr, Watch),
{
    let mut watch = drain.watch();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = watch.signaled() => return,
        };
        match accepted {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                on_accept(sock, peer, drain.watch());
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
