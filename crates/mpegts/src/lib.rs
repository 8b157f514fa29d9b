//! MPEG-TS muxer for HLS recording (R-FM-2): PAT/PMT at every segment start, one PES per
//! frame, PCR on the video PID, continuity counters, Annex-B video with AUD and parameter
//! sets before each random access point, ADTS audio, PTS/DTS on the 33-bit 90 kHz clock.
//!
//! PAT and PMT are built with `mpeg2ts` (typed tables, CRC32). The PES/TS packetization of
//! frames is written by hand into one reused `BytesMut`: `mpeg2ts`'s writer wants one
//! owned 184-byte payload object per TS packet and an `io::Write` call per field, while
//! a frame is a few hundred packets; building them in place is ~60 lines and hands out
//! one `Bytes` per frame instead of one allocation per 188-byte packet. Tests read every
//! byte back with `mpeg2ts`'s reader ("decode what you encode").
//!
//! Timestamps: the input is the unwrapped 64-bit millisecond timeline (media crate). The
//! 90 kHz clock is `(ms + 1400) × 90 mod 2^33`, computed in i128 so no input overflows
//! (reliability.md T5) and a monotonic input crossing the 26.5 h wrap yields correctly
//! wrapped values instead of a panic (T4). The 1.4 s offset is ffmpeg's: it keeps the
//! first PTS of a B-frame stream (whose composition offsets may be negative relative to
//! DTS 0) and the PCR (which runs 0.7 s behind DTS) non-negative.
//!
//! Audio is one PES per frame (AAC as ADTS, MP3 raw), each with its own PTS: grouping
//! frames would save ~14 bytes of PES header per 21 ms but make a frame's timestamp
//! implicit, and R-FM-5 checks every frame's timing. PCR: in every PES of the PCR PID
//! (video, or audio when there is no video), so every keyframe carries one, plus a
//! PCR-only packet whenever the other PID runs 100 ms past the last PCR.

pub mod repair;

use bytes::{BufMut, Bytes, BytesMut};
use media::avc::{AvcConfig, AvcError};
use media::{AudioCodec, Codec, Millis, Packet, TrackConfig, TrackKind, VideoCodec};
use mpeg2ts::es::StreamType;
use mpeg2ts::ts::payload::{Pat, Pmt};
use mpeg2ts::ts::{
    ContinuityCounter, EsInfo, Pid, ProgramAssociation, TransportScramblingControl, TsHeader,
    TsPacket, TsPacketWriter, TsPayload, VersionNumber, WriteTsPacket,
};
use thiserror::Error;

/// Every TS packet is this long.
pub const TS_PACKET_SIZE: usize = 188;
/// PIDs are ffmpeg's defaults, so our segments look like what players see every day.
pub const PMT_PID: u16 = 0x1000;
pub const VIDEO_PID: u16 = 0x100;
pub const AUDIO_PID: u16 = 0x101;
/// Added to every timestamp before conversion to 90 kHz (ffmpeg's 1.4 s initial delay).
pub const TIMESTAMP_OFFSET_MS: Millis = Millis::from_ms(1400);
/// The PCR runs this far behind the DTS of the frame that carries it, so a frame's
/// decode time is always ahead of the clock that reaches the decoder with it, even with
/// some audio/video interleaving jitter.
const PCR_LEAD_MS: Millis = Millis::from_ms(700);
/// R-FM-2 / ISO 13818-1: PCRs at most 100 ms apart.
const PCR_MAX_INTERVAL_MS: Millis = Millis::from_ms(100);
const TS_CLOCK_MODULUS: i128 = 1 << 33;
const VIDEO_STREAM_ID: u8 = 0xe0;
const AUDIO_STREAM_ID: u8 = 0xc0;
/// Largest PES header we write: 9 fixed bytes + PTS + DTS.
const MAX_PES_HEADER: usize = 19;
const START_CODE: [u8; 4] = [0, 0, 0, 1];
const H264_AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xf0];
const HEVC_AUD: [u8; 7] = [0, 0, 0, 1, 0x46, 0x01, 0x50];

