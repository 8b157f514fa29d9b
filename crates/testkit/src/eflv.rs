//! Enhanced RTMP FLV from an MP4 file, for the HEVC and AV1 fixtures: Debian's ffmpeg 5.1
//! cannot write HEVC or AV1 into FLV, so ffmpeg writes an MP4 and [`mp4_to_eflv`] turns it
//! into the tags an E-RTMP encoder (OBS ≥ 29, ffmpeg ≥ 6.1) would send.
//!
//! The MP4 is read with `mp4-atom` (moov/trak/stbl: stsd, stts, ctts, stss, stsz,
//! stco/co64, stsc, and each track's edit list), and the FLV is written with
//! `flv::FlvMuxer`, whose tag bodies are taken as given:
//!
//! - video (enhanced-rtmp v1): `0x80 | FrameType << 4 | PacketType`, then the FourCC
//!   (`hvc1` / `av01`). `SequenceStart` (0) carries the hvcC / av1C record,
//!   `CodedFrames` (1) the sample as stored in the MP4 (HEVC: preceded by an SI24
//!   composition time; AV1: no composition time), `CodedFramesX` (3) an HEVC sample whose
//!   composition time is 0, `SequenceEnd` (2) ends the stream;
//! - audio stays legacy AAC: `0xAF 00` + AudioSpecificConfig, `0xAF 01` + raw frame.
//!
//! Timing follows what ffprobe reports for the MP4: each track's presentation times
//! with its edit list applied (so ffmpeg's AAC priming frame sits at -21.3 ms and HEVC's
//! first DTS at minus the reorder delay), shifted as a whole by whole milliseconds (one
//! constant for all tracks) so that no DTS is negative, then rounded to milliseconds.
//! Tags are interleaved by exact DTS.
//!
//! Every tag written is parsed back with `flv::parse_video` / `flv::parse_audio`, and the
//! packet they yield must be the MP4 sample byte for byte: a converter bug fails here, not
//! in the daemon under test.

