//! The RTMP listener: accepts connections within the limits of R-SEC-2 and runs one
//! task per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::Ingest;

/// The connection limits both listeners share (R-SEC-2): `max_connections` and
/// `max_connections_per_ip` count RTMP and RTMPS connections together.
pub struct ConnLimits {
    live: Arc<tokio::sync::Semaphore>,
    max: usize,
    per_ip: usize,
    by_ip: Arc<PerIp>,
    ids: AtomicU64,
}

impl ConnLimits {
    pub fn new(ingest: &Ingest) -> Arc<ConnLimits> {
        let cfg = ingest.config.snapshot();
        let max = cfg.config.rtmp.max_connections;
        Arc::new(ConnLimits {
            live: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            per_ip: cfg.config.rtmp.max_connections_per_ip,
            by_ip: Arc::new(PerIp::default()),
            ids: AtomicU64::new(1),
        })
    }
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Rtmp,
    /// TLS first, with the certificate of the config current at accept time (a reload
    /// re-reads it), within the RTMP handshake deadline.
    Rtmps,
}

pub async fn accept_loop(
    ingest: Arc<Ingest>,
    listener: TcpListener,
    tracker: TaskTracker,
    limits: Arc<ConnLimits>,
    transport: Transport,
) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limits.live.clone().try_acquire_owned() else {
            warn!(%peer, max = limits.max, "refusing connection: max_connections reached");
            continue;
        };
        let Some(ip_slot) = PerIp::take(&limits.by_ip, peer.ip(), limits.per_ip) else {
            warn!(%peer, max_connections_per_ip = limits.per_ip, "refusing connection: too many connections from this address");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let id = limits.ids.fetch_add(1, Ordering::Relaxed);
        crate::metrics::connection_opened();
        let ingest = ingest.clone();
        tracker.spawn(async move {
            match transport {
                Transport::Rtmp => super::conn::handle(ingest, socket, peer, id).await,
                Transport::Rtmps => {
                    let config = ingest.config.snapshot();
                    let deadline = Duration::from_secs(config.config.rtmp.handshake_timeout);
                    if let Some((_, tls)) = &config.rtmps {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                        let shutdown = ingest.shutdown.clone();
                        let accepted = tokio::select! {
                            r = tokio::time::timeout(deadline, acceptor.accept(socket)) => r,
                            _ = shutdown.cancelled() => Ok(Err(std::io::Error::other("shutting down"))),
                        };
                        match accepted {
                            Ok(Ok(stream)) => super::conn::handle(ingest, stream, peer, id).await,
                            // Plain RTMP, a scanner, a client that distrusts the
                            // certificate: not worth a warning per connection.
                            Ok(Err(e)) => debug!(conn = id, %peer, "RTMPS: TLS handshake failed: {e}"),
                            Err(_) => debug!(conn = id, %peer, "RTMPS: no TLS handshake within {deadline:?}"),
                        }
                    }
                }
            }
            crate::metrics::connection_closed();
            drop(permit);
            drop(ip_slot);
        });
    }
}

/// Open connections per peer address (R-SEC-2 `max_connections_per_ip`).
#[derive(Default)]
struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in [`PerIp`], given back when dropped.
struct IpSlot(Arc<PerIp>, std::net::IpAddr);

impl PerIp {
    fn take(me: &Arc<PerIp>, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = me.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot(me.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}
