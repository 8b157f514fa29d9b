//! Crash repair of fMP4 files made by our own muxer, checked with mp4-atom (an
//! independent parser) rather than with the scanner's own walk.

mod common;

use bytes::Bytes;
use common::*;
use liverec_fmp4::repair::repair;
use liverec_fmp4::{Fmp4Muxer, MOVIE_TIMESCALE};
use media::{AudioCodec, Codec, Packet, TrackConfig, VideoCodec};
use mp4_atom::{Any, Decode, DecodeMaybe, Ftyp, Moov};

fn packets(secs: i64) -> Vec<Packet> {
    let mut v = Vec::new();
    for i in 0..secs * 25 {
        let data = Bytes::from(vec![i as u8; 300 + (i as usize * 7) % 900]);
        v.push(Packet {
            codec: Codec::Video(VideoCodec::H264),
            dts: media::Millis::from_ms(5000 + i * 40),
            cts: 40,
            key: i % 25 == 0,
            flv: data.clone(),
            data,
        });
    }
    for i in 0..secs * 47 {
        let data = Bytes::from(vec![0x21; 200]);
        v.push(Packet {
            codec: Codec::Audio(AudioCodec::Aac),
            dts: media::Millis::from_ms(5000 + i * 1024 * 1000 / 48000),
            cts: 0,
            key: true,
            flv: data.clone(),
            data,
        });
    }
    v.sort_by_key(|p| p.dts);
    v
}

fn muxer() -> Fmp4Muxer {
    let video = load("avc_only.flv").video.unwrap();
    let audio = TrackConfig {
        codec: Codec::Audio(AudioCodec::Aac),
        record: Bytes::from_static(&[0x11, 0x90]),
        flv: Bytes::new(),
        dts: media::Millis::ZERO,
    };
    Fmp4Muxer::new(Some(&video), Some(&audio), media::Millis::from_ms(5000)).unwrap()
}

/// A file as the recorder leaves it open: init segment and fragments, never finished.
fn open_recording(secs: i64) -> Vec<u8> {
    let mut m = muxer();
    let mut out = vec![m.init_segment()];
    for p in packets(secs) {
        m.push(&p, &mut out).unwrap();
    }
    concat(&out)
}

/// Top-level boxes as (offset, size, kind) by mp4-atom.
fn top_level(file: &[u8]) -> Vec<(usize, usize, String)> {
    let mut buf = file;
    let mut v = Vec::new();
    while let Some(a) = Any::decode_maybe(&mut buf).unwrap() {
        let end = file.len() - buf.len();
        let start = v
            .last()
            .map_or(0, |(s, n, _): &(usize, usize, String)| s + n);
        v.push((start, end - start, a.kind().to_string()));
    }
    v
}

/// mehd's duration by mp4-atom.
fn mehd(file: &[u8]) -> u64 {
    let mut buf = file;
    Ftyp::decode(&mut buf).unwrap();
    let moov = Moov::decode(&mut buf).unwrap();
    moov.mvex.unwrap().mehd.unwrap().fragment_duration
}

/// What the kept fragments span, by mp4-atom: each track's last tfdt plus its sample
/// durations, in ms (video 90 kHz, audio 48 kHz), the longest track.
fn fragments_span_ms(file: &[u8]) -> u64 {
    let mut buf = file;
    Ftyp::decode(&mut buf).unwrap();
    let moov = Moov::decode(&mut buf).unwrap();
    let mut end_ms = 0;
    while let Some(a) = Any::decode_maybe(&mut buf).unwrap() {
        let Any::Moof(m) = a else { continue };
        for traf in &m.traf {
            let trak = moov
                .trak
                .iter()
                .find(|t| t.tkhd.track_id == traf.tfhd.track_id)
                .unwrap();
            let ts = u64::from(trak.mdia.mdhd.timescale);
            let d = traf.tfhd.default_sample_duration.unwrap_or(0);
            let end = traf.tfdt.as_ref().unwrap().base_media_decode_time
                + traf.trun[0]
                    .samples
                    .iter()
                    .map(|s| u64::from(s.duration.unwrap_or(d)))
                    .sum::<u64>();
            end_ms = end_ms.max((end * 1000).div_ceil(ts));
        }
    }
    end_ms
}

#[test]
fn a_finished_file_is_untouched() {
    let mut m = muxer();
    let mut out = vec![m.init_segment()];
    for p in packets(10) {
        m.push(&p, &mut out).unwrap();
    }
    let finish = m.finish(&mut out);
    let mut file = concat(&out);
    apply(&mut file, &finish);
    assert_eq!(top_level(&file).last().unwrap().2, "mfra");

    let r = repair(&file).unwrap();
    assert_eq!(r.keep_len, file.len() as u64);
    // The same duration finish() stated (movie timescale = ms), at the same place.
    assert_eq!(MOVIE_TIMESCALE, 1000);
    assert_eq!(r.duration_ms, mehd(&file));
    assert_eq!(r.patches.len(), 1);
    assert_eq!(r.patches[0].offset, finish[0].offset);
    let mut again = file.clone();
    r.apply(&mut again);
    assert_eq!(again, file);
}

