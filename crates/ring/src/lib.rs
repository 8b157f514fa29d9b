//! The per-stream packet ring (R-IN-7): one writer (the ingest task), many readers (one
//! per recording), bounded by duration and by bytes, holding GOPs so that a reader can
//! start at a keyframe with the codec configuration in force there, including from the
//! past for pre-roll (R-TK-6). Only the byte bound cuts into a GOP (see Eviction).
//!
//! # Shape
//!
//! All events live once, in one `VecDeque` under a `std::sync::Mutex`, numbered by a
//! sequence number. A [`Reader`] is only a cursor (a sequence number) into it, so the
//! writer keeps no per-reader queue and a slow reader never holds evicted data: when it
//! falls behind the oldest held event it is told how many events it lost
//! ([`Item::Lagged`]) and moved to the oldest join point still held.
//!
//! The writer never blocks on readers: a push is one short critical section (append,
//! maybe evict, take the registered wakers) followed by waking, outside the lock, each
//! reader that is waiting, once. A writer that *chooses* to wait for its readers
//! (backpressure: the ingest task stops reading its socket while a recording is far
//! behind, issue 12) asks how far behind the slowest reader is
//! ([`Writer::backlog_bytes`]) and waits for them to progress
//! ([`Writer::poll_backlog_below`], [`Writer::poll_progress`]).
//!
//! # Join points and GOPs
//!
//! * A stream with video (a video `Config` or video `Packet` has been seen) joins at video
//!   keyframes, and a GOP (the unit of eviction) starts at each video keyframe.
//! * An audio-only stream joins at every audio packet; for eviction its audio packets are
//!   grouped in GOPs of about [`AUDIO_GROUP_MS`].
//! * Events pushed before the first GOP starts are not stored: no reader could ever read
//!   them (readers start at join points), and the configs and metadata among them are
//!   remembered as the state in force (see below).
//!
//! A reader starting at a join point first receives the state in force there, as
//! [`Item::Event`]s in the order `Metadata`, video `Config`, audio `Config` (each only if
//! one was seen), then the events from the join point on. Config and metadata changes
//! mid-stream are ordinary events in the ring, so readers see them in order.
//!
//! # Arrival
//!
//! Each event is pushed with the wall-clock time its bytes were read from the socket
//! ([`WallMillis`]) and every reader receives it with that time, replayed preamble
//! included (each config keeps its own). A recording that starts from the past (pre-roll,
//! R-TK-6) thus knows when its first packet really arrived, which is its file's
//! wall-clock start (issue 10), not when the recording was asked for.
//!
//! # Eviction
//!
//! After each push, while over a bound:
//!
//! * **Duration**: the oldest whole GOP is dropped when the held duration exceeds
//!   `max_duration_ms`, more than one GOP is held, and no reader still needs the GOP. So
//!   with readers keeping up, the ring holds between `max_duration_ms - one GOP` and
//!   `max_duration_ms` of media; a single GOP longer than that is kept whole. This is the
//!   history kept for joining and pre-roll.
//! * **Bytes** (the memory bound, R-IN-7): while the held payload exceeds `max_bytes`, the
//!   oldest whole GOP is dropped when another GOP is held and either no reader is reading
//!   it or dropping it all is no more than needed; otherwise the oldest *events* of the
//!   front GOP are dropped one by one. So the ring never holds more than `max_bytes` plus
//!   the newest event (always kept), even inside one GOP: a stream whose keyframes stop
//!   arriving (one keyframe, then inter frames only) evicts its oldest frames instead of
//!   growing without bound (issue 12: 240 MB after 40 s before), and a reader in the GOP
//!   being trimmed loses only what it had not read past the bound.
//!
//! A GOP that lost its head has lost its join point: no reader can start in it, so a new
//! reader (or one that lagged) waits for the next join point (keyframe) and starts there
//! with the preamble in force then; the configs and metadata of the trimmed head stay
//! known as the state in force (the preamble), so nothing a reader needs to decode from
//! the next keyframe is lost. A reader whose cursor falls behind the oldest held event
//! gets [`Item::Lagged`] with the exact number of events it lost (when it must wait for a
//! join point, the events skipped until there come in a second `Lagged` when it joins, or
//! at the end of the stream), and its recording ends its file at the gap.
//!
//! A reader that is behind (a publisher pushing faster than real time, a recorder
//! waiting on its disk) keeps its unread media up to the byte bound; the duration bound
//! never drops it. Past the byte bound it lags: the ring itself never waits, the ingest
//! task's backpressure (see above) is what keeps readers within the bound.
//! Bytes are payload bytes: the FLV tag body length of packets and configs, and the
//! metadata length.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use media::{MediaEvent, Millis, TrackConfig, TrackKind, WallMillis};

/// Audio-only streams have a join point at every audio packet; for eviction their packets
/// are grouped in GOPs of this length so the bookkeeping stays small.
pub const AUDIO_GROUP_MS: Millis = Millis::from_ms(1000);

