//! The RTMP listener: accepts connections within the limits of R-SEC-2 and runs one
//! task per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::Ingest;

pub async fn accept_loop(ingest: Arc<Ingest>, listener: TcpListener, tracker: TaskTracker) {
    let ids = AtomicU64::new(1);
    let max = ingest.config.snapshot().config.rtmp.max_connections;
    let per_ip = ingest.config.snapshot().config.rtmp.max_connections_per_ip;
    let live = Arc::new(tokio::sync::Semaphore::new(max));
    let by_ip = Arc::new(PerIp::default());
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
        let Ok(permit) = live.clone().try_acquire_owned() else {
            warn!(%peer, max, "refusing connection: max_connections reached");
            continue;
        };
        let Some(ip_slot) = PerIp::take(&by_ip, peer.ip(), per_ip) else {
            warn!(%peer, max_connections_per_ip = per_ip, "refusing connection: too many connections from this address");
            continue;
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        crate::metrics::connection_opened();
        let ingest = ingest.clone();
        tracker.spawn(async move {
            super::conn::handle(ingest, socket, peer, id).await;
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