#[derive(Debug, Error)]
pub enum TsError {
    #[error("no track MPEG-TS can carry (skipped: {skipped:?})")]
    NoTracks { skipped: Vec<String> },
    #[error("invalid avcC: {0}")]
    AvcConfig(#[from] AvcError),
    #[error("invalid hvcC: {0}")]
    HevcConfig(String),
    #[error("invalid AAC AudioSpecificConfig: {0}")]
    AacConfig(#[from] aac::AdtsError),
    #[error("{codec} frame at dts {dts} ms: NAL length at byte {offset} declares {len} bytes, {available} available")]
    TruncatedNal {
        codec: &'static str,
        dts: Millis,
        offset: usize,
        len: usize,
        available: usize,
    },
    #[error("{codec} frame at dts {dts} ms carries no NAL unit")]
    EmptyFrame { codec: &'static str, dts: Millis },
    #[error("{codec} frame at dts {dts} ms: no {kind:?} track in this muxer")]
    NoTrack {
        codec: &'static str,
        kind: TrackKind,
        dts: Millis,
    },
    #[error("{got} frame at dts {dts} ms on the {expected} track (send set_config first)")]
    CodecMismatch {
        expected: &'static str,
        got: &'static str,
        dts: Millis,
    },
    #[error("{codec} frame at dts {dts} ms: {len} bytes do not fit one audio PES")]
    FrameTooLarge {
        codec: &'static str,
        dts: Millis,
        len: usize,
    },
    #[error("aac frame at dts {dts} ms: {source}")]
    Adts {
        dts: Millis,
        #[source]
        source: aac::AdtsError,
    },
    #[error("writing PAT/PMT: {0}")]
    Psi(String),
}

/// Codec-specific state of a track.
#[derive(Debug, Clone)]
enum Kind {
    /// H.264 or HEVC: NAL length size and the parameter sets to put before IRAP frames
    /// (SPS, PPS for H.264; VPS, SPS, PPS for HEVC), in that order.
    Video {
        hevc: bool,
        nal_length_size: u8,
        param_sets: Vec<Bytes>,
    },
    Aac(aac::AdtsParams),
    Mp3,
}

#[derive(Debug, Clone)]
struct Track {
    codec: Codec,
    pid: u16,
    stream_type: StreamType,
    stream_id: u8,
    /// Next continuity counter for a packet with payload.
    cc: u8,
    kind: Kind,
}

/// Outcome of mapping a codec config to a TS track.
enum Mapped {
    Track(Track),
    Unsupported(String),
}

fn map_config(c: &TrackConfig) -> Result<Mapped, TsError> {
    let (pid, stream_id, stream_type, kind) = match c.codec {
        Codec::Video(VideoCodec::H264) => {
            let avc = AvcConfig::parse(&c.record)?;
            let mut sets = avc.sps;
            sets.extend(avc.pps);
            let kind = Kind::Video {
                hevc: false,
                nal_length_size: avc.nal_length_size,
                param_sets: sets,
            };
            (VIDEO_PID, VIDEO_STREAM_ID, StreamType::H264, kind)
        }
        Codec::Video(VideoCodec::Hevc) => {
            let (nal_length_size, param_sets) = parse_hvcc(&c.record)?;
            let kind = Kind::Video {
                hevc: true,
                nal_length_size,
                param_sets,
            };
            (VIDEO_PID, VIDEO_STREAM_ID, StreamType::H265, kind)
        }
        Codec::Video(VideoCodec::Av1) => {
            // R-FM-2/issue 3: a codec TS cannot carry is skipped for this format. AV1 in
            // TS exists only as a 2021 AOM draft that ffmpeg 5.1, hls.js and Safari do
            // not read, so writing it would break R-FM-6.
            return Ok(Mapped::Unsupported(
                "av1 video: MPEG-TS/HLS has no AV1 mapping players support; video left out of the HLS recording".into(),
            ));
        }
        Codec::Audio(AudioCodec::Aac) => {
            let params = aac::AdtsParams::from_asc(&c.record)?;
            (
                AUDIO_PID,
                AUDIO_STREAM_ID,
                StreamType::AdtsAac,
                Kind::Aac(params),
            )
        }
        Codec::Audio(AudioCodec::Mp3) => {
            // ffmpeg writes MP3 as stream type 0x03 (MPEG-1 audio) as well.
            (
                AUDIO_PID,
                AUDIO_STREAM_ID,
                StreamType::Mpeg1Audio,
                Kind::Mp3,
            )
        }
    };
    Ok(Mapped::Track(Track {
        codec: c.codec,
        pid,
        stream_type,
        stream_id,
        cc: 0,
        kind,
    }))
}

/// HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1): the NAL length size and
/// the VPS, SPS and PPS arrays. Every length is checked against the record (M2).
fn parse_hvcc(record: &Bytes) -> Result<(u8, Vec<Bytes>), TsError> {
    let b = record.as_ref();
    let bad = |what: &str, at: usize| {
        TsError::HevcConfig(format!(
            "{what} at byte {at} past the end ({} bytes)",
            b.len()
        ))
    };
    let (Some(&len_byte), Some(&num_arrays)) = (b.get(21), b.get(22)) else {
        return Err(TsError::HevcConfig(format!(
            "{} bytes, shorter than the 23-byte header",
            b.len()
        )));
    };
    let nal_length_size = (len_byte & 0x03) + 1;
    let mut pos = 23;
    let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..num_arrays {
        let hdr = b
            .get(pos..pos + 3)
            .ok_or_else(|| bad("array header", pos))?;
        let nal_type = hdr[0] & 0x3f;
        let count = usize::from(u16::from_be_bytes([hdr[1], hdr[2]]));
        pos += 3;
        for _ in 0..count {
            let l = b.get(pos..pos + 2).ok_or_else(|| bad("NAL length", pos))?;
            let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let start = pos + 2;
            if start + len > b.len() {
                return Err(bad("NAL unit", start));
            }
            let nal = record.slice(start..start + len);
            match nal_type {
                32 => vps.push(nal),
                33 => sps.push(nal),
                34 => pps.push(nal),
                _ => {}
            }
            pos = start + len;
        }
    }
    if sps.is_empty() {
        return Err(TsError::HevcConfig("no SPS".into()));
    }
    vps.extend(sps);
    vps.extend(pps);
    Ok((nal_length_size, vps))
}

/// 90 kHz ticks of a millisecond time, with the constant offset, on the 33-bit clock.
/// i128 so no i64 input can overflow (reliability.md T5); `rem_euclid` wraps (T4).
pub fn ts_ticks(ms: Millis) -> u64 {
    ticks_wide(ms.to_ts_ticks())
}

/// `ts_ticks` on a wide 90 kHz value, for sums such as DTS + CTS that may not fit an
/// i64 of milliseconds (`Packet::pts` saturates on hostile input, the PES must not).
fn ticks_wide(ticks: i128) -> u64 {
    (ticks + TIMESTAMP_OFFSET_MS.to_ts_ticks()).rem_euclid(TS_CLOCK_MODULUS) as u64
}

/// The NAL units of one AVCC/HVCC frame, bounds-checked.
fn nal_units<'a>(
    data: &'a [u8],
    nal_length_size: u8,
    codec: &'static str,
    dts: Millis,
) -> Result<Vec<&'a [u8]>, TsError> {
    let n = usize::from(nal_length_size.clamp(1, 4));
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let truncated = |len: usize| TsError::TruncatedNal {
            codec,
            dts,
            offset: pos,
            len,
            available: data.len().saturating_sub(pos + n),
        };
        let prefix = data.get(pos..pos + n).ok_or_else(|| truncated(n))?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        let start = pos + n;
        let nal = start
            .checked_add(len)
            .and_then(|end| data.get(start..end))
            .ok_or_else(|| truncated(len))?;
        if !nal.is_empty() {
            out.push(nal);
        }
        pos = start + len;
    }
    Ok(out)
}

