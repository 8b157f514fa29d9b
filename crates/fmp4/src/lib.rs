//! Fragmented MP4 muxer on mp4-atom (R-FM-3, R-FM-5, R-FM-6).
//!
//! A file is `ftyp` + `moov` (empty sample tables, `mvex` with `mehd` + one `trex` per
//! track) followed by `moof`+`mdat` fragments, so everything up to the last complete
//! fragment is playable at any moment (crash safety by construction). `finish` flushes
//! the last fragment, returns the in-place patch that states the real duration in `mehd`
//! and appends an `mfra` index so players can seek.
//!
//! Timing: the stream timeline is milliseconds; the container edge converts (DESIGN "one
//! timeline"). Video uses 90 kHz, so ms timestamps map exactly. Audio uses its sample
//! rate and durations counted in samples (1024 per AAC frame, 1152/576/384 per MPEG
//! audio frame), because the source ms timestamps are rounded: deriving 21.333 ms frames
//! from them would give 1023/1024/1025-sample jitter. Only a real gap or overlap (more than
//! one frame off the sample clock) resynchronises audio to the source timestamps, so A/V
//! sync stays the input's (R-FM-5).
//!
//! The file is rebased so that `base` (the file's first DTS) is time 0. No edit list is
//! written: a video track whose first PTS is after its first DTS (B-frames) starts a few
//! ms late, exactly as in the input.
//!
//! Zero copy: sample payloads go out as the packets' own `Bytes`; only `moof` and the
//! `mdat` header are built here.

mod init;
mod mp3;
pub mod repair;

use bytes::Bytes;
use media::{AudioCodec, Codec, Millis, Packet, TrackConfig, TrackKind, VideoCodec};
use mp4_atom::{
    Encode, FragmentInfo, Mfhd, Mfra, Mfro, Moof, Tfdt, Tfhd, Tfra, Traf, Trun, TrunEntry,
};
use thiserror::Error;

/// Timescale of `mvhd` and `mehd`.
pub const MOVIE_TIMESCALE: u32 = 1000;
/// Timescale of video tracks: the MPEG 90 kHz clock, an exact multiple of milliseconds.
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// R-FM-3: fragments are at most ~2 s (also what a fragment is cut at without a keyframe).
pub const MAX_FRAGMENT_MS: Millis = Millis::from_ms(2000);
/// With video present, fragments are cut on keyframes; if video stalls while audio keeps
/// coming, audio alone forces a cut at this length so memory stays bounded.
const STALLED_VIDEO_FRAGMENT_MS: Millis = Millis::from_ms(4000);
/// The shortest fragment [`Fmp4Muxer::with_max_fragment`] allows: below it the moof
/// overhead grows for nothing (a frame or two per fragment).
pub const MIN_FRAGMENT_MS: Millis = Millis::from_ms(100);
/// Duration given to a lone video frame at the end of a file when no frame before it
/// told us the frame rate (30 fps).
const DEFAULT_VIDEO_FRAME_TICKS: u32 = 3000;

// ISO/IEC 14496-12 8.8.3.1 sample flags.
/// sample_depends_on = 2 (depends on no other sample), is_non_sync = 0.
const FLAGS_SYNC: u32 = 0x0200_0000;
/// sample_depends_on = 1 (depends on others), sample_is_non_sync_sample = 1.
const FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// Bytes to overwrite at `offset` of the finished file (the `mehd` duration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    pub offset: u64,
    pub bytes: [u8; 8],
}

#[derive(Debug, Error)]
pub enum Fmp4Error {
    #[error("no track can be recorded to fMP4 (skipped: {skipped:?})")]
    NoTracks { skipped: Vec<String> },
    #[error("mp4 box encoding failed: {0}")]
    Encode(mp4_atom::Error),
    #[error("init segment larger than 4 GiB")]
    InitTooLarge,
    #[error("fragment {sequence} holds {size} bytes; trun data offsets reach only 2 GiB")]
    FragmentTooLarge { sequence: u32, size: u64 },
}

