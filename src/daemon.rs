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
            let app = router(ctx);
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

    let accept = {
        let ctx = ctx.clone();
        tokio::spawn(async move { accept_loop(ctx, rtmp).await })
    };

    wait_for_signal(&ctx).await.map_err(DaemonError::Signal)?;
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

/// Prometheus text exposition of the storage gauges; written by hand because these few
/// lines do not justify an exporter crate yet (the full set comes with R-OP-3).
fn metrics_text(ctx: &Ctx) -> String {
    let q = &ctx.sink.quota;
    let pending = ctx.sink.pending_uploads();
    format!(
        "# HELP liverec_spool_bytes Bytes in the spool (open files and files waiting for storage).\n\
         # TYPE liverec_spool_bytes gauge\nliverec_spool_bytes {}\n\
         # HELP liverec_spool_max_bytes The spool quota.\n\
         # TYPE liverec_spool_max_bytes gauge\nliverec_spool_max_bytes {}\n\
         # HELP liverec_upload_queue Files and playlists waiting for their upload.\n\
         # TYPE liverec_upload_queue gauge\nliverec_upload_queue {}\n\
         # HELP liverec_publish_refused_spool_full_total Publishes refused because the spool was full.\n\
         # TYPE liverec_publish_refused_spool_full_total counter\nliverec_publish_refused_spool_full_total {}\n\
         # HELP liverec_streams Streams being published.\n\
         # TYPE liverec_streams gauge\nliverec_streams {}\n",
        q.used(),
        q.max(),
        pending,
        ctx.stats.refused_spool_full.load(Ordering::Relaxed),
        ctx.hub.snapshot().len(),
    )
}