use bytes::Bytes;
use flv::{FlvMuxer, MetaInfo, Parsed};
use media::{AudioCodec, Codec, MediaEvent, Millis, TrackConfig, TrackKind, VideoCodec};
use mp4_atom::{Atom, Buf, Decode, DecodeAtom, Encode, Header, Moov, StszSamples, Trak};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EflvError {
    #[error("MP4: {0}")]
    Mp4(#[from] mp4_atom::Error),
    #[error("{0}")]
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, EflvError> {
    Err(EflvError::Invalid(msg.into()))
}

/// One sample of an MP4 track, times in the track's timescale on the presentation
/// timeline (edit list applied, so they can be negative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mp4Sample {
    pub dts: i64,
    pub pts: i64,
    pub key: bool,
    pub offset: u64,
    pub size: u32,
}

/// A video or audio track of an MP4 file.
#[derive(Debug, Clone)]
pub struct Mp4Track {
    pub codec: Codec,
    /// hvcC / av1C / AudioSpecificConfig bytes (without a box header).
    pub record: Vec<u8>,
    pub timescale: u32,
    pub width: u16,
    pub height: u16,
    pub samples: Vec<Mp4Sample>,
}

impl Mp4Track {
    pub fn kind(&self) -> TrackKind {
        self.codec.kind()
    }
}

/// The atom body of `atom` as `mp4-atom` encodes it, checked to occur byte for byte in
/// `file` (so the record handed on is the encoder's own, not a re-encoding).
fn record_bytes<A: Atom>(atom: &A, file: &[u8]) -> Result<Vec<u8>, EflvError> {
    let mut v = Vec::new();
    atom.encode(&mut v)?;
    let body = v.get(8..).unwrap_or_default().to_vec();
    let kind = A::KIND;
    if body.is_empty() || !file.windows(v.len()).any(|w| w == v.as_slice()) {
        return invalid(format!(
            "{kind} does not re-encode to the file's bytes; refusing to change the record"
        ));
    }
    Ok(body)
}

/// Reads the video and audio tracks (HEVC, AV1, AAC) of a progressive MP4 file.
pub fn read_mp4(file: &[u8]) -> Result<Vec<Mp4Track>, EflvError> {
    let mut buf = file;
    let mut moov = None;
    while buf.has_remaining() {
        let header = Header::decode(&mut buf)?;
        let size = header.size.unwrap_or(buf.remaining());
        if size > buf.remaining() {
            return invalid(format!("{} box runs past the end of the file", header.kind));
        }
        if header.kind == Moov::KIND {
            let mut body = &buf[..size];
            moov = Some(Moov::decode_atom(&header, &mut body)?);
        }
        buf.advance(size);
    }
    let Some(moov) = moov else {
        return invalid("no moov box (fragmented MP4 is not supported)");
    };
    let movie_timescale = u64::from(moov.mvhd.timescale.max(1));
    moov.trak
        .iter()
        .filter_map(|t| track(t, movie_timescale, file).transpose())
        .collect()
}

/// One track, or `None` for a track that is neither HEVC/AV1 video nor AAC audio.
fn track(trak: &Trak, movie_timescale: u64, file: &[u8]) -> Result<Option<Mp4Track>, EflvError> {
    use mp4_atom::Codec as C;
    let stbl = &trak.mdia.minf.stbl;
    let timescale = trak.mdia.mdhd.timescale;
    if timescale == 0 {
        return invalid("mdhd timescale 0");
    }
    let (codec, record, width, height) = match stbl.stsd.codecs.as_slice() {
        [C::Hvc1(h)] => (
            Codec::Video(VideoCodec::Hevc),
            record_bytes(&h.hvcc, file)?,
            h.visual.width,
            h.visual.height,
        ),
        [C::Hev1(h)] => (
            Codec::Video(VideoCodec::Hevc),
            record_bytes(&h.hvcc, file)?,
            h.visual.width,
            h.visual.height,
        ),
        [C::Av01(a)] => (
            Codec::Video(VideoCodec::Av1),
            record_bytes(&a.av1c, file)?,
            a.visual.width,
            a.visual.height,
        ),
        [C::Mp4a(a)] => {
            let Some(ds) = &a.esds.es_desc.dec_config.dec_specific else {
                return invalid("mp4a without a DecoderSpecificInfo");
            };
            let asc = ds.raw.clone();
            if asc.len() < 2 {
                return invalid("AudioSpecificConfig shorter than 2 bytes");
            }
            (Codec::Audio(AudioCodec::Aac), asc, 0, 0)
        }
        _ => return Ok(None),
    };

    // Sizes.
    let sizes: Vec<u32> = match &stbl.stsz.samples {
        StszSamples::Identical { count, size } => vec![*size; *count as usize],
        StszSamples::Different { sizes } => sizes.clone(),
    };
    let n = sizes.len();

    // Offsets: chunks from stco/co64, samples per chunk from stsc.
    let chunks: Vec<u64> = match (&stbl.stco, &stbl.co64) {
        (Some(s), _) => s.entries.iter().map(|&o| u64::from(o)).collect(),
        (None, Some(c)) => c.entries.clone(),
        (None, None) => return invalid("no stco or co64"),
    };
    let stsc = &stbl.stsc.entries;
    let mut offsets = Vec::with_capacity(n);
    for (ci, &chunk_offset) in chunks.iter().enumerate() {
        let chunk_no = ci as u32 + 1;
        let Some(entry) = stsc.iter().rev().find(|e| e.first_chunk <= chunk_no) else {
            return invalid(format!("stsc has no entry for chunk {chunk_no}"));
        };
        let mut at = chunk_offset;
        for _ in 0..entry.samples_per_chunk {
            let Some(&size) = sizes.get(offsets.len()) else {
                return invalid("stsc describes more samples than stsz");
            };
            offsets.push(at);
            at += u64::from(size);
        }
    }
    if offsets.len() != n {
        return invalid(format!(
            "stsc/stco describe {} samples, stsz {n}",
            offsets.len()
        ));
    }

    // Decode times from stts, composition offsets from ctts.
    let mut dts = Vec::with_capacity(n);
    let mut t: i64 = 0;
    for e in &stbl.stts.entries {
        for _ in 0..e.sample_count {
            dts.push(t);
            t += i64::from(e.sample_delta);
        }
    }
    let mut cts = Vec::with_capacity(n);
    match &stbl.ctts {
        Some(c) => {
            for e in &c.entries {
                cts.extend(std::iter::repeat_n(
                    e.sample_offset,
                    e.sample_count as usize,
                ));
            }
        }
        None => cts.resize(n, 0),
    }
    if dts.len() != n || cts.len() != n {
        return invalid(format!(
            "stts gives {} samples, ctts {}, stsz {n}",
            dts.len(),
            cts.len()
        ));
    }

    // Edit list: leading empty edits delay the track (movie timescale), the first real
    // edit's media_time is the media time shown at that point.
    let (mut delay, mut media_time) = (0i64, 0i64);
    if let Some(elst) = trak.edts.as_ref().and_then(|e| e.elst.as_ref()) {
        for e in &elst.entries {
            match e.media_time {
                None => {
                    let d = e.segment_duration as i128 * i128::from(timescale)
                        / i128::from(movie_timescale);
                    delay += d as i64;
                }
                Some(m) => {
                    media_time = m as i64;
                    break;
                }
            }
        }
    }
    let shift = delay - media_time;

    let sync: Option<std::collections::HashSet<u32>> = stbl
        .stss
        .as_ref()
        .map(|s| s.entries.iter().copied().collect());
    let samples = (0..n)
        .map(|i| Mp4Sample {
            dts: dts[i] + shift,
            pts: dts[i] + cts[i] + shift,
            key: sync.as_ref().is_none_or(|s| s.contains(&(i as u32 + 1))),
            offset: offsets[i],
            size: sizes[i],
        })
        .collect::<Vec<_>>();
    for s in &samples {
        let end = s.offset + u64::from(s.size);
        if end > file.len() as u64 {
            return invalid(format!("sample at {} + {} past the end", s.offset, s.size));
        }
    }
    Ok(Some(Mp4Track {
        codec,
        record,
        timescale,
        width,
        height,
        samples,
    }))
}

/// The bytes of one sample.
pub fn sample_data<'a>(file: &'a [u8], s: &Mp4Sample) -> &'a [u8] {
    let start = s.offset as usize;
    &file[start..start + s.size as usize]
}