/// The sample waiting for its successor (its duration is the DTS difference).
#[derive(Debug)]
struct Held {
    data: Bytes,
    /// Decode time in track ticks as placed on the file's timeline.
    time: u64,
    /// Presentation time in track ticks from the source (may precede `time` by a little,
    /// or be negative at the start of the file).
    pts: i64,
    key: bool,
    /// Audio: the frame's length in ticks counted from its samples; video: 0.
    frame_ticks: u32,
}

#[derive(Debug)]
struct Sample {
    data: Bytes,
    duration: u32,
    cts: i32,
    flags: u32,
}

#[derive(Debug)]
struct Track {
    id: u32,
    codec: Codec,
    timescale: u32,
    held: Option<Held>,
    frag: Vec<Sample>,
    /// Decode time of `frag[0]` (the tfdt).
    frag_start: u64,
    /// Sum of `frag` durations in ticks.
    frag_ticks: u64,
    /// Decode time right after the last completed sample.
    end: u64,
    last_duration: Option<u32>,
    /// AAC: 1024 samples per frame; MP3: from the first frame header.
    frame_ticks: u32,
    /// (presentation time, moof offset) of each fragment this track starts with a sync
    /// sample: the tfra entries.
    random_access: Vec<(u64, u64)>,
}

impl Track {
    fn kind(&self) -> TrackKind {
        self.codec.kind()
    }

    fn frag_duration(&self) -> Millis {
        Millis::from_ticks(i128::from(self.frag_ticks), self.timescale)
    }

    /// Converts a stream timestamp (ms, relative to the file base) into track ticks.
    fn ticks(&self, rel: Millis) -> i64 {
        let t = rel.to_ticks(self.timescale);
        t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Moves the held sample into the pending fragment with `duration` ticks.
    fn complete(&mut self, duration: u32) {
        let Some(h) = self.held.take() else { return };
        let duration = duration.max(1);
        if self.frag.is_empty() {
            self.frag_start = h.time;
            self.frag_ticks = 0;
        }
        let cts = h
            .pts
            .saturating_sub(i64::try_from(h.time).unwrap_or(i64::MAX))
            .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        let flags = match (self.kind(), h.key) {
            (TrackKind::Audio, _) | (TrackKind::Video, true) => FLAGS_SYNC,
            (TrackKind::Video, false) => FLAGS_NON_SYNC,
        };
        self.frag.push(Sample {
            data: h.data,
            duration,
            cts,
            flags,
        });
        self.frag_ticks = self.frag_ticks.saturating_add(u64::from(duration));
        self.end = h.time.saturating_add(u64::from(duration));
        self.last_duration = Some(duration);
    }

    /// The duration a last sample gets: the track's last one, or one nominal frame.
    fn typical_duration(&self) -> u32 {
        match self.kind() {
            TrackKind::Audio => self.frame_ticks,
            TrackKind::Video => self.last_duration.unwrap_or(DEFAULT_VIDEO_FRAME_TICKS),
        }
    }
}

/// Fragmented MP4 muxer for one file.
#[derive(Debug)]
pub struct Fmp4Muxer {
    tracks: Vec<Track>,
    skipped: Vec<String>,
    base: Millis,
    init: Bytes,
    init_emitted: bool,
    mehd_offset: u64,
    sequence: u32,
    bytes_written: u64,
    ignored: u64,
    finished: bool,
    /// Longest fragment of any track (≤ [`MAX_FRAGMENT_MS`]).
    max_fragment: Millis,
}

impl Fmp4Muxer {
    /// Tracks from the configs in force: H.264 (avcC), HEVC (hvcC), AV1 (av1C) video; AAC
    /// (esds carrying the original AudioSpecificConfig bytes) and MP3 audio. A config
    /// that cannot be used is skipped and reported in [`Self::skipped`]; no track → Err.
    ///
    /// MP3 has no sequence header in FLV, so its `TrackConfig.record` may be empty: the
    /// sample rate and channels come from an MPEG audio frame header in `record` (pass
    /// the first frame), else from the FLV sound-rate bits of `flv[0]`, else 44.1 kHz
    /// stereo.
    pub fn new(
        video: Option<&TrackConfig>,
        audio: Option<&TrackConfig>,
        base: Millis,
    ) -> Result<Self, Fmp4Error> {
        let mut skipped = Vec::new();
        let mut descs = Vec::new();
        let mut tracks = Vec::new();
        let mut next_id = 1;
        for (want, cfg) in [(TrackKind::Video, video), (TrackKind::Audio, audio)] {
            let Some(cfg) = cfg else { continue };
            match describe(want, cfg, next_id) {
                Ok((desc, frame_ticks)) => {
                    tracks.push(Track {
                        id: desc.id,
                        codec: desc.codec,
                        timescale: desc.timescale,
                        held: None,
                        frag: Vec::new(),
                        frag_start: 0,
                        frag_ticks: 0,
                        end: 0,
                        last_duration: None,
                        frame_ticks,
                        random_access: Vec::new(),
                    });
                    descs.push(desc);
                    next_id += 1;
                }
                Err(why) => skipped.push(why),
            }
        }
        if tracks.is_empty() {
            return Err(Fmp4Error::NoTracks { skipped });
        }
        let init = init::build(&descs)?;
        Ok(Self {
            tracks,
            skipped,
            base,
            init: init.bytes,
            init_emitted: false,
            mehd_offset: init.mehd_offset,
            sequence: 0,
            bytes_written: 0,
            ignored: 0,
            finished: false,
            max_fragment: MAX_FRAGMENT_MS,
        })
    }

