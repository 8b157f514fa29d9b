//! The HTTP API (SPEC §13, R-OP-4): one named handler per operation over [`Ctx`], the
//! handles of the subsystems it reads and drives. Templates and rules changes live in
//! `templates.rs`, request and response shapes in `wire.rs`; task rules are the task
//! table's (`tasks.rs`). `docs/openapi.json` documents the routes and a test checks it
//! against this router.

pub mod templates;
pub mod ui;
pub mod wire;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::config::RunningConfig;
use crate::ingest::hub::Hub;
use crate::model::TaskStatus;
use crate::recording::supervisor::SupervisorHandle;
use crate::sink::Sink;
use crate::state::State as StateStore;
use crate::tasks::Tasks;
use wire::{error, Reply};

/// What the API reads and drives.
pub struct Ctx {
    pub config: Arc<RunningConfig>,
    pub hub: Arc<Hub>,
    pub sink: Arc<Sink>,
    pub tasks: Arc<Tasks>,
    /// Told when tasks are created or stopped, so it acts at once.
    pub supervisor: SupervisorHandle,
    pub state: StateStore,
    pub clock: Arc<dyn Clock>,
    /// Renders what the process-wide metrics recorder holds.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Recordings in their continuation window (R-SP-1), for `/v1/streams`.
    pub splices: Arc<crate::recording::Splices>,
    /// The other nodes sharing the store (R-SC-1); None: a single node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

type Ctxt = State<Arc<Ctx>>;

impl Ctx {
    /// Tells the other nodes sharing the store that tasks, templates or rules changed
    /// (R-SC-1); nothing on a single node.
    pub async fn shared_changed(&self) {
        if let Some(c) = &self.cluster {
            c.bump().await;
        }
    }

    /// This node's id: `[cluster] node_id` (default the host name), also without a cluster.
    fn node_id(&self) -> String {
        match &self.cluster {
            Some(c) => c.node_id.clone(),
            None => crate::cluster::default_node_id(),
        }
    }

    /// The other nodes' records (empty on a single node or when the store does not answer).
    async fn peers(&self) -> Vec<crate::cluster::NodeRecord> {
        match &self.cluster {
            Some(c) => c.peers().await.unwrap_or_else(|e| {
                tracing::warn!("cannot read the other nodes' records: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        }
    }

    /// A task as the cluster sees it: recording when another live node records it
    /// (this node's own table only knows it is not live here).
    fn task_view(
        &self,
        mut t: crate::model::Task,
        peers: &[crate::cluster::NodeRecord],
    ) -> crate::model::Task {
        if !t.status.is_final()
            && t.status != TaskStatus::Recording
            && peers
                .iter()
                .any(|p| p.live && p.recording_tasks.contains(&t.task_id))
        {
            t.status = TaskStatus::Recording;
        }
        t
    }
}

pub fn router(ctx: Arc<Ctx>) -> Router {
    let token = {
        let t = &ctx.config.snapshot().config.api.token;
        (!t.is_empty()).then(|| Arc::new(t.clone()))
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/reload", post(reload))
        .route("/v1/streams", get(streams))
        .route("/v1/nodes", get(nodes))
        .route("/v1/tasks", post(create_task).get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/stop", post(stop_task))
        .route("/v1/recordings", get(recordings))
        .route("/v1/recordings/rebuild", post(rebuild_recordings))
        .route("/v1/templates", get(list_templates).post(create_template))
        .route(
            "/v1/templates/{id}",
            get(get_template).put(put_template).delete(delete_template),
        )
        .route("/v1/rules", get(list_rules).post(create_rule))
        .route("/v1/rules/{id}", delete(delete_rule))
        .route("/v1/callbacks", get(list_callbacks))
        .route("/v1/callbacks/{id}/retry", post(retry_callback))
        .route("/v1/files/{*key}", get(ui::stored))
        .route("/ui", get(ui::redirect))
        .route("/ui/", get(ui::index))
        .route("/ui/{*path}", get(ui::file))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let token = token.clone();
                async move { check_token(token.as_deref().map(|t| t.as_str()), req, next).await }
            },
        ))
        .with_state(ctx)
}

/// R-OP-4: with `api.token` set, every route but `/healthz` and the console's static
/// files (`/ui/…`, issue 16: the page must load to ask for the token; it holds no data)
/// needs `Authorization: Bearer <token>`.
async fn check_token(
    token: Option<&str>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/healthz" || path == "/ui" || path.starts_with("/ui/") {
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
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (api.token)",
        )
        .into_response()
    }
}

/// A query string, or the 400 that says what is wrong with it.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Reply> {
    q.map(|Query(f)| f)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_request", &e.body_text()))
}

/// A JSON body, or the 400 that says what is wrong with it.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Reply> {
    b.map(|Json(v)| v)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_request", &e.body_text()))
}

