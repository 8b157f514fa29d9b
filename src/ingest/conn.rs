//! One task per RTMP connection: pumps bytes through the sans-IO `rtmp::ServerSession`,
//! registers the publish with the hub (which announces it to the recording supervisor)
//! and turns the session's events into media events on the stream's ring. While a
//! recorder of the stream is far behind, it stops reading the socket (backpressure before
//! loss, issue 12) — see [`Publishing::wait_for_recorders`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use media::{MediaEvent, Millis, Rebaser, TimestampUnwrapper, WallMillis};
use rtmp::{PublishRequest, ServerEvent, ServerSession};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::hub::LiveStream;
use super::identity::{self, StreamId};
use super::Ingest;

/// Why a connection ended, for the log line.
#[derive(Debug, thiserror::Error)]
enum ConnEnd {
    #[error("peer closed the connection")]
    Closed,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] rtmp::SessionError),
    #[error("no handshake and publish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("no media for {0:?}")]
    Idle(Duration),
    #[error("publish refused: {0}")]
    Refused(String),
    #[error("taken over by a new publisher or shut down")]
    Cancelled,
    #[error("the peer read nothing we sent for {0:?}")]
    WriteStalled(Duration),
}

struct Publishing {
    id: StreamId,
    stream_id: u32,
    writer: ring::Writer,
    clock: TimestampUnwrapper,
    /// Keeps the push's timeline monotonic across encoder clock jumps (R-IN-6).
    timeline: Rebaser,
    /// Jumps rebased so far (the log line is rate-limited by it).
    jumps: u64,
    bad_frames: u64,
    /// Media bytes pushed since the recorders were last woken, and when that was.
    unwoken_bytes: usize,
    last_wake: Instant,
    /// Backpressure (issue 12): stop reading the socket while the slowest recorder is
    /// more than `pause_above` bytes behind, until it is down to `resume_at`.
    pause_above: usize,
    resume_at: usize,
    /// How long paused recorders may make no progress at all before reading resumes.
    stall_timeout: Duration,
    /// Set when a stall ended a pause: no new pause until the backlog is down to
    /// `resume_at` (the stalled recorder's cursor falls out of the ring and stops
    /// counting), so one hung recorder costs one warning and one `stall_timeout`.
    stalled: bool,
    /// Tracks, bitrate and frame rate for `/v1/streams` (issue 16).
    meter: super::meter::Meter,
}

/// Backpressure marks, as fractions of `ring_max_bytes`. The issue asks to stop reading
/// "while any recorder is more than `ring_max_bytes` behind", but the ring evicts at
/// `ring_max_bytes`: pausing only then would be too late, the gap would be gone. So the
/// connection pauses at half the byte bound — the other half is headroom for what the
/// read that crossed the mark still decodes (one socket read, at most ~128 KiB here, and
/// the bytes the recorders have already read but the ring still holds) — and resumes at
/// a quarter, so a recorder just at the mark does not make it stop and go every frame.
fn backpressure_marks(ring_max_bytes: usize) -> (usize, usize) {
    (ring_max_bytes / 2, ring_max_bytes / 4)
}

/// How often a paused connection looks whether its recorders progressed at all.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Recorders are woken once this much media is waiting for them, or [`WAKE_INTERVAL`]
/// after the oldest unwoken event, not after every socket read: a real-time encoder's
/// ~80 reads/s per stream woke every recorder task each time, and those wake-ups (thread
/// hand-offs, not muxing) were the largest CPU cost with several formats enabled
/// (benches/README.md). Recording latency does not matter here: files are spooled, and
/// what is not yet woken is at most 64 KiB or a quarter of a second of the stream.
const WAKE_BYTES: usize = 64 * 1024;
const WAKE_INTERVAL: Duration = Duration::from_millis(250);

/// A publishing connection's read that returns less than this (and less than the room
/// in its buffer) means the socket is drained: the next read waits for the next slot of
/// `[ingest] read_interval` instead of returning with each frame the encoder sends (SRS
/// calls this "merged read"). An encoder sends a frame every ~10-20 ms, and each read
/// cost an epoll wake-up, a task poll and often a hand-off between the runtime's threads
/// — the largest CPU cost in the profile (benches/README.md, issue 17). A read of more
/// than this reads again at once, so a stream faster than the kernel's receive window
/// per interval is never throttled: the hold only follows a read that emptied the socket.
const HOLD_BELOW: usize = 32 * 1024;