    /// Caps every fragment at `ms` of media (within [`MIN_FRAGMENT_MS`]..=[`MAX_FRAGMENT_MS`]),
    /// video included: a fragment is then cut between keyframes too. The daemon sets its
    /// spool flush interval here, because only whole fragments survive a crash: with
    /// ~2 s fragments a low-bitrate stream would lose up to 2 s plus whatever the spool
    /// still buffered (issue 11).
    pub fn with_max_fragment(mut self, ms: Millis) -> Self {
        self.max_fragment = ms.clamp(MIN_FRAGMENT_MS, MAX_FRAGMENT_MS);
        self
    }

    /// Whether samples wait in the pending fragment ([`Self::cut_fragment`] would emit
    /// them). The one sample per track held for its duration is not counted: it cannot
    /// be written before its successor arrives.
    pub fn has_pending_fragment(&self) -> bool {
        !self.finished && self.tracks.iter().any(|t| !t.frag.is_empty())
    }

    /// Emits the pending fragment now, whatever its length: for a stream that stalls, so
    /// its last media reach the file without waiting for more (issue 11). The next
    /// fragment may then start on a non-sync sample, which fMP4 allows (only fragments
    /// starting on a sync sample get a `tfra` entry).
    pub fn cut_fragment(&mut self, out: &mut Vec<Bytes>) -> Result<(), Fmp4Error> {
        if self.finished {
            return Ok(());
        }
        self.emit_init(out);
        self.flush(out)
    }

    /// Why a configured track was left out of this file (one line each).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Packets dropped because no track of this file takes them (or after `finish`).
    pub fn ignored_packets(&self) -> u64 {
        self.ignored
    }

    /// ftyp + moov. The file must begin with these bytes: patch offsets and mfra offsets
    /// assume it. If `push` runs first it emits the init segment itself; calling this
    /// afterwards returns the same bytes without counting them again.
    pub fn init_segment(&mut self) -> Bytes {
        if !self.init_emitted {
            self.init_emitted = true;
            self.bytes_written += self.init.len() as u64;
        }
        self.init.clone()
    }

