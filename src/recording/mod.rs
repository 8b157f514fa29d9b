//! Recorder tasks: one per recording, reading the stream's ring, driving the pure
//! `record::Recorder` and carrying out its outputs through the sink. What to record and
//! when is the supervisor's (`supervisor.rs`); this module only carries it out.

pub mod supervisor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flv::mux::Patch;
use media::{MediaEvent, Millis, Rebaser, WallMillis};
use record::{CutPolicy, FileSummary, Format, Output, Recorder};
use tracing::{debug, error, info, warn};

use crate::callback::event::RecordEvent;
use crate::model::{Plan, StreamId};
use crate::sink::{PlaylistHandle, Rec, RecMeta, Sink, SinkError, SpoolFile};

/// Where a recording starts in the stream's ring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartAt {
    /// Where the push began (`RingHandle::subscribe_from_start`): for a publish that just
    /// began, however much the connection read before the supervisor got here (the hub's
    /// start reader keeps it until the recordings are started), audio that came ahead of
    /// the video's sequence header included; the first keyframe held once that is gone.
    FromStart,
    /// The newest keyframe (a real-time task, R-TK-3).
    Newest,
    /// A keyframe at least this many ms back, or the oldest held (pre-roll, R-TK-6).
    Preroll(Millis),
    /// The first keyframe within the last this many ms (a scheduled window that opened
    /// that long ago while the stream was live).
    Since(Millis),
}

/// What a record task adds to a recording (R-TK): its id (in names and manifests) and
/// the signal that ends it.
#[derive(Clone)]
pub struct TaskRun {
    pub task_id: String,
    pub stop: tokio_util::sync::CancellationToken,
}

/// A decision of the supervisor: record these plans of this stream.
pub struct RecordStart {
    pub id: StreamId,
    pub ring: ring::RingHandle,
    pub plans: Vec<Plan>,
    /// Which template (and rule) said so, for the log.
    pub template: String,
    /// `[record] time_zone` of the config the recording started with.
    pub utc_offset_s: i32,
    /// `[ingest] track_wait`: how long the first file waits for a missing track.
    pub track_wait: Millis,
    pub at: StartAt,
    pub task: Option<TaskRun>,
    /// Where its callbacks go (R-CB), if anywhere.
    pub notice: Option<crate::model::Notice>,
}

/// Carries out the supervisor's decisions. The daemon's is [`Recorders`]; the
/// supervisor's unit tests keep what they are asked instead.
pub trait Launch: Send + Sync + 'static {
    fn launch(&self, start: RecordStart);
}

/// Starts recorder tasks writing through the sink: one task per format of the plan,
/// each reading the ring on its own (a slow or failing format never holds up another).
/// Formats with equal intervals see the same packets and apply the same cut policy, so
/// their files cover the same spans (R-SG-4).
pub struct Recorders {
    pub sink: Arc<Sink>,
    pub tracker: tokio_util::task::TaskTracker,
    /// Recordings whose push ended inside their continuation window (R-SP-1).
    pub splices: Arc<Splices>,
    /// Graceful shutdown: a recording waiting for its stream ends at once.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Which recording a new push of a stream continues: the same stream, format, template
/// (and rule) and task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpliceKey {
    id: StreamId,
    format: &'static str,
    template: String,
    task_id: String,
}

/// Where a continued recording reads the new push from, and (a task's) the signal that
/// now ends it.
pub struct Resume {
    /// Subscribed by the launcher when the push arrived, so the ring keeps the new
    /// push's start (and backpressure holds its publisher) while the recording may
    /// still be writing the end of the last one.
    reader: ring::Reader,
    stop: Option<tokio_util::sync::CancellationToken>,
}

/// The recordings that can continue with a new push of their stream (R-SP-1), each with
/// the channel that push is handed over on: registered when the recording starts (and
/// again after each splice), so a push that returns while the last one is still being
/// written — a reconnect faster than the recorder drains its ring — continues it too.
/// One owner of that state: the launcher takes an entry when a push arrives, the
/// recording takes it back when its window ends or it stops — whoever removes it under
/// the lock decides.
#[derive(Default)]
pub struct Splices {
    waiting: Mutex<HashMap<SpliceKey, Waiting>>,
}

struct Waiting {
    resume: tokio::sync::oneshot::Sender<Resume>,
    /// When the continuation window ends, unix ms; None while the push is live.
    until_ms: Option<i64>,
}

impl Splices {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SpliceKey, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the recording of `key` the one a new push continues; the push arrives on
    /// the returned channel.
    fn register(&self, key: SpliceKey) -> tokio::sync::oneshot::Receiver<Resume> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().insert(
            key,
            Waiting {
                resume: tx,
                until_ms: None,
            },
        );
        rx
    }

    /// The recording ends without waiting (stopped, shutdown): no push continues it.
    /// A push the launcher handed over meanwhile is not recorded by it — it arrived
    /// for a task that has ended or a daemon that is stopping.
    fn withdraw(&self, key: &SpliceKey) {
        self.lock().remove(key);
    }

    /// Whether a recording of `id` may still continue with a new push (registered, or
    /// in its continuation window): its cluster lease is kept meanwhile.
    pub fn holds(&self, id: &StreamId) -> bool {
        self.lock().keys().any(|k| k.id == *id)
    }

    /// The streams with a recording in its continuation window, each with the latest
    /// end of their windows (unix ms), for `/v1/streams`.
    pub fn waiting(&self) -> Vec<(StreamId, i64)> {
        let mut by_stream: HashMap<StreamId, i64> = HashMap::new();
        for (k, until_ms) in self
            .lock()
            .iter()
            .filter_map(|(k, w)| w.until_ms.map(|u| (k, u)))
        {
            let e = by_stream.entry(k.id.clone()).or_insert(until_ms);
            *e = (*e).max(until_ms);
        }
        let mut v: Vec<_> = by_stream.into_iter().collect();
        v.sort_by_key(|(id, _)| id.to_string());
        v
    }
}