/// The next read slot of connection `conn_id`: slots fall on a process-wide grid of
/// `interval`, each connection on the phase of its lane (`[ingest] read_lanes`), so one
/// timer tick of the runtime serves a whole lane's connections in one turn rather than
/// waking it once per connection. With a single lane, streams started together (a
/// relay, an ABR ladder with aligned keyframes) cut and close their files in the same
/// slot and their uploads queue behind each other: close -> stored doubled; more lanes
/// cost CPU (each lane is a wake-up of the runtime and of the file threads). Measured
/// in benches/README.md, issue 17 step 5.
fn next_read_slot(interval: Duration, lanes: u32, conn_id: u64) -> Instant {
    static GRID: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let grid = *GRID.get_or_init(Instant::now);
    let step = interval.as_nanos().max(1);
    let lanes = u64::from(lanes.max(1));
    let phase = step * u128::from(conn_id % lanes) / u128::from(lanes);
    // u64 nanoseconds last 584 years of uptime.
    let at = |nanos: u128| grid + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
    // The first slot of the lane after now; phase < step, so this never underflows.
    let since = Instant::now().duration_since(grid).as_nanos();
    at(phase + (since + step - phase) / step * step)
}

impl Publishing {
    fn new(
        id: StreamId,
        stream_id: u32,
        writer: ring::Writer,
        max_timestamp_jump: Millis,
        ring_max_bytes: usize,
        stall_timeout: Duration,
        info: Arc<super::meter::LiveInfo>,
    ) -> Publishing {
        let (pause_above, resume_at) = backpressure_marks(ring_max_bytes);
        Publishing {
            id,
            stream_id,
            writer,
            clock: TimestampUnwrapper::new(),
            timeline: Rebaser::new(max_timestamp_jump),
            jumps: 0,
            bad_frames: 0,
            unwoken_bytes: 0,
            last_wake: Instant::now(),
            pause_above,
            resume_at,
            stall_timeout,
            stalled: false,
            meter: super::meter::Meter::new(info),
        }
    }

    fn wake_due(&self, now: Instant) -> bool {
        self.unwoken_bytes > 0
            && (self.unwoken_bytes >= WAKE_BYTES || now >= self.last_wake + WAKE_INTERVAL)
    }

    fn wake(&mut self, now: Instant) {
        self.writer.wake_readers();
        self.unwoken_bytes = 0;
        self.last_wake = now;
    }

    /// Whether to stop reading the socket now (backpressure before loss, issue 12).
    fn should_pause(&mut self) -> bool {
        let backlog = self.writer.backlog_bytes();
        if self.stalled {
            if backlog <= self.resume_at {
                self.stalled = false;
            }
            return false;
        }
        backlog > self.pause_above
    }

    /// Waits, not reading the socket, until the recorders are down to `resume_at` behind
    /// (TCP flow control then slows the publisher, as nginx-rtmp's synchronous writes
    /// do), or until they made no progress for `stall_timeout` (a hung disk): then
    /// reading resumes, the ring evicts what the stalled recorder has not read, and it
    /// gets `Lagged` — its file ends at the gap, and the recorder logs it.
    async fn wait_for_recorders(
        &mut self,
        conn_id: u64,
        cancel: &tokio_util::sync::CancellationToken,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ConnEnd> {
        let paused_at = Instant::now();
        // What this connection pushed but has not announced yet must reach the
        // recorders, or they never run and the pause never ends.
        if self.unwoken_bytes > 0 {
            self.wake(paused_at);
        }
        debug!(conn = conn_id, stream = %self.id, backlog = self.writer.backlog_bytes(), "recorders behind: pausing the publisher");
        crate::metrics::ingest_pause();
        let check = STALL_CHECK.min(self.stall_timeout);
        let mut progress = self.writer.progress();
        let mut last_progress = paused_at;
        let resume_at = self.resume_at;
        loop {
            tokio::select! {
                () = self.writer.backlog_below(resume_at) => {
                    debug!(conn = conn_id, stream = %self.id, paused_ms = paused_at.elapsed().as_millis() as u64, "recorders caught up: resuming the publisher");
                    return Ok(());
                }
                () = tokio::time::sleep(check) => {
                    let now = Instant::now();
                    let p = self.writer.progress();
                    if p != progress {
                        progress = p;
                        last_progress = now;
                    } else if now.duration_since(last_progress) >= self.stall_timeout {
                        let stalled = now.duration_since(last_progress);
                        warn!(conn = conn_id, stream = %self.id, stalled_s = stalled.as_secs_f64(), paused_s = now.duration_since(paused_at).as_secs_f64(), backlog = self.writer.backlog_bytes(), "recorders made no progress for {stalled:.1?} ([ingest] stall_timeout): reading the publisher again; the stalled recordings lose what the ring evicts and end their files at the gap");
                        crate::metrics::ingest_stall();
                        self.stalled = true;
                        self.writer.stop_waiting();
                        return Ok(());
                    }
                }
                () = cancel.cancelled() => return Err(ConnEnd::Cancelled),
                () = shutdown.cancelled() => return Err(ConnEnd::Cancelled),
            }
        }
    }
}

/// The byte stream of one connection: plain TCP, or TLS over it (RTMPS).
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket when its bytes are the RTMP stream itself (not TLS): a publishing
    /// connection then reads it on the grid without per-frame wake-ups (`slot_read`).
    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}