    /// Feeds one frame. One sample per track is held back until the next one gives its
    /// duration. A fragment is emitted at each video keyframe (so fragments start on
    /// keyframes), when the pending video reaches ~2 s, or, audio-only, every ~2 s (each
    /// of these at most [`Self::with_max_fragment`]).
    pub fn push(&mut self, p: &Packet, out: &mut Vec<Bytes>) -> Result<(), Fmp4Error> {
        if self.finished {
            self.ignored += 1;
            return Ok(());
        }
        self.emit_init(out);
        let Some(ti) = self.tracks.iter().position(|t| t.codec == p.codec) else {
            self.ignored += 1;
            return Ok(());
        };
        // A packet slightly before the file base (audio that preceded the first keyframe
        // in the ring, jittery encoders) is clamped to time 0 rather than underflowing.
        let rel_dts = p.dts.saturating_sub(self.base);
        let Some(t) = self.tracks.get_mut(ti) else {
            return Ok(());
        };
        let raw = u64::try_from(t.ticks(rel_dts).max(0)).unwrap_or(0);
        let frame_ticks = match p.codec {
            Codec::Audio(AudioCodec::Aac) => t.frame_ticks,
            Codec::Audio(AudioCodec::Mp3) => mp3::parse(&p.data)
                .map(|h| {
                    let v = u64::from(h.samples) * u64::from(t.timescale)
                        / u64::from(h.sample_rate.max(1));
                    u32::try_from(v).unwrap_or(u32::MAX)
                })
                .unwrap_or(t.frame_ticks),
            Codec::Video(_) => 0,
        };

        let time = match &t.held {
            Some(prev) => {
                let min = prev.time.saturating_add(1);
                let placed = if t.kind() == TrackKind::Audio {
                    let expected = prev.time.saturating_add(u64::from(prev.frame_ticks));
                    // Within one frame of the sample clock: the ms timestamp is only
                    // rounded, keep counting samples. Further off: a real gap or overlap.
                    if raw.abs_diff(expected) <= u64::from(prev.frame_ticks) {
                        expected
                    } else {
                        raw.max(min)
                    }
                } else {
                    // DTS going backwards (or repeating) within a track: never a zero or
                    // negative duration; the sample is placed one tick after its
                    // predecessor and keeps its presentation time via the offset.
                    raw.max(min)
                };
                let duration = u32::try_from(placed.saturating_sub(prev.time)).unwrap_or(u32::MAX);
                t.complete(duration);
                // = placed, unless the duration saturated at u32::MAX ticks.
                t.end
            }
            None => raw.max(t.end),
        };
        let pts = match t.kind() {
            // The source PTS is kept even when the DTS was clamped or nudged: the
            // composition offset absorbs the difference (signed, trun version 1).
            TrackKind::Video => t.ticks(rel_dts + Millis::from_ms(i64::from(p.cts))),
            TrackKind::Audio => i64::try_from(time).unwrap_or(i64::MAX),
        };
        t.held = Some(Held {
            data: p.data.clone(),
            time,
            pts,
            key: p.key,
            frame_ticks,
        });

        let video_key = p.is_video_key();
        let has_video = self.tracks.iter().any(|t| t.kind() == TrackKind::Video);
        let pending = self.tracks.iter().any(|t| !t.frag.is_empty());
        let cut = pending
            && (video_key
                || self.tracks.iter().any(|t| {
                    let limit = match (has_video, t.kind()) {
                        (true, TrackKind::Audio) => STALLED_VIDEO_FRAGMENT_MS,
                        _ => MAX_FRAGMENT_MS,
                    };
                    t.frag_duration() >= limit.min(self.max_fragment)
                }));
        if cut {
            self.flush(out)?;
        }
        Ok(())
    }

    /// End of file: the last sample of each track gets the track's typical duration, the
    /// last fragment is flushed, an `mfra` is appended, and the patch stating the real
    /// duration in `mehd` (movie timescale) is returned. Later pushes are ignored.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) -> Vec<Patch> {
        if self.finished {
            return Vec::new();
        }
        self.emit_init(out);
        for t in &mut self.tracks {
            let d = t.typical_duration();
            t.complete(d);
        }
        // A fragment too large for a trun data offset cannot be written; what came
        // before it stays a valid file.
        let _ = self.flush(out);
        self.finished = true;
        if let Ok(mfra) = self.mfra() {
            self.bytes_written += mfra.len() as u64;
            out.push(mfra.into());
        }
        let ms = self
            .tracks
            .iter()
            .map(|t| {
                // Rounded up: mehd must not announce less than the file holds.
                let ts = u64::from(t.timescale.max(1));
                (u128::from(t.end) * 1000).div_ceil(u128::from(ts))
            })
            .max()
            .unwrap_or(0);
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        vec![Patch {
            offset: self.mehd_offset,
            bytes: ms.to_be_bytes(),
        }]
    }

