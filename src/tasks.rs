//! Record tasks (R-TK-1…7): record a stream between two times, into files of their own,
//! beside whatever its template records.
//!
//! A scheduler pass every 250 ms starts a task's recording when its window is open and its
//! stream is live, starts it again when the stream reconnects inside the window (a new
//! publisher connection), and ends it at `end_time` or on `stop`. Tasks are persisted in
//! the store (`state.rs`) when created and stopped, and loaded at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::daemon::Ctx;
use crate::ingest::identity::{validate_name, StreamId};

/// Limits of R-TK-2 and R-TK-5.
pub const MAX_AHEAD_S: i64 = 6 * 86_400;
pub const MAX_SPAN_S: i64 = 86_400;
pub const MAX_PREROLL_S: u64 = 600;
/// `extension` is free text for the caller's callbacks; bounded so a task stays a small
/// object in the state store.
const MAX_EXTENSION_BYTES: usize = 4096;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub end_time: i64,
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub template_id: Option<i64>,
    #[serde(default)]
    pub extension: String,
    #[serde(default)]
    pub stream_type: u8,
    #[serde(default)]
    pub preroll_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub task_id: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub start_time: i64,
    pub end_time: i64,
    pub template_id: i64,
    pub extension: String,
    pub stream_type: u8,
    pub preroll_seconds: u64,
    pub created: i64,
    /// Created without `start_time` (R-TK-3): starts at the newest keyframe, not after.
    #[serde(default)]
    pub realtime: bool,
    /// `scheduled` | `recording` | `waiting` (window open, stream not live) | `finished` |
    /// `stopped`.
    pub status: String,
}

/// A refused request: a stable code and a message (SPEC section 13 error shape).
#[derive(Debug, PartialEq)]
pub struct TaskError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn bad(code: &'static str, message: String) -> TaskError {
    TaskError {
        status: 400,
        code,
        message,
    }
}

struct Entry {
    task: Task,
    /// The publisher connection being recorded and the signal that ends that recording.
    running: Option<(u64, CancellationToken)>,
    stopped: bool,
}