/// Writes one access unit in Annex-B form: AUD, then the parameter sets when the frame is
/// a random access point that does not carry them itself (so every segment, which starts
/// on a keyframe, is decodable on its own), then the frame's NAL units minus any AUD of
/// its own.
fn write_annex_b(out: &mut Vec<u8>, nals: &[&[u8]], hevc: bool, key: bool, param_sets: &[Bytes]) {
    let nal_type = |n: &[u8]| {
        let b = n.first().copied().unwrap_or(0);
        if hevc {
            (b >> 1) & 0x3f
        } else {
            b & 0x1f
        }
    };
    let (aud, irap, needed): (u8, fn(u8) -> bool, &[u8]) = if hevc {
        (35, |t| (16..=23).contains(&t), &[32, 33, 34])
    } else {
        (9, |t| t == 5, &[7, 8])
    };
    let is_rap = key || nals.iter().any(|n| irap(nal_type(n)));
    let carries_sets = needed
        .iter()
        .all(|t| nals.iter().any(|n| nal_type(n) == *t));
    out.extend_from_slice(if hevc { &HEVC_AUD } else { &H264_AUD });
    if is_rap && !carries_sets {
        for s in param_sets {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(s);
        }
    }
    for n in nals.iter().filter(|n| nal_type(n) != aud) {
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(n);
    }
}