fn subscribe(ring: &ring::RingHandle, at: StartAt) -> ring::Reader {
    match at {
        StartAt::FromStart => ring.subscribe_from_start(),
        StartAt::Newest => ring.subscribe(),
        StartAt::Preroll(ms) => ring.subscribe_preroll(ms),
        StartAt::Since(ms) => ring.subscribe_since(ms),
    }
}

/// Why a recording stopped reading its ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunEnd {
    /// The push ended (the ring closed).
    PushEnded,
    /// Its task ended or was stopped.
    Stopped,
}

impl Launch for Recorders {
    fn launch(&self, start: RecordStart) {
        let RecordStart {
            id,
            ring,
            plans,
            template,
            utc_offset_s,
            track_wait,
            at,
            task,
            notice,
        } = start;
        for plan in plans {
            let task_id = task.as_ref().map(|t| t.task_id.clone()).unwrap_or_default();
            let key = SpliceKey {
                id: id.clone(),
                format: plan.format.ext(),
                template: template.clone(),
                task_id: task_id.clone(),
            };
            // The stream is back inside a recording's continuation window (or while its
            // last push is still being written): that recording goes on with this push
            // (R-SP-1) instead of a new one starting.
            let waiting = self.splices.lock().remove(&key);
            if let Some(w) = waiting {
                match w.resume.send(Resume {
                    reader: subscribe(&ring, at),
                    stop: task.as_ref().map(|t| t.stop.clone()),
                }) {
                    Ok(()) => {
                        info!(stream = %id, template = %template, task = %task_id, format = plan.format.ext(), "push returned inside the continuation window: the recording continues");
                        continue;
                    }
                    Err(_) => {
                        debug!(stream = %id, "the waiting recording ended meanwhile; starting a new one")
                    }
                }
            }
            info!(stream = %id, template = %template, task = %task_id, format = plan.format.ext(), interval_s = plan.record_interval_ms.as_ms() / 1000, "recording");
            let reader = subscribe(&ring, at);
            let continue_timeout = plan.continue_timeout;
            let inbox = (!continue_timeout.is_zero()).then(|| self.splices.register(key.clone()));
            let splices = self.splices.clone();
            let shutdown = self.shutdown.clone();
            let stop = task.as_ref().map(|t| t.stop.clone());
            let sink = self.sink.clone();
            let id = id.clone();
            let status = crate::callback::StatusReporter::new(
                sink.db().clone(),
                notice.clone(),
                &id,
                &task_id,
                plan.format.ext(),
            );
            let notice = notice.clone();
            let template = template.clone();
            self.tracker.spawn(async move {
                let policy = CutPolicy {
                    interval_ms: plan.record_interval_ms,
                    hard_cap_ms: plan.hard_cap_ms,
                };
                let meta = RecMeta {
                    domain: id.domain.clone(),
                    app: id.app.clone(),
                    stream: id.stream.clone(),
                    ext: plan.format.ext().to_string(),
                    file_name: plan.file_name,
                    task_id,
                    storage_time: plan.storage_time,
                    utc_offset_s,
                    notice,
                    template,
                };
                let spool = match sink.begin(meta).await {
                    Ok(r) => r,
                    Err(e) => {
                        error!(stream = %id, format = plan.format.ext(), "cannot start the recording in the spool: {e}");
                        status.report(RecordEvent::StartFailed, &e.to_string());
                        return;
                    }
                };
                status.report(RecordEvent::StartSucceeded, "");
                let flush_interval = sink.flush_interval();
                let fragment = Millis::from_ms(
                    i64::try_from(flush_interval.as_millis()).unwrap_or(i64::MAX),
                );
                let mut task = Recording {
                    sink,
                    id,
                    format: plan.format,
                    spool,
                    rec: Recorder::new(plan.format, policy)
                        .with_segment_duration(plan.segment_ms)
                        .with_mp4_fragment(fragment)
                        .with_track_wait(track_wait),
                    files: HashMap::new(),
                    hls: HashMap::new(),
                    flush_interval,
                    held_since: None,
                    write_failing: false,
                    status: status.clone(),
                    timeline: Rebaser::new(Millis::MAX),
                    gaps: HashMap::new(),
                    last_arrival: None,
                    gap_since: None,
                    lost_since: None,
                    events_read: 0,
                };
                let mut stop = stop.unwrap_or_default();
                let mut reader = reader;
                let mut inbox = inbox;
                loop {
                    let end = task.run(&mut reader, &stop).await;
                    let Some(rx) = inbox.take() else { break };
                    if end == RunEnd::Stopped || shutdown.is_cancelled() {
                        splices.withdraw(&key);
                        break;
                    }
                    status.report(RecordEvent::Paused, "the push ended; waiting continue_timeout for it to return");
                    let back = task
                        .wait_for_return(&splices, &key, rx, continue_timeout, &stop, &shutdown)
                        .await;
                    let Some(resume) = back else { break };
                    status.report(RecordEvent::Resumed, "");
                    inbox = Some(splices.register(key.clone()));
                    reader = resume.reader;
                    if let Some(s) = resume.stop {
                        stop = s;
                    }
                    task.splice();
                }
                task.rec.finish();
                task.drain().await;
                let Recording { sink, spool, .. } = task;
                sink.end(spool).await;
                status.report(RecordEvent::Ended, "");
            });
        }
    }
}

