//! The table of record tasks (R-TK-1…7): validation at creation, the state each task is
//! in, listing, stopping and pruning. It owns the tasks; it does not start anything: the
//! recording supervisor (`recording/supervisor.rs`) reads the table, decides with its
//! clock, and records its decisions here (`Recording`, `Waiting`, `Finished`). Time is an
//! argument everywhere, so the rules are unit-tested without waiting.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tracing::info;

use crate::model::{validate_name, StreamId, Task, TaskStatus};

/// Limits of R-TK-2 and R-TK-5.
pub const MAX_AHEAD_S: i64 = 6 * 86_400;
pub const MAX_SPAN_S: i64 = 86_400;
pub const MAX_PREROLL_S: u64 = 600;
/// `extension` is free text for the caller's callbacks; bounded so a task stays a small
/// object in the state store.
const MAX_EXTENSION_BYTES: usize = 4096;

/// What a caller asks for (R-TK-1); the API's wire shape converts into it.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub end_time: i64,
    pub start_time: Option<i64>,
    pub template_id: Option<i64>,
    pub extension: String,
    pub stream_type: u8,
    pub preroll_seconds: u64,
}

/// What creation checks against besides the request: the moment, whether the stream is
/// live, and the running config's limits.
pub struct CreateContext<'a> {
    /// Unix milliseconds (task ids carry them, so ids of two runs hardly ever meet).
    pub now_ms: i64,
    pub live: bool,
    pub max_tasks_per_stream: usize,
    pub template_exists: &'a dyn Fn(i64) -> bool,
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

/// Filters of `GET /v1/tasks` (R-TK-4).
#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    pub domain: Option<String>,
    pub app: Option<String>,
    pub stream: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