    /// Bytes handed out so far (init segment, fragments, mfra).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    fn emit_init(&mut self, out: &mut Vec<Bytes>) {
        if !self.init_emitted {
            out.push(self.init_segment());
        }
    }

    fn flush(&mut self, out: &mut Vec<Bytes>) -> Result<(), Fmp4Error> {
        if self.tracks.iter().all(|t| t.frag.is_empty()) {
            return Ok(());
        }
        let sequence = self.sequence + 1;
        let mut moof = Moof {
            mfhd: Mfhd {
                sequence_number: sequence,
            },
            traf: Vec::new(),
        };
        let mut payload: u64 = 0;
        let mut payload_before = Vec::new();
        for t in self.tracks.iter().filter(|t| !t.frag.is_empty()) {
            payload_before.push(payload);
            let video = t.kind() == TrackKind::Video;
            let entries: Vec<TrunEntry> = t
                .frag
                .iter()
                .map(|s| TrunEntry {
                    duration: Some(s.duration),
                    size: Some(u32::try_from(s.data.len()).unwrap_or(u32::MAX)),
                    flags: Some(s.flags),
                    // Signed offsets (trun version 1): B-frames may present before decode.
                    cts: video.then_some(i64::from(s.cts)),
                })
                .collect();
            payload += t.frag.iter().map(|s| s.data.len() as u64).sum::<u64>();
            moof.traf.push(Traf {
                tfhd: Tfhd {
                    track_id: t.id,
                    default_base_is_moof: true,
                    ..Default::default()
                },
                tfdt: Some(Tfdt {
                    base_media_decode_time: t.frag_start,
                }),
                trun: vec![Trun {
                    data_offset: Some(0),
                    samples: entries.into(),
                }],
                ..Default::default()
            });
        }
        // Encode once to learn the moof size; data_offset is a fixed 4-byte field, so
        // setting it does not change the size.
        let mut buf = Vec::new();
        moof.encode(&mut buf).map_err(Fmp4Error::Encode)?;
        let mdat_header: u64 = if payload + 8 > u64::from(u32::MAX) {
            16
        } else {
            8
        };
        let head = buf.len() as u64 + mdat_header;
        let too_large = Fmp4Error::FragmentTooLarge {
            sequence,
            size: head + payload,
        };
        if head + payload > i32::MAX as u64 {
            // Drop the fragment rather than write offsets that point elsewhere.
            for t in &mut self.tracks {
                t.frag.clear();
            }
            self.sequence = sequence;
            return Err(too_large);
        }
        for (traf, before) in moof.traf.iter_mut().zip(&payload_before) {
            let off = i32::try_from(head + before).unwrap_or(i32::MAX);
            for trun in &mut traf.trun {
                trun.data_offset = Some(off);
            }
        }
        buf.clear();
        moof.encode(&mut buf).map_err(Fmp4Error::Encode)?;

        let moof_offset = self.bytes_written;
        let mut mdat = Vec::with_capacity(16);
        if mdat_header == 16 {
            mdat.extend_from_slice(&1u32.to_be_bytes());
            mdat.extend_from_slice(b"mdat");
            mdat.extend_from_slice(&(payload + 16).to_be_bytes());
        } else {
            mdat.extend_from_slice(&((payload + 8) as u32).to_be_bytes());
            mdat.extend_from_slice(b"mdat");
        }
        self.bytes_written += head + payload;
        out.push(buf.into());
        out.push(mdat.into());
        for t in &mut self.tracks {
            if let Some(first) = t.frag.first() {
                if first.flags == FLAGS_SYNC {
                    let pts = i64::try_from(t.frag_start)
                        .unwrap_or(i64::MAX)
                        .saturating_add(i64::from(first.cts))
                        .max(0) as u64;
                    t.random_access.push((pts, moof_offset));
                }
            }
            for s in t.frag.drain(..) {
                out.push(s.data);
            }
            t.frag_ticks = 0;
        }
        self.sequence = sequence;
        Ok(())
    }

    fn mfra(&self) -> Result<Vec<u8>, Fmp4Error> {
        let mut mfra = Mfra {
            tfra: self
                .tracks
                .iter()
                .map(|t| Tfra {
                    track_id: t.id,
                    entries: t
                        .random_access
                        .iter()
                        .map(|&(time, moof_offset)| FragmentInfo {
                            time,
                            moof_offset,
                            traf_number: 1,
                            trun_number: 1,
                            sample_delta: 1,
                        })
                        .collect(),
                })
                .collect(),
            mfro: Mfro { parent_size: 0 },
        };
        let mut buf = Vec::new();
        mfra.encode(&mut buf).map_err(Fmp4Error::Encode)?;
        // mfro states the size of the whole mfra so readers can find it from the end.
        mfra.mfro.parent_size = u32::try_from(buf.len()).map_err(|_| Fmp4Error::InitTooLarge)?;
        buf.clear();
        mfra.encode(&mut buf).map_err(Fmp4Error::Encode)?;
        Ok(buf)
    }
}