/// A packet's arrival as a date. Arrivals come from the clock, so they are always in
/// chrono's range; the epoch stands in for one that is not rather than failing a file.
fn wall(at: WallMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.as_unix_ms()).unwrap_or_default()
}

/// An open HLS recording: its playlist (claimed key, rewritten after every segment) and
/// its open segment files.
struct HlsFile {
    handle: PlaylistHandle,
    key: hls::PlaylistKey,
    live: hls::LivePlaylist,
    segments: HashMap<u64, SpoolFile>,
    /// The last segment was cut short or lost: the next one starts after a gap.
    gap_before_next: bool,
}

struct Recording {
    sink: Arc<Sink>,
    id: StreamId,
    format: Format,
    hls: HashMap<u64, HlsFile>,
    spool: Rec,
    rec: Recorder,
    files: HashMap<u64, (SpoolFile, DateTime<Utc>)>,
    /// `[spool] flush_interval` (issue 11).
    flush_interval: std::time::Duration,
    /// Since when the recorder holds media it has not given out (an MP4 fragment in the
    /// making): that media is as much at risk in a crash as the spool's buffer.
    held_since: Option<tokio::time::Instant>,
    /// In a spool write failure episode (R-ST-4): the last write failed and none has
    /// succeeded since. Only the episode's first failure is a warning; the first write
    /// that works again ends it with an info line.
    write_failing: bool,
    /// Its status callbacks (R-CB-2).
    status: crate::callback::StatusReporter,
    /// Continues the timeline across spliced pushes (R-SP-1/3); within one push ingest
    /// has already made it monotonic, so it changes nothing until a splice.
    timeline: Rebaser,
    /// Per open file: its first decode time and the interruptions it spans (R-SP-4).
    gaps: HashMap<u64, (Millis, Vec<crate::model::Gap>)>,
    /// The arrival of the newest event read.
    last_arrival: Option<WallMillis>,
    /// A splice happened and no packet of the new push was read yet: when the last push
    /// ended (its last packet's arrival).
    gap_since: Option<WallMillis>,
    /// The ring dropped media this recording had not read (a stall, R-IN-7) and no file
    /// opened since: the arrival of the last event read before the loss. The next file
    /// starts with the loss as a gap at offset 0, so the index says what is missing.
    lost_since: Option<WallMillis>,
    /// Events read (the `recording.hang` failpoint counts them).
    events_read: u64,
}

impl Recording {
    /// Reads the ring until the push ends or the task stops; the open files stay open
    /// (the caller decides whether a continuation window keeps them).
    async fn run(
        &mut self,
        reader: &mut ring::Reader,
        stop: &tokio_util::sync::CancellationToken,
    ) -> RunEnd {
        // The flush deadline of the open files' buffers (issue 11): a publisher that
        // stalls or sends slowly brings no append to write them, so the task wakes for
        // it. One timer, re-armed only when the earliest deadline changes (after a
        // flush or the first byte of a new buffer), not per packet.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed = None;
        loop {
            let due = self.flush_due();
            if due != armed {
                if let Some(at) = due {
                    timer.as_mut().reset(at);
                }
                armed = due;
            }
            let item = tokio::select! {
                // `Reader::next` is cancel-safe (an item leaves the ring only when it is
                // returned), so losing the race to the timer loses nothing.
                i = reader.next() => i,
                // A task ended (its end time, or stopped): the open file ends here.
                _ = stop.cancelled() => return RunEnd::Stopped,
                () = &mut timer, if armed.is_some() => {
                    // The MP4 fragment in the making has waited its interval with no
                    // packet to complete it (a stalled publisher): out it goes, and the
                    // spool writes it at once (its bytes are as old as its media).
                    let now = tokio::time::Instant::now();
                    if self.held_since.is_some_and(|t| t + self.flush_interval <= now) {
                        self.rec.cut_fragment();
                        self.drain().await;
                        // A fragment the muxer could not encode stays pending: wait
                        // another interval rather than spin on a deadline in the past.
                        if self.held_since.is_some_and(|t| t + self.flush_interval <= now) {
                            self.held_since = Some(now);
                        }
                    }
                    self.flush_overdue().await;
                    continue;
                }
            };
            let Some(item) = item else {
                return RunEnd::PushEnded;
            };
            match item {
                ring::Item::Event(ev, arrival) => {
                    self.events_read += 1;
                    if let Some(d) = crate::failpoint::hang("recording.hang", self.events_read) {
                        tokio::time::sleep(d).await;
                    }
                    let ev = self.continue_timeline(ev);
                    if let (MediaEvent::Packet(p), Some(since)) = (&ev, self.gap_since) {
                        // The new push's first packet: every file still open spans the
                        // interruption (one whose codec changed has just ended).
                        self.gap_since = None;
                        for (start, gaps) in self.gaps.values_mut() {
                            gaps.push(crate::model::Gap {
                                start_time_ms: since.as_unix_ms(),
                                end_time_ms: arrival.as_unix_ms(),
                                offset_ms: (p.dts - *start).as_ms().max(0),
                            });
                        }
                    }
                    self.last_arrival = Some(arrival);
                    self.rec.handle_event(ev, arrival)
                }
                ring::Item::Lagged { skipped } => {
                    // The ring moved on without us: the current file would have a hole,
                    // so it ends here and the next one starts at the next keyframe.
                    warn!(stream = %self.id, format = self.format.ext(), skipped, "recorder fell behind the ring: the current file ends here and the next starts at the next keyframe, with the loss as a gap");
                    crate::metrics::recorder_lagged();
                    self.lost_since =
                        Some(self.last_arrival.unwrap_or_else(|| {
                            crate::clock::Clock::now(&crate::clock::SystemClock)
                        }));
                    self.rec.finish();
                }
            }
            self.drain().await;
        }
    }

