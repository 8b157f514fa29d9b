//! Recording of one stream in one format: files cut by `CutPolicy`.
//!
//! - FLV (R-FM-1): each file starts with the `onMetaData` tag, the sequence headers and a
//!   keyframe, and is finalized with the real `duration` and `filesize`.
//! - Raw AAC (R-FM-4): the stream's AAC frames with ADTS headers; video is not written,
//!   but files still open and cut on the same packets as the other formats, so formats
//!   with equal intervals cover the same span (R-SG-4).
//! - HLS (R-FM-2): the recording "file" is a playlist; its media are MPEG-TS segments of
//!   about `segment_duration`, cut on keyframes, each starting with PAT/PMT. The recorder
//!   says where segments begin and end; the daemon names them and writes the playlist.
//! - Fragmented MP4 (R-FM-3): init segment, then a fragment per GOP (≤ ~2 s, or shorter
//!   with [`Recorder::with_mp4_fragment`]); finalized with its real duration (mehd) and an
//!   mfra index.
//!
//! Every event comes with its arrival (the wall time its bytes were read, stamped at
//! ingest); the recorder reports the arrival of the packet that opens each file and
//! segment and of the last packet of each file, which the daemon uses as the file's
//! wall-clock start and end (issue 10). The recorder itself never reads a clock.

use aac::AdtsParams;
use bytes::Bytes;
use flv::mux::{FlvMuxer, MetaInfo, Patch};
use media::{AudioCodec, Codec, MediaEvent, Millis, Packet, TrackConfig, TrackKind, WallMillis};

use crate::cut::{CutDecision, CutPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Flv,
    Aac,
    Mp4,
    Hls,
}

impl Format {
    /// File extension, also the name used in configs and callbacks.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Flv => "flv",
            Format::Aac => "aac",
            Format::Mp4 => "mp4",
            Format::Hls => "m3u8",
        }
    }
}