impl Socket for tokio::net::TcpStream {
    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}
impl Socket for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

pub async fn handle(ingest: Arc<Ingest>, socket: impl Socket, peer: SocketAddr, conn_id: u64) {
    // This connection's settings: a reload applies to connections that start later.
    let config = ingest.config.snapshot();
    let cfg = &config.config.rtmp;
    let session = ServerSession::new(rtmp::ServerConfig {
        limits: rtmp::Limits {
            max_message_bytes: cfg.max_message_bytes,
            ..rtmp::Limits::default()
        },
        out_chunk_size: cfg.chunk_size,
        ..rtmp::ServerConfig::default()
    });
    let mut conn = Conn {
        ingest,
        peer,
        conn_id,
        session,
        publishing: None,
        cancel: tokio_util::sync::CancellationToken::new(),
        on_unpublish: None,
    };
    let result = conn.run(socket).await;
    let published = conn.publishing.as_ref().map(|p| p.id.to_string());
    conn.end_publish();
    match (&result, published) {
        (Err(ConnEnd::Closed), Some(s)) => {
            info!(conn = conn_id, %peer, stream = %s, "publisher disconnected")
        }
        (Err(ConnEnd::Closed), None) => debug!(conn = conn_id, %peer, "connection closed"),
        // Not RTMP at all (TLS, HTTP, RTMPE on the plain port): scanners do this all day,
        // so it is not worth a warning per connection (reliability.md H1).
        (Err(e @ ConnEnd::Protocol(rtmp::SessionError::BadVersion { .. })), _) => {
            debug!(conn = conn_id, %peer, "closing connection: {e}")
        }
        (Err(e @ ConnEnd::Protocol(_)), s) => {
            warn!(conn = conn_id, %peer, stream = s.as_deref().unwrap_or("-"), "closing connection: {e}")
        }
        (Err(e), s) => {
            info!(conn = conn_id, %peer, stream = s.as_deref().unwrap_or("-"), "closing connection: {e}")
        }
        (Ok(()), _) => {}
    }
}

struct Conn {
    ingest: Arc<Ingest>,
    peer: SocketAddr,
    conn_id: u64,
    session: ServerSession,
    publishing: Option<Publishing>,
    cancel: tokio_util::sync::CancellationToken,
    /// The `on_unpublish` URL of the `[[publish_auth]]` entry that allowed the publish.
    on_unpublish: Option<String>,
}