/// Bounds of one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Evict old GOPs while the held media is longer than this (newest dts minus the dts
    /// of the oldest GOP start).
    pub max_duration_ms: Millis,
    /// Evict old GOPs, or the oldest events of the oldest GOP, while the held payload
    /// bytes exceed this (the newest event is always kept).
    pub max_bytes: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            max_duration_ms: Millis::from_ms(4000),
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A snapshot of what a ring holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Events held.
    pub events: usize,
    /// Payload bytes held.
    pub bytes: usize,
    /// GOPs held (for an audio-only stream: ~1 s audio groups).
    pub gops: usize,
    /// Newest dts minus the dts of the oldest GOP start; 0 when empty.
    pub duration_ms: Millis,
    /// Live readers.
    pub readers: usize,
    /// Events ever stored (the sequence number of the next one).
    pub pushed: u64,
    /// The writer has closed the ring (end of stream).
    pub closed: bool,
}

/// What a reader receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// An event and the wall-clock time it arrived (was read from the socket).
    Event(MediaEvent, WallMillis),
    /// The reader fell behind what the ring still holds and lost `skipped` events; it
    /// continues at the oldest join point held, starting with the state in force there.
    Lagged { skipped: u64 },
}

/// Create a ring: the writer for the ingest task and a handle for everyone else.
pub fn ring(config: RingConfig) -> (Writer, RingHandle) {
    let writer = Writer::new(config);
    let handle = writer.handle();
    (writer, handle)
}

/// The configs and metadata in force at a point of the stream, shared by all join points
/// until one of them changes (so marking a join point costs one reference count).
#[derive(Debug, Default, Clone)]
struct Preamble {
    metadata: Option<(Bytes, WallMillis)>,
    video: Option<(TrackConfig, WallMillis)>,
    audio: Option<(TrackConfig, WallMillis)>,
}

impl Preamble {
    /// The items a reader receives before the join point, stored in reverse so the
    /// reader can `pop` them in order.
    fn push_reversed(&self, out: &mut Vec<Item>) {
        if let Some((a, at)) = &self.audio {
            out.push(Item::Event(MediaEvent::Config(a.clone()), *at));
        }
        if let Some((v, at)) = &self.video {
            out.push(Item::Event(MediaEvent::Config(v.clone()), *at));
        }
        if let Some((m, at)) = &self.metadata {
            out.push(Item::Event(MediaEvent::Metadata(m.clone()), *at));
        }
    }
}

/// A place a reader may start at.
#[derive(Debug)]
struct Join {
    seq: u64,
    dts: Millis,
    preamble: Arc<Preamble>,
}

/// The unit of eviction.
#[derive(Debug)]
struct Gop {
    start_seq: u64,
    start_dts: Millis,
    /// Largest dts inside the GOP: dts is not monotonic across tracks.
    max_dts: Millis,
    bytes: usize,
}

/// One held event.
#[derive(Debug)]
struct Entry {
    ev: MediaEvent,
    arrival: WallMillis,
    /// Payload bytes stored before this event (`Inner::pushed_bytes` when it came), so
    /// the bytes from here to the head are one subtraction (backlog, backpressure).
    cum: u64,
}

/// What the ring knows of one reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// The oldest sequence number the reader may still read.
    from: u64,
    /// The reader has a join point (it reads from `from`); a reader still waiting for
    /// its first join point has no backlog.
    active: bool,
}

/// The writer waiting for readers to progress (backpressure).
#[derive(Debug)]
struct ProgressWaiter {
    waker: Waker,
    /// Wake only once the backlog is at most this; `None`: at any progress.
    below: Option<usize>,
}

#[derive(Debug)]
struct Inner {
    config: RingConfig,
    /// Held events; `entries[i]` has sequence number `base_seq + i`.
    entries: VecDeque<Entry>,
    base_seq: u64,
    /// Always `base_seq + entries.len()`.
    next_seq: u64,
    gops: VecDeque<Gop>,
    /// Held join points, oldest first. All of the current mode (see `has_video`).
    joins: VecDeque<Join>,
    bytes: usize,
    /// Payload bytes ever stored (held or evicted).
    pushed_bytes: u64,
    /// State in force at the head of the stream.
    current: Arc<Preamble>,
    /// A video config or packet has been seen: from then on only video keyframes are join
    /// points (once a stream has video, joining on audio would start files without it).
    has_video: bool,
    /// Sequence number of the first join point since the mode (audio-only or video) was
    /// set; lets a reader that was waiting for it find out it has been evicted since.
    first_join_in_mode: Option<u64>,
    /// The audio join points held when the stream turned out to have video, and the
    /// sequence number where it did. Only a reader that was already waiting before then
    /// may start at one: it subscribed to an audio stream, and the recorder behind it
    /// waits for the video itself (`[ingest] track_wait`) — a relay sends audio ~1 s
    /// before the video's sequence header, sometimes in one burst before the reader ran.
    pre_video_joins: VecDeque<Join>,
    video_since: Option<u64>,
    closed: bool,
    readers: usize,
    /// Per reader slot (None = free slot). Eviction by duration never drops what a
    /// reader still needs; eviction by bytes trims instead of dropping a GOP a reader is
    /// still reading; the backlog is measured from the slowest active cursor.
    cursors: Vec<Option<Cursor>>,
    /// Incremented each time a reader's cursor moves or a reader goes away.
    progress: u64,
    /// The writer waiting for `progress` (registered only while it waits, so readers
    /// that find no waiter pay nothing).
    progress_waiter: Option<ProgressWaiter>,
    /// Wakers of readers waiting for the next push; the writer takes them all each push.
    wakers: Vec<Waker>,
    /// Incremented each time `wakers` is taken, so a reader knows whether its slot is
    /// still there (it then replaces its waker instead of adding another).
    wake_gen: u64,
}