/// Milliseconds of `ticks` in `timescale`, rounded to nearest (ties away from zero).
fn ms_round(ticks: i128, timescale: u32) -> i64 {
    let ts = i128::from(timescale);
    let num = ticks * 1000;
    let q = if num >= 0 {
        (2 * num + ts) / (2 * ts)
    } else {
        -((-2 * num + ts) / (2 * ts))
    };
    q as i64
}

fn fourcc(codec: VideoCodec) -> &'static [u8; 4] {
    match codec {
        VideoCodec::Hevc => b"hvc1",
        VideoCodec::Av1 => b"av01",
        VideoCodec::H264 => b"avc1",
    }
}

/// An E-RTMP video tag body.
fn video_body(codec: VideoCodec, frame_type: u8, packet_type: u8, rest: &[&[u8]]) -> Bytes {
    let mut v = vec![0x80 | (frame_type << 4) | packet_type];
    v.extend_from_slice(fourcc(codec));
    for r in rest {
        v.extend_from_slice(r);
    }
    Bytes::from(v)
}

/// One tag to write, with its exact time (seconds as a ratio) for ordering.
struct Out {
    /// DTS as (ticks, timescale), on the MP4's presentation timeline.
    exact: (i128, u32),
    kind: TrackKind,
    dts_ms: i64,
    body: Bytes,
    /// The sample bytes the body must yield when parsed back (None for non-frames).
    expect: Option<(Vec<u8>, i64)>,
}