fn router(ctx: Arc<Ctx>) -> Router {
    let c1 = ctx.clone();
    let c2 = ctx.clone();
    let c3 = ctx.clone();
    let c4 = ctx.clone();
    let token = {
        let t = &ctx.config.load().config.api.token;
        (!t.is_empty()).then(|| Arc::new(t.clone()))
    };
    let token: Option<Arc<String>> = token;
    Router::new()
        .route(
            "/v1/reload",
            axum::routing::post(move || {
                let ctx = c3.clone();
                async move {
                    match reload(&ctx).await {
                        Ok(warnings) => (
                            axum::http::StatusCode::OK,
                            Json(serde_json::json!({"status": "reloaded", "warnings": warnings})),
                        ),
                        Err(errors) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            Json(serde_json::json!({
                                "code": "invalid_config",
                                "message": errors.join("; "),
                            })),
                        ),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ctx = c1.clone();
                async move {
                    let q = &ctx.sink.quota;
                    let status = if q.is_full() { "spool_full" } else { "ok" };
                    Json(serde_json::json!({
                        "status": status,
                        "spool": {"bytes": q.used(), "max_bytes": q.max()},
                        "uploads_pending": ctx.sink.pending_uploads(),
                        "index_unpublished": ctx.sink.index().unpublished(),
                    }))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let ctx = c2.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics_text(&ctx),
                    )
                }
            }),
        )
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
                                "tasks": ctx.tasks.list(&crate::tasks::ListFilter {
                                    domain: Some(s.id.domain.clone()),
                                    app: Some(s.id.app.clone()),
                                    stream: Some(s.id.stream.clone()),
                                    ..Default::default()
                                })
                                .into_iter()
                                .filter(|t| t.status == "recording")
                                .map(|t| t.task_id)
                                .collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    Json(serde_json::json!({ "streams": streams }))
                }
            }),
        )
        .route(
            "/v1/tasks",
            axum::routing::post({
                let ctx = c4.clone();
                move |body: Result<Json<crate::tasks::CreateTask>, axum::extract::rejection::JsonRejection>| {
                    let ctx = ctx.clone();
                    async move {
                        let req = match body {
                            Ok(Json(r)) => r,
                            Err(e) => {
                                return api_error(
                                    axum::http::StatusCode::BAD_REQUEST,
                                    "invalid_request",
                                    &e.body_text(),
                                )
                            }
                        };
                        match ctx.tasks.create(&ctx, req) {
                            Ok(t) => {
                                // Persisted before it is acknowledged (R-TK-5).
                                if let Err(e) = ctx.state.put("tasks", &t.task_id, &t).await {
                                    ctx.tasks.remove(&t.task_id);
                                    return api_error(
                                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                        "storage_unavailable",
                                        &format!("the task could not be stored: {e}"),
                                    );
                                }
                                (
                                    axum::http::StatusCode::CREATED,
                                    Json(serde_json::json!({"task_id": t.task_id, "task": t})),
                                )
                            }
                            Err(e) => api_error(
                                axum::http::StatusCode::from_u16(e.status)
                                    .unwrap_or(axum::http::StatusCode::BAD_REQUEST),
                                e.code,
                                &e.message,
                            ),
                        }
                    }
                }
            })
            .get({
                let ctx = c4.clone();
                move |q: Result<axum::extract::Query<crate::tasks::ListFilter>, axum::extract::rejection::QueryRejection>| {
                    let ctx = ctx.clone();
                    async move {
                        let f = match query(q) {
                            Ok(f) => f,
                            Err(e) => return e,
                        };
                        let all = ctx.tasks.list(&f);
                        let from = match f.page_token.as_deref().map(str::parse::<usize>) {
                            None => 0,
                            Some(Ok(n)) => n,
                            Some(Err(_)) => {
                                return api_error(
                                    axum::http::StatusCode::BAD_REQUEST,
                                    "invalid_page_token",
                                    "page_token is not one this API handed out",
                                )
                            }
                        };
                        let size = f.page_size.unwrap_or(100).clamp(1, 1000);
                        let page: Vec<_> = all.iter().skip(from).take(size).cloned().collect();
                        let next = (from + size < all.len()).then(|| (from + size).to_string());
                        (
                            axum::http::StatusCode::OK,
                            Json(serde_json::json!({"tasks": page, "next_page_token": next})),
                        )
                    }
                }
            }),
        )
        .route(
            "/v1/tasks/{id}",
            get({
                let ctx = c4.clone();
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let ctx = ctx.clone();
                    async move {
                        match ctx.tasks.get(&id) {
                            Some(t) => (axum::http::StatusCode::OK, Json(serde_json::json!(t))),
                            None => api_error(
                                axum::http::StatusCode::NOT_FOUND,
                                "task_not_found",
                                &format!("no task {id:?}"),
                            ),
                        }
                    }
                }
            }),
        )
        .route(
            "/v1/tasks/{id}/stop",
            axum::routing::post({
                let ctx = c4.clone();
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let ctx = ctx.clone();
                    async move {
                        match ctx.tasks.stop(&id) {
                            Some(t) => {
                                if let Err(e) = ctx.state.put("tasks", &t.task_id, &t).await {
                                    warn!(task = %t.task_id, "stopped, but the stop could not be stored: {e}");
                                }
                                (axum::http::StatusCode::OK, Json(serde_json::json!(t)))
                            }
                            None => api_error(
                                axum::http::StatusCode::NOT_FOUND,
                                "task_not_found",
                                &format!("no task {id:?}"),
                            ),
                        }
                    }
                }
            }),
        )
        .route(
            "/v1/recordings/rebuild",
            axum::routing::post({
                let ctx = c4.clone();
                move || crate::api::rebuild_recordings(ctx.clone())
            }),
        )
        .route(
            "/v1/recordings",
            get({
                let ctx = c4.clone();
                move |q: Result<
                    axum::extract::Query<crate::sink::retention::RecordingFilter>,
                    axum::extract::rejection::QueryRejection,
                >| {
                    let ctx = ctx.clone();
                    async move {
                        let f = match query(q) {
                            Ok(f) => f,
                            Err(e) => return e,
                        };
                        let cfg = ctx.config.load_full();
                        let base = cfg.config.storage.public_base_url.trim_end_matches('/');
                        let list: Vec<_> = ctx
                            .sink
                            .index()
                            .query(&f)
                            .into_iter()
                            .map(|r| {
                                let url = (!base.is_empty()).then(|| format!("{base}/{}", r.key));
                                serde_json::json!({
                                    "key": r.key, "size": r.size, "format": r.format,
                                    "domain": r.domain, "app": r.app, "stream": r.stream,
                                    "task_id": r.task_id,
                                    "start_time": r.start_ms.div_euclid(1000),
                                    "end_time": r.end_ms.div_euclid(1000),
                                    "start_time_ms": r.start_ms, "end_time_ms": r.end_ms,
                                    "duration": r.duration_ms as f64 / 1000.0,
                                    "url": url,
                                })
                            })
                            .collect();
                        (
                            axum::http::StatusCode::OK,
                            Json(serde_json::json!({ "recordings": list })),
                        )
                    }
                }
            }),
        )
        .route(
            "/v1/templates",
            get({
                let ctx = c4.clone();
                move || {
                    let ctx = ctx.clone();
                    async move {
                        let cfg = ctx.config.load_full();
                        let api: std::collections::HashSet<i64> =
                            ctx.api_items.lock().await.templates.keys().copied().collect();
                        let mut list = vec![builtin_template_json()];
                        list.extend(cfg.config.templates.iter().map(|t| {
                            let mut j = crate::api::template_json(t.get_ref());
                            if api.contains(t.get_ref().id.get_ref()) {
                                j["source"] = "api".into();
                            }
                            j
                        }));
                        Json(serde_json::json!({ "templates": list }))
                    }
                }
            })
            .post({
                let ctx = c4.clone();
                move |body: Result<Json<crate::config::TemplateBody>, axum::extract::rejection::JsonRejection>| {
                    let ctx = ctx.clone();
                    async move {
                        match body {
                            Ok(Json(b)) => crate::api::create_template(ctx, b).await,
                            Err(e) => api_error(axum::http::StatusCode::BAD_REQUEST, "invalid_request", &e.body_text()),
                        }
                    }
                }
            }),
        )
        .route(
            "/v1/templates/{id}",
            get({
                let ctx = c4.clone();
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let ctx = ctx.clone();
                    async move {
                        let cfg = ctx.config.load_full();
                        let found = match id.parse::<i64>() {
                            Ok(0) => Some(builtin_template_json()),
                            Ok(n) => cfg
                                .config
                                .templates
                                .iter()
                                .find(|t| *t.get_ref().id.get_ref() == n)
                                .map(|t| crate::api::template_json(t.get_ref())),
                            Err(_) => None,
                        };
                        match found {
                            Some(mut t) => {
                                if ctx.api_items.lock().await.templates.contains_key(&t["id"].as_i64().unwrap_or(-1)) {
                                    t["source"] = "api".into();
                                }
                                (axum::http::StatusCode::OK, Json(t))
                            }
                            None => api_error(
                                axum::http::StatusCode::NOT_FOUND,
                                "template_not_found",
                                &format!("no template {id:?}"),
                            ),
                        }
                    }
                }
            })
            .put({
                let ctx = c4.clone();
                move |axum::extract::Path(id): axum::extract::Path<String>,
                      body: Result<Json<crate::config::TemplateBody>, axum::extract::rejection::JsonRejection>| {
                    let ctx = ctx.clone();
                    async move {
                        let Ok(id) = id.parse::<i64>() else {
                            return api_error(axum::http::StatusCode::NOT_FOUND, "template_not_found", &format!("no template {id:?}"));
                        };
                        match body {
                            Ok(Json(b)) => crate::api::put_template(ctx, id, b).await,
                            Err(e) => api_error(axum::http::StatusCode::BAD_REQUEST, "invalid_request", &e.body_text()),
                        }
                    }
                }
            })
            .delete({
                let ctx = c4.clone();
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let ctx = ctx.clone();
                    async move {
                        match id.parse::<i64>() {
                            Ok(id) => crate::api::delete_template(ctx, id).await,
                            Err(_) => api_error(axum::http::StatusCode::NOT_FOUND, "template_not_found", &format!("no template {id:?}")),
                        }
                    }
                }
            }),
        )
        .route(
            "/v1/rules",
            get({
                let ctx = c4.clone();
                move || {
                    let ctx = ctx.clone();
                    async move {
                        let file = ctx.file_config.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let mut list: Vec<_> = file
                            .config
                            .rules
                            .iter()
                            .enumerate()
                            .map(|(i, r)| {
                                let r = r.get_ref();
                                crate::api::rule_json(
                                    &crate::config::RuleBody {
                                        rule_id: Some(format!("config-{i}")),
                                        domain: r.domain.clone(),
                                        app: r.app.clone(),
                                        stream: r.stream.clone(),
                                        template_id: *r.template_id.get_ref(),
                                    },
                                    "config",
                                )
                            })
                            .collect();
                        list.extend(
                            ctx.api_items
                                .lock()
                                .await
                                .rules
                                .values()
                                .map(|r| crate::api::rule_json(r, "api")),
                        );
                        Json(serde_json::json!({ "rules": list }))
                    }
                }
            })
            .post({
                let ctx = c4.clone();
                move |body: Result<Json<crate::config::RuleBody>, axum::extract::rejection::JsonRejection>| {
                    let ctx = ctx.clone();
                    async move {
                        match body {
                            Ok(Json(b)) => crate::api::create_rule(ctx, b).await,
                            Err(e) => api_error(axum::http::StatusCode::BAD_REQUEST, "invalid_request", &e.body_text()),
                        }
                    }
                }
            }),
        )
        .route(
            "/v1/rules/{id}",
            axum::routing::delete({
                let ctx = c4.clone();
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let ctx = ctx.clone();
                    async move { crate::api::delete_rule(ctx, id).await }
                }
            }),
        )
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move { check_token(token.as_deref().map(|t| t.as_str()), req, next).await }
        }))
}

/// R-OP-4: with `api.token` set, every route but `/healthz` needs
/// `Authorization: Bearer <token>`.
async fn check_token(
    token: Option<&str>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(token) = token else {
        return next.run(req).await;
    };
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token is a secret.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        next.run(req).await
    } else {
        api_error(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (api.token)",
        )
        .into_response()
    }
}

/// A query string, or the 400 that says what is wrong with it.
fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, (axum::http::StatusCode, Json<serde_json::Value>)> {
    q.map(|axum::extract::Query(f)| f).map_err(|e| {
        api_error(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_request",
            &e.body_text(),
        )
    })
}

fn api_error(
    status: axum::http::StatusCode,
    code: &str,
    message: &str,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    (
        status,
        Json(serde_json::json!({ "code": code, "message": message })),
    )
}

/// Template 0 (R-TP-1): FLV in 1800 s files, kept forever.
fn builtin_template_json() -> serde_json::Value {
    serde_json::json!({
        "id": 0, "name": "built-in", "source": "builtin",
        "flv": {
            "enable": true, "record_interval": 1800, "storage_time": 0,
            "file_name": crate::config::DEFAULT_FILE_NAME,
        },
    })
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