fn event_bytes(ev: &MediaEvent) -> usize {
    match ev {
        MediaEvent::Packet(p) => p.flv.len(),
        MediaEvent::Config(c) => c.flv.len(),
        MediaEvent::Metadata(m) => m.len(),
        MediaEvent::Discontinuity => 0,
    }
}

impl Inner {
    fn new(config: RingConfig) -> Self {
        Inner {
            config,
            entries: VecDeque::new(),
            base_seq: 0,
            next_seq: 0,
            gops: VecDeque::new(),
            joins: VecDeque::new(),
            bytes: 0,
            pushed_bytes: 0,
            current: Arc::new(Preamble::default()),
            has_video: false,
            first_join_in_mode: None,
            pre_video_joins: VecDeque::new(),
            video_since: None,
            closed: false,
            readers: 0,
            cursors: Vec::new(),
            progress: 0,
            progress_waiter: None,
            wakers: Vec::new(),
            wake_gen: 0,
        }
    }

    fn push(&mut self, ev: MediaEvent, arrival: WallMillis) {
        // Classify the event: does it start a GOP, is it a join point?
        let (starts_gop, is_join) = match &ev {
            MediaEvent::Packet(p) if p.kind() == TrackKind::Video => {
                self.enter_video_mode();
                (p.key, p.key)
            }
            MediaEvent::Packet(p) => {
                // Audio groups are used while there is no keyframe to cut on: always for
                // audio-only streams, and for a stream whose video appeared late until its
                // first keyframe (so that tail stays bounded too).
                let grouping = !self.has_video || self.first_join_in_mode.is_none();
                let starts = grouping
                    && match self.gops.back() {
                        None => !self.has_video,
                        Some(g) => p.dts.abs_diff(g.start_dts) >= AUDIO_GROUP_MS.unsigned_abs(),
                    };
                (starts, !self.has_video)
            }
            MediaEvent::Config(c) => {
                if c.kind() == TrackKind::Video {
                    self.enter_video_mode();
                }
                (false, false)
            }
            MediaEvent::Metadata(_) | MediaEvent::Discontinuity => (false, false),
        };

        if is_join {
            let seq = self.next_seq;
            self.joins.push_back(Join {
                seq,
                dts: ev.dts().unwrap_or_default(),
                preamble: Arc::clone(&self.current),
            });
            self.first_join_in_mode.get_or_insert(seq);
        }

        // The state in force changes after the join point is marked: the preamble of a
        // join point is what was in force just before it.
        match &ev {
            MediaEvent::Config(c) => {
                let p = Arc::make_mut(&mut self.current);
                match c.kind() {
                    TrackKind::Video => p.video = Some((c.clone(), arrival)),
                    TrackKind::Audio => p.audio = Some((c.clone(), arrival)),
                }
            }
            MediaEvent::Metadata(m) => {
                Arc::make_mut(&mut self.current).metadata = Some((m.clone(), arrival))
            }
            MediaEvent::Packet(_) | MediaEvent::Discontinuity => {}
        }

        let dts = ev.dts();
        if starts_gop {
            let d = dts.unwrap_or_default();
            self.gops.push_back(Gop {
                start_seq: self.next_seq,
                start_dts: d,
                max_dts: d,
                bytes: 0,
            });
        }
        let Some(gop) = self.gops.back_mut() else {
            // Before the first GOP nothing is readable; the configs and metadata are
            // already remembered in `current`.
            return;
        };
        let size = event_bytes(&ev);
        gop.bytes += size;
        if let Some(d) = dts {
            gop.max_dts = gop.max_dts.max(d);
        }
        self.bytes += size;
        self.entries.push_back(Entry {
            ev,
            arrival,
            cum: self.pushed_bytes,
        });
        self.pushed_bytes += size as u64;
        self.next_seq += 1;
        self.evict();
    }

    fn enter_video_mode(&mut self) {
        if !self.has_video {
            self.has_video = true;
            // Audio join points are no longer places a new reader may start at.
            self.pre_video_joins = std::mem::take(&mut self.joins);
            self.video_since = Some(self.next_seq);
            self.first_join_in_mode = None;
        }
    }

    fn newest_dts(&self) -> Option<Millis> {
        self.gops.back().map(|g| g.max_dts)
    }