/// How old the oldest undelivered callback may get before `/healthz` says
/// `callbacks_failing` (R-CB-4).
const CALLBACKS_FAILING_AFTER_MS: i64 = 5 * 60 * 1000;

/// `/healthz`'s status word: the spool first (it refuses publishes), then callbacks
/// whose oldest undelivered event is older than [`CALLBACKS_FAILING_AFTER_MS`].
fn health_status(spool_full: bool, oldest_pending_ms: Option<i64>, now_ms: i64) -> &'static str {
    if spool_full {
        "spool_full"
    } else if oldest_pending_ms
        .is_some_and(|t| now_ms.saturating_sub(t) > CALLBACKS_FAILING_AFTER_MS)
    {
        "callbacks_failing"
    } else {
        "ok"
    }
}

async fn healthz(State(ctx): Ctxt) -> Json<Value> {
    let q = &ctx.sink.quota;
    let cb = ctx.sink.db().callback_counts().await.unwrap_or_default();
    let status = health_status(q.is_full(), cb.oldest_pending_ms, ctx.clock.now_ms());
    Json(json!({
        "status": status,
        "spool": {"bytes": q.used(), "max_bytes": q.max()},
        "uploads_pending": ctx.sink.pending_uploads(),
        "index_unpublished": ctx.sink.db().unpublished(),
        "callbacks": {
            "pending": cb.pending,
            "failed": cb.failed,
            "oldest_pending_ms": cb.oldest_pending_ms,
        },
        "version": env!("CARGO_PKG_VERSION"),
        "config_source": ctx.config.source(),
        "node_id": ctx.node_id(),
    }))
}

async fn metrics(State(ctx): Ctxt) -> impl IntoResponse {
    let callbacks = ctx.sink.db().callback_counts().await.unwrap_or_default();
    let gauges = crate::metrics::Gauges {
        spool_bytes: ctx.sink.quota.used(),
        spool_max_bytes: ctx.sink.quota.max(),
        upload_queue: ctx.sink.pending_uploads() as u64,
        streams: ctx.hub.len() as u64,
        index_unpublished: ctx.sink.db().unpublished(),
        callbacks_pending: callbacks.pending,
        callbacks_failed: callbacks.failed,
        tasks: ctx.tasks.count_by_status(),
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&ctx.metrics, &gauges),
    )
}

async fn reload(State(ctx): Ctxt) -> Reply {
    match crate::systemd::reload(&ctx.config).await {
        Ok(warnings) => (
            StatusCode::OK,
            Json(json!({"status": "reloaded", "warnings": warnings})),
        ),
        Err(errors) => error(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            &errors.join("; "),
        ),
    }
}