fn write_timestamp(out: &mut [u8], prefix: u8, ts: u64) {
    out[0] = (prefix << 4) | (((ts >> 29) as u8) & 0x0e) | 1;
    out[1] = (ts >> 22) as u8;
    out[2] = (((ts >> 14) as u8) & 0xfe) | 1;
    out[3] = (ts >> 7) as u8;
    out[4] = ((ts << 1) as u8) | 1;
}

fn pcr_bytes(base: u64) -> [u8; 6] {
    // 33-bit base, 6 reserved bits (1), 9-bit extension (0).
    [
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        (((base & 1) as u8) << 7) | 0x7e,
        0,
    ]
}

/// The MPEG-TS muxer of one recording. See the crate docs.
#[derive(Debug)]
pub struct TsMuxer {
    video: Option<Track>,
    audio: Option<Track>,
    skipped: Vec<String>,
    skipped_codecs: Vec<Codec>,
    pat_cc: u8,
    pmt_cc: u8,
    pmt_version: u8,
    /// PAT/PMT changed (a track appeared, vanished or changed codec): written again before
    /// the next frame.
    psi_dirty: bool,
    /// Time (ms, unwrapped) of the last PCR written; PCRs never go backwards.
    last_pcr_ms: Option<Millis>,
    /// Output under construction; `split().freeze()` hands it out without copying and
    /// the remaining capacity is reused for the next frame.
    buf: BytesMut,
    /// Scratch for one PES (header space + elementary stream), reused across frames.
    pes: Vec<u8>,
}

impl TsMuxer {
    /// Tracks from the codec configs in force. A codec TS cannot carry (AV1) is left out
    /// and reported in [`TsMuxer::skipped`]; with no track left this is an error.
    pub fn new(video: Option<&TrackConfig>, audio: Option<&TrackConfig>) -> Result<Self, TsError> {
        let mut m = TsMuxer {
            video: None,
            audio: None,
            skipped: Vec::new(),
            skipped_codecs: Vec::new(),
            pat_cc: 0,
            pmt_cc: 0,
            pmt_version: 0,
            psi_dirty: false,
            last_pcr_ms: None,
            buf: BytesMut::with_capacity(64 * 1024),
            pes: Vec::new(),
        };
        for c in [video, audio].into_iter().flatten() {
            match map_config(c)? {
                Mapped::Track(t) => *m.slot(c.kind()) = Some(t),
                Mapped::Unsupported(reason) => {
                    m.skipped.push(reason);
                    m.skipped_codecs.push(c.codec);
                }
            }
        }
        if m.video.is_none() && m.audio.is_none() {
            return Err(TsError::NoTracks { skipped: m.skipped });
        }
        Ok(m)
    }

