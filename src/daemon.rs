//! The daemon: binds the listeners, runs ingest and the API, and shuts down cleanly —
//! on SIGTERM or Ctrl-C it stops accepting, ends every publish, finalizes every open
//! file, and exits 0 (R-OP-2).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Loaded;
use crate::ingest::hub::Hub;
use crate::sink::Sink;

/// What every task shares.
pub struct Ctx {
    pub config: Arc<Loaded>,
    pub hub: Arc<Hub>,
    pub sink: Arc<Sink>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen for RTMP on {addr}: {source}")]
    RtmpBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for the API on {addr}: {source}")]
    ApiBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Sink(#[from] crate::sink::SinkError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// How long shutdown waits for recordings to finalize before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub async fn run(loaded: Loaded) -> Result<(), DaemonError> {
    let cfg = &loaded.config;
    let sink = Sink::new(cfg.spool.dir.clone(), cfg.storage.root.clone())?;
    let rtmp = TcpListener::bind(loaded.rtmp_listen)
        .await
        .map_err(|source| DaemonError::RtmpBind {
            addr: loaded.rtmp_listen,
            source,
        })?;
    let api = TcpListener::bind(loaded.api_listen)
        .await
        .map_err(|source| DaemonError::ApiBind {
            addr: loaded.api_listen,
            source,
        })?;
    let rtmp_addr = rtmp.local_addr().map_err(|source| DaemonError::RtmpBind {
        addr: loaded.rtmp_listen,
        source,
    })?;
    let api_addr = api.local_addr().map_err(|source| DaemonError::ApiBind {
        addr: loaded.api_listen,
        source,
    })?;

    let ctx = Arc::new(Ctx {
        config: Arc::new(loaded),
        hub: Hub::new(),
        sink,
        tracker: TaskTracker::new(),
        shutdown: CancellationToken::new(),
    });

    let api_task = {
        let ctx = ctx.clone();
        let stop = ctx.shutdown.clone();
        tokio::spawn(async move {
            let app = router(ctx);
            if let Err(e) = axum::serve(api, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                warn!("API server stopped: {e}");
            }
        })
    };

    info!(rtmp = %rtmp_addr, api = %api_addr, root = %ctx.config.config.storage.root.display(), "liverec ready");
    // Tests and scripts read the bound addresses (ports may be ephemeral) from stdout.
    println!("liverec ready rtmp={rtmp_addr} api={api_addr}");

    let accept = {
        let ctx = ctx.clone();
        tokio::spawn(async move { accept_loop(ctx, rtmp).await })
    };

    wait_for_signal().await.map_err(DaemonError::Signal)?;
    info!("shutting down: finalizing open recordings");
    ctx.shutdown.cancel();
    accept.abort();
    ctx.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, ctx.tracker.wait())
        .await
        .is_err()
    {
        warn!("shutdown grace of {SHUTDOWN_GRACE:?} passed with recordings still finishing");
    }
    let _ = api_task.await;
    info!("stopped");
    Ok(())
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener) {
    let ids = AtomicU64::new(1);
    let max = ctx.config.config.rtmp.max_connections;
    let live = Arc::new(tokio::sync::Semaphore::new(max));
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
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(async move {
            crate::ingest::conn::handle(ctx2, socket, peer, id).await;
            drop(permit);
        });
    }
}

fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route(
            "/v1/streams",
            get(move || {
                let ctx = ctx.clone();
                async move {
                    let streams: Vec<_> = ctx
                        .hub
                        .snapshot()
                        .into_iter()
                        .map(|s| {
                            serde_json::json!({
                                "domain": s.id.domain, "app": s.id.app, "stream": s.id.stream,
                                "peer": s.peer.to_string(),
                                "started": s.started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                                "stream_param": s.query,
                                "ring": {"bytes": s.ring.bytes, "gops": s.ring.gops, "duration_ms": s.ring.duration_ms, "readers": s.ring.readers},
                            })
                        })
                        .collect();
                    Json(serde_json::json!({ "streams": streams }))
                }
            }),
        )
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}
