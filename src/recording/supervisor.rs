//! The recording supervisor: the one place that decides what is recorded and when. It
//! listens to the hub's announcements (a stream was published, a publish ended), to the
//! API's "tasks changed" notices, and to its own timer, set for the next moment a task
//! window opens or closes or a finished task becomes prunable — it never polls.
//!
//! - A publish records its template's plans (R-TP-1…3, with the config as of the
//!   publish, R-TP-6).
//! - A record task records while its window is open and its stream is live (R-TK-2);
//!   a stream that comes back inside the window is recorded again into new files; a
//!   real-time task starts at the newest keyframe (R-TK-3) or with its pre-roll (R-TK-6);
//!   a stop or the end of the window ends its files (R-TK-4); final tasks are pruned
//!   `[record] task_history` after their end (R-TK-5).
//!
//! Decisions go to a [`Launch`]; the clock is injected, so every rule above has a unit
//! test on tokio's paused clock below.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use media::Millis;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Launch, RecordStart, StartAt, TaskRun};
use crate::clock::Clock;
use crate::config::RunningConfig;
use crate::ingest::hub::{HubEvent, Publication};
use crate::model::{StreamId, Task, TaskStatus};
use crate::state::State;
use crate::tasks::Tasks;

/// The API's way to tell the supervisor the task table changed.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl SupervisorHandle {
    /// Returns once the supervisor has acted on the change (a real-time task is
    /// `recording` when its creation is answered), or at once if it has stopped.
    pub async fn tasks_changed(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(done).is_ok() {
            let _ = wait.await;
        }
    }
}

struct Live {
    conn_id: u64,
    ring: ring::RingHandle,
    query: Option<String>,
}

/// A task's recording in progress: the publish it records and the signal that ends it.
struct Running {
    conn_id: u64,
    stop: CancellationToken,
}

pub struct Supervisor {
    tasks: Arc<Tasks>,
    config: Arc<RunningConfig>,
    clock: Arc<dyn Clock>,
    launcher: Arc<dyn Launch>,
    /// Where pruned tasks are deleted (None in unit tests).
    store: Option<State>,
    live: HashMap<StreamId, Live>,
    running: HashMap<String, Running>,
    notices: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
}

impl Supervisor {
    pub fn new(
        tasks: Arc<Tasks>,
        config: Arc<RunningConfig>,
        clock: Arc<dyn Clock>,
        launcher: Arc<dyn Launch>,
        store: Option<State>,
    ) -> (Self, SupervisorHandle) {
        let (tx, notices) = mpsc::unbounded_channel();
        (
            Supervisor {
                tasks,
                config,
                clock,
                launcher,
                store,
                live: HashMap::new(),
                running: HashMap::new(),
                notices,
            },
            SupervisorHandle { tx },
        )
    }