impl Conn {
    async fn run(&mut self, mut socket: impl Socket) -> Result<(), ConnEnd> {
        let config = self.ingest.config.snapshot();
        let rtmp_cfg = &config.config.rtmp;
        let handshake_timeout = Duration::from_secs(rtmp_cfg.handshake_timeout);
        let idle_timeout = Duration::from_secs(rtmp_cfg.idle_timeout);
        // One deadline for handshake + connect + publish, not an idle timer each byte
        // resets: a client trickling a byte every few seconds still gets dropped
        // (reliability.md H3).
        let mut deadline = Instant::now() + handshake_timeout;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut was_publishing = false;
        let shutdown = self.ingest.shutdown.clone();
        let read_interval = Duration::from_secs_f64(config.config.ingest.read_interval);
        let read_lanes = config.config.ingest.read_lanes;
        // Whether the last read drained the socket (see HOLD_BELOW).
        let mut hold = false;
        // Whether the socket's low-water mark is raised (slot reads, `slot_read`).
        let mut quiet = false;
        loop {
            if let Some(p) = &mut self.publishing {
                if p.should_pause() {
                    p.wait_for_recorders(self.conn_id, &self.cancel, &shutdown)
                        .await?;
                    // We stopped reading, not the publisher: the idle timeout starts over.
                    deadline = Instant::now() + idle_timeout;
                }
            }
            if hold {
                tokio::select! {
                    () = tokio::time::sleep_until(next_read_slot(read_interval, read_lanes, self.conn_id)) => {}
                    _ = self.cancel.cancelled() => return Err(ConnEnd::Cancelled),
                    _ = shutdown.cancelled() => return Err(ConnEnd::Cancelled),
                }
            }
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            let room = buf.capacity() - buf.len();
            let slot_reads = self.publishing.is_some() && !read_interval.is_zero();
            if let Some(tcp) = socket.plain_tcp() {
                if slot_reads && !quiet {
                    quiet = true;
                    if let Err(e) = super::slot_read::quiet(tcp) {
                        debug!(
                            conn = self.conn_id,
                            "SO_RCVLOWAT not set, frames wake the runtime: {e}"
                        );
                    }
                } else if !slot_reads && quiet {
                    // Before any read goes through the runtime's readiness again.
                    quiet = false;
                    super::slot_read::restore(tcp)?;
                }
            }
            let n = if let Some(tcp) = socket.plain_tcp().filter(|_| quiet) {
                // A direct read is invisible to tokio's cooperative budget, which makes a
                // task that always finds data yield now and then: count it, or a
                // publisher faster than this task starves every other task on its worker.
                tokio::task::consume_budget().await;
                match super::slot_read::read_now(tcp, &mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Nothing arrived in this slot: the timers a waiting read would
                        // have raced are checked here, once per slot.
                        hold = true;
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(ConnEnd::Idle(idle_timeout));
                        }
                        if let Some(p) = &mut self.publishing {
                            if p.wake_due(now) {
                                p.wake(now);
                            }
                        }
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                // One timer serves both the connection deadline and the recorders'
                // wake-up: data from a publisher that went quiet still reaches the files.
                let wake_at = self
                    .publishing
                    .as_ref()
                    .filter(|p| p.unwoken_bytes > 0)
                    .map(|p| p.last_wake + WAKE_INTERVAL);
                let timer = wake_at.map_or(deadline, |w| w.min(deadline));
                tokio::select! {
                    r = socket.read_buf(&mut buf) => r?,
                    _ = tokio::time::sleep_until(timer) => {
                        let now = Instant::now();
                        if now < deadline {
                            if let Some(p) = &mut self.publishing {
                                p.wake(now);
                            }
                            continue;
                        }
                        return Err(if self.publishing.is_some() { ConnEnd::Idle(idle_timeout) } else { ConnEnd::HandshakeTimeout(handshake_timeout) });
                    }
                    _ = self.cancel.cancelled() => return Err(ConnEnd::Cancelled),
                    _ = shutdown.cancelled() => return Err(ConnEnd::Cancelled),
                }
            };
            if n == 0 {
                return Err(ConnEnd::Closed);
            }
            // Only media is held back: the handshake and commands are answered at once.
            hold =
                self.publishing.is_some() && !read_interval.is_zero() && n < HOLD_BELOW.min(room);
            crate::metrics::bytes_in(n);
            // Every event decoded from this read arrived now: files take their wall-clock
            // start and end from these stamps, not from when a writer opens (issue 10).
            let arrival = self.ingest.clock.now();
            let res = self.session.handle_input(&mut buf);
            // Flush replies even when the input ended in an error, so the peer sees them.
            let got_media = self.pump_events(&mut socket, arrival).await;
            if let Some(p) = &mut self.publishing {
                let now = Instant::now();
                if p.wake_due(now) {
                    p.wake(now);
                }
            }
            let got_media = got_media?;
            while let Some(out) = self.session.take_output() {
                self.write_bounded(&mut socket, &out, idle_timeout).await?;
            }
            res?;
            // From the publish on, the deadline is the idle timeout, renewed by media.
            let publishing = self.publishing.is_some();
            if publishing && (got_media || !was_publishing) {
                deadline = Instant::now() + idle_timeout;
            }
            was_publishing = publishing;
        }
    }

    /// Writes `bytes`, raced against `limit`, the connection's cancel (a takeover) and
    /// shutdown: a peer that stops reading (a zero receive window, a ping flood it never
    /// drains) loses its connection — and its stream name — within `limit` instead of
    /// holding both, and never delays SIGTERM (issue 14).
    async fn write_bounded(
        &self,
        socket: &mut impl Socket,
        bytes: &[u8],
        limit: Duration,
    ) -> Result<(), ConnEnd> {
        let shutdown = &self.ingest.shutdown;
        tokio::select! {
            r = socket.write_all(bytes) => r.map_err(ConnEnd::from),
            _ = tokio::time::sleep(limit) => Err(ConnEnd::WriteStalled(limit)),
            _ = self.cancel.cancelled() => Err(ConnEnd::Cancelled),
            _ = shutdown.cancelled() => Err(ConnEnd::Cancelled),
        }
    }