#[derive(Default)]
pub struct Tasks {
    entries: Mutex<HashMap<String, Task>>,
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        // Every critical section is a lookup or a single-field change: a panic elsewhere
        // cannot leave the table half-changed, so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and adds a task (R-TK-1…3, R-TK-5, R-TK-7), `Scheduled` until the
    /// supervisor's next pass.
    pub fn create(&self, req: NewTask, cx: &CreateContext<'_>) -> Result<Task, TaskError> {
        let now = cx.now_ms.div_euclid(1000);
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
        let id = StreamId::new(&req.domain, &req.app, &req.stream);
        let start = req.start_time.unwrap_or(now);
        if req.start_time.is_none() && !cx.live {
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
        let span = req.end_time.saturating_sub(start);
        if span > MAX_SPAN_S {
            return Err(bad(
                "task_too_long",
                format!("a task spans at most 24 h ({MAX_SPAN_S} s); this one {span} s"),
            ));
        }
        if start > now.saturating_add(MAX_AHEAD_S) {
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
        let template_id = req.template_id.unwrap_or(0);
        if template_id != 0 && !(cx.template_exists)(template_id) {
            return Err(TaskError {
                status: 404,
                code: "template_not_found",
                message: format!("no template {template_id}"),
            });
        }
        let max = cx.max_tasks_per_stream;
        let mut entries = self.lock();
        let overlapping = entries
            .values()
            .filter(|t| {
                t.status != TaskStatus::Stopped
                    && t.domain == req.domain
                    && t.app == req.app
                    && t.stream == req.stream
                    && t.start_time < req.end_time
                    && start < t.end_time
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
        // UUIDv7 (R-SC-1): unique across nodes sharing a store without asking them, and
        // time-ordered like the ids before it. The store's exclusive create checks it.
        let task_id = uuid::Uuid::now_v7().to_string();
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
            status: TaskStatus::Scheduled,
        };
        info!(task = %task_id, stream = %id, start, end = task.end_time, template_id, "record task created");
        entries.insert(task_id, task.clone());
        Ok(task)
    }

    /// Forgets a task whose creation could not be persisted.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Takes out the final tasks whose `end_time` is `history` seconds past; returns their
    /// ids (the caller deletes their state objects).
    pub fn prune(&self, now_s: i64, history_s: u64) -> Vec<String> {
        let history = history_s.min(i64::MAX as u64 / 2) as i64;
        let mut entries = self.lock();
        let old: Vec<String> = entries
            .values()
            .filter(|t| t.status.is_final() && t.end_time.saturating_add(history) <= now_s)
            .map(|t| t.task_id.clone())
            .collect();
        for id in &old {
            entries.remove(id);
        }
        old
    }

    /// How many tasks are in each status (for `/metrics`), every status present.
    pub fn count_by_status(&self) -> BTreeMap<TaskStatus, usize> {
        let mut out: BTreeMap<TaskStatus, usize> =
            TaskStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for t in self.lock().values() {
            *out.entry(t.status).or_insert(0) += 1;
        }
        out
    }

    /// Puts back the tasks a previous run persisted (R-TK-5); the ones not final start
    /// over as `Scheduled` and the supervisor takes it from there.
    pub fn load(&self, tasks: Vec<Task>) -> usize {
        let mut entries = self.lock();
        let n = tasks.len();
        for mut t in tasks {
            if !t.status.is_final() {
                t.status = TaskStatus::Scheduled;
            }
            entries.insert(t.task_id.clone(), t);
        }
        n
    }

    /// The stored tasks as another node left them (R-SC-1): tasks made elsewhere are
    /// added (as `load` does) and a task that went final elsewhere (stopped through
    /// another node, or its window closed there) is final here too; nothing else of a
    /// stored task overrides this node's own state. True when something changed.
    pub fn merge(&self, stored: Vec<Task>) -> bool {
        let mut entries = self.lock();
        let mut changed = false;
        for mut t in stored {
            match entries.get_mut(&t.task_id) {
                Some(mine) => {
                    if t.status.is_final() && !mine.status.is_final() {
                        info!(task = %t.task_id, status = t.status.as_str(), "record task ended through another node");
                        mine.status = t.status;
                        changed = true;
                    }
                }
                None => {
                    if !t.status.is_final() {
                        t.status = TaskStatus::Scheduled;
                    }
                    info!(task = %t.task_id, stream = %t.stream_id(), "record task created through another node");
                    entries.insert(t.task_id.clone(), t);
                    changed = true;
                }
            }
        }
        changed
    }

    pub fn get(&self, id: &str) -> Option<Task> {
        self.lock().get(id).cloned()
    }

    /// Tasks matching the filters, oldest first.
    pub fn list(&self, f: &TaskFilter) -> Vec<Task> {
        let mut v: Vec<Task> = self
            .lock()
            .values()
            .filter(|t| {
                f.domain.as_ref().is_none_or(|d| *d == t.domain)
                    && f.app.as_ref().is_none_or(|a| *a == t.app)
                    && f.stream.as_ref().is_none_or(|s| *s == t.stream)
                    && f.from.is_none_or(|from| t.end_time > from)
                    && f.to.is_none_or(|to| t.start_time < to)
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created, &a.task_id).cmp(&(b.created, &b.task_id)));
        v
    }

    /// Ends a task now (R-TK-4): `Stopped` unless it already finished. The supervisor
    /// ends its recording at its next pass.
    pub fn stop(&self, id: &str) -> Option<Task> {
        let mut entries = self.lock();
        let t = entries.get_mut(id)?;
        if t.status != TaskStatus::Finished {
            t.status = TaskStatus::Stopped;
            info!(task = id, "record task stopped");
        }
        Some(t.clone())
    }

    /// The tasks that are not final yet (what the supervisor schedules).
    pub fn pending(&self) -> Vec<Task> {
        self.lock()
            .values()
            .filter(|t| !t.status.is_final())
            .cloned()
            .collect()
    }

    /// When the next final task becomes prunable (unix s), if any.
    pub fn next_prune(&self, history_s: u64) -> Option<i64> {
        let history = history_s.min(i64::MAX as u64 / 2) as i64;
        self.lock()
            .values()
            .filter(|t| t.status.is_final())
            .map(|t| t.end_time.saturating_add(history))
            .min()
    }

    /// Records the supervisor's decision, unless the task went final meanwhile (a stop
    /// over the API wins over a pass that started before it).
    pub fn set_status(&self, id: &str, status: TaskStatus) {
        if let Some(t) = self.lock().get_mut(id) {
            if !t.status.is_final() {
                t.status = status;
            }
        }
    }

    /// Whether `id` exists and is final (or gone): its recording must end.
    pub fn is_over(&self, id: &str) -> bool {
        self.lock().get(id).is_none_or(|t| t.status.is_final())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(start: Option<i64>, end: i64) -> NewTask {
        NewTask {
            domain: "d".into(),
            app: "live".into(),
            stream: "s".into(),
            start_time: start,
            end_time: end,
            ..Default::default()
        }
    }

    fn cx(now_s: i64, live: bool) -> CreateContext<'static> {
        CreateContext {
            now_ms: now_s * 1000,
            live,
            max_tasks_per_stream: 2,
            template_exists: &|id| id == 7,
        }
    }

    fn code(r: Result<Task, TaskError>) -> &'static str {
        r.err().map(|e| e.code).unwrap_or("ok")
    }

    #[test]
    fn creation_rules() {
        let t = Tasks::default();
        let now = 1_000_000;
        assert_eq!(
            code(t.create(req(None, now + 60), &cx(now, false))),
            "stream_not_live"
        );
        assert_eq!(code(t.create(req(None, now + 60), &cx(now, true))), "ok");
        assert_eq!(
            code(t.create(req(Some(now + 10), now + 10), &cx(now, false))),
            "invalid_time_range"
        );
        assert_eq!(
            code(t.create(req(Some(now - 100), now - 1), &cx(now, false))),
            "invalid_time_range"
        );
        assert_eq!(
            code(t.create(req(Some(now), now + MAX_SPAN_S + 1), &cx(now, false))),
            "task_too_long"
        );
        assert_eq!(
            code(t.create(req(Some(i64::MIN), i64::MAX), &cx(now, false))),
            "task_too_long"
        );
        assert_eq!(
            code(t.create(
                req(Some(now + MAX_AHEAD_S + 1), now + MAX_AHEAD_S + 2),
                &cx(now, false)
            )),
            "start_too_far"
        );
        let mut r = req(Some(now + 1), now + 2);
        r.template_id = Some(8);
        assert_eq!(
            code(t.create(r.clone(), &cx(now, false))),
            "template_not_found"
        );
        r.template_id = Some(7);
        r.preroll_seconds = MAX_PREROLL_S + 1;
        assert_eq!(
            code(t.create(r.clone(), &cx(now, false))),
            "invalid_preroll"
        );
        r.preroll_seconds = 0;
        r.extension = "x".repeat(MAX_EXTENSION_BYTES + 1);
        assert_eq!(
            code(t.create(r.clone(), &cx(now, false))),
            "invalid_extension"
        );
        r.extension.clear();
        r.stream_type = 1;
        assert_eq!(
            code(t.create(r.clone(), &cx(now, false))),
            "stream_type_not_supported"
        );
        r.stream_type = 0;
        r.stream = "../x".into();
        assert_eq!(code(t.create(r, &cx(now, false))), "invalid_name");
    }

    #[test]
    fn overlapping_tasks_are_limited_and_stopped_ones_do_not_count() {
        let t = Tasks::default();
        let now = 1_000_000;
        let a = t
            .create(req(Some(now + 10), now + 100), &cx(now, false))
            .unwrap();
        t.create(req(Some(now + 50), now + 200), &cx(now, false))
            .unwrap();
        assert_eq!(
            code(t.create(req(Some(now + 90), now + 95), &cx(now, false))),
            "too_many_tasks"
        );
        // Not overlapping the first two: fine.
        assert_eq!(
            code(t.create(req(Some(now + 200), now + 300), &cx(now, false))),
            "ok"
        );
        t.stop(&a.task_id);
        assert_eq!(
            code(t.create(req(Some(now + 90), now + 95), &cx(now, false))),
            "ok"
        );
        // Ids are unique even within one second.
        let ids: std::collections::HashSet<_> = t
            .list(&TaskFilter::default())
            .into_iter()
            .map(|t| t.task_id)
            .collect();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn stop_is_final_and_a_finished_task_stays_finished() {
        let t = Tasks::default();
        let now = 1_000_000;
        let a = t
            .create(req(Some(now + 10), now + 100), &cx(now, false))
            .unwrap();
        t.set_status(&a.task_id, TaskStatus::Finished);
        assert_eq!(t.stop(&a.task_id).unwrap().status, TaskStatus::Finished);
        let b = t
            .create(req(Some(now + 10), now + 100), &cx(now, false))
            .unwrap();
        assert_eq!(t.stop(&b.task_id).unwrap().status, TaskStatus::Stopped);
        // A pass that decided before the stop does not undo it.
        t.set_status(&b.task_id, TaskStatus::Recording);
        assert_eq!(t.get(&b.task_id).unwrap().status, TaskStatus::Stopped);
        assert!(t.is_over(&b.task_id) && t.is_over("nope"));
        let counts = t.count_by_status();
        assert_eq!(counts.len(), 5);
        assert_eq!(counts[&TaskStatus::Finished], 1);
        assert_eq!(counts[&TaskStatus::Stopped], 1);
        assert_eq!(counts[&TaskStatus::Recording], 0);
    }

    #[test]
    fn loaded_tasks_start_over_unless_final() {
        let t = Tasks::default();
        let now = 1_000_000;
        let mut a = t
            .create(req(Some(now + 10), now + 100), &cx(now, false))
            .unwrap();
        let mut b = a.clone();
        a.status = TaskStatus::Recording;
        b.task_id = "other".into();
        b.status = TaskStatus::Stopped;
        let t2 = Tasks::default();
        assert_eq!(t2.load(vec![a.clone(), b]), 2);
        assert_eq!(t2.get(&a.task_id).unwrap().status, TaskStatus::Scheduled);
        assert_eq!(t2.get("other").unwrap().status, TaskStatus::Stopped);
    }
}