#[derive(Default)]
pub struct Tasks {
    entries: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and stores a task (R-TK-1…3, R-TK-5, R-TK-7).
    pub fn create(&self, ctx: &Arc<Ctx>, req: CreateTask) -> Result<Task, TaskError> {
        let now = now_s();
        for (what, v) in [
            ("domain", &req.domain),
            ("app", &req.app),
            ("stream", &req.stream),
        ] {
            if validate_name(v).is_err() {
                return Err(bad(
                    "invalid_name",
                    format!("{what} {v:?} must be 1-128 bytes of [A-Za-z0-9._-]"),
                ));
            }
        }
        if req.stream_type == 1 {
            return Err(bad(
                "stream_type_not_supported",
                "stream_type 1 (a mixed output stream) is not supported: liverec has no mixer"
                    .into(),
            ));
        }
        if req.stream_type > 1 {
            return Err(bad(
                "invalid_stream_type",
                format!("stream_type {} is not 0 or 1", req.stream_type),
            ));
        }
        let id = StreamId {
            domain: req.domain.clone(),
            app: req.app.clone(),
            stream: req.stream.clone(),
        };
        let start = req.start_time.unwrap_or(now);
        if req.start_time.is_none() && ctx.hub.ring(&id).is_none() {
            return Err(TaskError {
                status: 409,
                code: "stream_not_live",
                message: format!(
                    "{id} is not being published: a task without start_time records a live stream"
                ),
            });
        }
        if req.end_time <= start {
            return Err(bad(
                "invalid_time_range",
                format!("end_time {} is not after start_time {start}", req.end_time),
            ));
        }
        if req.end_time <= now {
            return Err(bad(
                "invalid_time_range",
                format!("end_time {} is in the past", req.end_time),
            ));
        }
        if req.end_time - start > MAX_SPAN_S {
            return Err(bad(
                "task_too_long",
                format!(
                    "a task spans at most 24 h ({MAX_SPAN_S} s); this one {} s",
                    req.end_time - start
                ),
            ));
        }
        if start > now + MAX_AHEAD_S {
            return Err(bad(
                "start_too_far",
                format!("start_time may be at most 6 days ahead ({MAX_AHEAD_S} s)"),
            ));
        }
        if req.extension.len() > MAX_EXTENSION_BYTES {
            return Err(bad(
                "invalid_extension",
                format!(
                    "extension is {} bytes; at most {MAX_EXTENSION_BYTES} (it is stored with the task and echoed in callbacks)",
                    req.extension.len()
                ),
            ));
        }
        if req.preroll_seconds > MAX_PREROLL_S {
            return Err(bad(
                "invalid_preroll",
                format!("preroll_seconds is at most {MAX_PREROLL_S}"),
            ));
        }
        let config = ctx.config.load_full();
        let template_id = req.template_id.unwrap_or(0);
        if template_id != 0
            && !config
                .config
                .templates
                .iter()
                .any(|t| *t.get_ref().id.get_ref() == template_id)
        {
            return Err(TaskError {
                status: 404,
                code: "template_not_found",
                message: format!("no template {template_id}"),
            });
        }
        let max = config.config.record.max_tasks_per_stream;
        let mut entries = self.lock();
        let overlapping = entries
            .values()
            .filter(|e| {
                !e.stopped
                    && e.task.domain == req.domain
                    && e.task.app == req.app
                    && e.task.stream == req.stream
                    && e.task.start_time < req.end_time
                    && start < e.task.end_time
            })
            .count();
        if overlapping >= max {
            return Err(TaskError {
                status: 409,
                code: "too_many_tasks",
                message: format!(
                    "{id} already has {overlapping} tasks overlapping this window (record.max_tasks_per_stream = {max})"
                ),
            });
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let task_id = format!("t{:x}{n:04x}", chrono::Utc::now().timestamp_millis());
        let task = Task {
            task_id: task_id.clone(),
            domain: req.domain,
            app: req.app,
            stream: req.stream,
            start_time: start,
            end_time: req.end_time,
            template_id,
            extension: req.extension,
            stream_type: req.stream_type,
            preroll_seconds: req.preroll_seconds,
            created: now,
            realtime: req.start_time.is_none(),
            status: "scheduled".into(),
        };
        info!(task = %task_id, stream = %id, start, end = task.end_time, template_id, "record task created");
        entries.insert(
            task_id,
            Entry {
                task: task.clone(),
                running: None,
                stopped: false,
            },
        );
        drop(entries);
        // A real-time task starts now, not at the next scheduler pass.
        self.tick(ctx);
        Ok(self.get(&task.task_id).unwrap_or(task))
    }

    /// Forgets a task whose creation could not be persisted.
    pub fn remove(&self, id: &str) {
        if let Some(e) = self.lock().remove(id) {
            if let Some((_, stop)) = e.running {
                stop.cancel();
            }
        }
    }

    /// Takes out the finished and stopped tasks whose `end_time` is `history` seconds past;
    /// returns their ids (the caller deletes their state objects).
    pub fn prune(&self, now: i64, history: u64) -> Vec<String> {
        let history = history.min(i64::MAX as u64 / 2) as i64;
        let mut entries = self.lock();
        let old: Vec<String> = entries
            .values()
            .filter(|e| {
                (e.stopped || e.task.status == "finished")
                    && e.task.end_time.saturating_add(history) <= now
            })
            .map(|e| e.task.task_id.clone())
            .collect();
        for id in &old {
            entries.remove(id);
        }
        old
    }

    /// How many tasks are in each status (for `/metrics`).
    pub fn count_by_status(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for s in ["scheduled", "waiting", "recording", "finished", "stopped"] {
            out.insert(s.to_string(), 0);
        }
        for e in self.lock().values() {
            *out.entry(e.task.status.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Loads the tasks a previous run persisted (R-TK-5); the scheduler takes it from there.
    pub async fn load(
        &self,
        state: &crate::state::State,
    ) -> Result<usize, crate::state::StateError> {
        let tasks: Vec<Task> = state.list("tasks").await?;
        let mut entries = self.lock();
        let n = tasks.len();
        for mut t in tasks {
            let stopped = t.status == "stopped";
            if !stopped && t.status != "finished" {
                t.status = "scheduled".into();
            }
            entries.insert(
                t.task_id.clone(),
                Entry {
                    task: t,
                    running: None,
                    stopped,
                },
            );
        }
        Ok(n)
    }

    pub fn get(&self, id: &str) -> Option<Task> {
        self.lock().get(id).map(|e| e.task.clone())
    }

    /// Tasks matching the filters, oldest first.
    pub fn list(&self, f: &ListFilter) -> Vec<Task> {
        let mut v: Vec<Task> = self
            .lock()
            .values()
            .map(|e| e.task.clone())
            .filter(|t| {
                f.domain.as_ref().is_none_or(|d| *d == t.domain)
                    && f.app.as_ref().is_none_or(|a| *a == t.app)
                    && f.stream.as_ref().is_none_or(|s| *s == t.stream)
                    && f.from.is_none_or(|from| t.end_time > from)
                    && f.to.is_none_or(|to| t.start_time < to)
            })
            .collect();
        v.sort_by(|a, b| (a.created, &a.task_id).cmp(&(b.created, &b.task_id)));
        v
    }

    /// Ends a task now (R-TK-4); its open files are finalized.
    pub fn stop(&self, id: &str) -> Option<Task> {
        let mut entries = self.lock();
        let e = entries.get_mut(id)?;
        if let Some((_, stop)) = e.running.take() {
            stop.cancel();
        }
        if e.task.status != "finished" {
            e.stopped = true;
            e.task.status = "stopped".into();
            info!(task = id, "record task stopped");
        }
        Some(e.task.clone())
    }

    /// One scheduler pass: start, restart and end task recordings.
    pub fn tick(&self, ctx: &Arc<Ctx>) {
        let now = now_s();
        let mut to_start = Vec::new();
        {
            let mut entries = self.lock();
            for e in entries.values_mut() {
                if e.stopped || e.task.status == "finished" {
                    continue;
                }
                if now >= e.task.end_time {
                    if let Some((_, stop)) = e.running.take() {
                        stop.cancel();
                    }
                    e.task.status = "finished".into();
                    info!(task = %e.task.task_id, "record task window closed");
                    continue;
                }
                if now < e.task.start_time {
                    continue;
                }
                let id = StreamId {
                    domain: e.task.domain.clone(),
                    app: e.task.app.clone(),
                    stream: e.task.stream.clone(),
                };
                match ctx.hub.ring(&id) {
                    Some((ring, conn)) => {
                        if e.running.as_ref().is_some_and(|(c, _)| *c == conn) {
                            continue;
                        }
                        // Live, and not yet recorded on this connection (new, or the
                        // stream came back inside the window).
                        let stop = CancellationToken::new();
                        e.running = Some((conn, stop.clone()));
                        e.task.status = "recording".into();
                        to_start.push((e.task.clone(), id, ring, stop));
                    }
                    None => {
                        e.running = None;
                        e.task.status = "waiting".into();
                    }
                }
            }
        }
        for (task, id, ring, stop) in to_start {
            self.start_recording(ctx, task, id, ring, stop);
        }
    }

    fn start_recording(
        &self,
        ctx: &Arc<Ctx>,
        task: Task,
        id: StreamId,
        ring: ring::RingHandle,
        stop: CancellationToken,
    ) {
        let config = ctx.config.load_full();
        let (plans, name) = config.template_plans(task.template_id);
        if plans.is_empty() {
            info!(task = %task.task_id, stream = %id, "task template records nothing");
            return;
        }
        // Pre-roll (R-TK-6) only for the first recording of a real-time task: it reaches
        // back before the request, limited by what the ring holds.
        let preroll_ms = (task.preroll_seconds as i64) * 1000;
        // A scheduled window that opened while the stream was live starts at the first
        // keyframe at or after its start (the ring holds what came since).
        let since_ms = (!task.realtime)
            .then(|| (chrono::Utc::now().timestamp_millis() - task.start_time * 1000).max(0));
        crate::recording::start_plans(
            ctx,
            &config,
            &id,
            &ring,
            plans,
            &name,
            Some(crate::recording::TaskRun {
                task_id: task.task_id.clone(),
                stop,
                preroll_ms,
                since_ms,
            }),
        );
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListFilter {
    pub domain: Option<String>,
    pub app: Option<String>,
    pub stream: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub page_token: Option<String>,
    pub page_size: Option<usize>,
}

/// Runs scheduler passes until shutdown; once a second, old tasks are pruned.
pub async fn scheduler(ctx: Arc<Ctx>) {
    let stop = ctx.shutdown.clone();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => ctx.tasks.tick(&ctx),
            _ = stop.cancelled() => return,
        }
        n += 1;
        if n.is_multiple_of(4) {
            let history = *ctx.config.load().config.record.task_history.get_ref();
            for id in ctx.tasks.prune(now_s(), history) {
                // A failed delete brings the task back at the next start, and it is pruned
                // again then.
                match ctx.state.delete("tasks", &id).await {
                    Ok(()) => {
                        info!(task = %id, history_s = history, "record task pruned: ended longer ago than record.task_history")
                    }
                    Err(e) => {
                        warn!(task = %id, "record task pruned from memory, but its stored copy could not be deleted: {e}")
                    }
                }
            }
        }
    }
}