    fn held_duration(&self) -> u64 {
        match (self.gops.front(), self.newest_dts()) {
            // abs_diff: after a backwards timestamp jump, old GOPs count as far away too.
            (Some(front), Some(newest)) => front.start_dts.abs_diff(newest),
            _ => 0,
        }
    }

    fn evict(&mut self) {
        let max_duration = self.config.max_duration_ms.max(Millis::ZERO).unsigned_abs();
        let min_cursor = self.cursors.iter().flatten().map(|c| c.from).min();
        loop {
            let over_bytes = self.bytes > self.config.max_bytes;
            if let (Some(front), Some(next)) = (self.gops.front(), self.gops.get(1)) {
                let next_start = next.start_seq;
                // Duration: only whole GOPs that no reader needs (history for joining).
                let over_duration = self.held_duration() > max_duration
                    && min_cursor.is_none_or(|c| c >= next_start);
                // Bytes: the whole front GOP, unless a reader is still reading it and
                // less than the whole GOP is enough — then trim below, so a reader that
                // is within the bound loses nothing (backpressure keeps it there).
                let reading_front = self
                    .cursors
                    .iter()
                    .flatten()
                    .any(|c| c.active && c.from >= self.base_seq && c.from < next_start);
                let drop_whole = over_bytes
                    && (!reading_front || front.bytes <= self.bytes - self.config.max_bytes);
                if over_duration || drop_whole {
                    self.drop_front_gop();
                    continue;
                }
            }
            // The byte bound holds inside one GOP too (R-IN-7, issue 12): a stream whose
            // keyframes stop arriving would otherwise grow without bound. The newest
            // event is always kept.
            if over_bytes && self.entries.len() > 1 {
                self.drop_front_event();
                continue;
            }
            break;
        }
    }

    fn drop_front_gop(&mut self) {
        let (Some(front), Some(next)) = (self.gops.pop_front(), self.gops.front()) else {
            return;
        };
        let new_base = next.start_seq;
        let count = usize::try_from(new_base - self.base_seq).unwrap_or(usize::MAX);
        self.entries.drain(..count.min(self.entries.len()));
        self.bytes -= front.bytes;
        self.base_seq = new_base;
        self.drop_joins_before_base();
    }

    /// Drops the oldest held event, inside the front GOP. The GOP loses its head, and
    /// with it its join point: readers can no longer start in it.
    fn drop_front_event(&mut self) {
        let Some(entry) = self.entries.pop_front() else {
            return;
        };
        let size = event_bytes(&entry.ev);
        self.bytes -= size;
        self.base_seq += 1;
        if let Some(front) = self.gops.front_mut() {
            front.bytes -= size;
            front.start_seq = self.base_seq;
        }
        if self
            .gops
            .get(1)
            .is_some_and(|next| next.start_seq <= self.base_seq)
        {
            // The front GOP is empty now.
            self.gops.pop_front();
        } else if let (Some(front), Some(d)) = (
            self.gops.front_mut(),
            self.entries.front().and_then(|e| e.ev.dts()),
        ) {
            front.start_dts = d;
        }
        self.drop_joins_before_base();
    }

    fn drop_joins_before_base(&mut self) {
        while self.joins.front().is_some_and(|j| j.seq < self.base_seq) {
            self.joins.pop_front();
        }
        while self
            .pre_video_joins
            .front()
            .is_some_and(|j| j.seq < self.base_seq)
        {
            self.pre_video_joins.pop_front();
        }
    }

    /// Payload bytes from `cursor` to the head; 0 for a cursor outside what is held (at
    /// the head, or behind the oldest held event: that reader has already lost its gap and
    /// waiting for it would save nothing).
    fn backlog_from(&self, cursor: u64) -> usize {
        if cursor < self.base_seq {
            return 0;
        }
        let Ok(idx) = usize::try_from(cursor - self.base_seq) else {
            return 0;
        };
        self.entries.get(idx).map_or(0, |e| {
            usize::try_from(self.pushed_bytes - e.cum).unwrap_or(usize::MAX)
        })
    }

    /// The join point a reader waiting since `from` starts at, if one is held.
    fn join_for_waiting(&self, from: u64) -> Option<&Join> {
        // Waiting since before the stream showed video: its audio join points still count.
        if self.video_since.is_some_and(|v| from < v) {
            let idx = self.pre_video_joins.partition_point(|j| j.seq < from);
            if let Some(j) = self.pre_video_joins.get(idx) {
                return Some(j);
            }
        }
        // Joins are sorted by seq.
        let idx = self.joins.partition_point(|j| j.seq < from);
        self.joins.get(idx)
    }