    /// The gaps a file opening at `arrival` starts with: the media the ring dropped
    /// before it, if any (see `lost_since`).
    fn loss_before(&mut self, arrival: WallMillis) -> Vec<crate::model::Gap> {
        self.lost_since
            .take()
            .map(|since| crate::model::Gap {
                start_time_ms: since.as_unix_ms(),
                end_time_ms: arrival.as_unix_ms().max(since.as_unix_ms()),
                offset_ms: 0,
            })
            .into_iter()
            .collect()
    }

    /// Events on the recording's timeline (see `timeline`).
    fn continue_timeline(&mut self, mut ev: MediaEvent) -> MediaEvent {
        match &mut ev {
            MediaEvent::Packet(p) => p.dts = self.timeline.map(p.kind(), p.dts).dts,
            MediaEvent::Config(c) => c.dts = self.timeline.map_config(c.kind(), c.dts),
            MediaEvent::Metadata(_) | MediaEvent::Discontinuity => {}
        }
        ev
    }

    /// The push ended and the template keeps the recording open for `window` (R-SP-1):
    /// waits for the same stream to publish again, keeping the open files' buffers on
    /// their flush deadlines meanwhile. `None` when the window passes, the task stops
    /// or the daemon shuts down.
    async fn wait_for_return(
        &mut self,
        splices: &Splices,
        key: &SpliceKey,
        mut rx: tokio::sync::oneshot::Receiver<Resume>,
        window: Duration,
        stop: &tokio_util::sync::CancellationToken,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<Resume> {
        let until_ms = chrono::Utc::now()
            .timestamp_millis()
            .saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        let still_mine = match splices.lock().get_mut(key) {
            Some(w) => {
                w.until_ms = Some(until_ms);
                true
            }
            None => false,
        };
        if !still_mine {
            // The launcher took the entry: the stream came back while this push was
            // still being written, and the new push is on its way.
            info!(stream = %self.id, format = self.format.ext(), "push ended and the stream is back already: the recording continues");
            return rx.await.ok();
        }
        info!(stream = %self.id, format = self.format.ext(), window_s = window.as_secs(), "push ended: the recording waits for the stream to return");
        // What the recorder holds goes to the spool now: the wait may be long.
        self.rec.cut_fragment();
        self.drain().await;
        let deadline = tokio::time::Instant::now() + window;
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        loop {
            let flush_at = self.flush_due();
            if let Some(at) = flush_at {
                timer.as_mut().reset(at);
            }
            tokio::select! {
                r = &mut rx => return r.ok(),
                () = tokio::time::sleep_until(deadline) => break,
                () = &mut timer, if flush_at.is_some() => {
                    self.flush_overdue().await;
                    continue;
                }
                _ = stop.cancelled() => break,
                _ = shutdown.cancelled() => break,
            }
        }
        // Whoever removes the entry decides: if the launcher took it first, the new push
        // is on its way.
        let mine = splices.lock().remove(key).is_some();
        if mine {
            info!(stream = %self.id, format = self.format.ext(), "continuation window over: the recording ends");
            None
        } else {
            rx.await.ok()
        }
    }

    /// A new push continues this recording (R-SP-1/3): its timeline continues one frame
    /// after the last push's (each format then sees a jump: HLS marks the next segment
    /// with `#EXT-X-DISCONTINUITY`, FLV/MP4/AAC continue unless the codec configuration
    /// changed, which starts a new file).
    fn splice(&mut self) {
        self.gap_since = self.last_arrival;
        self.timeline.splice();
        self.rec
            .handle_event(MediaEvent::Discontinuity, WallMillis::from_unix_ms(0));
    }

    /// The earliest flush deadline of the open files, HLS segments and the media the
    /// recorder holds.
    fn flush_due(&self) -> Option<tokio::time::Instant> {
        let files = self.files.values().map(|(f, _)| f);
        let segments = self.hls.values().flat_map(|h| h.segments.values());
        let held = self.held_since.map(|t| t + self.flush_interval);
        files
            .chain(segments)
            .filter_map(SpoolFile::flush_due)
            .chain(held)
            .min()
    }

    /// Writes every buffer whose deadline has passed.
    async fn flush_overdue(&mut self) {
        let now = tokio::time::Instant::now();
        let mut failed_files = Vec::new();
        let mut failed_segments = Vec::new();
        let mut wrote = None;
        for (seq, (f, _)) in &mut self.files {
            if f.flush_due().is_some_and(|at| at <= now) {
                match f.flush().await {
                    Ok(()) => wrote = Some(f.path().to_path_buf()),
                    Err(e) => failed_files.push((*seq, e)),
                }
            }
        }
        for f in self.hls.values_mut().flat_map(|h| h.segments.values_mut()) {
            if f.flush_due().is_some_and(|at| at <= now) {
                match f.flush().await {
                    Ok(()) => wrote = Some(f.path().to_path_buf()),
                    Err(e) => failed_segments.push(e),
                }
            }
        }
        if let Some(p) = wrote {
            self.write_succeeded(&p);
        }
        for (seq, e) in failed_files {
            self.file_write_failed(seq, e).await;
        }
        for e in failed_segments {
            self.segment_write_failed(e);
        }
    }

    /// A write worked: a write failure episode, if any, is over.
    fn write_succeeded(&mut self, path: &std::path::Path) {
        if std::mem::replace(&mut self.write_failing, false) {
            info!(stream = %self.id, format = self.format.ext(), file = %path.display(), "spool writes work again: recording resumed in this new file");
        }
    }

    /// Counts a failed write and says whether it opens a failure episode (the one
    /// warning an operator gets for it; the rest of the episode logs at debug).
    fn write_failure_starts_episode(&mut self, err: &dyn std::fmt::Display) -> bool {
        crate::metrics::spool_write_error();
        let first = !std::mem::replace(&mut self.write_failing, true);
        if first {
            // One status event per episode, like the warning (R-CB-2).
            self.status
                .report(RecordEvent::Error, &format!("spool write failed: {err}"));
        }
        first
    }

    /// A write to file `seq` failed (ENOSPC, EIO, EFBIG, R-ST-4). The file would get a
    /// torn unit in its middle if recording went on appending to it, so it ends here: cut
    /// back to its last complete unit, patched to match and stored as usual. The recorder
    /// drops the file and starts a new one (next seq) at the next keyframe; until a write
    /// of that new file works, media is dropped.
    async fn file_write_failed(&mut self, seq: u64, err: SinkError) {
        self.rec.abandon(seq);
        self.gaps.remove(&seq);
        let Some((f, started)) = self.files.remove(&seq) else {
            return;
        };
        self.end_failed_file(seq, f, started, err).await;
    }

    async fn end_failed_file(
        &mut self,
        seq: u64,
        mut f: SpoolFile,
        started: DateTime<Utc>,
        err: SinkError,
    ) {
        let first = self.write_failure_starts_episode(&err);
        crate::metrics::file_closed();
        let path = f.path().to_path_buf();
        let stored = match f.cut_back(self.format.ext()).await {
            Ok(kept) => self
                .sink
                .finish_cut(f, &kept, &self.spool.meta, seq, started)
                .await
                .map(|key| (key, kept)),
            Err(e) => Err(e),
        };
        match stored {
            Ok((key, kept)) => {
                if key.is_some() {
                    crate::metrics::file_finalized();
                }
                let key = key.unwrap_or_else(|| "(nothing whole, removed)".into());
                if first {
                    warn!(
                        stream = %self.id, format = self.format.ext(), file = %path.display(), key = %key,
                        bytes_kept = kept.keep_len, duration_ms = kept.duration_ms, error = %err,
                        "spool write failed: file ended at its last complete unit and stored; media is dropped until writes work again, then recording resumes in a new file at the next keyframe"
                    );
                } else {
                    debug!(stream = %self.id, file = %path.display(), key = %key, bytes_kept = kept.keep_len, error = %err, "spool write failed again");
                }
            }
            Err(e) => {
                crate::metrics::file_failed();
                error!(
                    stream = %self.id, format = self.format.ext(), file = %path.display(), error = %err,
                    "spool write failed and the file cannot be ended ({e}); it stays in the spool for crash recovery at the next start"
                );
            }
        }
    }

    /// A write to an HLS segment failed: the segment takes no more bytes (its spool file
    /// drops them) and is cut back to its last whole TS packet at its close; the next
    /// segment is a new file.
    fn segment_write_failed(&mut self, err: SinkError) {
        if self.write_failure_starts_episode(&err) {
            warn!(stream = %self.id, format = "m3u8", error = %err, "spool write failed: this segment ends at its last complete TS packet; media is dropped until writes work again");
        } else {
            debug!(stream = %self.id, error = %err, "spool write failed again");
        }
    }

    async fn drain(&mut self) {
        self.drain_outputs().await;
        // Media the recorder now holds back waits from now, unless it was held before and
        // nothing came out (the fragment is still the same one).
        if !self.rec.holds_media() {
            self.held_since = None;
        } else if self.held_since.is_none() {
            self.held_since = Some(tokio::time::Instant::now());
        }
    }

    async fn drain_outputs(&mut self) {
        // A cut yields Close(k) then Open(k+1): the next spool file is created before the
        // finished one is published, so an open recording always has a file in the spool
        // and "no .part file" reliably means "nothing is being recorded".
        let mut closing: Option<(u64, FileSummary, Vec<Patch>)> = None;
        while let Some(out) = self.rec.poll_output() {
            match out {
                Output::Skipped { reason } => {
                    warn!(stream = %self.id, format = self.format.ext(), "{reason}");
                }
                Output::Open {
                    seq,
                    start_dts,
                    arrival,
                } if self.format == Format::Hls => {
                    let gaps = self.loss_before(arrival);
                    self.gaps.insert(seq, (start_dts, gaps));
                    self.open_hls(seq, start_dts, wall(arrival)).await;
                    if let Some((seq, summary, patches)) = closing.take() {
                        self.close(seq, summary, patches).await;
                    }
                }
                Output::SegmentOpen { seq, n, arrival } => {
                    let Some(h) = self.hls.get_mut(&seq) else {
                        continue;
                    };
                    match self
                        .sink
                        .create(&self.spool, seq, wall(arrival), Some(n))
                        .await
                    {
                        Ok(f) => {
                            h.segments.insert(n, f);
                        }
                        Err(e) => {
                            error!(stream = %self.id, "cannot create a spool file, this segment is lost: {e}")
                        }
                    }
                }
                Output::SegmentData { seq, n, bufs } => {
                    let Some(f) = self.hls.get_mut(&seq).and_then(|h| h.segments.get_mut(&n))
                    else {
                        continue;
                    };
                    let before = f.written();
                    match f.append(bufs).await {
                        Ok(()) if f.written() > before => {
                            let p = f.path().to_path_buf();
                            self.write_succeeded(&p);
                        }
                        Ok(()) => {}
                        Err(e) => self.segment_write_failed(e),
                    }
                }
                Output::SegmentClose {
                    seq,
                    n,
                    start_dts,
                    duration_ms,
                    discontinuity,
                } => {
                    if discontinuity {
                        if let Some(h) = self.hls.get_mut(&seq) {
                            h.gap_before_next = true;
                        }
                    }
                    self.close_segment(seq, n, start_dts, duration_ms).await;
                }
                Output::Open {
                    seq,
                    arrival,
                    start_dts,
                } => {
                    let gaps = self.loss_before(arrival);
                    self.gaps.insert(seq, (start_dts, gaps));
                    let started = wall(arrival);
                    match self.sink.create(&self.spool, seq, started, None).await {
                        Ok(f) => {
                            self.files.insert(seq, (f, started));
                            crate::metrics::file_opened();
                        }
                        Err(e) => {
                            // Retried at the next keyframe rather than at the next cut;
                            // a full disk refuses every try, so only the episode's first
                            // is a warning.
                            crate::metrics::file_failed();
                            self.rec.abandon(seq);
                            if self.write_failure_starts_episode(&e) {
                                warn!(stream = %self.id, format = self.format.ext(), error = %e, "cannot create a spool file: media is dropped until it can be, then recording resumes in a new file at the next keyframe");
                            } else {
                                debug!(stream = %self.id, error = %e, "cannot create a spool file");
                            }
                        }
                    }
                    if let Some((seq, summary, patches)) = closing.take() {
                        self.close(seq, summary, patches).await;
                    }
                }
                // The MP4 muxer gives out nothing for most frames.
                Output::Data { bufs, .. } if bufs.is_empty() => {}
                Output::Data { seq, bufs } => {
                    // Bytes of held media (an MP4 fragment) are as old as that media; a
                    // fragment that came out ends the holding (what is held after this
                    // drain is newer).
                    let since = self
                        .held_since
                        .take()
                        .unwrap_or_else(tokio::time::Instant::now);
                    if let Some((f, _)) = self.files.get_mut(&seq) {
                        let before = f.written();
                        match f.append_since(bufs, since).await {
                            Ok(()) if f.written() > before => {
                                let p = f.path().to_path_buf();
                                self.write_succeeded(&p);
                            }
                            Ok(()) => {}
                            Err(e) => self.file_write_failed(seq, e).await,
                        }
                    }
                }
                Output::Close {
                    seq,
                    summary,
                    patches,
                } => {
                    if let Some((seq, summary, patches)) = closing.replace((seq, summary, patches))
                    {
                        self.close(seq, summary, patches).await;
                    }
                }
            }
        }
        if let Some((seq, summary, patches)) = closing {
            self.close(seq, summary, patches).await;
        }
    }

    /// An HLS playlist is published while it grows, so its name is fixed when it opens:
    /// `{End…}` placeholders take the start time there (the end is not known yet).
    /// `started` is its first packet's arrival.
    async fn open_hls(&mut self, seq: u64, start_dts: Millis, started: DateTime<Utc>) {
        let name = self.spool.meta.render(seq, started, started);
        match self
            .sink
            .open_playlist(&self.spool, seq, &name, started)
            .await
        {
            Ok(handle) => {
                self.hls.insert(
                    seq,
                    HlsFile {
                        key: hls::PlaylistKey::new(&handle.key),
                        handle,
                        live: hls::LivePlaylist::new(started, start_dts),
                        segments: HashMap::new(),
                        gap_before_next: false,
                    },
                );
                crate::metrics::file_opened();
            }
            Err(e @ SinkError::Spool { .. }) => {
                // The spool cannot be written (a full disk): as for a file that cannot
                // be created, retried at the next keyframe, one warning per episode.
                crate::metrics::file_failed();
                self.rec.abandon(seq);
                if self.write_failure_starts_episode(&e) {
                    warn!(stream = %self.id, format = "m3u8", error = %e, "cannot open a playlist in the spool: media is dropped until it can be, then recording resumes in a new playlist at the next keyframe");
                } else {
                    debug!(stream = %self.id, error = %e, "cannot open a playlist in the spool");
                }
            }
            Err(e) => {
                crate::metrics::file_failed();
                error!(stream = %self.id, "cannot open the playlist, this recording is lost: {e}")
            }
        }
    }

    async fn close_segment(&mut self, seq: u64, n: u64, start_dts: Millis, duration_ms: Millis) {
        let Some(h) = self.hls.get_mut(&seq) else {
            return;
        };
        let Some(mut f) = h.segments.remove(&n) else {
            return;
        };
        let mut duration_ms = duration_ms;
        // A segment cut short or lost leaves a jump in the media timeline: the next listed
        // segment says so with #EXT-X-DISCONTINUITY (RFC 8216 4.3.2.3), so players re-sync
        // instead of stalling on the missing timestamps.
        let mut cut = false;
        if let Err(e) = f.flush().await {
            self.segment_write_failed(e);
        }
        if f.failed() {
            // The playlist states what the segment kept, not what the recorder sent.
            match f.cut_back("ts").await {
                Ok(kept) if kept.keep_len > 0 => {
                    let kept_ms = i64::try_from(kept.duration_ms).unwrap_or(i64::MAX);
                    if kept_ms > 0 {
                        duration_ms = duration_ms.min(Millis::from_ms(kept_ms));
                    }
                    cut = true;
                    info!(stream = %self.id, segment = n, bytes_kept = kept.keep_len, duration_ms = duration_ms.as_ms(), "segment ended at its last complete TS packet after a failed write");
                }
                Ok(_) => {
                    let _ = tokio::fs::remove_file(f.path()).await;
                    if let Some(h) = self.hls.get_mut(&seq) {
                        h.gap_before_next = true;
                    }
                    return;
                }
                Err(e) => {
                    error!(stream = %self.id, segment = n, "cannot end the segment after a failed write ({e}); it stays in the spool");
                    if let Some(h) = self.hls.get_mut(&seq) {
                        h.gap_before_next = true;
                    }
                    return;
                }
            }
        }
        let Some(h) = self.hls.get_mut(&seq) else {
            return;
        };
        let name = h.key.segment_name(n);
        let mut seg = h.live.segment(format!("{name}.ts"), start_dts, duration_ms);
        seg.discontinuity = h.gap_before_next;
        // The segment's key may differ from its name (`_N` on collision); the sink stores
        // under the key and the playlist lists the key's file.
        let text = h.live.render_with(&seg);
        match self
            .sink
            .segment_done(&mut h.handle, f, &self.id, &name, seg.clone(), text)
            .await
        {
            Ok(key) => {
                seg.uri = crate::sink::file_of(&key).to_string();
                h.live.push(seg);
                h.gap_before_next = cut;
            }
            Err(e) => {
                h.gap_before_next = true;
                error!(stream = %self.id, "finishing segment {n} failed: {e}")
            }
        }
    }

    async fn close_hls(&mut self, seq: u64, summary: FileSummary) {
        let gaps = self.gaps.remove(&seq).map(|(_, g)| g).unwrap_or_default();
        let Some(h) = self.hls.remove(&seq) else {
            return;
        };
        crate::metrics::file_closed();
        let text = h.live.playlist().render(true);
        let key = h.handle.key.clone();
        let segments = h.live.playlist().segments().len();
        match self
            .sink
            .close_playlist(
                h.handle,
                text,
                wall(summary.last_arrival),
                summary.duration_ms.as_ms(),
                gaps,
            )
            .await
        {
            Ok(()) => {
                crate::metrics::file_finalized();
                info!(
                    stream = %self.id, key = %key, segments, duration_ms = summary.duration_ms.as_ms(),
                    bytes = summary.bytes, video_frames = summary.video_frames, audio_frames = summary.audio_frames,
                    "file finished"
                )
            }
            Err(e) => {
                crate::metrics::file_failed();
                error!(stream = %self.id, "finalizing playlist failed: {e}")
            }
        }
    }

    async fn close(&mut self, seq: u64, summary: FileSummary, patches: Vec<Patch>) {
        if self.format == Format::Hls {
            self.close_hls(seq, summary).await;
            return;
        }
        let gaps = self.gaps.remove(&seq).map(|(_, g)| g).unwrap_or_default();
        let Some((mut f, started)) = self.files.remove(&seq) else {
            return;
        };
        // The last buffer is written here rather than in `finish`, so a write error ends
        // the file at its last complete unit (its patches describe bytes that were not
        // all written).
        if let Err(e) = f.flush().await {
            self.end_failed_file(seq, f, started, e).await;
            return;
        }
        crate::metrics::file_closed();
        // Names and the index use the arrivals of the file's first and last packets as its
        // wall-clock span (issue 10): `started` is the first's (from `Output::Open`).
        let end = wall(summary.last_arrival).max(started);
        let name = self.spool.meta.render(seq, started, end);
        match self
            .sink
            .finish(
                f,
                &patches,
                &self.spool.meta,
                &name,
                (started, end, summary.duration_ms.as_ms()),
                gaps,
            )
            .await
        {
            Ok(key) => {
                crate::metrics::file_finalized();
                info!(
                    stream = %self.id, key = %key, duration_ms = summary.duration_ms.as_ms(), bytes = summary.bytes,
                    video_frames = summary.video_frames, audio_frames = summary.audio_frames, hard_cut = summary.hard_cut,
                    "file finished"
                )
            }
            Err(e) => {
                crate::metrics::file_failed();
                error!(stream = %self.id, "finishing file failed: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The fixture's events in order, as ingest makes them (timestamps from 0, no wrap).
    fn events(fixture: &str) -> Vec<media::MediaEvent> {
        testkit::fixture_tags(fixture)
            .into_iter()
            .filter_map(|t| {
                let dts = Millis::from_ms(i64::from(t.timestamp));
                let parsed = match t.tag_type {
                    flv::TagType::Video => flv::tag::parse_video(t.body, dts),
                    flv::TagType::Audio => flv::tag::parse_audio(t.body, dts),
                    _ => return None,
                };
                match parsed {
                    Ok(flv::tag::Parsed::Event(ev)) => Some(ev),
                    _ => None,
                }
            })
            .collect()
    }

    /// A disk that stays full: the file that hits it is ended at its last tag, every new
    /// file meanwhile fails at its first write and keeps nothing (removed, not stored),
    /// the episode stays one episode (one warning), and once writes work the recording
    /// resumes in a new file.
    #[tokio::test]
    async fn a_full_disk_is_one_episode_and_recording_resumes_when_it_clears() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.spool.dir = dir.path().join("spool");
        config.storage.root = dir.path().join("rec");
        let sink = Sink::start(&config).await.expect("sink").0;
        let meta = RecMeta {
            domain: "d".into(),
            app: "a".into(),
            stream: "s".into(),
            ext: "flv".into(),
            file_name: "{StreamID}-{Seq}".into(),
            task_id: String::new(),
            storage_time: 0,
            utc_offset_s: 0,
            notice: None,
            template: String::new(),
        };
        let spool = sink.begin(meta).await.unwrap();
        let policy = CutPolicy {
            interval_ms: Millis::from_ms(600_000),
            hard_cap_ms: Millis::from_ms(1_200_000),
        };
        let mut r = Recording {
            sink: sink.clone(),
            id: StreamId {
                domain: "d".into(),
                app: "a".into(),
                stream: "s".into(),
            },
            format: Format::Flv,
            hls: HashMap::new(),
            spool,
            rec: Recorder::new(Format::Flv, policy),
            files: HashMap::new(),
            flush_interval: std::time::Duration::from_secs(1),
            held_since: None,
            write_failing: false,
            status: crate::callback::StatusReporter::new(
                sink.db().clone(),
                None,
                &StreamId::new("d", "a", "s"),
                "",
                "flv",
            ),
            timeline: Rebaser::new(Millis::MAX),
            gaps: HashMap::new(),
            last_arrival: None,
            gap_since: None,
            lost_since: None,
            events_read: 0,
        };
        // 60 s of 2 s GOPs (~60 kB/s, a 256 KiB write every ~4 s of media): the disk
        // fills at 5 s and clears at 40 s.
        let mut evs = events("avc_aac_2s.flv");
        let one = evs.clone();
        for k in 1..3 {
            evs.extend(one.iter().cloned().map(|e| match e {
                media::MediaEvent::Packet(mut p) => {
                    p.dts += Millis::from_ms(20_067 * k);
                    media::MediaEvent::Packet(p)
                }
                other => other,
            }));
        }
        let (mut failing_seen, mut cleared) = (false, false);
        for (i, ev) in evs.into_iter().enumerate() {
            let dts = ev.dts().unwrap_or_default().as_ms();
            let full = (5_000..40_000).contains(&dts);
            if full {
                for (f, _) in r.files.values_mut() {
                    f.fail_writes();
                }
            }
            r.rec
                .handle_event(ev, WallMillis::from_unix_ms(1_800_000_000_000 + i as i64));
            r.drain().await;
            if r.write_failing {
                failing_seen = true;
                assert!(dts < 55_000, "still failing at {dts} ms");
            } else if failing_seen {
                cleared = true;
            }
            if full {
                for (f, _) in r.files.values_mut() {
                    f.fail_writes();
                }
            }
        }
        r.rec.finish();
        r.drain().await;
        assert!(failing_seen && cleared, "one episode, then writing resumed");
        let root = dir.path().join("rec/d/a/s");
        let mut stored: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        stored.sort();
        // File 0 (cut back at the full disk), the files tried while it was full kept
        // nothing and are gone, and the file after it cleared has a later seq.
        assert_eq!(stored.len(), 2, "{stored:?}");
        assert_eq!(stored[0], "s-0.flv");
        assert!(
            stored[1] != "s-1.flv",
            "{stored:?}: retries were made while full"
        );
        for name in &stored {
            let bytes = std::fs::read(root.join(name)).unwrap();
            assert_eq!(
                flv::repair::repair(&bytes).unwrap().keep_len,
                bytes.len() as u64,
                "{name} ends at a complete tag"
            );
            let errors = testkit::ffprobe_errors(&root.join(name));
            assert!(errors.is_empty(), "{name}: {errors}");
        }
        let spool_dir = dir.path().join("spool/d/a/s");
        let parts: Vec<_> = std::fs::read_dir(&spool_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "part"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(parts.is_empty(), "nothing left in the spool: {parts:?}");
    }
}