/// Converts an MP4 (HEVC or AV1 video, optional AAC audio) into an Enhanced RTMP FLV file.
pub fn mp4_to_eflv(file: &[u8]) -> Result<Vec<u8>, EflvError> {
    let tracks = read_mp4(file)?;
    let video = tracks.iter().find(|t| t.kind() == TrackKind::Video);
    let audio = tracks.iter().find(|t| t.kind() == TrackKind::Audio);
    if video.is_none() && audio.is_none() {
        return invalid("no HEVC, AV1 or AAC track");
    }
    // One shift (in ms, whole) for every track so that the smallest DTS becomes >= 0.
    let min_ms = tracks
        .iter()
        .filter_map(|t| {
            t.samples.first().map(|s| {
                let ts = i128::from(t.timescale);
                // floor(dts * 1000 / ts)
                (i128::from(s.dts) * 1000).div_euclid(ts) as i64
            })
        })
        .min()
        .unwrap_or(0);
    let shift_ms = (-min_ms).max(0);

    let mut out: Vec<Out> = Vec::new();
    let mut configs: Vec<(TrackKind, Bytes)> = Vec::new();
    if let Some(v) = video {
        let Codec::Video(vc) = v.codec else {
            unreachable!()
        };
        configs.push((TrackKind::Video, video_body(vc, 1, 0, &[&v.record])));
        for s in &v.samples {
            let dts_ms = ms_round(s.dts.into(), v.timescale) + shift_ms;
            let pts_ms = ms_round(s.pts.into(), v.timescale) + shift_ms;
            let cts = pts_ms - dts_ms;
            let data = sample_data(file, s);
            let frame_type = if s.key { 1 } else { 2 };
            let body = match vc {
                VideoCodec::Av1 => {
                    if cts != 0 {
                        return invalid(format!(
                            "AV1 sample at {dts_ms} ms has composition offset {cts} ms; E-RTMP AV1 has none"
                        ));
                    }
                    video_body(vc, frame_type, 1, &[data])
                }
                _ if cts == 0 => video_body(vc, frame_type, 3, &[data]),
                _ => {
                    let c = i32::try_from(cts)
                        .ok()
                        .filter(|c| (-(1 << 23)..(1 << 23)).contains(c))
                        .ok_or_else(|| EflvError::Invalid(format!("cts {cts} ms")))?;
                    video_body(vc, frame_type, 1, &[&c.to_be_bytes()[1..], data])
                }
            };
            out.push(Out {
                exact: (s.dts.into(), v.timescale),
                kind: TrackKind::Video,
                dts_ms,
                body,
                expect: Some((data.to_vec(), cts)),
            });
        }
    }
    if let Some(a) = audio {
        let mut h = vec![0xaf, 0x00];
        h.extend_from_slice(&a.record);
        configs.push((TrackKind::Audio, Bytes::from(h)));
        for s in &a.samples {
            let data = sample_data(file, s);
            let mut b = vec![0xaf, 0x01];
            b.extend_from_slice(data);
            out.push(Out {
                exact: (s.dts.into(), a.timescale),
                kind: TrackKind::Audio,
                dts_ms: ms_round(s.dts.into(), a.timescale) + shift_ms,
                body: Bytes::from(b),
                expect: Some((data.to_vec(), 0)),
            });
        }
    }
    // Interleave by exact DTS; video first on ties (stable sort keeps track order).
    out.sort_by(|x, y| {
        let lhs = x.exact.0 * i128::from(y.exact.1);
        let rhs = y.exact.0 * i128::from(x.exact.1);
        lhs.cmp(&rhs)
    });
    if let Some(v) = video {
        let Codec::Video(vc) = v.codec else {
            unreachable!()
        };
        let last = out
            .iter()
            .filter(|o| o.kind == TrackKind::Video)
            .map(|o| o.dts_ms)
            .max()
            .unwrap_or(0);
        // Appended after the sort: the last video tag.
        out.push(Out {
            exact: (0, 1),
            kind: TrackKind::Video,
            dts_ms: last,
            body: video_body(vc, 1, 2, &[]),
            expect: None,
        });
    }

    // Metadata from the parsed sequence headers (which also checks them).
    let mut parsed_configs: Vec<TrackConfig> = Vec::new();
    for (kind, body) in &configs {
        let parsed = match kind {
            TrackKind::Video => flv::parse_video(body.clone(), Millis::ZERO),
            TrackKind::Audio => flv::parse_audio(body.clone(), Millis::ZERO),
        };
        match parsed {
            Ok(Parsed::Event(MediaEvent::Config(c))) => parsed_configs.push(c),
            other => return invalid(format!("{kind:?} sequence header parses as {other:?}")),
        }
    }
    let vcfg = parsed_configs.iter().find(|c| c.kind() == TrackKind::Video);
    let acfg = parsed_configs.iter().find(|c| c.kind() == TrackKind::Audio);
    let mut info = MetaInfo::from_configs(vcfg, acfg);
    if let Some(v) = video {
        info.width = Some(f64::from(v.width));
        info.height = Some(f64::from(v.height));
        if let [a, b, ..] = v.samples.as_slice() {
            let d = b.dts - a.dts;
            if d > 0 {
                info.framerate = Some(f64::from(v.timescale) / d as f64);
            }
        }
    }
    info.encoder = Some("liverec-testkit mp4-to-eflv".into());

    let mut mux = FlvMuxer::new(info, Millis::ZERO);
    let mut bufs = vec![mux.header()];
    for (kind, body) in &configs {
        mux.try_write_tag(*kind, Millis::ZERO, body, &mut bufs)
            .map_err(|e| EflvError::Invalid(e.to_string()))?;
    }
    for o in &out {
        // Parse back: the frame must come out as the MP4 sample with its offset.
        let parsed = match o.kind {
            TrackKind::Video => flv::parse_video(o.body.clone(), Millis::from_ms(o.dts_ms)),
            TrackKind::Audio => flv::parse_audio(o.body.clone(), Millis::from_ms(o.dts_ms)),
        };
        match (&o.expect, parsed) {
            (Some((data, cts)), Ok(Parsed::Event(MediaEvent::Packet(p)))) => {
                if p.data.as_ref() != data.as_slice() || i64::from(p.cts) != *cts {
                    return invalid(format!(
                        "{:?} tag at {} ms does not parse back to its sample",
                        o.kind, o.dts_ms
                    ));
                }
            }
            (None, Ok(Parsed::Skip(flv::SkipReason::EndOfSequence))) => {}
            (_, other) => {
                return invalid(format!(
                    "{:?} tag at {} ms parses as {other:?}",
                    o.kind, o.dts_ms
                ))
            }
        }
        mux.try_write_tag(o.kind, Millis::from_ms(o.dts_ms), &o.body, &mut bufs)
            .map_err(|e| EflvError::Invalid(e.to_string()))?;
    }
    // Duration: the video's (else audio's) last presentation end.
    let duration = tracks
        .iter()
        .find(|t| t.kind() == TrackKind::Video)
        .or(audio)
        .map(|t| {
            let first = t.samples.iter().map(|s| s.pts).min().unwrap_or(0);
            let end = t.samples.iter().map(|s| s.pts).max().unwrap_or(0)
                + t.samples
                    .windows(2)
                    .map(|w| w[1].dts - w[0].dts)
                    .next_back()
                    .unwrap_or(0);
            (end - first) as f64 / f64::from(t.timescale)
        })
        .unwrap_or(0.0);
    let mut flv: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    for p in mux.finalize(duration) {
        p.apply(&mut flv)
            .map_err(|e| EflvError::Invalid(e.to_string()))?;
    }
    Ok(flv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_millisecond() {
        assert_eq!(ms_round(512, 12800), 40);
        assert_eq!(ms_round(1024, 48000), 21);
        assert_eq!(ms_round(3 * 1024, 48000), 64);
        assert_eq!(ms_round(-1024, 48000), -21);
        assert_eq!(ms_round(24, 48000), 1); // 0.5 ms rounds away from zero
    }

    #[test]
    fn video_bodies_have_the_ex_header() {
        let b = video_body(VideoCodec::Hevc, 1, 1, &[&[0, 0, 40], b"x"]);
        assert_eq!(&b[..], b"\x91hvc1\x00\x00\x28x");
        let b = video_body(VideoCodec::Av1, 2, 1, &[b"o"]);
        assert_eq!(&b[..], b"\xa1av01o");
    }
}