#[test]
fn a_file_cut_mid_fragment_goes_back_to_the_last_whole_fragment() {
    let file = open_recording(10);
    let boxes = top_level(&file);
    let kinds: Vec<&str> = boxes.iter().map(|b| b.2.as_str()).collect();
    assert_eq!(&kinds[..2], ["ftyp", "moov"]);
    assert!(kinds.len() >= 2 + 2 * 8, "{kinds:?}");
    assert_eq!(mehd(&file), 0, "an open file states no duration");
    let last_moof = boxes[boxes.len() - 2].0;
    assert_eq!(boxes[boxes.len() - 2].2, "moof");
    let mdat = boxes.last().unwrap();
    // Cuts in the moof, in the mdat header and in its samples.
    for cut in [
        last_moof + 1,
        last_moof + 20,
        mdat.0 + 4,
        mdat.0 + 100,
        file.len() - 1,
    ] {
        let r = repair(&file[..cut]).unwrap();
        assert_eq!(r.keep_len, last_moof as u64, "cut at {cut}");
        let mut fixed = file[..cut].to_vec();
        r.apply(&mut fixed);
        assert_eq!(top_level(&fixed).len(), boxes.len() - 2);
        let span = fragments_span_ms(&fixed);
        assert!(span >= 7000, "{span} ms");
        assert_eq!(mehd(&fixed), span);
        assert_eq!(r.duration_ms, span);
    }
    // Cut at a fragment boundary: all of it stays; the whole open file too.
    for cut in [last_moof, file.len()] {
        let r = repair(&file[..cut]).unwrap();
        assert_eq!(r.keep_len, cut as u64);
        let mut fixed = file[..cut].to_vec();
        r.apply(&mut fixed);
        assert_eq!(mehd(&fixed), fragments_span_ms(&fixed));
    }
}

#[test]
fn init_segment_only_and_partial_init() {
    let file = open_recording(1);
    let boxes = top_level(&file);
    let init_len = boxes[1].0 + boxes[1].1;
    let r = repair(&file[..init_len]).unwrap();
    assert_eq!((r.keep_len, r.duration_ms), (init_len as u64, 0));
    // mehd is patched to 0 (what it already says).
    assert_eq!(r.patches.len(), 1);
    // A moov cut short: only ftyp stays, with nothing to patch.
    let r = repair(&file[..init_len - 10]).unwrap();
    assert_eq!(r.keep_len, boxes[0].1 as u64);
    assert!(r.patches.is_empty());
}

/// Issue 11: with fragments capped at 1 s (the daemon's flush interval) and a fragment
/// cut on demand mid-GOP (a stalled publisher), every fragment is ≤ ~1 s, some start on
/// a non-sync video sample, and the crash scanner keeps all of them.
#[test]
fn short_and_on_demand_fragments_are_kept_by_repair() {
    let mut m = muxer().with_max_fragment(media::Millis::from_ms(1000));
    let mut out = vec![m.init_segment()];
    for (i, p) in packets(6).iter().enumerate() {
        m.push(p, &mut out).unwrap();
        // A stall 300 packets in: what is pending goes out now.
        if i == 300 {
            let fragments_before = out.len();
            assert!(m.has_pending_fragment());
            m.cut_fragment(&mut out).unwrap();
            assert!(
                out.len() > fragments_before,
                "the pending fragment came out"
            );
            assert!(!m.has_pending_fragment());
        }
    }
    let file = concat(&out);
    let mut buf = &file[..];
    Ftyp::decode(&mut buf).unwrap();
    let moov = Moov::decode(&mut buf).unwrap();
    let mut fragments = 0;
    let mut non_sync_starts = 0;
    while let Some(a) = Any::decode_maybe(&mut buf).unwrap() {
        let Any::Moof(moof) = a else { continue };
        fragments += 1;
        for traf in &moof.traf {
            let trak = moov
                .trak
                .iter()
                .find(|t| t.tkhd.track_id == traf.tfhd.track_id)
                .unwrap();
            let ts = u64::from(trak.mdia.mdhd.timescale);
            let samples = &traf.trun[0].samples;
            let ticks: u64 = samples.iter().map(|s| u64::from(s.duration.unwrap())).sum();
            assert!(
                ticks * 1000 / ts <= 1050,
                "fragment of {} ms",
                ticks * 1000 / ts
            );
            // Track 1 is the video (the muxer adds video first); 0x0200_0000 = sync.
            let first = samples.iter().next().and_then(|s| s.flags);
            if traf.tfhd.track_id == 1 && first != Some(0x0200_0000) {
                non_sync_starts += 1;
            }
        }
    }
    assert!(fragments >= 6, "{fragments} fragments for 6 s");
    assert!(
        non_sync_starts >= 1,
        "1 s fragments of 1 s GOPs cut on demand"
    );
    let r = repair(&file).unwrap();
    assert_eq!(
        r.keep_len,
        file.len() as u64,
        "every whole fragment is kept"
    );
    let mut fixed = file.clone();
    r.apply(&mut fixed);
    assert_eq!(mehd(&fixed), fragments_span_ms(&fixed));
    assert!(mehd(&fixed) >= 5000, "{} ms", mehd(&fixed));
}
