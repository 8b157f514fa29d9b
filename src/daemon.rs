//! The daemon, wired together: binds the listeners, builds each subsystem with the
//! handles it needs, runs them, and shuts down cleanly — on SIGTERM or Ctrl-C it stops
//! accepting, ends every publish, finalizes every open file, and exits 0 (R-OP-2).
//!
//! Who talks to whom: connections (`ingest`) register publishes with the hub; the hub
//! announces them to the recording supervisor (`recording::supervisor`), which starts
//! recorder tasks for templates and record tasks; recorders write through the sink
//! (`sink`: spool, store, index). The HTTP API (`api`) reads all of them through its
//! `Ctx` and tells the supervisor when tasks change.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::Ctx;
use crate::config::{Loaded, RunningConfig};
use crate::ingest::hub::Hub;
use crate::ingest::Ingest;
use crate::recording::supervisor::Supervisor;
use crate::recording::Recorders;
use crate::sink::Sink;
use crate::tasks::Tasks;

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
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("building the HTTP client for hooks: {0}")]
    Http(reqwest::Error),
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
    crate::failpoint::log_at_start();
    // Before recovery: the files it stores already count.
    let metrics = crate::metrics::install()?;
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
    let rtmps = match &loaded.rtmps {
        Some((addr, _)) => {
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::RtmpBind {
                        addr: *addr,
                        source,
                    })?,
            )
        }
        None => None,
    };
    let rtmps_addr = match &rtmps {
        Some(l) => Some(l.local_addr().map_err(|source| DaemonError::RtmpBind {
            addr: loaded.rtmp_listen,
            source,
        })?),
        None => None,
    };
    let rtmp_addr = rtmp.local_addr().map_err(|source| DaemonError::RtmpBind {
        addr: loaded.rtmp_listen,
        source,
    })?;
    let api_addr = api.local_addr().map_err(|source| DaemonError::ApiBind {
        addr: loaded.api_listen,
        source,
    })?;

    let config = RunningConfig::new(loaded, config_path);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let clock = crate::clock::system();
    let (hub, hub_events) = Hub::new();
    let tasks = Arc::new(Tasks::default());

    match crate::api::templates::load(&config, &state).await {
        Ok((0, 0)) => {}
        Ok((t, r)) => info!(
            templates = t,
            rules = r,
            "API-made templates and rules loaded from the store"
        ),
        Err(e) => warn!("API-made templates and rules not loaded: {e}"),
    }
    match state.list("tasks").await {
        Ok(stored) => match tasks.load(stored) {
            0 => {}
            n => info!(tasks = n, "record tasks loaded from the store"),
        },
        Err(e) => warn!("cannot load record tasks from the store, starting without them: {e}"),
    }
    let splices: Arc<crate::recording::Splices> = Arc::default();
    let recorders = Arc::new(Recorders {
        sink: sink.clone(),
        tracker: tracker.clone(),
        splices: splices.clone(),
        shutdown: shutdown.clone(),
    });
    let (supervisor, supervisor_handle) = Supervisor::new(
        tasks.clone(),
        config.clone(),
        clock.clone(),
        recorders,
        Some(state.clone()),
    );
    tokio::spawn(supervisor.run(hub_events, shutdown.clone()));

    // The recordings catalog's copy in the store; it outlives the recorders at shutdown
    // so what they indexed last is published (or stays queued for the next start).
    let catalog_stop = CancellationToken::new();
    let cluster = config.snapshot().config.cluster.as_ref().map(|c| {
        let (store, prefix) = state.store();
        crate::cluster::Cluster::new(
            c,
            store,
            prefix,
            Arc::new(ClusterLocal {
                hub: hub.clone(),
                splices: splices.clone(),
                tasks: tasks.clone(),
            }),
            clock.now_ms(),
        )
    });
    let change_log = cluster
        .clone()
        .map(|c| c as Arc<dyn crate::sink::catalog::ChangeLog>);
    let publisher = tokio::spawn(crate::sink::catalog::publisher(
        sink.db().clone(),
        state.clone(),
        change_log,
        catalog_stop.clone(),
    ));
    tokio::spawn(crate::sink::catalog::rebuild_at_start(
        sink.clone(),
        state.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::sink::retention::sweeper(
        sink.db().clone(),
        sink.backend().clone(),
        Duration::from_secs(config.snapshot().config.storage.retention_sweep_interval),
        shutdown.clone(),
    ));

    tokio::spawn(crate::metrics::upkeep(metrics.clone(), shutdown.clone()));

    // Callbacks (R-CB-4): the sender outlives the recordings at shutdown so the events
    // of the files they finalize last still go out within the grace.
    let callbacks_stop = CancellationToken::new();
    let sender_state = Arc::new(crate::callback::sender::SenderState::default());
    let sender = tokio::spawn(crate::callback::sender::run(
        sink.db().clone(),
        config.clone(),
        sender_state.clone(),
        callbacks_stop.clone(),
    ));
    let quota = sink.quota.clone();
    tokio::spawn(crate::callback::watch_spool_quota(
        sink.db().clone(),
        move || (quota.is_full(), quota.used(), quota.max()),
        config.clone(),
        shutdown.clone(),
    ));

    if let Some(c) = &cluster {
        crate::cluster::spawn(
            c.clone(),
            sync_targets(&sink, &state, &tasks, &config, &supervisor_handle),
            clock.clone(),
            shutdown.clone(),
        );
    }

    let ctx = Arc::new(Ctx {
        config: config.clone(),
        hub: hub.clone(),
        sink: sink.clone(),
        tasks,
        supervisor: supervisor_handle,
        state,
        clock: clock.clone(),
        metrics,
        splices,
        cluster: cluster.clone(),
    });
    let api_task = {
        let stop = shutdown.clone();
        let app = crate::api::router(ctx.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(api, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                warn!("API server stopped: {e}");
            }
        })
    };

    // Before anyone is told we are ready: a SIGTERM (or SIGHUP) that arrives right after
    // the ready line must reach our handler, not the default action that kills the
    // process without finalizing anything.
    let signals = Signals::install().map_err(DaemonError::Signal)?;
    let rtmps_word = rtmps_addr
        .map(|a| format!(" rtmps={a}"))
        .unwrap_or_default();
    info!(rtmp = %rtmp_addr, rtmps = ?rtmps_addr, api = %api_addr, root = %config.snapshot().config.storage.root.display(), "liverec ready");
    // Tests and scripts read the bound addresses (ports may be ephemeral) from stdout.
    println!("liverec ready rtmp={rtmp_addr} api={api_addr}{rtmps_word}");
    crate::systemd::ready(&format!(
        "recording; RTMP on {rtmp_addr}, API on {api_addr}"
    ));
    if let Some(every) = crate::systemd::watchdog_interval() {
        tokio::spawn(crate::systemd::watchdog(every));
    }

    let ingest = Arc::new(Ingest {
        hub,
        config: config.clone(),
        quota: sink.quota.clone(),
        shutdown: shutdown.clone(),
        clock,
        callbacks: sink.db().clone(),
        http: crate::callback::sender::client().map_err(DaemonError::Http)?,
        cluster,
    });
    use crate::ingest::listener::{accept_loop, ConnLimits, Transport};
    let limits = ConnLimits::new(&ingest);
    let accept = tokio::spawn(accept_loop(
        ingest.clone(),
        rtmp,
        tracker.clone(),
        limits.clone(),
        Transport::Rtmp,
    ));
    let accept_tls = rtmps.map(|l| {
        tokio::spawn(accept_loop(
            ingest,
            l,
            tracker.clone(),
            limits,
            Transport::Rtmps,
        ))
    });

    wait_for_signal(signals, &config).await;
    info!("shutting down: finalizing open recordings");
    let grace_ends = chrono::Utc::now().timestamp_millis()
        + i64::try_from(SHUTDOWN_GRACE.as_millis()).unwrap_or(i64::MAX);
    crate::systemd::stopping();
    shutdown.cancel();
    accept.abort();
    if let Some(a) = &accept_tls {
        a.abort();
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("shutdown grace of {SHUTDOWN_GRACE:?} passed with recordings still finishing");
    }
    if !sink.drain(SHUTDOWN_GRACE).await {
        warn!("uploads still pending after {SHUTDOWN_GRACE:?}; they stay in the spool and resume on the next start");
    }
    let deadline = tokio::time::Instant::now() + CATALOG_GRACE;
    while sink.db().unpublished() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if sink.db().unpublished() > 0 {
        warn!(
            changes = sink.db().unpublished(),
            "recordings index changes not yet in the store; they are published on the next start"
        );
    }
    // Pending callbacks get the rest of the grace (R-CB-4); what is left, or waits for
    // a backoff past it, goes out after the restart.
    while sender_state.busy_until(grace_ends) && chrono::Utc::now().timestamp_millis() < grace_ends
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    callbacks_stop.cancel();
    let _ = sender.await;
    catalog_stop.cancel();
    let _ = publisher.await;
    let _ = api_task.await;
    // Checkpoints the WAL into the database file, so a stopped node leaves one file.
    sink.db().clone().close().await;
    info!("stopped");
    Ok(())
}