async fn streams(State(ctx): Ctxt) -> Json<Value> {
    let node_id = ctx.node_id();
    let peers = ctx.peers().await;
    let now_ms = ctx.clock.now_ms();
    let streams: Vec<_> = ctx
        .hub
        .snapshot()
        .into_iter()
        .map(|s| {
            let tracks = s.info.tracks();
            let (kbps, fps) = s.info.rates(now_ms);
            let started_ms = s
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let tasks: Vec<String> = ctx
                .tasks
                .list(&crate::tasks::TaskFilter {
                    domain: Some(s.id.domain.clone()),
                    app: Some(s.id.app.clone()),
                    stream: Some(s.id.stream.clone()),
                    ..Default::default()
                })
                .into_iter()
                .filter(|t| t.status == TaskStatus::Recording)
                .map(|t| t.task_id)
                .collect();
            json!({
                "domain": s.id.domain, "app": s.id.app, "stream": s.id.stream,
                "node_id": node_id,
                "state": "live",
                "peer": s.peer.to_string(),
                "started": s.started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "stream_param": s.query,
                "uptime_s": now_ms.saturating_sub(started_ms).max(0) / 1000,
                "ring": {"bytes": s.ring.bytes, "gops": s.ring.gops, "duration_ms": s.ring.duration_ms.as_ms(), "readers": s.ring.readers},
                "tasks": tasks,
                "video": tracks.video,
                "audio": tracks.audio,
                "bitrate_kbps": kbps,
                "fps": fps,
                "recordings": ctx.sink.open_files(&s.id),
            })
        })
        .collect::<Vec<_>>();
    // Streams whose push ended while their recordings wait for them to return.
    let live: std::collections::HashSet<String> = streams
        .iter()
        .map(|s| format!("{}/{}/{}", s["domain"], s["app"], s["stream"]))
        .collect();
    let mut streams = streams;
    for (id, until_ms) in ctx.splices.waiting() {
        let j = json!({
            "domain": id.domain, "app": id.app, "stream": id.stream,
            "node_id": node_id,
            "state": "waiting",
            "deadline": until_ms.div_euclid(1000),
            "deadline_ms": until_ms,
        });
        if !live.contains(&format!("{}/{}/{}", j["domain"], j["app"], j["stream"])) {
            streams.push(j);
        }
    }
    // R-SC-1: the streams the other live nodes publish, as their records last said.
    for p in peers.iter().filter(|p| p.live && p.node_id != node_id) {
        for st in &p.streams {
            let tasks: Vec<&String> = p
                .recording_tasks
                .iter()
                .filter(|id| {
                    ctx.tasks.get(id).is_some_and(|t| {
                        t.domain == st.domain && t.app == st.app && t.stream == st.stream
                    })
                })
                .collect();
            streams.push(json!({
                "domain": st.domain, "app": st.app, "stream": st.stream,
                "node_id": p.node_id,
                "state": "live",
                "peer": st.peer,
                "started": st.started,
                "tasks": tasks,
            }));
        }
    }
    Json(json!({ "streams": streams }))
}

/// `GET /v1/nodes` (R-SC-1): the live nodes sharing the store (this one alone without
/// `[cluster]`).
async fn nodes(State(ctx): Ctxt) -> Json<Value> {
    let Some(_) = &ctx.cluster else {
        return Json(json!({"nodes": [{
            "node_id": ctx.node_id(),
            "last_seen": ctx.clock.now_ms().div_euclid(1000),
            "streams": ctx.hub.len(),
        }]}));
    };
    let nodes: Vec<Value> = ctx
        .peers()
        .await
        .into_iter()
        .filter(|p| p.live)
        .map(|p| {
            json!({
                "node_id": p.node_id,
                "last_seen": p.last_seen_ms.div_euclid(1000),
                "last_seen_ms": p.last_seen_ms,
                "started": p.started_ms.div_euclid(1000),
                "streams": p.streams.len(),
                "version": p.version,
            })
        })
        .collect();
    Json(json!({ "nodes": nodes }))
}

async fn create_task(State(ctx): Ctxt, b: Result<Json<wire::CreateTask>, JsonRejection>) -> Reply {
    let req = match body(b) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let created = {
        let config = ctx.config.snapshot();
        let live = match &ctx.cluster {
            // A real-time task for a stream another node records is recorded there.
            Some(c) => c.is_live_anywhere(&req.stream_id()).await,
            None => ctx.hub.publisher(&req.stream_id()).is_some(),
        };
        let template_exists = |id: i64| config.config.templates.iter().any(|t| t.id == id);
        let cx = crate::tasks::CreateContext {
            now_ms: ctx.clock.now_ms(),
            live,
            max_tasks_per_stream: config.config.record.max_tasks_per_stream,
            template_exists: &template_exists,
        };
        ctx.tasks.create(req.into(), &cx)
    };
    match created {
        Ok(t) => {
            // A real-time task is recording by the time it is answered.
            ctx.supervisor.tasks_changed().await;
            let t = ctx.tasks.get(&t.task_id).unwrap_or(t);
            // Persisted before it is acknowledged (R-TK-5).
            // An exclusive create: a task id is never anyone else's (R-SC-1).
            if let Err(e) = ctx.state.create("tasks", &t.task_id, &t).await {
                ctx.tasks.remove(&t.task_id);
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    &format!("the task could not be stored: {e}"),
                );
            }
            ctx.shared_changed().await;
            let t = ctx.task_view(t, &ctx.peers().await);
            (
                StatusCode::CREATED,
                Json(json!({"task_id": t.task_id, "task": t})),
            )
        }
        Err(e) => error(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.code,
            &e.message,
        ),
    }
}