    /// The backlog of the slowest reader (O(readers), plus a binary search for a reader
    /// still waiting for its first join point).
    fn backlog(&self) -> usize {
        self.cursors
            .iter()
            .flatten()
            .map(|c| {
                if c.active {
                    self.backlog_from(c.from)
                } else {
                    // A waiting reader whose join point has arrived will read from there
                    // once it runs (a recorder task not scheduled yet): it is behind by
                    // that much. With no join point yet it is behind nothing.
                    self.join_for_waiting(c.from)
                        .map_or(0, |j| self.backlog_from(j.seq))
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// Records that the reader in `slot` is now at `cursor`; returns the writer's waker
    /// when it waits for this, to be woken outside the lock.
    fn move_cursor(&mut self, slot: usize, cursor: Cursor) -> Option<Waker> {
        let c = self.cursors.get_mut(slot)?;
        if *c == Some(cursor) {
            return None;
        }
        *c = Some(cursor);
        self.reader_progressed()
    }

    fn reader_progressed(&mut self) -> Option<Waker> {
        self.progress += 1;
        let below = self.progress_waiter.as_ref()?.below;
        if below.is_none_or(|b| self.backlog() <= b) {
            self.progress_waiter.take().map(|w| w.waker)
        } else {
            None
        }
    }

    fn stats(&self) -> RingStats {
        RingStats {
            events: self.entries.len(),
            bytes: self.bytes,
            gops: self.gops.len(),
            duration_ms: Millis::from_ms(i64::try_from(self.held_duration()).unwrap_or(i64::MAX)),
            readers: self.readers,
            pushed: self.next_seq,
            closed: self.closed,
        }
    }

    /// A reader positioned at `join` (with its preamble pending), or waiting for the
    /// next join point when there is none.
    fn reader_state(&self, join: Option<&Join>) -> (State, Vec<Item>) {
        match join {
            Some(j) => {
                let mut pending = Vec::with_capacity(4);
                j.preamble.push_reversed(&mut pending);
                (State::Active { cursor: j.seq }, pending)
            }
            None => (
                State::Waiting {
                    from: self.next_seq,
                    lost: false,
                },
                Vec::new(),
            ),
        }
    }
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under the lock panics halfway through a change, so the state behind a
        // poisoned lock is consistent and the stream can go on.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscribe_at(self: &Arc<Self>, pick: impl FnOnce(&Inner) -> Option<&Join>) -> Reader {
        let inner = self.lock();
        let (state, pending) = {
            let join = pick(&inner);
            inner.reader_state(join)
        };
        let pos = Position { state, pending };
        Self::register_locked(self, inner, pos)
    }

    /// Counts the reader at `pos` and gives it a cursor slot.
    fn register_locked(
        self: &Arc<Self>,
        mut inner: MutexGuard<'_, Inner>,
        pos: Position,
    ) -> Reader {
        inner.readers += 1;
        let slot = match inner.cursors.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                inner.cursors.push(None);
                inner.cursors.len() - 1
            }
        };
        inner.cursors[slot] = Some(pos.cursor());
        drop(inner);
        Reader {
            shared: Arc::clone(self),
            pos,
            slot,
            registered: None,
        }
    }

    fn subscribe(self: &Arc<Self>) -> Reader {
        self.subscribe_at(|inner| inner.joins.back())
    }

    fn subscribe_since(self: &Arc<Self>, ms: Millis) -> Reader {
        self.subscribe_at(|inner| {
            let target = inner.newest_dts()?.saturating_sub(ms.max(Millis::ZERO));
            inner.joins.iter().find(|j| j.dts >= target)
        })
    }

    fn subscribe_from_start(self: &Arc<Self>) -> Reader {
        let inner = self.lock();
        let pos = if inner.base_seq == 0 {
            // Nothing evicted yet: the stream's first stored event is still held, and a
            // reader waiting since before it is exactly one that subscribed when the
            // ring was made (pre-video audio join points included).
            Position {
                state: State::Waiting {
                    from: 0,
                    lost: false,
                },
                pending: Vec::new(),
            }
        } else {
            // The start is gone: the oldest join point held, as `subscribe_preroll(MAX)`;
            // nothing is reported lost, the reader never had it.
            let (state, pending) = inner.reader_state(inner.joins.front());
            Position { state, pending }
        };
        Self::register_locked(self, inner, pos)
    }

    fn subscribe_preroll(self: &Arc<Self>, ms: Millis) -> Reader {
        self.subscribe_at(|inner| {
            let target = inner.newest_dts()?.saturating_sub(ms.max(Millis::ZERO));
            inner
                .joins
                .iter()
                .rev()
                .find(|j| j.dts <= target)
                .or_else(|| inner.joins.front())
        })
    }
}

/// Move the registered wakers into `to_wake` (swapped, not taken, so both vectors keep
/// their capacity and pushing does not allocate).
fn take_wakers(inner: &mut Inner, to_wake: &mut Vec<Waker>) {
    if !inner.wakers.is_empty() {
        std::mem::swap(&mut inner.wakers, to_wake);
        inner.wake_gen += 1;
    }
}

fn register_progress_waiter(inner: &mut Inner, cx: &Context<'_>, below: Option<usize>) {
    match &mut inner.progress_waiter {
        Some(w) => {
            if !w.waker.will_wake(cx.waker()) {
                w.waker.clone_from(cx.waker());
            }
            w.below = below;
        }
        None => {
            inner.progress_waiter = Some(ProgressWaiter {
                waker: cx.waker().clone(),
                below,
            })
        }
    }
}

/// The single producer of a ring. Closes the ring when dropped.
#[derive(Debug)]
pub struct Writer {
    shared: Arc<Shared>,
    /// Reused buffer for the wakers taken out of the lock, so pushing does not allocate.
    to_wake: Vec<Waker>,
    closed: bool,
    /// `Inner::progress` as of the last [`poll_progress`](Self::poll_progress) that
    /// returned `Ready`.
    seen_progress: u64,
}

impl Writer {
    pub fn new(config: RingConfig) -> Self {
        Writer {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::new(config)),
            }),
            to_wake: Vec::new(),
            closed: false,
            seen_progress: 0,
        }
    }

    /// Append one event that arrived at `arrival`, evict what is over the bounds and wake
    /// waiting readers. Never waits for readers. Events pushed after
    /// [`close`](Self::close) are ignored.
    pub fn push(&mut self, ev: MediaEvent, arrival: WallMillis) {
        if self.closed {
            return;
        }
        let mut inner = self.shared.lock();
        inner.push(ev, arrival);
        take_wakers(&mut inner, &mut self.to_wake);
        drop(inner);
        self.wake();
    }

    /// Like [`push`](Self::push), but waiting readers are not woken until
    /// [`wake_readers`](Self::wake_readers) (or the next `push`/`close`). The ingest task
    /// pushes every event of one socket read this way and wakes once: a wake per frame
    /// made readers and the writer trade threads for every packet.
    pub fn push_deferred(&mut self, ev: MediaEvent, arrival: WallMillis) {
        if self.closed {
            return;
        }
        self.shared.lock().push(ev, arrival);
    }

    /// Wakes the readers waiting since the last wake.
    pub fn wake_readers(&mut self) {
        let mut inner = self.shared.lock();
        take_wakers(&mut inner, &mut self.to_wake);
        drop(inner);
        self.wake();
    }

    /// End of stream: readers drain what is held, then get `None`.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut inner = self.shared.lock();
        inner.closed = true;
        take_wakers(&mut inner, &mut self.to_wake);
        drop(inner);
        self.wake();
    }

    /// Wake outside the lock: a woken reader on another thread would otherwise block on it.
    fn wake(&mut self) {
        for w in self.to_wake.drain(..) {
            w.wake();
        }
    }

    /// Payload bytes between the slowest reader's cursor and the head: how far behind the
    /// slowest recording is. 0 with no reader; a reader waiting for a join point counts
    /// from the first one held after where it waits (0 when none has arrived), and one
    /// already behind the oldest held event (it has lost its gap and will be told so)
    /// counts 0. O(readers): one subtraction per reader.
    pub fn backlog_bytes(&self) -> usize {
        self.shared.lock().backlog()
    }

    /// How many times a reader moved its cursor or went away, ever: a writer that waits
    /// for its readers tells a stalled reader (a hung disk) from a slow one by this.
    pub fn progress(&self) -> u64 {
        self.shared.lock().progress
    }

    /// `Ready` once a reader has moved its cursor or gone away since the last time this
    /// returned `Ready`; otherwise registers the waker (one writer waker; readers wake it
    /// only while it is registered, so a writer that does not wait costs them nothing).
    pub fn poll_progress(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.shared.lock();
        if inner.progress != self.seen_progress {
            self.seen_progress = inner.progress;
            inner.progress_waiter = None;
            return Poll::Ready(());
        }
        register_progress_waiter(&mut inner, cx, None);
        Poll::Pending
    }

    /// `Ready` once [`backlog_bytes`](Self::backlog_bytes) is at most `limit`; otherwise
    /// registers the waker, which a reader wakes only when its move brings the backlog
    /// to `limit` or below, or when it goes away — so a paused writer is not woken for
    /// every frame its readers catch up on.
    pub fn poll_backlog_below(&mut self, limit: usize, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.shared.lock();
        if inner.backlog() <= limit {
            inner.progress_waiter = None;
            return Poll::Ready(());
        }
        register_progress_waiter(&mut inner, cx, Some(limit));
        Poll::Pending
    }

    /// Forgets the waker registered by [`poll_progress`](Self::poll_progress) or
    /// [`poll_backlog_below`](Self::poll_backlog_below), for a writer that stopped
    /// waiting for another reason (a timer): readers then stop checking for it.
    pub fn stop_waiting(&mut self) {
        self.shared.lock().progress_waiter = None;
    }

    /// Resolves once a reader has progressed; see [`poll_progress`](Self::poll_progress).
    pub async fn readers_progressed(&mut self) {
        std::future::poll_fn(|cx| self.poll_progress(cx)).await
    }

    /// Resolves once the backlog is at most `limit`; see
    /// [`poll_backlog_below`](Self::poll_backlog_below).
    pub async fn backlog_below(&mut self, limit: usize) {
        std::future::poll_fn(|cx| self.poll_backlog_below(limit, cx)).await
    }

    /// A cloneable handle for subscribing from elsewhere (the daemon's stream registry).
    pub fn handle(&self) -> RingHandle {
        RingHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A reader starting at the newest join point held; see [`RingHandle::subscribe`].
    pub fn subscribe(&self) -> Reader {
        self.shared.subscribe()
    }

    /// A reader from the stream's start; see [`RingHandle::subscribe_from_start`].
    pub fn subscribe_from_start(&self) -> Reader {
        self.shared.subscribe_from_start()
    }

    /// A reader starting `ms` back; see [`RingHandle::subscribe_preroll`].
    pub fn subscribe_preroll(&self, ms: Millis) -> Reader {
        self.shared.subscribe_preroll(ms)
    }

    /// A reader starting at the first join point within the last `ms` of media (newest
    /// DTS − `ms`) or, when there is none, at the next one to arrive: a recording that
    /// should start at a moment `ms` ago starts at the first keyframe at or after it
    /// (a scheduled record task whose window opened while the stream was live).
    pub fn subscribe_since(&self, ms: Millis) -> Reader {
        self.shared.subscribe_since(ms)
    }

    pub fn stats(&self) -> RingStats {
        self.shared.lock().stats()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Subscribe to and inspect a ring from any thread.
#[derive(Clone, Debug)]
pub struct RingHandle {
    shared: Arc<Shared>,
}

impl RingHandle {
    /// A reader starting at the newest join point held (the live edge, at most one GOP
    /// back). With no join point held yet it waits for the next one; events before it are
    /// not delivered.
    pub fn subscribe(&self) -> Reader {
        self.shared.subscribe()
    }

    /// A reader positioned as if it had subscribed when the ring was made, while nothing
    /// has been evicted yet (else at the oldest join point held, like
    /// `subscribe_preroll(Millis::MAX)`). The difference is the audio that came before
    /// the video's sequence header: join points for a reader that was waiting then, and
    /// only for one (see `Inner::pre_video_joins`). A recording the supervisor starts
    /// for a new publish, while the hub's start reader keeps the ring from evicting,
    /// thus starts where the push did however many reads the ingest task made first —
    /// a relay's burst of its first second of audio and then the video header can come
    /// in the same read as the publish itself.
    pub fn subscribe_from_start(&self) -> Reader {
        self.shared.subscribe_from_start()
    }

    /// A reader starting at the newest join point whose dts is at most `newest dts - ms`,
    /// or at the oldest one held when the ring is not that deep (R-TK-6 pre-roll).
    pub fn subscribe_preroll(&self, ms: Millis) -> Reader {
        self.shared.subscribe_preroll(ms)
    }

    /// A reader starting at the first join point within the last `ms` of media (newest
    /// DTS − `ms`) or, when there is none, at the next one to arrive: a recording that
    /// should start at a moment `ms` ago starts at the first keyframe at or after it
    /// (a scheduled record task whose window opened while the stream was live).
    pub fn subscribe_since(&self, ms: Millis) -> Reader {
        self.shared.subscribe_since(ms)
    }

    pub fn stats(&self) -> RingStats {
        self.shared.lock().stats()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No join point chosen yet: waiting for the first one at or after `from`.
    /// `lost`: it got here by lagging, so what it skips until the join point is lost
    /// and reported.
    Waiting { from: u64, lost: bool },
    /// The next event to read is `cursor`.
    Active { cursor: u64 },
}

/// One consumer of a ring: a cursor, not a queue.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    pos: Position,
    /// This reader's index in `Inner::cursors`.
    slot: usize,
    /// `(wake_gen, index)` of this reader's slot in `Inner::wakers`, if any.
    registered: Option<(u64, usize)>,
}

impl Reader {
    /// The next item without waiting, or `None` when there is nothing new right now
    /// (use [`poll_next`](Self::poll_next) or [`is_finished`](Self::is_finished) to tell
    /// the end of the stream apart).
    pub fn try_next(&mut self) -> Option<Item> {
        let mut inner = self.shared.lock();
        let item = self.pos.next(&inner);
        let writer = inner.move_cursor(self.slot, self.pos.cursor());
        drop(inner);
        if let Some(w) = writer {
            w.wake();
        }
        item
    }

    /// The next item; registers the waker when nothing is ready. `Ready(None)` means the
    /// writer closed the ring and this reader has read everything.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut inner = self.shared.lock();
        if let Some(item) = self.pos.next(&inner) {
            // The writer may be waiting for this (backpressure): wake it outside the lock.
            let writer = inner.move_cursor(self.slot, self.pos.cursor());
            drop(inner);
            if let Some(w) = writer {
                w.wake();
            }
            return Poll::Ready(Some(item));
        }
        if inner.closed {
            return Poll::Ready(None);
        }
        match self.registered {
            Some((gen, idx)) if gen == inner.wake_gen && idx < inner.wakers.len() => {
                if !inner.wakers[idx].will_wake(cx.waker()) {
                    inner.wakers[idx].clone_from(cx.waker());
                }
            }
            _ => {
                self.registered = Some((inner.wake_gen, inner.wakers.len()));
                inner.wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }

    /// The writer has closed the ring and this reader has read everything.
    pub fn is_finished(&self) -> bool {
        let inner = self.shared.lock();
        inner.closed
            && self.pos.pending.is_empty()
            && match self.pos.state {
                State::Active { cursor } => cursor >= inner.next_seq,
                // A waiting reader may still find a join point among the held events.
                State::Waiting { from, lost } => {
                    !lost && inner.joins.back().is_none_or(|j| j.seq < from)
                }
            }
    }

    /// The next item; `None` once the ring is closed and drained.
    pub async fn next(&mut self) -> Option<Item> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// Where a reader is: its cursor plus what it must deliver before reading the ring. Kept
/// apart from the `Arc` so it can be updated while the lock guard borrows the `Arc`.
#[derive(Debug)]
struct Position {
    state: State,
    /// Items to deliver before reading from the ring (lag notice, preamble), reversed.
    pending: Vec<Item>,
}

impl Position {
    /// What the ring needs to know of this reader: the oldest sequence number it may
    /// still read, and whether it reads (has a join point).
    fn cursor(&self) -> Cursor {
        match self.state {
            State::Waiting { from, .. } => Cursor {
                from,
                active: false,
            },
            State::Active { cursor } => Cursor {
                from: cursor,
                active: true,
            },
        }
    }

    fn next(&mut self, inner: &Inner) -> Option<Item> {
        if let Some(item) = self.pending.pop() {
            return Some(item);
        }
        if let State::Waiting { from, lost } = self.state {
            self.join_waiting(inner, from, lost);
            if let Some(item) = self.pending.pop() {
                return Some(item);
            }
            // Joined with nothing to announce (no configs yet), or still waiting.
            if lost && inner.closed && matches!(self.state, State::Waiting { .. }) {
                // The stream ended before a join point came after a lag: what was
                // skipped since is lost too.
                self.state = State::Waiting {
                    from: inner.next_seq,
                    lost: false,
                };
                return Some(Item::Lagged {
                    skipped: inner.next_seq - from,
                })
                .filter(|_| inner.next_seq > from);
            }
        }
        match self.state {
            State::Waiting { .. } => None,
            State::Active { cursor } => {
                if cursor < inner.base_seq {
                    self.lagged(inner, cursor);
                    return self.pending.pop();
                }
                let idx = usize::try_from(cursor - inner.base_seq).ok()?;
                let e = inner.entries.get(idx)?;
                let (ev, arrival) = (e.ev.clone(), e.arrival);
                self.state = State::Active { cursor: cursor + 1 };
                Some(Item::Event(ev, arrival))
            }
        }
    }

    /// The events from `cursor` on are gone: report the loss and move to the oldest join
    /// point held (or wait for the next one when none is held: the GOP being read lost
    /// its head, a stream without keyframes).
    fn lagged(&mut self, inner: &Inner, cursor: u64) {
        let (resume, join) = match inner.joins.front() {
            Some(j) => (j.seq, Some(j)),
            None => (inner.base_seq, None),
        };
        let (state, mut pending) = inner.reader_state(join);
        self.state = match join {
            Some(_) => state,
            // Wait from the oldest event held, not from the head: a join point among the
            // held events has not been pushed yet, but anything after `base_seq` counts.
            // What is skipped until the join point is reported when the reader joins.
            None => State::Waiting {
                from: resume,
                lost: true,
            },
        };
        pending.push(Item::Lagged {
            skipped: resume - cursor,
        });
        self.pending = pending;
    }

    /// Start at the first join point at or after `from`, if there is one. A reader that
    /// waits after a lag (`lost`) is told how many events it skipped until there.
    fn join_waiting(&mut self, inner: &Inner, from: u64, lost: bool) {
        if from < inner.base_seq {
            if let Some(first) = inner.first_join_in_mode.filter(|&f| f >= from) {
                if first < inner.base_seq {
                    // The join point this reader was waiting for has been evicted before
                    // it read anything: it lost everything from there on.
                    if let Some(j) = inner.joins.front() {
                        let (state, mut pending) = inner.reader_state(Some(j));
                        pending.push(Item::Lagged {
                            skipped: j.seq - if lost { from } else { first },
                        });
                        self.state = state;
                        self.pending = pending;
                    }
                    return;
                }
            }
        }
        if let Some(j) = inner.join_for_waiting(from) {
            let (state, mut pending) = inner.reader_state(Some(j));
            if lost && j.seq > from {
                pending.push(Item::Lagged {
                    skipped: j.seq - from,
                });
            }
            self.state = state;
            self.pending = pending;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.readers = inner.readers.saturating_sub(1);
        if let Some(c) = inner.cursors.get_mut(self.slot) {
            *c = None;
        }
        // The slowest reader may be gone: a writer waiting on it looks again.
        inner.progress += 1;
        let writer = inner.progress_waiter.take().map(|w| w.waker);
        // Don't leave a waker (and whatever task it keeps alive) behind until next push.
        if let Some((gen, idx)) = self.registered {
            if gen == inner.wake_gen {
                if let Some(w) = inner.wakers.get_mut(idx) {
                    *w = Waker::noop().clone();
                }
            }
        }
        drop(inner);
        if let Some(w) = writer {
            w.wake();
        }
    }
}