    /// Handles every pending session event, all decoded from bytes read at `arrival`;
    /// returns whether media arrived.
    async fn pump_events(
        &mut self,
        socket: &mut impl Socket,
        arrival: WallMillis,
    ) -> Result<bool, ConnEnd> {
        let mut got_media = false;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ServerEvent::Connected(info) => {
                    // tcUrl and app carry the query when it rides on the app
                    // (`rtmp://h/live?txSecret=…/cam`): logged redacted.
                    debug!(conn = self.conn_id, peer = %self.peer, app = ?identity::redact_url(&info.app), tc_url = ?info.tc_url.as_deref().map(identity::redact_url), "rtmp connect");
                }
                ServerEvent::PublishRequested(req) => {
                    if let Err(reason) = self.start_publish(&req).await {
                        let limit = Duration::from_secs(
                            self.ingest.config.snapshot().config.rtmp.idle_timeout,
                        );
                        while let Some(out) = self.session.take_output() {
                            self.write_bounded(socket, &out, limit).await?;
                        }
                        return Err(ConnEnd::Refused(reason));
                    }
                }
                ServerEvent::Metadata {
                    stream_id, body, ..
                } => {
                    if let Some(p) = self
                        .publishing
                        .as_mut()
                        .filter(|p| p.stream_id == stream_id)
                    {
                        p.writer.push_deferred(MediaEvent::Metadata(body), arrival);
                    }
                }
                ServerEvent::Audio {
                    stream_id,
                    timestamp,
                    body,
                } => {
                    got_media = true;
                    self.media(stream_id, timestamp, body, false, arrival);
                }
                ServerEvent::Video {
                    stream_id,
                    timestamp,
                    body,
                } => {
                    got_media = true;
                    self.media(stream_id, timestamp, body, true, arrival);
                }
                ServerEvent::Unpublished { stream_id } => {
                    if self
                        .publishing
                        .as_ref()
                        .is_some_and(|p| p.stream_id == stream_id)
                    {
                        self.end_publish();
                    }
                }
            }
        }
        Ok(got_media)
    }

    fn media(
        &mut self,
        stream_id: u32,
        timestamp: u32,
        body: bytes::Bytes,
        video: bool,
        arrival: WallMillis,
    ) {
        let Some(p) = self
            .publishing
            .as_mut()
            .filter(|p| p.stream_id == stream_id)
        else {
            return;
        };
        let dts = p.clock.unwrap(timestamp);
        let body_len = body.len();
        let parsed = if video {
            flv::tag::parse_video(body, dts)
        } else {
            flv::tag::parse_audio(body, dts)
        };
        match parsed {
            Ok(flv::tag::Parsed::Event(mut ev)) => {
                match &mut ev {
                    MediaEvent::Packet(pkt) => {
                        let m = p.timeline.map(pkt.kind(), pkt.dts);
                        if m.jumped {
                            p.jumps += 1;
                            crate::metrics::timestamp_discontinuity();
                            if p.jumps.is_power_of_two() {
                                info!(conn = self.conn_id, stream = %p.id, track = ?pkt.kind(), from_ms = dts.as_ms(), continued_at_ms = m.dts.as_ms(), count = p.jumps, "encoder timestamps jumped; the recording continues on one timeline (HLS: #EXT-X-DISCONTINUITY)");
                            }
                            p.writer.push_deferred(MediaEvent::Discontinuity, arrival);
                        }
                        pkt.dts = m.dts;
                        p.meter.packet(arrival.as_unix_ms(), body_len, video);
                    }
                    MediaEvent::Config(c) => {
                        c.dts = p.timeline.map_config(c.kind(), c.dts);
                        p.meter.config(c);
                    }
                    MediaEvent::Metadata(_) | MediaEvent::Discontinuity => {}
                }
                p.unwoken_bytes += body_len;
                p.writer.push_deferred(ev, arrival);
            }
            Ok(flv::tag::Parsed::Skip(_)) => {}
            Err(e) => {
                // A bad frame is dropped and the stream goes on (R-SEC-3); the log is
                // rate-limited to powers of two so a broken encoder cannot flood it.
                p.bad_frames += 1;
                if p.bad_frames.is_power_of_two() {
                    warn!(conn = self.conn_id, stream = %p.id, dts = dts.as_ms(), count = p.bad_frames, "dropping malformed {} frame: {e}", if video { "video" } else { "audio" });
                }
            }
        }
    }

    async fn start_publish(&mut self, req: &PublishRequest) -> Result<(), String> {
        // The config as of this publish: rules and templates apply when a push starts
        // (R-TP-6), and the recording keeps them whatever a later reload says.
        let config = self.ingest.config.snapshot();
        let cfg = &config.config.rtmp;
        if self.publishing.is_some() {
            let reason = "this connection is already publishing".to_string();
            self.session
                .reject_publish(req.stream_id, "NetStream.Publish.BadName", &reason);
            return Err(reason);
        }
        let domains: Vec<String> = cfg.domains.clone();
        let id = match identity::resolve(
            req.tc_url.as_deref(),
            &req.app,
            &req.name,
            req.query.as_deref(),
            &domains,
            &cfg.default_domain,
        ) {
            Ok(id) => id,
            Err(e) => {
                let reason = format!("invalid stream name: {e}");
                warn!(conn = self.conn_id, peer = %self.peer, "refusing publish: {reason}");
                self.session
                    .reject_publish(req.stream_id, "NetStream.Publish.BadName", &reason);
                return Err(reason);
            }
        };
        // R-SEC-1: before anything of the stream exists (no hub entry, no file).
        let now_s = u64::try_from(self.ingest.clock.now_ms() / 1000).unwrap_or(0);
        match super::auth::authorize(
            &self.ingest.http,
            &config.config.publish_auth,
            &id,
            self.peer,
            req.query.as_deref(),
            now_s,
        )
        .await
        {
            Ok(entry) => {
                self.on_unpublish = entry
                    .map(|e| e.on_unpublish.clone())
                    .filter(|u| !u.is_empty());
            }
            Err(refusal) => {
                let reason = refusal.message();
                crate::metrics::publish_auth_refused(refusal.label());
                warn!(conn = self.conn_id, peer = %self.peer, stream = %id, reason = refusal.label(), "refusing publish: {reason}");
                self.session
                    .reject_publish(req.stream_id, "NetStream.Publish.Rejected", &reason);
                return Err(reason);
            }
        }
        // Past the spool quota new recordings are refused rather than risking the open
        // ones (R-ST-4): the store is down or too slow and the disk would fill up.
        let quota = &self.ingest.quota;
        if quota.is_full() {
            let reason = format!(
                "spool full ({} of {} bytes waiting for storage): new recordings refused until uploads catch up",
                quota.used(),
                quota.max()
            );
            crate::metrics::publish_refused_spool_full();
            error!(conn = self.conn_id, peer = %self.peer, stream = %id, "refusing publish: {reason}");
            crate::callback::publish_refused(
                &self.ingest.callbacks,
                &config,
                &id,
                req.query.as_deref(),
                &reason,
            );
            self.session
                .reject_publish(req.stream_id, "NetStream.Publish.Rejected", &reason);
            return Err(reason);
        }
        let ingest = &config.config.ingest;
        let stall_timeout = Duration::from_secs(ingest.stall_timeout);
        let (writer, handle) = ring::ring(ring::RingConfig {
            max_duration_ms: Millis::from_secs_f64(ingest.ring_seconds),
            max_bytes: ingest.ring_max_bytes,
        });
        let query = req.query.as_deref().map(identity::redact_query);
        let info = Arc::new(super::meter::LiveInfo::default());
        let entry = LiveStream {
            conn_id: self.conn_id,
            peer: self.peer,
            started: SystemTime::now(),
            cancel: self.cancel.clone(),
            ring: handle,
            query: query.clone(),
            config: config.clone(),
            info: info.clone(),
        };
        // R-SC-1: one node records a stream. Asked after auth and the quota, so a refused
        // publisher never holds a lease.
        if let Some(cluster) = &self.ingest.cluster {
            let takeover = cfg.on_duplicate == crate::config::OnDuplicate::Takeover;
            match cluster
                .claim(&id, takeover, self.ingest.clock.now_ms())
                .await
            {
                Ok(crate::cluster::lease::Claim::Granted) => {}
                Ok(crate::cluster::lease::Claim::HeldBy(node)) => {
                    let reason = format!(
                        "stream {id} is being published on node {node} (its cluster lease is live; rtmp.on_duplicate = \"takeover\" takes it over)"
                    );
                    warn!(conn = self.conn_id, peer = %self.peer, stream = %id, holder = %node, "refusing publish: {reason}");
                    self.session.reject_publish(
                        req.stream_id,
                        "NetStream.Publish.BadName",
                        &reason,
                    );
                    return Err(reason);
                }
                // Recording it twice beats losing it: the store is down, not the stream.
                Err(e) => {
                    warn!(conn = self.conn_id, stream = %id, "cluster: cannot take the stream's lease, recording without it: {e}")
                }
            }
        }
        if let Err(e) =
            self.ingest
                .hub
                .register(id.clone(), entry, cfg.on_duplicate, cfg.max_streams)
        {
            if let Some(cluster) = &self.ingest.cluster {
                cluster.unbind(&id, 0);
            }
            let reason = e.to_string();
            // A duplicate name is the publisher's problem (BadName, as nginx-rtmp and SRS
            // answer); a full server is not (Rejected).
            let code = match e {
                super::hub::RegisterError::AlreadyPublishing { .. } => "NetStream.Publish.BadName",
                super::hub::RegisterError::TooManyStreams { .. } => "NetStream.Publish.Rejected",
            };
            warn!(conn = self.conn_id, peer = %self.peer, stream = %id, "refusing publish: {reason}");
            if matches!(e, super::hub::RegisterError::TooManyStreams { .. }) {
                crate::callback::publish_refused(
                    &self.ingest.callbacks,
                    &config,
                    &id,
                    req.query.as_deref(),
                    &reason,
                );
            }
            self.session.reject_publish(req.stream_id, code, &reason);
            return Err(reason);
        }
        if let Some(cluster) = &self.ingest.cluster {
            cluster.bind(&id, self.conn_id);
        }
        info!(conn = self.conn_id, peer = %self.peer, stream = %id, query = query.as_deref().unwrap_or(""), "publish started");
        self.session.accept_publish(req.stream_id);
        self.publishing = Some(Publishing::new(
            id,
            req.stream_id,
            writer,
            Millis::from_secs_f64(config.config.ingest.max_timestamp_jump),
            ingest.ring_max_bytes,
            stall_timeout,
            info,
        ));
        Ok(())
    }

    fn end_publish(&mut self) {
        if let Some(mut p) = self.publishing.take() {
            p.writer.close();
            self.ingest.hub.unregister(&p.id, self.conn_id);
            if let Some(cluster) = &self.ingest.cluster {
                cluster.unbind(&p.id, self.conn_id);
            }
            info!(conn = self.conn_id, stream = %p.id, "publish ended");
            if let Some(url) = self.on_unpublish.take() {
                super::auth::notify_unpublish(
                    self.ingest.http.clone(),
                    url,
                    p.id.clone(),
                    self.peer,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn publishing(
        ring_max_bytes: usize,
        stall_timeout: Duration,
    ) -> (Publishing, ring::RingHandle) {
        let (writer, handle) = ring::ring(ring::RingConfig {
            max_duration_ms: Millis::from_ms(2000),
            max_bytes: ring_max_bytes,
        });
        let p = Publishing::new(
            StreamId::new("d", "live", "s"),
            1,
            writer,
            Millis::from_secs(10),
            ring_max_bytes,
            stall_timeout,
            Arc::default(),
        );
        (p, handle)
    }

    fn frame(i: i64, size: usize) -> MediaEvent {
        let flv = bytes::Bytes::from(vec![if i == 0 { 0x17 } else { 0x27 }; size]);
        MediaEvent::Packet(media::Packet {
            codec: media::Codec::Video(media::VideoCodec::H264),
            dts: Millis::from_ms(i * 40),
            cts: 0,
            key: i == 0,
            data: flv.slice(5..),
            flv,
        })
    }

    const AT: WallMillis = WallMillis::from_unix_ms(1_700_000_000_000);

    /// Pushes like the connection does: deferred, counted as unwoken.
    fn push(p: &mut Publishing, i: i64, size: usize) {
        p.unwoken_bytes += size;
        p.writer.push_deferred(frame(i, size), AT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_recorder_pauses_the_publisher_until_it_catches_up() {
        let (mut p, handle) = publishing(100_000, Duration::from_secs(10));
        let mut reader = handle.subscribe();
        let mut i = 0;
        while !p.should_pause() {
            push(&mut p, i, 1000);
            i += 1;
        }
        // Paused past half of the byte bound, before the ring evicts anything.
        assert_eq!(i, 51);
        assert_eq!(handle.stats().pushed, 51);
        let (cancel, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let recorder = tokio::spawn(async move {
            let mut got = 0;
            // A slow recorder: 1 ms per frame.
            while let Some(item) = reader.next().await {
                assert!(matches!(item, ring::Item::Event(..)), "{item:?}");
                got += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                if got == 51 {
                    break;
                }
            }
            (reader, got)
        });
        p.wait_for_recorders(1, &cancel, &shutdown)
            .await
            .expect("resumed");
        // The pending wake-up went out before waiting (or the recorder never ran), and
        // the wait ended at the low mark, not at a stall.
        assert_eq!(p.unwoken_bytes, 0);
        assert!(!p.stalled);
        assert!(p.writer.backlog_bytes() <= 25_000);
        assert!(!p.should_pause());
        let (_reader, got) = recorder.await.expect("recorder");
        assert_eq!(got, 51);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_recorder_resumes_the_publisher_after_stall_timeout_and_lags() {
        let (mut p, handle) = publishing(100_000, Duration::from_secs(3));
        // A recorder that has read its preamble and the keyframe, then hangs (its disk).
        let mut stuck = handle.subscribe();
        push(&mut p, 0, 1000);
        while stuck.try_next().is_some() {}
        let mut i = 1;
        while !p.should_pause() {
            push(&mut p, i, 1000);
            i += 1;
        }
        let (cancel, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let started = Instant::now();
        p.wait_for_recorders(1, &cancel, &shutdown)
            .await
            .expect("resumed");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited <= Duration::from_secs(4),
            "{waited:?}"
        );
        assert!(p.stalled);
        // Reading goes on: no new pause for the stalled recorder, the ring evicts at
        // its bound, and once its cursor is evicted it no longer counts.
        for _ in 0..200 {
            assert!(!p.should_pause());
            push(&mut p, i, 1000);
            i += 1;
        }
        assert!(handle.stats().bytes <= 100_000);
        assert_eq!(p.writer.backlog_bytes(), 0);
        assert!(!p.should_pause());
        assert!(!p.stalled);
        // The stalled recorder learns what it lost (its file ends at the gap).
        assert!(matches!(
            stuck.try_next(),
            Some(ring::Item::Lagged { skipped }) if skipped > 100
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn read_slots_fall_on_one_grid_after_now() {
        let step = Duration::from_millis(100);
        // The grid's origin is process-wide and may come from another test's runtime:
        // a minute of paused time puts this one's clock past it.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let a = next_read_slot(step, 4, 7);
        tokio::time::sleep(Duration::from_millis(130)).await;
        let b = next_read_slot(step, 4, 7);
        let now = Instant::now();
        assert!(
            b > now && b <= now + step,
            "{b:?} is the next slot after {now:?}"
        );
        // Connections of one lane asking at different moments get slots a whole number
        // of steps apart: the same timer tick wakes them.
        let c = next_read_slot(step, 4, 7 + 4);
        assert_eq!(c, b, "two connections of one lane share the slot");
        assert!(b > a, "{a:?} then {b:?}");
        let apart = b.duration_since(a).as_nanos() % step.as_nanos();
        assert_eq!(apart, 0, "{a:?} and {b:?} are off the grid");
    }

    #[tokio::test(start_paused = true)]
    async fn read_lanes_spread_connections_over_the_interval() {
        let step = Duration::from_millis(100);
        // The grid's origin is process-wide and may come from another test's runtime:
        // a minute of paused time puts this one's clock past it.
        tokio::time::sleep(Duration::from_secs(60)).await;
        const LANES: u32 = 4;
        let mut slots: Vec<Instant> = (0..u64::from(LANES))
            .map(|c| next_read_slot(step, LANES, c))
            .collect();
        let now = Instant::now();
        assert!(slots.iter().all(|s| *s > now && *s <= now + step));
        slots.sort();
        slots.dedup();
        // Each lane its own instant, a quarter of the interval apart: files that cut in
        // the same read interval close at four different moments.
        assert_eq!(slots.len(), LANES as usize);
        for w in slots.windows(2) {
            let gap = w[1].duration_since(w[0]).as_nanos() % step.as_nanos();
            assert_eq!(gap, step.as_nanos() / u128::from(LANES), "{w:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_a_pause() {
        let (mut p, handle) = publishing(10_000, Duration::from_secs(600));
        let _reader = handle.subscribe();
        let mut i = 0;
        while !p.should_pause() {
            push(&mut p, i, 1000);
            i += 1;
        }
        let (cancel, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.cancel();
        });
        assert!(matches!(
            p.wait_for_recorders(1, &cancel, &shutdown).await,
            Err(ConnEnd::Cancelled)
        ));
    }
}