async fn list_tasks(State(ctx): Ctxt, q: Result<Query<wire::TaskQuery>, QueryRejection>) -> Reply {
    let f = match query(q) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let all = ctx.tasks.list(&f.filter());
    let peers = ctx.peers().await;
    let from = match f.page_token.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_page_token",
                "page_token is not one this API handed out",
            )
        }
    };
    let size = f.page_size.unwrap_or(100).clamp(1, 1000);
    let page: Vec<_> = all
        .iter()
        .skip(from)
        .take(size)
        .cloned()
        .map(|t| ctx.task_view(t, &peers))
        .collect();
    let next = (from + size < all.len()).then(|| (from + size).to_string());
    (
        StatusCode::OK,
        Json(json!({"tasks": page, "next_page_token": next})),
    )
}

fn task_not_found(id: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "task_not_found",
        &format!("no task {id:?}"),
    )
}

/// A task this node has not synced yet (made through another node a moment ago) is
/// read from the store, so every node answers alike (R-SC-1).
async fn known_task(ctx: &Ctx, id: &str) -> bool {
    if ctx.tasks.get(id).is_some() {
        return true;
    }
    if ctx.cluster.is_none() {
        return false;
    }
    match ctx.state.get::<crate::model::Task>("tasks", id).await {
        Ok(Some(t)) => {
            if ctx.tasks.merge(vec![t]) {
                ctx.supervisor.tasks_changed().await;
            }
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(task = id, "cannot read the task from the store: {e}");
            false
        }
    }
}

async fn get_task(State(ctx): Ctxt, Path(id): Path<String>) -> Reply {
    known_task(&ctx, &id).await;
    match ctx.tasks.get(&id) {
        Some(t) => {
            let t = ctx.task_view(t, &ctx.peers().await);
            (StatusCode::OK, Json(json!(t)))
        }
        None => task_not_found(&id),
    }
}

async fn stop_task(State(ctx): Ctxt, Path(id): Path<String>) -> Reply {
    known_task(&ctx, &id).await;
    match ctx.tasks.stop(&id) {
        Some(t) => {
            // Its open files are finalized now (R-TK-4).
            ctx.supervisor.tasks_changed().await;
            if let Err(e) = ctx.state.put("tasks", &t.task_id, &t).await {
                tracing::warn!(task = %t.task_id, "stopped, but the stop could not be stored: {e}");
            }
            ctx.shared_changed().await;
            (StatusCode::OK, Json(json!(t)))
        }
        None => task_not_found(&id),
    }
}