/// What the daemon must do, in order.
#[derive(Debug)]
pub enum Output {
    /// Something of the stream this format cannot record (raw AAC of a stream without
    /// AAC audio: no file; a track MP4 cannot hold: the file goes on without it). Said
    /// once per recording.
    Skipped { reason: String },
    /// Start a new file (`seq` counts files of this recording from 0) at the packet with
    /// DTS `start_dts`, which arrived at `arrival`.
    Open {
        seq: u64,
        start_dts: Millis,
        arrival: WallMillis,
    },
    /// Append these buffers, in order, to file `seq`.
    Data { seq: u64, bufs: Vec<Bytes> },
    /// HLS: segment `n` of playlist `seq` begins with a packet that arrived at `arrival`.
    SegmentOpen {
        seq: u64,
        n: u64,
        arrival: WallMillis,
    },
    /// HLS: append these buffers to segment `n` of playlist `seq`.
    SegmentData { seq: u64, n: u64, bufs: Vec<Bytes> },
    /// HLS: segment `n` is complete; it starts at `start_dts` and lasts `duration_ms`
    /// (up to the next segment's start, so the durations add up to the playlist's span).
    /// `discontinuity`: it is the first segment after the stream's timeline jumped
    /// (`MediaEvent::Discontinuity`): listed after `#EXT-X-DISCONTINUITY`.
    SegmentClose {
        seq: u64,
        n: u64,
        start_dts: Millis,
        duration_ms: Millis,
        discontinuity: bool,
    },
    /// File `seq` is complete: overwrite `patches` in place, then publish it.
    Close {
        seq: u64,
        summary: FileSummary,
        patches: Vec<Patch>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileSummary {
    pub start_dts: Millis,
    /// Media duration: from the first DTS to the end of the last frame.
    pub duration_ms: Millis,
    pub bytes: u64,
    pub video_frames: u64,
    pub audio_frames: u64,
    /// Cut by the hard cap rather than on a keyframe (R-SG-2).
    pub hard_cut: bool,
    /// When the packet that opened the file arrived: the file's wall-clock start.
    pub first_arrival: WallMillis,
    /// When the last packet of the file arrived: its wall-clock end.
    pub last_arrival: WallMillis,
}

enum Writer {
    Flv(FlvMuxer),
    Aac { adts: AdtsParams, written: u64 },
    Mp4(Box<fmp4::Fmp4Muxer>),
    Hls(Box<HlsWriter>),
}

struct HlsWriter {
    ts: mpegts::TsMuxer,
    /// The open segment: number, start DTS, and whether it began after a discontinuity.
    segment: Option<(u64, Millis, bool)>,
    next_n: u64,
    written: u64,
}

impl Writer {
    fn bytes_written(&self) -> u64 {
        match self {
            Writer::Flv(m) => m.bytes_written(),
            Writer::Aac { written, .. } => *written,
            Writer::Mp4(m) => m.bytes_written(),
            Writer::Hls(h) => h.written,
        }
    }

    /// Writes a packet if this format carries it; returns whether it did.
    fn packet(&mut self, p: &Packet, out: &mut Vec<Bytes>) -> bool {
        match self {
            Writer::Flv(m) => {
                m.write_tag(p.kind(), p.dts, &p.flv, out);
                true
            }
            Writer::Aac { adts, written } => {
                if p.codec != Codec::Audio(AudioCodec::Aac) {
                    return false;
                }
                match adts.frame(&p.data) {
                    Ok(bufs) => {
                        *written += bufs.iter().map(|b| b.len() as u64).sum::<u64>();
                        out.extend(bufs);
                        true
                    }
                    // An AAC frame over 8 KiB cannot be framed; no encoder makes one.
                    Err(_) => false,
                }
            }
            Writer::Mp4(m) => {
                // The muxer counts packets of tracks it does not have (a codec MP4
                // cannot hold): those were not written.
                let ignored = m.ignored_packets();
                m.push(p, out).is_ok() && m.ignored_packets() == ignored
            }
            Writer::Hls(h) => {
                let before = out.len();
                let ok = h.ts.push(p, out).is_ok();
                h.written += out[before..].iter().map(|b| b.len() as u64).sum::<u64>();
                // A left-out track's packets are accepted and dropped: not written, so
                // neither counted nor timing the playlist (an AV1 + AAC playlist is audio).
                ok && h.ts.carries(p.kind())
            }
        }
    }
}

struct OpenFile {
    seq: u64,
    writer: Writer,
    start: Millis,
    video_frames: u64,
    audio_frames: u64,
    /// Per track: (last dts, last frame duration, max pts end), to measure duration.
    video: TrackTiming,
    audio: TrackTiming,
    hard_cut: bool,
    /// Arrival of the packet that opened the file, and of the latest packet since.
    first_arrival: WallMillis,
    last_arrival: WallMillis,
    /// The tracks (video, audio) the file was opened with: an FLV header cannot take a
    /// track that appears later.
    tracks: (bool, bool),
}

#[derive(Default, Clone, Copy)]
struct TrackTiming {
    last_dts: Option<Millis>,
    last_delta: Millis,
    min_pts: Option<Millis>,
    max_pts: Option<Millis>,
}

impl TrackTiming {
    fn add(&mut self, p: &Packet) {
        if let Some(last) = self.last_dts {
            let d = p.dts - last;
            if d > Millis::ZERO {
                self.last_delta = d;
            }
        }
        self.last_dts = Some(p.dts);
        let pts = p.pts();
        self.min_pts = Some(self.min_pts.map_or(pts, |m| m.min(pts)));
        self.max_pts = Some(self.max_pts.map_or(pts, |m| m.max(pts)));
    }

    /// How long this track presents: from its earliest presentation time to the end of
    /// its latest frame. With B-frames the first keyframe presents after its decode time,
    /// so this (what players and ffprobe show) differs from last DTS − first DTS.
    fn duration(&self) -> Option<Millis> {
        Some(self.max_pts? + self.last_delta - self.min_pts?)
    }
}

pub struct Recorder {
    format: Format,
    policy: CutPolicy,
    /// `Output::Skipped` has been said for this recording.
    skip_reported: bool,
    /// HLS target segment length (R-FM-2, default 10 s).
    segment_ms: Millis,
    video_config: Option<TrackConfig>,
    audio_config: Option<TrackConfig>,
    file: Option<OpenFile>,
    next_seq: u64,
    /// The previous file was cut by the hard cap: the next one starts at once, keyframe
    /// or not, rather than dropping media until a keyframe that may never come.
    last_hard: bool,
    /// The encoder's `onMetaData`, for width/height/framerate in our own header.
    metadata: Option<Bytes>,
    /// MP3 has no sequence header: the first audio packet tells the header's codec id.
    audio_codec_id: Option<f64>,
    /// MP4: longest fragment (None = the muxer's ~2 s, R-FM-3).
    mp4_fragment_ms: Option<Millis>,
    /// The timeline jumped (R-IN-6) and the open HLS playlist has not yet started a
    /// segment after it.
    discontinuity_pending: bool,
    /// The timeline jumped and no packet followed yet: a codec configuration that
    /// changes now is a new encoder session, and FLV ends its file rather than carry a
    /// second sequence header across the jump.
    at_discontinuity: bool,
    /// How long the first file waits for a track that is announced, or may still come
    /// (0 = not at all; see [`Recorder::with_track_wait`]).
    track_wait: Millis,
    /// Packets held while the first file waits for its tracks, with their arrivals.
    held: Vec<(Packet, WallMillis)>,
    /// A file was opened: no more waiting for tracks in this recording.
    opened_any: bool,
    /// The tracks (video, audio) `onMetaData` announced.
    announced: Option<(bool, bool)>,
    out: std::collections::VecDeque<Output>,
}

impl Recorder {
    pub fn new(format: Format, policy: CutPolicy) -> Self {
        Self {
            format,
            policy,
            skip_reported: false,
            segment_ms: Millis::from_ms(10_000),
            video_config: None,
            audio_config: None,
            file: None,
            next_seq: 0,
            last_hard: false,
            metadata: None,
            audio_codec_id: None,
            mp4_fragment_ms: None,
            discontinuity_pending: false,
            at_discontinuity: false,
            track_wait: Millis::ZERO,
            held: Vec::new(),
            opened_any: false,
            announced: None,
            out: Default::default(),
        }
    }

    /// Sets the HLS segment length.
    pub fn with_segment_duration(mut self, ms: Millis) -> Self {
        self.segment_ms = ms.max(Millis::from_ms(1));
        self
    }

    /// MP4: caps fragments at `ms` of media. Only whole fragments survive a crash, so the
    /// daemon passes its spool flush interval: a file then loses at most about that much
    /// on a `kill -9`, at any bitrate (issue 11). The other formats hold nothing back.
    pub fn with_mp4_fragment(mut self, ms: Millis) -> Self {
        self.mp4_fragment_ms = Some(ms);
        self
    }

    /// The first file of the recording starts only once the stream's tracks are known:
    /// both sequence headers, or those `onMetaData` announces, or — when neither says —
    /// after `ms` of media (issue 12). Until then packets are held (at most `ms` of
    /// them) and then written from the first keyframe on, audio that arrived before the
    /// keyframe included from the keyframe's time: a relay such as nginx-rtmp sends audio
    /// ~1 s before the video's sequence header, which made an audio-only first file and
    /// an audio-only HLS PMT. 0 turns the wait off.
    pub fn with_track_wait(mut self, ms: Millis) -> Self {
        self.track_wait = ms.max(Millis::ZERO);
        self
    }

    /// Whether the open file has muxed media not yet given out as `Output::Data` (an MP4
    /// fragment in the making; FLV, AAC and TS emit every frame at once).
    pub fn holds_media(&self) -> bool {
        match self.file.as_ref().map(|f| &f.writer) {
            Some(Writer::Mp4(m)) => m.has_pending_fragment(),
            _ => false,
        }
    }

    /// Gives out what the open file holds back now (the pending MP4 fragment): the
    /// daemon calls this when that media has waited its flush interval and no packet
    /// came to complete the fragment (a stalled publisher, issue 11).
    pub fn cut_fragment(&mut self) {
        let Some(f) = &mut self.file else { return };
        if let Writer::Mp4(m) = &mut f.writer {
            let mut bufs = Vec::new();
            // A fragment too large to write is dropped by the muxer, as at a regular
            // cut; the file stays valid up to the previous one.
            let _ = m.cut_fragment(&mut bufs);
            if !bufs.is_empty() {
                self.out.push_back(Output::Data { seq: f.seq, bufs });
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Feeds one event of the stream, which arrived at `arrival`.
    pub fn handle_event(&mut self, ev: MediaEvent, arrival: WallMillis) {
        match ev {
            MediaEvent::Metadata(m) => {
                self.announced = flv::mux::announced_tracks(&m).or(self.announced);
                self.metadata = Some(m);
            }
            MediaEvent::Discontinuity => self.discontinuity(),
            MediaEvent::Config(c) => {
                let slot = match c.kind() {
                    TrackKind::Video => &mut self.video_config,
                    TrackKind::Audio => &mut self.audio_config,
                };
                if slot
                    .as_ref()
                    .is_some_and(|old| old.record == c.record && old.codec == c.codec)
                {
                    return;
                }
                *slot = Some(c.clone());
                if self.file.is_none() && !self.held.is_empty() && self.tracks_ready() {
                    self.release_held();
                }
                let Some(f) = &mut self.file else { return };
                let in_file = match c.kind() {
                    TrackKind::Video => f.tracks.0,
                    TrackKind::Audio => f.tracks.1,
                };
                match &mut f.writer {
                    // A new sequence header mid-file goes into the file in place, as FLV
                    // players expect; the next file repeats it in its header. A track
                    // the header does not declare, or a new encoder session after a
                    // timestamp jump, starts a new file instead.
                    Writer::Flv(_) if self.at_discontinuity || !in_file => self.close(),
                    Writer::Flv(m) => {
                        let mut bufs = Vec::with_capacity(3);
                        m.write_tag(c.kind(), c.dts.max(f.start), &c.flv, &mut bufs);
                        self.out.push_back(Output::Data { seq: f.seq, bufs });
                    }
                    // ADTS describes every frame in its own header, so a new audio
                    // config just changes the headers from here on; one ADTS cannot
                    // describe ends the file.
                    // A new encoder session (a splice or a clock jump) with another
                    // configuration is a new file, as for every format (R-SP-3).
                    Writer::Aac { .. } if self.at_discontinuity => self.close(),
                    Writer::Aac { adts, .. } if c.kind() == TrackKind::Audio => {
                        match AdtsParams::from_asc(&c.record) {
                            Ok(p) => *adts = p,
                            Err(_) => self.close(),
                        }
                    }
                    Writer::Aac { .. } => {}
                    // The codec configuration lives in the init segment: a new one
                    // needs a new file, which starts at the next keyframe.
                    Writer::Mp4(_) => self.close(),
                    // A track the playlist did not carry (it appeared after
                    // `track_wait`) joins the PMT at once, so none of its frames is lost,
                    // and the next start point begins a segment after
                    // `#EXT-X-DISCONTINUITY`: players that set up their decoders from
                    // the first PMT (hls.js) set them up again there.
                    Writer::Hls(h) => {
                        let new_track = !h.ts.carries(c.kind());
                        if h.ts.set_config(&c).is_err() {
                            self.close();
                        } else if new_track && h.ts.carries(c.kind()) {
                            self.discontinuity_pending = true;
                        }
                    }
                }
            }
            MediaEvent::Packet(p) => self.packet(p, arrival),
        }
    }

    /// The stream's timeline jumped here; what follows was rebased by ingest to continue
    /// it (R-IN-6). FLV, MP4 and AAC go on (their timestamps stay monotonic); HLS marks
    /// the next segment; a codec change right after it ends the file.
    fn discontinuity(&mut self) {
        self.at_discontinuity = true;
        if matches!(self.file.as_ref().map(|f| &f.writer), Some(Writer::Hls(_))) {
            self.discontinuity_pending = true;
        }
    }

    fn has_video(&self) -> bool {
        self.video_config.is_some()
    }

    /// Whether the first file may start: see [`Recorder::with_track_wait`].
    fn tracks_ready(&self) -> bool {
        let v = self.video_config.is_some();
        // MP3 has no sequence header: its first packet is its configuration.
        let a = self.audio_config.is_some() || self.audio_codec_id.is_some();
        if v && a {
            return true;
        }
        if let Some((want_v, want_a)) = self.announced {
            // Every announced track has its configuration (and there is one at all).
            let missing = (want_v && !v) || (want_a && !a);
            if (v || a) && !missing {
                return true;
            }
        }
        let dts = self.held.iter().map(|(p, _)| p.dts);
        match (dts.clone().min(), dts.max()) {
            (Some(first), Some(last)) => last.saturating_sub(first) >= self.track_wait,
            _ => false,
        }
    }

    /// Starts the first file from the held packets: at the first video keyframe when
    /// the stream has video (audio from that keyframe's time on), else at the first
    /// packet; in decode-time order, so audio that arrived before the keyframe lands
    /// beside the video of its time. Without a keyframe yet, keeps holding the newest
    /// `track_wait` of packets.
    fn release_held(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        let start = if self.video_config.is_some() {
            match held.iter().position(|(p, _)| p.is_video_key()) {
                Some(i) => held[i].0.dts,
                None => {
                    let newest = held.iter().map(|(p, _)| p.dts).max();
                    if let Some(newest) = newest {
                        held.retain(|(p, _)| newest.saturating_sub(p.dts) <= self.track_wait);
                    }
                    self.held = held;
                    return;
                }
            }
        } else {
            match held.iter().map(|(p, _)| p.dts).min() {
                Some(d) => d,
                None => return,
            }
        };
        held.retain(|(p, _)| p.dts >= start);
        held.sort_by_key(|(p, _)| p.dts);
        // From here on, packets are written as they come.
        self.opened_any = true;
        for (p, at) in held {
            self.packet_now(p, at);
        }
    }

    fn packet(&mut self, p: Packet, arrival: WallMillis) {
        self.at_discontinuity = false;
        if p.kind() == TrackKind::Audio && self.audio_codec_id.is_none() {
            self.audio_codec_id = Some(flv::mux::flv_codec_id(p.codec, &p.flv));
        }
        if !self.opened_any && self.file.is_none() && self.track_wait > Millis::ZERO {
            self.held.push((p, arrival));
            if self.tracks_ready() {
                self.release_held();
            }
            return;
        }
        self.packet_now(p, arrival);
    }

    fn packet_now(&mut self, p: Packet, arrival: WallMillis) {
        let has_video = self.has_video();
        if let Some(f) = &self.file {
            if let CutDecision::Cut { hard } = self.policy.decide(f.start, &p, has_video) {
                if let Some(f) = &mut self.file {
                    f.hard_cut = hard;
                }
                self.close();
            }
        }
        if self.file.is_none() {
            // Files begin at a keyframe with codec configuration (R-FM-1); a hard cut
            // is the only exception, because a broken encoder must not stop recording.
            if !CutPolicy::is_start_point(&p, has_video) && !self.last_hard {
                return;
            }
            if p.kind() == TrackKind::Video && self.video_config.is_none() {
                return;
            }
            if !self.open(p.dts, arrival) {
                return;
            }
        }
        if let Some(f) = &mut self.file {
            // Every packet the file spans counts, written or not (video in an AAC file):
            // formats cutting on the same packets then report the same span (R-SG-4).
            f.last_arrival = arrival;
            let mut bufs = Vec::with_capacity(3);
            // HLS: a segment ends at the first start point at or after its target length
            // (same rule as files, one level down), and each starts with PAT/PMT.
            let mut segment = None;
            if let Writer::Hls(h) = &mut f.writer {
                // After a discontinuity the next start point begins a new segment
                // whatever the length of the current one, so the tag sits where the
                // timeline jumped (to within a GOP).
                let cut = match h.segment {
                    None => true,
                    Some((_, start, _)) => {
                        CutPolicy::is_start_point(&p, has_video)
                            && (self.discontinuity_pending
                                || p.dts.saturating_sub(start) >= self.segment_ms)
                    }
                };
                if cut {
                    // The first segment of a playlist needs no tag.
                    let after_jump = h.segment.is_some() && self.discontinuity_pending;
                    self.discontinuity_pending = false;
                    if let Some((n, start, disc)) = h.segment.take() {
                        self.out.push_back(Output::SegmentClose {
                            seq: f.seq,
                            n,
                            start_dts: start,
                            duration_ms: (p.dts - start).max(Millis::ZERO),
                            discontinuity: disc,
                        });
                    }
                    let n = h.next_n;
                    h.next_n += 1;
                    h.segment = Some((n, p.dts, after_jump));
                    self.out.push_back(Output::SegmentOpen {
                        seq: f.seq,
                        n,
                        arrival,
                    });
                    let before = bufs.len();
                    h.ts.segment_header(&mut bufs);
                    h.written += bufs[before..].iter().map(|b| b.len() as u64).sum::<u64>();
                }
                segment = h.segment.map(|(n, _, _)| n);
            }
            if !f.writer.packet(&p, &mut bufs) {
                if let (Some(n), false) = (segment, bufs.is_empty()) {
                    self.out.push_back(Output::SegmentData {
                        seq: f.seq,
                        n,
                        bufs,
                    });
                }
                return;
            }
            match p.kind() {
                TrackKind::Video => {
                    f.video_frames += 1;
                    f.video.add(&p);
                }
                TrackKind::Audio => {
                    f.audio_frames += 1;
                    f.audio.add(&p);
                }
            }
            match segment {
                Some(n) => self.out.push_back(Output::SegmentData {
                    seq: f.seq,
                    n,
                    bufs,
                }),
                None => self.out.push_back(Output::Data { seq: f.seq, bufs }),
            }
        }
    }

    /// Opens a file at `start` (a packet that arrived at `arrival`); false when this
    /// format cannot record the stream now.
    fn open(&mut self, start: Millis, arrival: WallMillis) -> bool {
        let opened = match self.format {
            Format::Flv => Ok(self.open_flv(start)),
            Format::Aac => self.open_aac().map(|w| (w, Vec::new())),
            Format::Mp4 => self.open_mp4(start),
            Format::Hls => self.open_hls(),
        };
        let (writer, bufs) = match opened {
            Ok(x) => x,
            Err(reason) => {
                self.skip_once(reason);
                return false;
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.last_hard = false;
        self.opened_any = true;
        let tracks = (
            self.video_config.is_some(),
            self.audio_config.is_some() || self.audio_codec_id.is_some(),
        );
        self.out.push_back(Output::Open {
            seq,
            start_dts: start,
            arrival,
        });
        if !bufs.is_empty() {
            self.out.push_back(Output::Data { seq, bufs });
        }
        self.file = Some(OpenFile {
            seq,
            writer,
            start,
            video_frames: 0,
            audio_frames: 0,
            video: TrackTiming::default(),
            audio: TrackTiming::default(),
            hard_cut: false,
            first_arrival: arrival,
            last_arrival: arrival,
            tracks,
        });
        true
    }

    fn skip_once(&mut self, reason: String) {
        if !self.skip_reported {
            self.skip_reported = true;
            self.out.push_back(Output::Skipped { reason });
        }
    }

    fn open_mp4(&mut self, start: Millis) -> Result<(Writer, Vec<Bytes>), String> {
        let m = fmp4::Fmp4Muxer::new(
            self.video_config.as_ref(),
            self.audio_config.as_ref(),
            start,
        )
        .map_err(|e| format!("not recording MP4: no track it can hold: {e}"))?;
        let mut m = match self.mp4_fragment_ms {
            Some(ms) => m.with_max_fragment(ms),
            None => m,
        };
        if !m.skipped().is_empty() {
            self.skip_once(format!(
                "left out of the MP4 file: {}",
                m.skipped().join("; ")
            ));
        }
        let init = m.init_segment();
        Ok((Writer::Mp4(Box::new(m)), vec![init]))
    }

    fn open_hls(&mut self) -> Result<(Writer, Vec<Bytes>), String> {
        let ts = mpegts::TsMuxer::new(self.video_config.as_ref(), self.audio_config.as_ref())
            .map_err(|e| format!("not recording HLS: {e}"))?;
        if !ts.skipped().is_empty() {
            self.skip_once(format!(
                "left out of the HLS segments: {}",
                ts.skipped().join("; ")
            ));
        }
        let w = HlsWriter {
            ts,
            segment: None,
            next_n: 0,
            written: 0,
        };
        Ok((Writer::Hls(Box::new(w)), Vec::new()))
    }

    fn open_aac(&self) -> Result<Writer, String> {
        let Some(c) = &self.audio_config else {
            return Err("not recording raw AAC: the stream has no audio configuration".into());
        };
        if c.codec != Codec::Audio(AudioCodec::Aac) {
            return Err(format!(
                "not recording raw AAC: the stream's audio is {}",
                c.codec.name()
            ));
        }
        AdtsParams::from_asc(&c.record)
            .map(|adts| Writer::Aac { adts, written: 0 })
            .map_err(|e| {
                format!("not recording raw AAC: its configuration cannot be written as ADTS: {e}")
            })
    }

    fn open_flv(&self, start: Millis) -> (Writer, Vec<Bytes>) {
        let mut info =
            MetaInfo::from_configs(self.video_config.as_ref(), self.audio_config.as_ref());
        if !info.has_audio && self.audio_codec_id.is_some() {
            info.has_audio = true;
            info.audio_codec_id = self.audio_codec_id;
        }
        if let Some(m) = &self.metadata {
            info.fill_from_onmetadata(m);
        }
        let mut muxer = FlvMuxer::new(info, start);
        let mut bufs = vec![muxer.header()];
        for c in [&self.video_config, &self.audio_config]
            .into_iter()
            .flatten()
        {
            muxer.write_tag(c.kind(), start, &c.flv, &mut bufs);
        }
        (Writer::Flv(muxer), bufs)
    }

    /// File `seq` is gone: the daemon could not write it (a spool write error) and ended
    /// it itself at its last complete unit. It is dropped without a `Close` (its muxer's
    /// finalizing patches and MP4 tail describe bytes that were never written), and the
    /// next file starts at the next start point — never mid-GOP, even after a hard cut,
    /// because the new file must be playable from its first frame. Outputs of `seq`
    /// already queued stay queued; the daemon ignores them. No-op if `seq` is not the
    /// open file (it was closed already, or another file opened since).
    pub fn abandon(&mut self, seq: u64) {
        if self.file.as_ref().is_some_and(|f| f.seq == seq) {
            self.file = None;
            self.last_hard = false;
        }
    }

    /// Ends the current file (push ended, task stopped, shutdown: R-SG-3).
    pub fn finish(&mut self) {
        if self.file.is_none() && !self.held.is_empty() {
            // The push ended while the first file waited for a track: what came is
            // recorded as it is.
            self.track_wait = Millis::ZERO;
            self.release_held();
        }
        self.close();
    }

    fn close(&mut self) {
        let Some(mut f) = self.file.take() else {
            return;
        };
        // Video defines the file's length when there is video; audio-only otherwise.
        let track = if f.video_frames > 0 { f.video } else { f.audio };
        let duration_ms = track
            .duration()
            .map_or(Millis::ZERO, |d| d.max(Millis::ZERO));
        self.last_hard = f.hard_cut;
        // The MP4 muxer still holds its last fragment: it goes out before the close.
        let mut patches = Vec::new();
        let mut tail = Vec::new();
        match &mut f.writer {
            Writer::Flv(m) => patches = m.finalize(duration_ms.as_secs_f64()),
            Writer::Aac { .. } => {}
            Writer::Hls(h) => {
                if let Some((n, start, discontinuity)) = h.segment.take() {
                    // The last segment ends where the file's media ends.
                    let end = track.last_dts.map_or(start, |d| d + track.last_delta);
                    self.out.push_back(Output::SegmentClose {
                        seq: f.seq,
                        n,
                        start_dts: start,
                        duration_ms: (end - start).max(Millis::ZERO),
                        discontinuity,
                    });
                }
            }
            Writer::Mp4(m) => {
                patches = m
                    .finish(&mut tail)
                    .into_iter()
                    .map(|p| Patch {
                        offset: p.offset,
                        bytes: p.bytes,
                    })
                    .collect();
            }
        }
        if !tail.is_empty() {
            self.out.push_back(Output::Data {
                seq: f.seq,
                bufs: tail,
            });
        }
        let summary = FileSummary {
            start_dts: f.start,
            duration_ms,
            bytes: f.writer.bytes_written(),
            video_frames: f.video_frames,
            audio_frames: f.audio_frames,
            hard_cut: f.hard_cut,
            first_arrival: f.first_arrival,
            last_arrival: f.last_arrival,
        };
        self.out.push_back(Output::Close {
            seq: f.seq,
            summary,
            patches,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use media::{AudioCodec, Codec, VideoCodec};
    use std::collections::BTreeMap;

    const fn ms(x: i64) -> Millis {
        Millis::from_ms(x)
    }

    fn vconf() -> MediaEvent {
        let rec = Bytes::from_static(&[
            1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 2, 0x67, 0x64, 1, 0, 1, 0x68,
        ]);
        let mut flv = vec![0x17, 0, 0, 0, 0];
        flv.extend_from_slice(&rec);
        MediaEvent::Config(TrackConfig {
            codec: Codec::Video(VideoCodec::H264),
            record: rec,
            flv: flv.into(),
            dts: Millis::ZERO,
        })
    }

    fn aconf() -> MediaEvent {
        MediaEvent::Config(TrackConfig {
            codec: Codec::Audio(AudioCodec::Aac),
            record: Bytes::from_static(&[0x11, 0x90]),
            flv: Bytes::from_static(&[0xaf, 0, 0x11, 0x90]),
            dts: Millis::ZERO,
        })
    }

    /// A frame whose body encodes its own identity, so files can be checked frame by frame.
    fn frame(video: bool, n: u32, dts: i64, key: bool) -> MediaEvent {
        let mut body = if video {
            vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0]
        } else {
            vec![0xaf, 1]
        };
        body.extend_from_slice(&n.to_be_bytes());
        let flv = Bytes::from(body);
        let data = flv.slice(if video { 5.. } else { 2.. });
        MediaEvent::Packet(Packet {
            codec: if video {
                Codec::Video(VideoCodec::H264)
            } else {
                Codec::Audio(AudioCodec::Aac)
            },
            dts: ms(dts),
            cts: 0,
            key: key || !video,
            flv,
            data,
        })
    }

    /// 30 fps video with a keyframe every `gop` frames, AAC every 21 ms, interleaved in DTS order.
    fn stream(seconds: i64, gop: u32, video: bool, audio: bool) -> Vec<MediaEvent> {
        let mut evs: Vec<(i64, MediaEvent)> = Vec::new();
        if video {
            for n in 0..(seconds * 30) as u32 {
                let dts = i64::from(n) * 1000 / 30;
                evs.push((dts, frame(true, n, dts, n % gop == 0)));
            }
        }
        if audio {
            for n in 0..(seconds * 1000 / 21) as u32 {
                let dts = i64::from(n) * 21;
                evs.push((dts, frame(false, n, dts, true)));
            }
        }
        evs.sort_by_key(|(d, e)| {
            (
                *d,
                matches!(e, MediaEvent::Packet(p) if p.kind() == TrackKind::Audio),
            )
        });
        let mut out = Vec::new();
        if video {
            out.push(vconf());
        }
        if audio {
            out.push(aconf());
        }
        out.extend(evs.into_iter().map(|(_, e)| e));
        out
    }

    /// When the tests' publisher sent an event: in real time from `T0` on, so a packet's
    /// arrival is `T0` + its DTS (configs and metadata at `T0`).
    const T0: i64 = 1_700_000_000_000;

    fn arrival(e: &MediaEvent) -> WallMillis {
        WallMillis::from_unix_ms(T0 + e.dts().unwrap_or_default().as_ms())
    }

    /// A segment's bytes, and (start, duration) once closed.
    type Segment = (Vec<u8>, Option<(Millis, Millis)>);

    struct Files {
        bytes: BTreeMap<u64, Vec<u8>>,
        /// The arrival each file and each segment was opened with.
        opened_at: BTreeMap<u64, WallMillis>,
        segments_opened_at: BTreeMap<(u64, u64), WallMillis>,
        summaries: BTreeMap<u64, FileSummary>,
        skipped: Vec<String>,
        /// HLS: (file, segment) → (bytes, start, duration once closed).
        segments: BTreeMap<(u64, u64), Segment>,
    }

    fn run(policy: CutPolicy, evs: Vec<MediaEvent>) -> Files {
        run_format(Format::Flv, policy, evs)
    }

    fn run_format(format: Format, policy: CutPolicy, evs: Vec<MediaEvent>) -> Files {
        run_format_with(format, policy, ms(10_000), evs)
    }

    fn run_format_with(
        format: Format,
        policy: CutPolicy,
        segment_ms: Millis,
        evs: Vec<MediaEvent>,
    ) -> Files {
        let mut r = Recorder::new(format, policy).with_segment_duration(segment_ms);
        let mut files = Files {
            bytes: BTreeMap::new(),
            opened_at: BTreeMap::new(),
            segments_opened_at: BTreeMap::new(),
            summaries: BTreeMap::new(),
            skipped: Vec::new(),
            segments: BTreeMap::new(),
        };
        let drain = |r: &mut Recorder, files: &mut Files| {
            while let Some(o) = r.poll_output() {
                match o {
                    Output::Skipped { reason } => files.skipped.push(reason),
                    Output::SegmentOpen { seq, n, arrival } => {
                        files.segments_opened_at.insert((seq, n), arrival);
                        assert!(
                            files.bytes.contains_key(&seq),
                            "segment of an unopened file"
                        );
                        assert!(files
                            .segments
                            .insert((seq, n), (Vec::new(), None))
                            .is_none());
                    }
                    Output::SegmentData { seq, n, bufs } => {
                        let s = files.segments.get_mut(&(seq, n)).expect("open segment");
                        assert!(s.1.is_none(), "data after segment close");
                        for b in bufs {
                            s.0.extend_from_slice(&b);
                        }
                    }
                    Output::SegmentClose {
                        seq,
                        n,
                        start_dts,
                        duration_ms,
                        ..
                    } => {
                        let s = files.segments.get_mut(&(seq, n)).expect("open segment");
                        assert!(s.1.replace((start_dts, duration_ms)).is_none());
                    }
                    Output::Open { seq, arrival, .. } => {
                        files.opened_at.insert(seq, arrival);
                        assert!(files.bytes.insert(seq, Vec::new()).is_none())
                    }
                    Output::Data { seq, bufs } => {
                        assert!(!files.summaries.contains_key(&seq), "data after close");
                        let f = files.bytes.get_mut(&seq).expect("data for an open file");
                        for b in bufs {
                            f.extend_from_slice(&b);
                        }
                    }
                    Output::Close {
                        seq,
                        summary,
                        patches,
                    } => {
                        let f = files.bytes.get_mut(&seq).expect("close of an open file");
                        for p in patches {
                            p.apply(f).unwrap();
                        }
                        // HLS: the file's bytes are its segments' (the playlist is the
                        // daemon's to write).
                        let segs: u64 = files
                            .segments
                            .range((seq, 0)..=(seq, u64::MAX))
                            .map(|(_, (b, _))| b.len() as u64)
                            .sum();
                        assert_eq!(summary.bytes, f.len() as u64 + segs);
                        files.summaries.insert(seq, summary);
                    }
                }
            }
        };
        for e in evs {
            let at = arrival(&e);
            r.handle_event(e, at);
            drain(&mut r, &mut files);
        }
        r.finish();
        drain(&mut r, &mut files);
        assert_eq!(
            files.bytes.len(),
            files.summaries.len(),
            "every opened file is closed"
        );
        files
    }

    /// (is_video, frame number, key, file timestamp) of every media frame of a file.
    fn frames(file: &[u8]) -> Vec<(bool, u32, bool, u32)> {
        let tags = flv::FlvReader::new(Bytes::copy_from_slice(file))
            .unwrap()
            .read_all()
            .unwrap();
        assert_eq!(tags[0].tag_type, flv::TagType::Script);
        tags.iter()
            .filter_map(|t| {
                let b = &t.body;
                match t.tag_type {
                    flv::TagType::Video if b[1] == 1 => Some((
                        true,
                        u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
                        b[0] >> 4 == 1,
                        t.timestamp,
                    )),
                    flv::TagType::Audio if b[1] == 1 => Some((
                        false,
                        u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
                        true,
                        t.timestamp,
                    )),
                    _ => None,
                }
            })
            .collect()
    }

    const POLICY: CutPolicy = CutPolicy {
        interval_ms: ms(4000),
        hard_cap_ms: ms(8000),
    };

    #[test]
    fn cuts_on_keyframes_and_keeps_every_frame_once() {
        let evs = stream(20, 60, true, true);
        let files = run(POLICY, evs);
        // 2 s GOPs, 4 s interval: cuts at 4, 8, 12, 16 s → 5 files.
        assert_eq!(files.bytes.len(), 5);
        let mut all_v = Vec::new();
        let mut all_a = Vec::new();
        for (seq, f) in &files.bytes {
            let fr = frames(f);
            let first_v = fr.iter().find(|x| x.0).unwrap();
            assert!(first_v.2, "file {seq} starts with a keyframe");
            assert_eq!(fr[0].3, 0, "file {seq} is rebased to 0");
            let s = &files.summaries[seq];
            assert_eq!(s.video_frames as usize, fr.iter().filter(|x| x.0).count());
            // Each file spans 4 s of video (120 frames of 33.3 ms).
            assert!(
                (s.duration_ms.as_ms() - 4000).abs() <= 34,
                "file {seq} duration {}",
                s.duration_ms
            );
            all_v.extend(fr.iter().filter(|x| x.0).map(|x| x.1));
            all_a.extend(fr.iter().filter(|x| !x.0).map(|x| x.1));
        }
        assert_eq!(all_v, (0..600).collect::<Vec<_>>());
        assert_eq!(all_a, (0..(20_000 / 21)).collect::<Vec<_>>());
    }

    #[test]
    fn an_abandoned_file_is_dropped_and_the_next_starts_at_a_keyframe() {
        // A spool write error 3 s into file 0 (2 s GOPs): the daemon ends the file itself
        // and tells the recorder, which must not close it (no Close, no patches for bytes
        // that were never written) and must open file 1 at the next keyframe (4 s).
        let mut r = Recorder::new(Format::Flv, POLICY);
        let mut outs = Vec::new();
        for e in stream(10, 60, true, true) {
            let at = arrival(&e);
            let dts = e.dts();
            r.handle_event(e, at);
            while let Some(o) = r.poll_output() {
                outs.push(o);
            }
            if dts == Some(ms(3000)) && r.is_open() {
                r.abandon(0);
                r.abandon(0); // a second call (or a stale seq) changes nothing
                assert!(!r.is_open());
            }
        }
        r.finish();
        while let Some(o) = r.poll_output() {
            outs.push(o);
        }
        let opens: Vec<(u64, Millis)> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Open { seq, start_dts, .. } => Some((*seq, *start_dts)),
                _ => None,
            })
            .collect();
        let closes: Vec<u64> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Close { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        // File 1 opens at the 4 s keyframe and is cut at 8 s by the 4 s interval.
        assert_eq!(opens, vec![(0, ms(0)), (1, ms(4000)), (2, ms(8000))]);
        assert_eq!(closes, vec![1, 2], "the abandoned file is never closed");
        // Nothing of file 0 after the abandon; nothing between 3 s and 4 s at all.
        let data_after: usize = outs
            .iter()
            .skip_while(|o| !matches!(o, Output::Open { seq: 1, .. }))
            .filter(|o| matches!(o, Output::Data { seq: 0, .. }))
            .count();
        assert_eq!(data_after, 0);
    }

    #[test]
    fn files_start_with_metadata_and_sequence_headers() {
        let files = run(POLICY, stream(6, 60, true, true));
        for f in files.bytes.values() {
            let tags = flv::FlvReader::new(Bytes::copy_from_slice(f))
                .unwrap()
                .read_all()
                .unwrap();
            assert_eq!(tags[0].tag_type, flv::TagType::Script);
            assert_eq!(tags[1].tag_type, flv::TagType::Video);
            assert_eq!(&tags[1].body[..2], &[0x17, 0]);
            assert_eq!(tags[2].tag_type, flv::TagType::Audio);
            assert_eq!(&tags[2].body[..2], &[0xaf, 0]);
        }
    }

    #[test]
    fn frames_before_the_first_keyframe_are_not_recorded() {
        let mut evs = vec![
            vconf(),
            aconf(),
            frame(false, 900, 0, true),
            frame(true, 900, 0, false),
        ];
        evs.extend(
            stream(3, 60, true, false)
                .into_iter()
                .skip(1)
                .map(|e| match e {
                    MediaEvent::Packet(mut p) => {
                        p.dts += ms(100);
                        MediaEvent::Packet(p)
                    }
                    e => e,
                }),
        );
        let files = run(POLICY, evs);
        let fr = frames(&files.bytes[&0]);
        assert_eq!(fr[0], (true, 0, true, 0));
        assert!(!fr.iter().any(|x| x.1 == 900));
    }

    #[test]
    fn hard_cap_cuts_a_stream_without_keyframes() {
        // One keyframe at the start, then none for 20 s.
        let files = run(POLICY, stream(20, 100_000, true, false));
        assert_eq!(files.bytes.len(), 3, "cut at 8 s and 16 s by the hard cap");
        assert!(files.summaries[&0].hard_cut && files.summaries[&1].hard_cut);
        let total: usize = files.bytes.values().map(|f| frames(f).len()).sum();
        assert_eq!(total, 600, "nothing dropped after a hard cut");
    }

    #[test]
    fn audio_only_cuts_on_audio_frames() {
        let files = run(POLICY, stream(10, 60, false, true));
        assert_eq!(files.bytes.len(), 3);
        let total: usize = files.bytes.values().map(|f| frames(f).len()).sum();
        assert_eq!(total, 10_000 / 21);
        for s in files.summaries.values().take(2) {
            assert!(
                (s.duration_ms.as_ms() - 4000).abs() <= 21,
                "{}",
                s.duration_ms
            );
        }
    }

    #[test]
    fn config_change_mid_file_is_written_in_place() {
        let mut evs = stream(3, 60, true, false);
        let new = MediaEvent::Config(TrackConfig {
            codec: Codec::Video(VideoCodec::H264),
            record: Bytes::from_static(&[1, 0x4d, 0, 0x1e, 0xff, 0xe1, 0, 1, 0x67, 1, 0, 1, 0x68]),
            flv: Bytes::from_static(&[
                0x17, 0, 0, 0, 0, 1, 0x4d, 0, 0x1e, 0xff, 0xe1, 0, 1, 0x67, 1, 0, 1, 0x68,
            ]),
            dts: ms(1000),
        });
        evs.insert(40, new);
        let files = run(POLICY, evs);
        let tags = flv::FlvReader::new(Bytes::copy_from_slice(&files.bytes[&0]))
            .unwrap()
            .read_all()
            .unwrap();
        let seq_headers = tags
            .iter()
            .filter(|t| t.tag_type == flv::TagType::Video && t.body[1] == 0)
            .count();
        assert_eq!(seq_headers, 2);
    }

    #[test]
    fn aac_files_cover_the_same_spans_as_flv_files() {
        let flv = run(POLICY, stream(20, 60, true, true));
        let aac = run_format(Format::Aac, POLICY, stream(20, 60, true, true));
        assert!(aac.skipped.is_empty());
        assert_eq!(aac.bytes.len(), flv.bytes.len(), "same cuts (R-SG-4)");
        for (seq, a) in &aac.bytes {
            // The AAC file holds exactly the FLV file's audio frames, as ADTS frames.
            let want: Vec<u32> = frames(&flv.bytes[seq])
                .iter()
                .filter(|f| !f.0)
                .map(|f| f.1)
                .collect();
            let got: Vec<u32> = aac::split_frames(a)
                .iter()
                .map(|(h, payload)| {
                    assert_eq!((h.profile, h.frequency_index, h.channel_config), (1, 3, 2));
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                })
                .collect();
            assert_eq!(got, want, "file {seq}");
            let s = &aac.summaries[seq];
            assert_eq!((s.video_frames, s.audio_frames as usize), (0, want.len()));
            assert_eq!(s.bytes, a.len() as u64);
            // Same span as the FLV file, measured on audio (within one AAC frame).
            if (*seq as usize) + 1 < aac.bytes.len() {
                assert!(
                    (s.duration_ms - flv.summaries[seq].duration_ms).unsigned_abs() <= 21,
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn aac_of_a_stream_without_aac_is_skipped_once() {
        let files = run_format(Format::Aac, POLICY, stream(10, 60, true, false));
        assert!(files.bytes.is_empty());
        assert_eq!(files.skipped.len(), 1, "{:?}", files.skipped);
        assert!(files.skipped[0].contains("no audio"), "{:?}", files.skipped);
        let mp3 = MediaEvent::Packet(Packet {
            codec: Codec::Audio(AudioCodec::Mp3),
            dts: Millis::ZERO,
            cts: 0,
            key: true,
            flv: Bytes::from_static(&[0x2f, 1, 2]),
            data: Bytes::from_static(&[1, 2]),
        });
        let files = run_format(Format::Aac, POLICY, vec![mp3.clone(), mp3]);
        assert!(files.bytes.is_empty());
        assert_eq!(files.skipped.len(), 1);
    }

    #[test]
    fn hls_track_after_track_wait_is_a_discontinuity_in_the_same_playlist() {
        // Video alone for 3 s (longer than track_wait: the playlist starts video-only),
        // then audio joins. FLV/MP4 start a new file there; HLS keeps its playlist and
        // marks the first segment that carries both tracks.
        let long_files = CutPolicy {
            interval_ms: ms(20_000),
            hard_cap_ms: ms(40_000),
        };
        let mut r = Recorder::new(Format::Hls, long_files)
            .with_segment_duration(ms(2000))
            .with_track_wait(ms(2000));
        let video_only = stream(3, 30, true, false);
        let mut evs = video_only;
        evs.push(aconf());
        let both = stream(6, 30, true, true)
            .into_iter()
            .filter(|e| e.dts().is_some_and(|d| d >= ms(3000)))
            .filter(|e| matches!(e, MediaEvent::Packet(_)));
        evs.extend(both);
        let mut opens = 0;
        let mut closes = Vec::new();
        let mut segments = Vec::new();
        let mut drain = |r: &mut Recorder| {
            while let Some(o) = r.poll_output() {
                match o {
                    Output::Open { .. } => opens += 1,
                    Output::SegmentClose {
                        start_dts,
                        discontinuity,
                        ..
                    } => segments.push((start_dts, discontinuity)),
                    Output::Close { summary, .. } => closes.push(summary),
                    _ => {}
                }
            }
        };
        for e in evs {
            let at = arrival(&e);
            r.handle_event(e, at);
            drain(&mut r);
        }
        r.finish();
        drain(&mut r);
        assert_eq!((opens, closes.len()), (1, 1), "one playlist");
        assert!(closes[0].audio_frames > 0, "{:?}", closes[0]);
        let marked: Vec<_> = segments.iter().filter(|(_, d)| *d).collect();
        assert_eq!(marked.len(), 1, "{segments:?}");
        assert_eq!(
            marked[0].0,
            ms(3000),
            "at the first keyframe with audio: {segments:?}"
        );
    }

    #[test]
    fn hls_segments_cut_on_keyframes_inside_files() {
        // 20 s, 2 s GOPs; files of 12 s (cut at 12 s), segments of 4 s.
        let policy = CutPolicy {
            interval_ms: ms(12_000),
            hard_cap_ms: ms(24_000),
        };
        let files = run_format_with(Format::Hls, policy, ms(4000), stream(20, 60, true, true));
        assert_eq!(files.bytes.len(), 2, "two playlists");
        let keys: Vec<_> = files.segments.keys().copied().collect();
        assert_eq!(keys, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
        let mut total = 0;
        for ((seq, n), (bytes, closed)) in &files.segments {
            let (start, dur) = closed.expect("every segment is closed");
            // Every segment is whole TS packets and starts with the PAT (PID 0).
            assert_eq!(bytes.len() % 188, 0, "segment {seq}/{n}");
            // Sync byte, payload_unit_start, PID 0 (the PAT).
            assert_eq!(
                (bytes[0], bytes[1] & 0x5f, bytes[2]),
                (0x47, 0x40, 0x00),
                "segment {seq}/{n} starts with PAT"
            );
            assert_eq!(
                start.as_ms() % 2000,
                0,
                "segment {seq}/{n} starts on a keyframe"
            );
            total += dur.as_ms();
        }
        // Contiguous: the durations add up to the media (20 s of 30 fps video).
        assert!((total - 20_000).abs() <= 34, "total {total}");
        assert_eq!(files.segments[&(0, 0)].1, Some((ms(0), ms(4000))));
    }

    /// A file's reported wall-clock start and end are the arrivals of its first and last
    /// packets (issue 10), in every format, and HLS segments open with their first
    /// packet's arrival.
    #[test]
    fn files_report_their_first_and_last_packets_arrival() {
        let at = |ms: i64| WallMillis::from_unix_ms(T0 + ms);
        // 20 s, 2 s GOPs, files of 4 s: files start at 0, 4, 8, 12, 16 s.
        for format in [Format::Flv, Format::Aac, Format::Mp4, Format::Hls] {
            let evs = stream(20, 60, true, true);
            let files = run_format_with(format, POLICY, ms(2000), evs.clone());
            assert_eq!(files.summaries.len(), 5, "{format:?}");
            for (seq, s) in &files.summaries {
                let start = *seq as i64 * 4000;
                assert_eq!(s.first_arrival, at(start), "{format:?} file {seq}");
                assert_eq!(files.opened_at[seq], at(start), "{format:?} file {seq}");
                // The last packet before the next file's keyframe.
                let last = evs
                    .iter()
                    .filter_map(|e| e.dts().map(Millis::as_ms))
                    .filter(|&d| d < start + 4000)
                    .max();
                assert_eq!(Some(s.last_arrival), last.map(at), "{format:?} file {seq}");
            }
        }
        let hls = run_format_with(Format::Hls, POLICY, ms(2000), stream(20, 60, true, true));
        for ((seq, n), opened) in &hls.segments_opened_at {
            let start = *seq as i64 * 4000 + *n as i64 * 2000;
            assert_eq!(*opened, at(start), "segment {seq}/{n}");
            assert_eq!(hls.segments[&(*seq, *n)].1.map(|c| c.0), Some(ms(start)));
        }
        assert_eq!(hls.segments_opened_at.len(), 10);
    }
}