    /// Why tracks were left out (one line each, for the recorder's warning).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    fn slot(&mut self, kind: TrackKind) -> &mut Option<Track> {
        match kind {
            TrackKind::Video => &mut self.video,
            TrackKind::Audio => &mut self.audio,
        }
    }

    fn pcr_pid(&self) -> u16 {
        if self.video.is_some() {
            VIDEO_PID
        } else {
            AUDIO_PID
        }
    }

    /// PAT + PMT. Call at the start of every segment so each segment is decodable on its
    /// own (R-FM-2).
    pub fn segment_header(&mut self, out: &mut Vec<Bytes>) {
        self.write_psi();
        out.push(self.buf.split().freeze());
    }

    fn write_psi(&mut self) {
        self.psi_dirty = false;
        // The tables are a fixed, valid shape (one program, at most two streams, in-range
        // PIDs and versions), so mpeg2ts cannot refuse them; should it ever, the bytes
        // are simply not written and the `debug_assert` flags it in tests.
        let r = self.try_write_psi();
        debug_assert!(r.is_ok(), "PAT/PMT: {r:?}");
    }

    fn try_write_psi(&mut self) -> Result<(), TsError> {
        let e = |e: mpeg2ts::Error| TsError::Psi(format!("{e:?}"));
        let header = |pid: u16, cc: u8| -> Result<TsHeader, TsError> {
            Ok(TsHeader {
                transport_error_indicator: false,
                transport_priority: false,
                pid: Pid::new(pid).map_err(e)?,
                transport_scrambling_control: TransportScramblingControl::NotScrambled,
                continuity_counter: ContinuityCounter::from_u8(cc & 0x0f).map_err(e)?,
            })
        };
        let pat = TsPacket {
            header: header(0, self.pat_cc)?,
            adaptation_field: None,
            payload: Some(TsPayload::Pat(Pat {
                transport_stream_id: 1,
                version_number: VersionNumber::new(),
                table: vec![ProgramAssociation {
                    program_num: 1,
                    program_map_pid: Pid::new(PMT_PID).map_err(e)?,
                }],
            })),
        };
        let es_info = [&self.video, &self.audio]
            .into_iter()
            .flatten()
            .map(|t| {
                Ok(EsInfo {
                    stream_type: t.stream_type,
                    elementary_pid: Pid::new(t.pid).map_err(e)?,
                    descriptors: vec![],
                })
            })
            .collect::<Result<Vec<_>, TsError>>()?;
        let pmt = TsPacket {
            header: header(PMT_PID, self.pmt_cc)?,
            adaptation_field: None,
            payload: Some(TsPayload::Pmt(Pmt {
                program_num: 1,
                pcr_pid: Some(Pid::new(self.pcr_pid()).map_err(e)?),
                version_number: VersionNumber::from_u8(self.pmt_version & 0x1f).map_err(e)?,
                program_info: vec![],
                es_info,
            })),
        };
        let mut w = TsPacketWriter::new((&mut self.buf).writer());
        w.write_ts_packet(&pat).map_err(e)?;
        w.write_ts_packet(&pmt).map_err(e)?;
        self.pat_cc = (self.pat_cc + 1) & 0x0f;
        self.pmt_cc = (self.pmt_cc + 1) & 0x0f;
        Ok(())
    }

    /// A new codec config mid-stream (new SPS/PPS or ASC, or another codec). A change of
    /// stream type, or a track appearing, bumps the PMT version and rewrites PAT/PMT
    /// before the next frame. A config TS cannot carry drops that track (reported in
    /// `skipped`), unless it is the only one.
    pub fn set_config(&mut self, c: &TrackConfig) -> Result<(), TsError> {
        let mapped = map_config(c)?;
        let kind = c.kind();
        match mapped {
            Mapped::Track(mut t) => {
                let slot = self.slot(kind);
                let changed = match slot {
                    Some(old) => {
                        t.cc = old.cc;
                        old.stream_type != t.stream_type
                    }
                    None => true,
                };
                *slot = Some(t);
                self.skipped_codecs.retain(|k| k.kind() != kind);
                if changed {
                    self.pmt_version = (self.pmt_version + 1) & 0x1f;
                    self.psi_dirty = true;
                }
            }
            Mapped::Unsupported(reason) => {
                let other = match kind {
                    TrackKind::Video => &self.audio,
                    TrackKind::Audio => &self.video,
                };
                if other.is_none() {
                    return Err(TsError::NoTracks {
                        skipped: vec![reason],
                    });
                }
                if self.slot(kind).take().is_some() {
                    self.pmt_version = (self.pmt_version + 1) & 0x1f;
                    self.psi_dirty = true;
                }
                self.skipped.push(reason);
                self.skipped_codecs.push(c.codec);
            }
        }
        Ok(())
    }

    /// One frame → one PES → 188-byte TS packets appended to `out` (as one `Bytes`).
    /// Frames of a skipped codec are dropped (already reported by `skipped`). On error
    /// nothing is written for this frame and the muxer stays usable.
    /// Whether packets of this kind are written (false for a track left out, e.g. AV1
    /// video, whose packets `push` accepts and drops).
    pub fn carries(&self, kind: TrackKind) -> bool {
        match kind {
            TrackKind::Video => self.video.is_some(),
            TrackKind::Audio => self.audio.is_some(),
        }
    }

    pub fn push(&mut self, p: &Packet, out: &mut Vec<Bytes>) -> Result<(), TsError> {
        let kind = p.kind();
        // Direct field access (not `slot`) so the track borrow stays disjoint from `pes`.
        let track = match kind {
            TrackKind::Video => self.video.as_ref(),
            TrackKind::Audio => self.audio.as_ref(),
        };
        let Some(track) = track else {
            if self.skipped_codecs.contains(&p.codec) {
                return Ok(());
            }
            return Err(TsError::NoTrack {
                codec: p.codec.name(),
                kind,
                dts: p.dts,
            });
        };
        if track.codec != p.codec {
            return Err(TsError::CodecMismatch {
                expected: track.codec.name(),
                got: p.codec.name(),
                dts: p.dts,
            });
        }
        let (pid, stream_id) = (track.pid, track.stream_id);

        // Elementary stream after room for the PES header, so header + payload are one
        // contiguous slice without a copy.
        self.pes.clear();
        self.pes.resize(MAX_PES_HEADER, 0);
        match &track.kind {
            Kind::Video {
                hevc,
                nal_length_size,
                param_sets,
            } => {
                let nals = nal_units(&p.data, *nal_length_size, p.codec.name(), p.dts)?;
                if nals.is_empty() {
                    return Err(TsError::EmptyFrame {
                        codec: p.codec.name(),
                        dts: p.dts,
                    });
                }
                write_annex_b(&mut self.pes, &nals, *hevc, p.key, param_sets);
            }
            Kind::Aac(params) => {
                let h = params
                    .header(p.data.len())
                    .map_err(|source| TsError::Adts { dts: p.dts, source })?;
                self.pes.extend_from_slice(&h);
                self.pes.extend_from_slice(&p.data);
            }
            Kind::Mp3 => self.pes.extend_from_slice(&p.data),
        }
        let es_len = self.pes.len() - MAX_PES_HEADER;

        // PES header (ISO 13818-1 2.4.3.6). DTS only when it differs from PTS.
        let cts = Millis::from_ms(i64::from(p.cts));
        let pts = ticks_wide(p.dts.to_ts_ticks() + cts.to_ts_ticks());
        let dts = ts_ticks(p.dts);
        let with_dts = pts != dts;
        let hdr_data_len: usize = if with_dts { 10 } else { 5 };
        let hdr_len = 9 + hdr_data_len;
        let pes_len = 3 + hdr_data_len + es_len;
        let pes_len_field = if pes_len <= usize::from(u16::MAX) {
            pes_len as u16
        } else if kind == TrackKind::Video {
            0 // unbounded: allowed for video only
        } else {
            return Err(TsError::FrameTooLarge {
                codec: p.codec.name(),
                dts: p.dts,
                len: p.data.len(),
            });
        };
        let start = MAX_PES_HEADER - hdr_len;
        {
            let h = &mut self.pes[start..MAX_PES_HEADER];
            h[..4].copy_from_slice(&[0, 0, 1, stream_id]);
            h[4..6].copy_from_slice(&pes_len_field.to_be_bytes());
            h[6] = 0x84; // '10' marker, data_alignment_indicator: starts with AUD / syncword
            h[7] = if with_dts { 0xc0 } else { 0x80 };
            h[8] = hdr_data_len as u8;
            write_timestamp(&mut h[9..14], if with_dts { 3 } else { 2 }, pts);
            if with_dts {
                write_timestamp(&mut h[14..19], 1, dts);
            }
        }

        if self.psi_dirty {
            self.write_psi();
        }

        // PCR (R-FM-2): on every PES of the PCR PID (keyframes included), and as a
        // PCR-only packet when another PID advances 100 ms past the last PCR (video
        // stalls, or audio-only gaps on the video PID).
        let pcr_pid = self.pcr_pid();
        let pcr_ms = self.last_pcr_ms.map_or(p.dts, |l| l.max(p.dts));
        let pcr_base = ticks_wide(pcr_ms.to_ts_ticks() - PCR_LEAD_MS.to_ts_ticks());
        let pcr = if pid == pcr_pid {
            self.last_pcr_ms = Some(pcr_ms);
            Some(pcr_base)
        } else {
            if self
                .last_pcr_ms
                .is_none_or(|l| p.dts.saturating_sub(l) >= PCR_MAX_INTERVAL_MS)
            {
                self.last_pcr_ms = Some(pcr_ms);
                let cc = self.slot_by_pid(pcr_pid).map_or(0, |t| t.cc);
                write_pcr_only(&mut self.buf, pcr_pid, cc.wrapping_sub(1) & 0x0f, pcr_base);
            }
            None
        };
        let rai = p.is_video_key();

        let track = match kind {
            TrackKind::Video => self.video.as_mut(),
            TrackKind::Audio => self.audio.as_mut(),
        };
        let Some(track) = track else {
            return Ok(()); // unreachable: checked above
        };
        packetize(
            &mut self.buf,
            pid,
            &mut track.cc,
            &self.pes[start..],
            pcr,
            rai,
        );
        out.push(self.buf.split().freeze());
        Ok(())
    }

    fn slot_by_pid(&self, pid: u16) -> Option<&Track> {
        [&self.video, &self.audio]
            .into_iter()
            .flatten()
            .find(|t| t.pid == pid)
    }
}