/// R-QY-1: stored files from the local index, a page at a time (`page_size`, default
/// 100, at most 1000; `page_token` from the previous page's `next_page_token`).
async fn recordings(
    State(ctx): Ctxt,
    q: Result<Query<wire::RecordingQuery>, QueryRejection>,
) -> Reply {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return e,
    };
    let (f, page) = q.split();
    let cfg = ctx.config.snapshot();
    let base = cfg.config.storage.public_base_url.trim_end_matches('/');
    let node_id = ctx.node_id();
    // The database thread does the reading; this task only awaits its answer.
    let (found, next) = match ctx.sink.db().query(f, page).await {
        Ok(r) => r,
        // The same code and wording as a bad `/v1/tasks` token.
        Err(crate::db::DbError::BadPageToken) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_page_token",
                "page_token is not one this API handed out",
            )
        }
        Err(e) => {
            tracing::warn!("recordings query failed: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "index_read_failed",
                &e.to_string(),
            );
        }
    };
    let list: Vec<_> = found
        .into_iter()
        .map(|r| {
            let url = (!base.is_empty()).then(|| format!("{base}/{}", r.key));
            json!({
                "key": r.key, "size": r.size, "format": r.format,
                "domain": r.domain, "app": r.app, "stream": r.stream,
                "task_id": r.task_id,
                "start_time": r.start_ms.div_euclid(1000),
                "end_time": r.end_ms.div_euclid(1000),
                "start_time_ms": r.start_ms, "end_time_ms": r.end_ms,
                "duration": r.duration_ms as f64 / 1000.0,
                "expire_time": (r.expires > 0).then_some(r.expires),
                "gaps": r.gaps,
                "url": url,
                // R-SC-1: which node stored it (this one's own are indexed without it).
                "node_id": if r.node.is_empty() { node_id.as_str() } else { r.node.as_str() },
            })
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({ "recordings": list, "next_page_token": next })),
    )
}

/// `POST /v1/recordings/rebuild` (R-QY-1): the local recordings index from the store's
/// catalog, e.g. after a spool was lost or to see what other nodes sharing it stored.
async fn rebuild_recordings(State(ctx): Ctxt) -> Reply {
    use crate::sink::catalog::{rebuild, CatalogError};
    match rebuild(&ctx.sink, &ctx.state, std::time::Duration::from_secs(10)).await {
        Ok(n) => {
            tracing::info!(recordings = n, "recordings index rebuilt from the store");
            (StatusCode::OK, Json(serde_json::json!({ "recordings": n })))
        }
        Err(e @ CatalogError::Running) => {
            error(StatusCode::CONFLICT, "rebuild_running", &e.to_string())
        }
        Err(e @ (CatalogError::NotDrained(_) | CatalogError::State(_))) => {
            tracing::warn!("recordings index rebuild failed: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &e.to_string(),
            )
        }
        Err(e @ CatalogError::Db(_)) => {
            tracing::warn!("recordings index rebuild failed: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "index_write_failed",
                &e.to_string(),
            )
        }
    }
}

/// Template 0 (R-TP-1): FLV in 1800 s files, kept forever.
fn builtin_template_json() -> Value {
    json!({
        "id": 0, "name": "built-in", "source": "builtin",
        "flv": {
            "enable": true, "record_interval": 1800, "storage_time": 0,
            "file_name": crate::model::DEFAULT_FILE_NAME,
        },
    })
}

fn template_not_found(id: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "template_not_found",
        &format!("no template {id:?}"),
    )
}

async fn list_templates(State(ctx): Ctxt) -> Json<Value> {
    let cfg = ctx.config.snapshot();
    let api: std::collections::HashSet<i64> = ctx
        .config
        .edit()
        .await
        .api()
        .templates
        .keys()
        .copied()
        .collect();
    let mut list = vec![builtin_template_json()];
    list.extend(cfg.config.templates.iter().map(|t| {
        let mut j = templates::template_json(t);
        if api.contains(&t.id) {
            j["source"] = "api".into();
        }
        j
    }));
    Json(json!({ "templates": list }))
}

async fn create_template(
    State(ctx): Ctxt,
    b: Result<Json<wire::TemplateBody>, JsonRejection>,
) -> Reply {
    match body(b) {
        Ok(b) => templates::create_template(ctx, b).await,
        Err(e) => e,
    }
}

async fn get_template(State(ctx): Ctxt, Path(id): Path<String>) -> Reply {
    let cfg = ctx.config.snapshot();
    let found = match id.parse::<i64>() {
        Ok(0) => Some(builtin_template_json()),
        Ok(n) => cfg.template(n).map(templates::template_json),
        Err(_) => None,
    };
    match found {
        Some(mut t) => {
            let n = t["id"].as_i64().unwrap_or(-1);
            if ctx.config.edit().await.api().templates.contains_key(&n) {
                t["source"] = "api".into();
            }
            (StatusCode::OK, Json(t))
        }
        None => template_not_found(&id),
    }
}

