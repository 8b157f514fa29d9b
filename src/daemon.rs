//! The daemon: binds the listeners, runs ingest and the API, and shuts down cleanly —
//! on SIGTERM or Ctrl-C it stops accepting, ends every publish, finalizes every open
//! file, and exits 0 (R-OP-2).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Loaded;
use crate::ingest::hub::Hub;
use crate::sink::Sink;

/// What every task shares.
pub struct Ctx {
    /// The configuration new connections and pushes use; replaced by a reload (R-TP-6).
    /// A push takes its own `Arc` when it starts and keeps it.
    pub config: arc_swap::ArcSwap<Loaded>,
    /// Where the config came from (None: embedded defaults), for reloads.
    pub config_path: Option<std::path::PathBuf>,
    pub hub: Arc<Hub>,
    pub sink: Arc<Sink>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    pub stats: Stats,
    pub tasks: crate::tasks::Tasks,
    pub state: crate::state::State,
    /// The config file alone (reloads replace it); `config` is it merged with `api_items`.
    pub file_config: std::sync::Mutex<Arc<Loaded>>,
    /// Templates and rules made over the API (R-TP-5).
    pub api_items: tokio::sync::Mutex<crate::config::ApiItems>,
}

/// Counters for `/metrics` (R-OP-3).
#[derive(Default)]
pub struct Stats {
    pub refused_spool_full: AtomicU64,
    /// RTMP connections accepted, and open now.
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    /// Bytes read from RTMP sockets.
    pub bytes_in: AtomicU64,
    /// Files (an HLS recording counts as its playlist) open now, finalized, failed.
    pub files_open: AtomicU64,
    pub files_finalized: AtomicU64,
    pub files_failed: AtomicU64,
}