/// An adaptation-field-only packet carrying a PCR. No payload, so the continuity counter
/// repeats the previous packet's value (ISO 13818-1 2.4.3.3).
fn write_pcr_only(buf: &mut BytesMut, pid: u16, cc: u8, pcr_base: u64) {
    buf.put_u8(0x47);
    buf.put_u16(pid & 0x1fff);
    buf.put_u8(0x20 | cc);
    buf.put_u8(183);
    buf.put_u8(0x10);
    buf.put_slice(&pcr_bytes(pcr_base));
    buf.put_bytes(0xff, 183 - 7);
}

/// Splits one PES into TS packets: payload_unit_start on the first, the PCR and
/// random_access_indicator in the first packet's adaptation field, adaptation-field
/// stuffing to fill the last one.
fn packetize(
    buf: &mut BytesMut,
    pid: u16,
    cc: &mut u8,
    mut pes: &[u8],
    pcr: Option<u64>,
    rai: bool,
) {
    buf.reserve(pes.len().div_ceil(184) * TS_PACKET_SIZE + TS_PACKET_SIZE);
    let mut first = true;
    while first || !pes.is_empty() {
        let flags_wanted = first && (pcr.is_some() || rai);
        let af_fixed = if flags_wanted {
            2 + if pcr.is_some() { 6 } else { 0 }
        } else {
            0
        };
        let take = pes.len().min(184 - af_fixed);
        let af_total = 184 - take;
        buf.put_u8(0x47);
        buf.put_u16((u16::from(first) << 14) | (pid & 0x1fff));
        buf.put_u8(if af_total > 0 { 0x30 } else { 0x10 } | *cc);
        *cc = (*cc + 1) & 0x0f;
        if af_total > 0 {
            buf.put_u8((af_total - 1) as u8);
            if af_total >= 2 {
                let pcr = pcr.filter(|_| flags_wanted);
                let mut flags = 0u8;
                if flags_wanted && rai {
                    flags |= 0x40;
                }
                if pcr.is_some() {
                    flags |= 0x10;
                }
                buf.put_u8(flags);
                let mut used = 2;
                if let Some(base) = pcr {
                    buf.put_slice(&pcr_bytes(base));
                    used += 6;
                }
                buf.put_bytes(0xff, af_total - used);
            }
        }
        let (now, rest) = pes.split_at(take);
        buf.put_slice(now);
        pes = rest;
        first = false;
    }
}