/// This node's state as the cluster sees it (`cluster::Local`).
struct ClusterLocal {
    hub: Arc<Hub>,
    splices: Arc<crate::recording::Splices>,
    tasks: Arc<Tasks>,
}

impl crate::cluster::Local for ClusterLocal {
    fn streams(&self) -> Vec<crate::cluster::NodeStream> {
        self.hub
            .snapshot()
            .into_iter()
            .map(|s| crate::cluster::NodeStream {
                domain: s.id.domain,
                app: s.id.app,
                stream: s.id.stream,
                peer: s.peer.to_string(),
                started: s
                    .started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            })
            .collect()
    }
    fn is_publishing(&self, id: &crate::model::StreamId) -> bool {
        self.hub.publisher(id).is_some()
    }
    fn end_publish(&self, id: &crate::model::StreamId) {
        self.hub.cancel_publisher(id);
    }
    fn may_continue(&self, id: &crate::model::StreamId) -> bool {
        self.splices.holds(id)
    }
    fn recording_tasks(&self) -> Vec<String> {
        self.tasks
            .list(&Default::default())
            .into_iter()
            .filter(|t| t.status == crate::model::TaskStatus::Recording)
            .map(|t| t.task_id)
            .collect()
    }
}

/// What the cluster's sync changes on this node (`cluster::sync::SyncTargets`).
fn sync_targets(
    sink: &Arc<Sink>,
    state: &crate::state::State,
    tasks: &Arc<Tasks>,
    config: &Arc<RunningConfig>,
    supervisor: &crate::recording::supervisor::SupervisorHandle,
) -> crate::cluster::sync::SyncTargets {
    use futures::FutureExt;
    let (st, t) = (state.clone(), tasks.clone());
    let merge_tasks = Box::new(move || {
        let (st, t) = (st.clone(), t.clone());
        async move {
            let stored = st.list("tasks").await.map_err(|e| e.to_string())?;
            Ok(t.merge(stored))
        }
        .boxed()
    });
    let (st, cfg) = (state.clone(), config.clone());
    let reload_items = Box::new(move || {
        let (st, cfg) = (st.clone(), cfg.clone());
        async move { crate::api::templates::load(&cfg, &st).await.map(|_| ()) }.boxed()
    });
    let sup = supervisor.clone();
    let tasks_changed = Box::new(move || {
        let sup = sup.clone();
        async move { sup.tasks_changed().await }.boxed()
    });
    let (sk, st) = (sink.clone(), state.clone());
    let rebuild = Box::new(move || {
        let (sk, st) = (sk.clone(), st.clone());
        async move {
            crate::sink::catalog::rebuild(&sk, &st, Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    });
    let (db, st) = (sink.db().clone(), state.clone());
    let take_over_retention = Box::new(move |node: String| {
        let (db, st) = (db.clone(), st.clone());
        async move {
            let files = db.expiring_of(node).await.map_err(|e| e.to_string())?;
            Ok(crate::sink::catalog::expire_again(&db, &st, files).await)
        }
        .boxed()
    });
    crate::cluster::sync::SyncTargets {
        db: sink.db().clone(),
        take_over_retention,
        merge_tasks,
        reload_items,
        tasks_changed,
        rebuild,
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

async fn wait_for_signal(signals: Signals, config: &RunningConfig) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); return; }
            _ = int.recv() => { info!("SIGINT received"); return; }
            _ = hup.recv() => {
                info!("SIGHUP received: reloading the config");
                let _ = crate::systemd::reload(config).await;
            }
        }
    }
}