async fn put_template(
    State(ctx): Ctxt,
    Path(id): Path<String>,
    b: Result<Json<wire::TemplateBody>, JsonRejection>,
) -> Reply {
    let Ok(n) = id.parse::<i64>() else {
        return template_not_found(&id);
    };
    match body(b) {
        Ok(b) => templates::put_template(ctx, n, b).await,
        Err(e) => e,
    }
}

async fn delete_template(State(ctx): Ctxt, Path(id): Path<String>) -> Reply {
    match id.parse::<i64>() {
        Ok(n) => templates::delete_template(ctx, n).await,
        Err(_) => template_not_found(&id),
    }
}

async fn list_rules(State(ctx): Ctxt) -> Json<Value> {
    let sources = ctx.config.edit().await;
    let mut list: Vec<_> = sources
        .file()
        .config
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            templates::rule_json(&wire::RuleBody::of(&format!("config-{i}"), r), "config")
        })
        .collect();
    list.extend(
        sources
            .api()
            .rules
            .iter()
            .map(|(id, r)| templates::rule_json(&wire::RuleBody::of(id, r), "api")),
    );
    Json(json!({ "rules": list }))
}

async fn create_rule(State(ctx): Ctxt, b: Result<Json<wire::RuleBody>, JsonRejection>) -> Reply {
    match body(b) {
        Ok(b) => templates::create_rule(ctx, b).await,
        Err(e) => e,
    }
}

async fn delete_rule(State(ctx): Ctxt, Path(id): Path<String>) -> Reply {
    templates::delete_rule(ctx, id).await
}

#[derive(Debug, serde::Deserialize)]
struct CallbacksQuery {
    status: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/callbacks?status=pending|sent|failed` (R-CB-4): the outbox, newest first.
async fn list_callbacks(
    State(ctx): Ctxt,
    axum::extract::Query(q): axum::extract::Query<CallbacksQuery>,
) -> Reply {
    if let Some(s) = q.status.as_deref() {
        if !matches!(s, "pending" | "sent" | "failed") {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_status",
                "status must be pending, sent or failed",
            );
        }
    }
    let limit = q
        .limit
        .unwrap_or(crate::db::PAGE_DEFAULT)
        .clamp(1, crate::db::PAGE_MAX);
    match ctx.sink.db().callbacks(q.status, limit).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .into_iter()
                .map(|c| {
                    json!({
                        "event_id": c.event_id,
                        "event_type": c.event_type,
                        "url": c.url,
                        "status": c.status,
                        "attempts": c.attempts,
                        "created_ms": c.created_ms,
                        "next_attempt_ms": (c.status == "pending").then_some(c.next_ms),
                        "sent_ms": c.sent_ms,
                        "last_error": c.last_error,
                        "body": c.body,
                    })
                })
                .collect();
            (StatusCode::OK, Json(json!({ "callbacks": list })))
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "index_read_failed",
            &e.to_string(),
        ),
    }
}

/// `POST /v1/callbacks/{event_id}/retry`: a failed event goes out again now, with a
/// new `max_age` window and the same event id.
async fn retry_callback(State(ctx): Ctxt, Path(id): Path<String>) -> Reply {
    match ctx.sink.db().retry_callback(id.clone()).await {
        Ok(Some(true)) => (
            StatusCode::OK,
            Json(json!({"event_id": id, "status": "pending"})),
        ),
        Ok(Some(false)) => error(
            StatusCode::CONFLICT,
            "not_failed",
            "only a failed event can be retried; pending ones are being retried already",
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such callback event"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "index_write_failed",
            &e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// R-CB-4: `/healthz` says `callbacks_failing` once the oldest undelivered event is
    /// more than 5 minutes old; a full spool says so first.
    #[test]
    fn health_says_callbacks_failing_after_five_minutes() {
        let now = 1_000_000_000;
        assert_eq!(health_status(false, None, now), "ok");
        assert_eq!(health_status(false, Some(now - 300_000), now), "ok");
        assert_eq!(
            health_status(false, Some(now - 300_001), now),
            "callbacks_failing"
        );
        assert_eq!(health_status(true, Some(now - 999_999), now), "spool_full");
    }
}
