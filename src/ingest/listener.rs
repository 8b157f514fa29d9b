//! The RTMP listener: accepts connections within the limits of R-SEC-2 and runs one
//! task per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
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
    /// `rtmp.proxy_protocol` (issue 15), fixed at start like the listeners themselves:
    /// whether it applies is a property of what is in front of the socket, not of one
    /// connection, so a reload does not switch it (it warns, see config::running).
    proxy_protocol: bool,
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
            proxy_protocol: cfg.config.rtmp.proxy_protocol,
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
        // Behind a PROXY-protocol balancer every socket peer is the balancer: the per-IP
        // place is taken once the header has named the client (in the task, not here,
        // so a slow header holds up no other connection).
        let place = if limits.proxy_protocol {
            IpPlace::AfterHeader(limits.by_ip.clone(), limits.per_ip)
        } else {
            let Some(slot) = PerIp::take(&limits.by_ip, peer.ip(), limits.per_ip) else {
                warn!(%peer, max_connections_per_ip = limits.per_ip, "refusing connection: too many connections from this address");
                continue;
            };
            IpPlace::Taken(slot)
        };
        let _ = socket.set_nodelay(true);
        let id = limits.ids.fetch_add(1, Ordering::Relaxed);
        crate::metrics::connection_opened();
        let ingest = ingest.clone();
        tracker.spawn(async move {
            serve(ingest, socket, peer, id, transport, place).await;
            crate::metrics::connection_closed();
            drop(permit);
        });
    }
}

/// A connection's per-IP place: taken at accept, or to be taken for the address the
/// PROXY header names.
enum IpPlace {
    Taken(IpSlot),
    AfterHeader(Arc<PerIp>, usize),
}

/// One accepted connection, up to its end; its per-IP place is given back on return.
async fn serve(
    ingest: Arc<Ingest>,
    mut socket: TcpStream,
    mut peer: SocketAddr,
    id: u64,
    transport: Transport,
    place: IpPlace,
) {
    // The stages before RTMP (PROXY header, TLS) share one deadline from accept.
    let mut pre_rtmp: Option<(Instant, Duration)> = None;
    let _ip_slot = match place {
        IpPlace::Taken(slot) => slot,
        IpPlace::AfterHeader(by_ip, per_ip) => {
            let config = ingest.config.snapshot();
            let limit = Duration::from_secs(config.config.rtmp.handshake_timeout);
            pre_rtmp = Some((Instant::now() + limit, limit));
            let shutdown = ingest.shutdown.clone();
            let header = tokio::select! {
                r = super::proxy::read_header_within(&mut socket, limit) => r,
                _ = shutdown.cancelled() => return,
            };
            let socket_peer = peer;
            match header {
                Ok(Some(client)) => {
                    debug!(conn = id, %socket_peer, %client, "PROXY header: the client is {client}");
                    peer = client;
                }
                Ok(None) => {
                    debug!(conn = id, %socket_peer, "PROXY header without a client (LOCAL or UNKNOWN): the socket's address stays")
                }
                Err(e) => {
                    warn!(conn = id, peer = %socket_peer, "closing connection: PROXY protocol (rtmp.proxy_protocol = true): {e}");
                    return;
                }
            }
            let Some(slot) = PerIp::take(&by_ip, peer.ip(), per_ip) else {
                warn!(conn = id, %peer, %socket_peer, max_connections_per_ip = per_ip, "refusing connection: too many connections from this address");
                return;
            };
            slot
        }
    };
    match transport {
        Transport::Rtmp => super::conn::handle(ingest, socket, peer, id).await,
        Transport::Rtmps => {
            let config = ingest.config.snapshot();
            let (deadline, limit) = pre_rtmp.unwrap_or_else(|| {
                let limit = Duration::from_secs(config.config.rtmp.handshake_timeout);
                (Instant::now() + limit, limit)
            });
            if let Some((_, tls)) = &config.rtmps {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let shutdown = ingest.shutdown.clone();
                let accepted = tokio::select! {
                    r = tokio::time::timeout_at(deadline, acceptor.accept(socket)) => r,
                    _ = shutdown.cancelled() => Ok(Err(std::io::Error::other("shutting down"))),
                };
                match accepted {
                    Ok(Ok(stream)) => super::conn::handle(ingest, stream, peer, id).await,
                    // Plain RTMP, a scanner, a client that distrusts the
                    // certificate: not worth a warning per connection.
                    Ok(Err(e)) => debug!(conn = id, %peer, "RTMPS: TLS handshake failed: {e}"),
                    Err(_) => debug!(conn = id, %peer, "RTMPS: no TLS handshake within {limit:?}"),
                }
            }
        }
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