/// Checks a config and describes its track; `Err` says why it is skipped.
fn describe(want: TrackKind, cfg: &TrackConfig, id: u32) -> Result<(init::TrackDesc, u32), String> {
    let name = cfg.codec.name();
    if cfg.kind() != want {
        return Err(format!("{name}: offered as the {want:?} track"));
    }
    let mut d = init::TrackDesc {
        id,
        codec: cfg.codec,
        timescale: VIDEO_TIMESCALE,
        record: cfg.record.clone(),
        channels: 0,
        sample_rate: 0,
        width: 0,
        height: 0,
    };
    let frame_ticks = match cfg.codec {
        Codec::Video(v) => {
            match v {
                VideoCodec::H264 => {
                    let avc = media::avc::AvcConfig::parse(&cfg.record)
                        .map_err(|e| format!("{name}: {e}"))?;
                    if let Some((w, h)) = avc.sps.first().and_then(|s| media::avc::sps_size(s)) {
                        d.width = w;
                        d.height = h;
                    }
                }
                // hvcC is at least 23 bytes (ISO/IEC 14496-15 8.3.3.1), av1C 4 (AV1-ISOBMFF 2.3).
                VideoCodec::Hevc if cfg.record.len() < 23 => {
                    return Err(format!("{name}: hvcC is {} bytes", cfg.record.len()))
                }
                VideoCodec::Av1 if cfg.record.len() < 4 => {
                    return Err(format!("{name}: av1C is {} bytes", cfg.record.len()))
                }
                _ => {}
            }
            0
        }
        Codec::Audio(AudioCodec::Aac) => {
            let asc = media::aac::AudioSpecificConfig::parse(&cfg.record)
                .map_err(|e| format!("{name}: {e}"))?;
            if asc.sample_rate == 0 {
                return Err(format!("{name}: sample rate 0"));
            }
            d.timescale = asc.sample_rate;
            d.sample_rate = asc.sample_rate;
            // channel_config 0 means "defined in the program config element"; 2 is what
            // players assume for the sample entry.
            d.channels = if asc.channel_config == 0 {
                2
            } else {
                u16::from(asc.channel_config)
            };
            1024
        }
        Codec::Audio(AudioCodec::Mp3) => {
            let (rate, channels, samples) = match mp3::parse(&cfg.record) {
                Some(h) => (h.sample_rate, h.channels, h.samples),
                None => match cfg.flv.first() {
                    // FLV SoundFormat 14: MP3 8 kHz.
                    Some(b) if b >> 4 == 14 => (8000, u16::from(b & 1) + 1, 576),
                    Some(b) => {
                        let rate = [5512, 11025, 22050, 44100]
                            .get(usize::from((b >> 2) & 3))
                            .copied()
                            .unwrap_or(44100);
                        let samples = if rate >= 32000 { 1152 } else { 576 };
                        (rate, u16::from(b & 1) + 1, samples)
                    }
                    None => (44100, 2, 1152),
                },
            };
            d.timescale = rate;
            d.sample_rate = rate;
            d.channels = channels;
            samples
        }
    };
    Ok((d, frame_ticks))
}