    /// Acts on hub events, task changes and its timer until `shutdown`.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<HubEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let next = self.pass();
            let sleep = match next {
                Some(at) => {
                    let ms = at.saturating_sub(self.clock.now_ms()).max(0) as u64;
                    Duration::from_millis(ms)
                }
                // Nothing scheduled: only an event or a notice can change that.
                None => Duration::from_secs(86_400),
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => return,
                },
                notice = self.notices.recv() => {
                    if let Some(done) = notice {
                        self.pass();
                        let _ = done.send(());
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn on_event(&mut self, ev: HubEvent) {
        match ev {
            HubEvent::Published(p) => self.on_publish(p),
            HubEvent::Unpublished { id, conn_id } => {
                // A takeover's new publisher may already have replaced the entry.
                if self.live.get(&id).is_some_and(|l| l.conn_id == conn_id) {
                    self.live.remove(&id);
                }
            }
        }
    }

    fn on_publish(&mut self, p: Publication) {
        let Publication {
            id,
            conn_id,
            ring,
            config,
            query,
            start,
        } = p;
        let (plans, template) = config.plans_for(&id);
        let notice =
            crate::callback::notice(&config, config.template_for(&id).0, query.as_deref(), "");
        if plans.is_empty() {
            info!(stream = %id, template = %template, "not recording: the template records nothing");
        } else {
            self.launcher.launch(RecordStart {
                id: id.clone(),
                ring: ring.clone(),
                plans,
                template,
                utc_offset_s: config.config.utc_offset_s(),
                track_wait: Millis::from_secs_f64(config.config.ingest.track_wait),
                at: StartAt::FromStart,
                task: None,
                notice,
            });
        }
        self.live.insert(
            id,
            Live {
                conn_id,
                ring,
                query,
            },
        );
        // Task windows already open start on this publish now, while `start` still
        // holds the stream's beginning in the ring.
        self.pass();
        drop(start);
    }

    /// Starts, restarts and ends task recordings as the clock and the live streams say;
    /// prunes old tasks. Returns when the next pass is due (unix ms), if ever.
    fn pass(&mut self) -> Option<i64> {
        let now_ms = self.clock.now_ms();
        let now_s = now_ms.div_euclid(1000);
        // Stopped (or forgotten) tasks end their files now.
        let tasks = &self.tasks;
        self.running.retain(|id, r| {
            let over = tasks.is_over(id);
            if over {
                r.stop.cancel();
            }
            !over
        });
        let mut next: Option<i64> = None;
        let mut due = |at_s: i64| {
            let at = at_s.saturating_mul(1000);
            next = Some(next.map_or(at, |n: i64| n.min(at)));
        };
        for t in self.tasks.pending() {
            if now_s >= t.end_time {
                if let Some(r) = self.running.remove(&t.task_id) {
                    r.stop.cancel();
                }
                self.tasks.set_status(&t.task_id, TaskStatus::Finished);
                info!(task = %t.task_id, "record task window closed");
                continue;
            }
            if now_s < t.start_time {
                due(t.start_time);
                continue;
            }
            due(t.end_time);
            let id = t.stream_id();
            let Some(live) = self.live.get(&id) else {
                // Not live: its recording ended with the publish, or waits in its
                // template's continuation window (R-SP-1) — the entry stays, so the end
                // of the task's window still stops that recording.
                self.tasks.set_status(&t.task_id, TaskStatus::Waiting);
                continue;
            };
            if self
                .running
                .get(&t.task_id)
                .is_some_and(|r| r.conn_id == live.conn_id)
            {
                continue;
            }
            // Live, and not yet recorded on this publish (new, or back inside the window).
            let stop = CancellationToken::new();
            let (conn_id, ring, query) = (live.conn_id, live.ring.clone(), live.query.clone());
            self.running.insert(
                t.task_id.clone(),
                Running {
                    conn_id,
                    stop: stop.clone(),
                },
            );
            self.tasks.set_status(&t.task_id, TaskStatus::Recording);
            self.start_task(&t, id, ring, query.as_deref(), stop, now_ms);
        }
        let history = self.config.snapshot().config.record.task_history;
        for id in self.tasks.prune(now_s, history) {
            self.delete_stored(id, history);
        }
        if let Some(at) = self.tasks.next_prune(history) {
            due(at);
        }
        next
    }

    fn start_task(
        &self,
        task: &Task,
        id: StreamId,
        ring: ring::RingHandle,
        query: Option<&str>,
        stop: CancellationToken,
        now_ms: i64,
    ) {
        // The template as of now: a task's template is looked up when its recording
        // starts, like a publish's.
        let config = self.config.snapshot();
        let (plans, template) = config.template_plans(task.template_id);
        if plans.is_empty() {
            info!(task = %task.task_id, stream = %id, "task template records nothing");
            return;
        }
        let at = if task.preroll_seconds > 0 {
            // Reaches back before the request, limited by what the ring holds (R-TK-6).
            StartAt::Preroll(Millis::from_secs(
                i64::try_from(task.preroll_seconds).unwrap_or(i64::MAX),
            ))
        } else if task.realtime {
            StartAt::Newest
        } else {
            // A scheduled window that opened while the stream was live starts at the
            // first keyframe at or after its start (the ring holds what came since).
            StartAt::Since(Millis::from_ms(
                now_ms
                    .saturating_sub(task.start_time.saturating_mul(1000))
                    .max(0),
            ))
        };
        self.launcher.launch(RecordStart {
            id,
            ring,
            plans,
            template,
            utc_offset_s: config.config.utc_offset_s(),
            track_wait: Millis::from_secs_f64(config.config.ingest.track_wait),
            at,
            task: Some(TaskRun {
                task_id: task.task_id.clone(),
                stop,
            }),
            notice: crate::callback::notice(&config, task.template_id, query, &task.extension),
        });
    }

    fn delete_stored(&self, id: String, history_s: u64) {
        let Some(store) = self.store.clone() else {
            return;
        };
        // A failed delete brings the task back at the next start, and it is pruned again
        // then; meanwhile the supervisor goes on.
        tokio::spawn(async move {
            match store.delete("tasks", &id).await {
                Ok(()) => {
                    info!(task = %id, history_s, "record task pruned: ended longer ago than record.task_history")
                }
                Err(e) => {
                    warn!(task = %id, "record task pruned from memory, but its stored copy could not be deleted: {e}")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::ingest::hub::{Hub, LiveStream};
    use crate::tasks::{CreateContext, NewTask};
    use std::sync::Mutex;

    /// What the supervisor asked for, in order.
    #[derive(Default)]
    struct Launched(Mutex<Vec<RecordStart>>);

    impl Launch for Launched {
        fn launch(&self, start: RecordStart) {
            self.0.lock().unwrap().push(start);
        }
    }

    impl Launched {
        fn take(&self) -> Vec<RecordStart> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    const T0: i64 = 1_800_000_000_000;

    struct Rig {
        hub: Arc<Hub>,
        tasks: Arc<Tasks>,
        launched: Arc<Launched>,
        handle: SupervisorHandle,
        clock: Arc<TokioClock>,
        config: Arc<RunningConfig>,
        writers: HashMap<u64, ring::Writer>,
        shutdown: CancellationToken,
    }

    fn rig(toml: &str) -> Rig {
        let loaded = crate::config::parse(toml, None).expect("test config");
        let config = RunningConfig::new(loaded, None);
        let (hub, events) = Hub::new();
        let tasks = Arc::new(Tasks::default());
        let launched = Arc::new(Launched::default());
        let clock = TokioClock::starting_at(T0);
        let (sup, handle) = Supervisor::new(
            tasks.clone(),
            config.clone(),
            clock.clone(),
            launched.clone(),
            None,
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(sup.run(events, shutdown.clone()));
        Rig {
            hub,
            tasks,
            launched,
            handle,
            clock,
            config,
            writers: HashMap::new(),
            shutdown,
        }
    }

    /// Lets the supervisor act on what was sent to it (no time passes).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn id() -> StreamId {
        StreamId::new("localhost", "live", "cam")
    }

    impl Rig {
        fn now_s(&self) -> i64 {
            self.clock.now_ms().div_euclid(1000)
        }

        async fn publish(&mut self, conn_id: u64) {
            let (writer, handle) = ring::ring(ring::RingConfig {
                max_duration_ms: Millis::from_ms(2000),
                max_bytes: 1 << 20,
            });
            let entry = LiveStream {
                conn_id,
                peer: "127.0.0.1:1".parse().unwrap(),
                started: std::time::SystemTime::now(),
                cancel: CancellationToken::new(),
                ring: handle,
                query: None,
                config: self.config.snapshot(),
                info: Default::default(),
            };
            self.hub
                .register(id(), entry, crate::config::OnDuplicate::Reject, 10)
                .unwrap();
            self.writers.insert(conn_id, writer);
            settle().await;
        }

        async fn unpublish(&mut self, conn_id: u64) {
            if let Some(mut w) = self.writers.remove(&conn_id) {
                w.close();
            }
            self.hub.unregister(&id(), conn_id);
            settle().await;
        }

        async fn task(&self, start: Option<i64>, end: i64, preroll: u64) -> Task {
            let req = NewTask {
                domain: "localhost".into(),
                app: "live".into(),
                stream: "cam".into(),
                start_time: start,
                end_time: end,
                preroll_seconds: preroll,
                ..Default::default()
            };
            let cx = CreateContext {
                now_ms: self.clock.now_ms(),
                live: self.hub.publisher(&id()).is_some(),
                max_tasks_per_stream: 10,
                template_exists: &|_| true,
            };
            let t = self.tasks.create(req, &cx).expect("task created");
            self.handle.tasks_changed().await;
            t
        }

        fn status(&self, t: &Task) -> Option<TaskStatus> {
            self.tasks.get(&t.task_id).map(|t| t.status)
        }
    }

    fn task_starts(v: &[RecordStart]) -> Vec<(String, StartAt)> {
        v.iter()
            .filter_map(|s| s.task.as_ref().map(|t| (t.task_id.clone(), s.at)))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_records_its_template_from_the_start_of_the_stream() {
        let mut r = rig("[[template]]\nid = 3\nflv = { enable = true, record_interval = 60 }\nhls = { enable = true }\n[[rule]]\ndomain = \"localhost\"\ntemplate_id = 3\n");
        r.publish(1).await;
        let v = r.launched.take();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].at, StartAt::FromStart);
        assert!(v[0].task.is_none());
        let formats: Vec<_> = v[0].plans.iter().map(|p| p.format).collect();
        assert_eq!(formats, vec![record::Format::Flv, record::Format::Hls]);
        assert_eq!(v[0].plans[0].record_interval_ms, Millis::from_ms(60_000));
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_template_that_records_nothing_launches_nothing() {
        let mut r = rig("[record]\ndefault_template = -1\n");
        r.publish(1).await;
        assert!(r.launched.take().is_empty());
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_scheduled_window_opens_while_live_and_closes_at_its_end() {
        let mut r = rig("");
        r.publish(1).await;
        r.launched.take();
        let now = r.now_s();
        let t = r.task(Some(now + 3600), now + 7200, 0).await;
        assert_eq!(r.status(&t), Some(TaskStatus::Scheduled));
        assert!(r.launched.take().is_empty());
        // One second before the window: nothing yet.
        tokio::time::sleep(Duration::from_secs(3599)).await;
        settle().await;
        assert_eq!(r.status(&t), Some(TaskStatus::Scheduled));
        // The window opens: recorded from the first keyframe at or after its start.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        settle().await;
        assert_eq!(r.status(&t), Some(TaskStatus::Recording));
        let v = r.launched.take();
        assert_eq!(v.len(), 1);
        match v[0].at {
            StartAt::Since(ms) => assert!((0..=1500).contains(&ms.as_ms()), "{ms}"),
            other => panic!("{other:?}"),
        }
        let stop = v[0].task.as_ref().unwrap().stop.clone();
        assert!(!stop.is_cancelled());
        // The window closes: the recording ends, the task is finished.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        settle().await;
        assert_eq!(r.status(&t), Some(TaskStatus::Finished));
        assert!(stop.is_cancelled());
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_waits_for_its_stream_and_records_each_return_into_new_files() {
        let mut r = rig("");
        let now = r.now_s();
        let t = r.task(Some(now + 10), now + 600, 0).await;
        // Created before its stream exists (R-TK-2); the window opens with nobody live.
        tokio::time::sleep(Duration::from_secs(11)).await;
        settle().await;
        assert_eq!(r.status(&t), Some(TaskStatus::Waiting));
        assert!(r.launched.take().is_empty());
        // The stream arrives: template and task both record it at once.
        r.publish(1).await;
        assert_eq!(r.status(&t), Some(TaskStatus::Recording));
        let v = r.launched.take();
        assert_eq!(v.len(), 2, "template + task");
        assert_eq!(task_starts(&v).len(), 1);
        // It drops: waiting again (its files end with the ring, not by a stop).
        let stop = v.iter().find_map(|s| s.task.as_ref()).unwrap().stop.clone();
        r.unpublish(1).await;
        assert_eq!(r.status(&t), Some(TaskStatus::Waiting));
        assert!(
            !stop.is_cancelled(),
            "the recorder drains the closed ring itself"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        settle().await;
        assert!(r.launched.take().is_empty());
        // It comes back inside the window: a new recording on the new publish.
        r.publish(2).await;
        assert_eq!(r.status(&t), Some(TaskStatus::Recording));
        let v = r.launched.take();
        assert_eq!(task_starts(&v).len(), 1);
        // Nothing more while it stays live.
        tokio::time::sleep(Duration::from_secs(60)).await;
        settle().await;
        assert!(r.launched.take().is_empty());
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_realtime_task_starts_at_once_with_its_preroll_and_stop_ends_it() {
        let mut r = rig("");
        r.publish(1).await;
        r.launched.take();
        let now = r.now_s();
        let t = r.task(None, now + 60, 5).await;
        // Recording when the creation is answered (R-TK-3), reaching 5 s back (R-TK-6).
        assert_eq!(r.status(&t), Some(TaskStatus::Recording));
        let v = r.launched.take();
        assert_eq!(
            task_starts(&v),
            vec![(t.task_id.clone(), StartAt::Preroll(Millis::from_ms(5000)))]
        );
        let stop = v[0].task.as_ref().unwrap().stop.clone();
        // Without pre-roll a real-time task starts at the newest keyframe.
        let t2 = r.task(None, now + 60, 0).await;
        assert_eq!(
            task_starts(&r.launched.take()),
            vec![(t2.task_id.clone(), StartAt::Newest)]
        );
        // Stop (R-TK-4): its files end now and it stays stopped past its end.
        r.tasks.stop(&t.task_id);
        r.handle.tasks_changed().await;
        assert!(stop.is_cancelled());
        tokio::time::sleep(Duration::from_secs(120)).await;
        settle().await;
        assert_eq!(r.status(&t), Some(TaskStatus::Stopped));
        assert_eq!(r.status(&t2), Some(TaskStatus::Finished));
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_records_the_new_publisher_and_the_old_ones_end_is_ignored() {
        let mut r = rig("[rtmp]\non_duplicate = \"takeover\"\n");
        r.publish(1).await;
        let now = r.now_s();
        let t = r.task(None, now + 600, 0).await;
        r.launched.take();
        // conn 2 takes over; conn 1's end arrives afterwards.
        let (writer, handle) = ring::ring(ring::RingConfig {
            max_duration_ms: Millis::from_ms(2000),
            max_bytes: 1 << 20,
        });
        let entry = LiveStream {
            conn_id: 2,
            peer: "127.0.0.1:2".parse().unwrap(),
            started: std::time::SystemTime::now(),
            cancel: CancellationToken::new(),
            ring: handle,
            query: None,
            config: r.config.snapshot(),
            info: Default::default(),
        };
        r.hub
            .register(id(), entry, crate::config::OnDuplicate::Takeover, 10)
            .unwrap();
        r.writers.insert(2, writer);
        settle().await;
        r.unpublish(1).await;
        r.handle.tasks_changed().await;
        assert_eq!(r.status(&t), Some(TaskStatus::Recording));
        let v = r.launched.take();
        assert_eq!(v.len(), 2, "template + task on the new publisher");
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn final_tasks_are_pruned_after_the_task_history_and_not_before() {
        let mut r = rig("[record]\ntask_history = 100\n");
        r.publish(1).await;
        let now = r.now_s();
        let t = r.task(None, now + 10, 0).await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        settle().await;
        assert_eq!(r.status(&t), Some(TaskStatus::Finished));
        // Still readable until end + history…
        tokio::time::sleep(Duration::from_secs(98)).await;
        settle().await;
        assert_eq!(r.status(&t), Some(TaskStatus::Finished));
        // …and gone after, with no event to wake the supervisor: its own timer did.
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(r.status(&t), None);
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_publish_start_reader_keeps_the_first_keyframe_for_late_starts() {
        // The hub's start reader pins the ring's beginning until the supervisor has
        // launched, so a recording started after several GOPs arrived still gets the
        // first one (subscribing from the start, as the daemon does).
        let (mut writer, handle) = ring::ring(ring::RingConfig {
            max_duration_ms: Millis::from_ms(100),
            max_bytes: 1 << 20,
        });
        let pin = handle.subscribe();
        for i in 0..10i64 {
            writer.push(
                media::MediaEvent::Packet(media::Packet {
                    codec: media::Codec::Video(media::VideoCodec::H264),
                    dts: Millis::from_secs(i),
                    cts: 0,
                    key: true,
                    flv: bytes::Bytes::from_static(b"x"),
                    data: bytes::Bytes::from_static(b"x"),
                }),
                media::WallMillis::from_unix_ms(i * 1000),
            );
        }
        let mut late = handle.subscribe_from_start();
        drop(pin);
        let first = loop {
            match late.try_next() {
                Some(ring::Item::Event(media::MediaEvent::Packet(p), _)) => break p.dts,
                Some(_) => continue,
                None => panic!("nothing to read"),
            }
        };
        assert_eq!(first, Millis::ZERO);
    }
}