impl Stats {
    /// One more on a counter or gauge.
    pub fn up(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// One less on a gauge (never below zero).
    pub fn down(c: &AtomicU64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
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
    #[error("{0}")]
    State(crate::state::StateError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// How long shutdown waits for recordings to finalize before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long shutdown waits for the recordings catalog to reach the store.
const CATALOG_GRACE: Duration = Duration::from_secs(5);

pub async fn run(
    loaded: Loaded,
    config_path: Option<std::path::PathBuf>,
) -> Result<(), DaemonError> {
    let cfg = &loaded.config;
    // Recovery of what a previous run left in the spool happens here, before the
    // listeners open (R-ST-4).
    let (sink, _report) = Sink::start(cfg).await?;
    let state = crate::state::State::new(sink.backend()).map_err(DaemonError::State)?;
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

    let loaded = Arc::new(loaded);
    let ctx = Arc::new(Ctx {
        config: arc_swap::ArcSwap::new(loaded.clone()),
        file_config: std::sync::Mutex::new(loaded),
        api_items: tokio::sync::Mutex::new(Default::default()),
        config_path,
        hub: Hub::new(),
        sink,
        tracker: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        stats: Stats::default(),
        tasks: crate::tasks::Tasks::default(),
        state,
    });
    match crate::api::load(&ctx).await {
        Ok((0, 0)) => {}
        Ok((t, r)) => info!(
            templates = t,
            rules = r,
            "API-made templates and rules loaded from the store"
        ),
        Err(e) => warn!("API-made templates and rules not loaded: {e}"),
    }
    match ctx.tasks.load(&ctx.state).await {
        Ok(0) => {}
        Ok(n) => info!(tasks = n, "record tasks loaded from the store"),
        Err(e) => warn!("cannot load record tasks from the store, starting without them: {e}"),
    }
    tokio::spawn(crate::tasks::scheduler(ctx.clone()));

    // The recordings catalog's copy in the store; it outlives the recorders at shutdown
    // so what they indexed last is published (or stays queued for the next start).
    let catalog_stop = CancellationToken::new();
    let publisher = tokio::spawn(crate::sink::catalog::publisher(
        ctx.sink.index().clone(),
        ctx.state.clone(),
        catalog_stop.clone(),
    ));
    tokio::spawn(crate::sink::catalog::rebuild_at_start(
        ctx.sink.index().clone(),
        ctx.state.clone(),
        ctx.shutdown.clone(),
    ));

    tokio::spawn(crate::sink::retention::sweeper(
        ctx.sink.index().clone(),
        ctx.sink.backend().clone(),
        Duration::from_secs(
            *ctx.config
                .load()
                .config
                .storage
                .retention_sweep_interval
                .get_ref(),
        ),
        ctx.shutdown.clone(),
    ));

    let api_task = {
        let ctx = ctx.clone();
        let stop = ctx.shutdown.clone();
        tokio::spawn(async move {
            let app = crate::routes::router(ctx);
            if let Err(e) = axum::serve(api, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                warn!("API server stopped: {e}");
            }
        })
    };

    info!(rtmp = %rtmp_addr, api = %api_addr, root = %ctx.config.load().config.storage.root.display(), "liverec ready");
    // Tests and scripts read the bound addresses (ports may be ephemeral) from stdout.
    println!("liverec ready rtmp={rtmp_addr} api={api_addr}");
    crate::systemd::ready(&format!(
        "recording; RTMP on {rtmp_addr}, API on {api_addr}"
    ));
    if let Some(every) = crate::systemd::watchdog_interval() {
        tokio::spawn(crate::systemd::watchdog(every));
    }

    let accept = {
        let ctx = ctx.clone();
        tokio::spawn(async move { accept_loop(ctx, rtmp).await })
    };

    wait_for_signal(&ctx).await.map_err(DaemonError::Signal)?;
    info!("shutting down: finalizing open recordings");
    crate::systemd::stopping();
    ctx.shutdown.cancel();
    accept.abort();
    ctx.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, ctx.tracker.wait())
        .await
        .is_err()
    {
        warn!("shutdown grace of {SHUTDOWN_GRACE:?} passed with recordings still finishing");
    }
    if !ctx.sink.drain(SHUTDOWN_GRACE).await {
        warn!("uploads still pending after {SHUTDOWN_GRACE:?}; they stay in the spool and resume on the next start");
    }
    let deadline = tokio::time::Instant::now() + CATALOG_GRACE;
    while ctx.sink.index().unpublished() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if ctx.sink.index().unpublished() > 0 {
        warn!(
            changes = ctx.sink.index().unpublished(),
            "recordings index changes not yet in the store; they are published on the next start"
        );
    }
    catalog_stop.cancel();
    let _ = publisher.await;
    let _ = api_task.await;
    info!("stopped");
    Ok(())
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener) {
    let ids = AtomicU64::new(1);
    let max = ctx.config.load().config.rtmp.max_connections;
    let per_ip = ctx.config.load().config.rtmp.max_connections_per_ip;
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
        Stats::up(&ctx.stats.connections_total);
        Stats::up(&ctx.stats.connections_open);
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(async move {
            crate::ingest::conn::handle(ctx2.clone(), socket, peer, id).await;
            Stats::down(&ctx2.stats.connections_open);
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

/// Prometheus text exposition (R-OP-3): plain counters and gauges, written by hand because
/// a dozen `name value` lines do not justify an exporter crate; one comes with histograms.
/// Callback failures are added with callbacks (R-CB).
pub fn metrics_text(ctx: &Ctx) -> String {
    let q = &ctx.sink.quota;
    let st = &ctx.stats;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    for (name, kind, help, v) in [
        (
            "liverec_spool_bytes",
            "gauge",
            "Bytes in the spool (open files and files waiting for storage).",
            q.used(),
        ),
        (
            "liverec_spool_max_bytes",
            "gauge",
            "The spool quota.",
            q.max(),
        ),
        (
            "liverec_upload_queue",
            "gauge",
            "Files and playlists waiting for their upload.",
            ctx.sink.pending_uploads() as u64,
        ),
        (
            "liverec_publish_refused_spool_full_total",
            "counter",
            "Publishes refused because the spool was full.",
            n(&st.refused_spool_full),
        ),
        (
            "liverec_streams",
            "gauge",
            "Streams being published.",
            ctx.hub.snapshot().len() as u64,
        ),
        (
            "liverec_connections_total",
            "counter",
            "RTMP connections accepted.",
            n(&st.connections_total),
        ),
        (
            "liverec_connections",
            "gauge",
            "RTMP connections open.",
            n(&st.connections_open),
        ),
        (
            "liverec_bytes_in_total",
            "counter",
            "Bytes read from RTMP connections.",
            n(&st.bytes_in),
        ),
        (
            "liverec_recordings_open",
            "gauge",
            "Files being recorded (an HLS recording counts once).",
            n(&st.files_open),
        ),
        (
            "liverec_files_finalized_total",
            "counter",
            "Files finalized and handed to storage.",
            n(&st.files_finalized),
        ),
        (
            "liverec_files_failed_total",
            "counter",
            "Files whose finalization failed.",
            n(&st.files_failed),
        ),
        (
            "liverec_recordings_index_unpublished",
            "gauge",
            "Recordings index changes not yet in the store's catalog.",
            ctx.sink.index().unpublished(),
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    out.push_str(
        "# HELP liverec_record_tasks Record tasks by status.\n# TYPE liverec_record_tasks gauge\n",
    );
    for (status, n) in ctx.tasks.count_by_status() {
        out.push_str(&format!(
            "liverec_record_tasks{{status=\"{status}\"}} {n}\n"
        ));
    }
    out
}

async fn wait_for_signal(ctx: &Arc<Ctx>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT received"); return Ok(()); }
            _ = hup.recv() => {
                info!("SIGHUP received: reloading the config");
                let _ = reload(ctx).await;
            }
        }
    }
}

/// Keys a running daemon cannot change (sockets, storage, runtime): a reload keeps the
/// running values and says so.
fn restart_only_changes(old: &Loaded, new: &Loaded) -> Vec<&'static str> {
    let (o, n) = (&old.config, &new.config);
    let mut v = Vec::new();
    if old.rtmp_listen != new.rtmp_listen {
        v.push("rtmp.listen");
    }
    if old.api_listen != new.api_listen || o.api.token != n.api.token {
        v.push("api");
    }
    if o.storage != n.storage {
        v.push("storage");
    }
    if o.spool != n.spool {
        v.push("spool");
    }
    if o.runtime != n.runtime {
        v.push("runtime");
    }
    if o.log != n.log {
        v.push("log");
    }
    v
}

/// Re-reads the config file (R-TP-6). A bad file is refused with its errors and the
/// running config stays; a good one applies to connections and pushes that start from now
/// on (recordings in progress keep the settings they started with). Returns the warnings.
pub async fn reload(ctx: &Ctx) -> Result<Vec<String>, Vec<String>> {
    crate::systemd::reloading();
    let res = reload_inner(ctx).await;
    crate::systemd::ready(match &res {
        Ok(_) => "recording; config reloaded",
        Err(_) => "recording; config reload refused, the previous config runs",
    });
    res
}

async fn reload_inner(ctx: &Ctx) -> Result<Vec<String>, Vec<String>> {
    let new = match crate::config::load(ctx.config_path.as_deref()) {
        Ok(l) => l,
        Err(errors) => {
            let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            for m in &msgs {
                warn!("reload refused, the running config stays: {m}");
            }
            return Err(msgs);
        }
    };
    let old = ctx.config.load_full();
    let fixed = restart_only_changes(&old, &new);
    let mut new = new;
    let mut warnings = Vec::new();
    if !fixed.is_empty() {
        // Keep what cannot change live, take the rest.
        new.rtmp_listen = old.rtmp_listen;
        new.api_listen = old.api_listen;
        new.config.api = old.config.api.clone();
        new.config.storage = old.config.storage.clone();
        new.config.spool = old.config.spool.clone();
        new.config.runtime = old.config.runtime.clone();
        new.config.log = old.config.log.clone();
        let w = format!(
            "changes to {} need a restart; the running values stay",
            fixed.join(", ")
        );
        warn!("{w}");
        warnings.push(w);
    }
    // The API's templates and rules go on top of the new file, checked together.
    let items = ctx.api_items.lock().await;
    let merged = match Loaded::merged(&new, &items) {
        Ok(m) => m,
        Err(errors) => {
            let msgs: Vec<String> = errors
                .iter()
                .map(|e| format!("with the API-made templates and rules: {e}"))
                .collect();
            for m in &msgs {
                warn!("reload refused, the running config stays: {m}");
            }
            return Err(msgs);
        }
    };
    *ctx.file_config.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    ctx.config.store(Arc::new(merged));
    drop(items);
    info!(
        templates = ctx.config.load().config.templates.len(),
        rules = ctx.config.load().config.rules.len(),
        "config reloaded; new pushes use it"
    );
    Ok(warnings)
}
