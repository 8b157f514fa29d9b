//! Crash repair of TS segments made by our own muxer, checked with mpeg2ts's reader (an
//! independent parser) rather than with the scanner's own walk.

mod common;

use bytes::Bytes;
use common::{concat, demux, fixture_events};
use liverec_mpegts::repair::{repair, RepairError};
use liverec_mpegts::{TsMuxer, TS_PACKET_SIZE};
use media::{Codec, Packet, VideoCodec};

/// A segment as the recorder leaves it open: PAT/PMT, then the fixture's frames with
/// `shift` ms added to every timestamp. Returns the bytes and where each frame's
/// output ends.
fn segment(shift: i64, extra: Option<Packet>) -> (Vec<u8>, Vec<usize>) {
    let (video, audio, packets) = fixture_events("avc_aac_2s.flv");
    let mut m = TsMuxer::new(video.as_ref(), audio.as_ref()).unwrap();
    let mut out = Vec::new();
    m.segment_header(&mut out);
    let mut ends = Vec::new();
    for mut p in packets.into_iter().chain(extra) {
        p.dts += media::Millis::from_ms(shift);
        m.push(&p, &mut out).unwrap();
        ends.push(out.iter().map(Bytes::len).sum());
    }
    (concat(&out), ends)
}

/// Span of the video PTS plus one average frame, in ms, by mpeg2ts (unwrapped by hand
/// from the sorted PTS when they straddle the 33-bit wrap).
fn video_duration_ms(ts: &[u8]) -> u64 {
    let mut pts: Vec<u64> = demux(ts).video.iter().filter_map(|p| p.pts).collect();
    let wrap = 1u64 << 33;
    if pts.iter().any(|&p| p < wrap / 4) && pts.iter().any(|&p| p > wrap / 4 * 3) {
        for p in &mut pts {
            if *p < wrap / 2 {
                *p += wrap;
            }
        }
    }
    pts.sort_unstable();
    let span = pts.last().unwrap() - pts[0];
    (span + span / (pts.len() as u64 - 1)) / 90
}

#[test]
fn a_complete_segment_is_kept_whole() {
    let (file, _) = segment(0, None);
    let r = repair(&file).unwrap();
    assert_eq!(r.keep_len, file.len() as u64);
    assert!(r.patches.is_empty());
    let d = video_duration_ms(&file);
    assert!(d > 1900, "{d} ms");
    assert_eq!(r.duration_ms, d);
}

#[test]
fn a_segment_cut_mid_frame_goes_back_to_the_last_whole_frame() {
    let (file, ends) = segment(0, None);
    let frames = ends.len();
    let before_last = ends[frames - 2];
    // A cut anywhere in the last frame, on a packet boundary or not.
    for cut in [
        before_last + 1,
        before_last + TS_PACKET_SIZE,
        before_last + 2 * TS_PACKET_SIZE + 17,
        file.len() - 1,
    ] {
        if cut >= file.len() {
            continue;
        }
        let r = repair(&file[..cut]).unwrap();
        // Back to the end of the frame before (a PCR-only packet may follow it).
        assert!(
            r.keep_len >= before_last as u64 && r.keep_len < cut as u64,
            "cut at {cut}: kept {} (last frame at {before_last})",
            r.keep_len
        );
        let kept = &file[..r.keep_len as usize];
        let d = demux(kept);
        assert_eq!(d.video.len() + d.audio.len(), frames - 1, "cut at {cut}");
        assert_eq!(kept, &file[..r.keep_len as usize]);
    }
    // Truncated within the first packets: PAT and PMT stay.
    assert_eq!(
        repair(&file[..2 * TS_PACKET_SIZE + 5]).unwrap().keep_len,
        2 * TS_PACKET_SIZE as u64
    );
    assert_eq!(repair(&file[..100]).unwrap().keep_len, 0);
}

#[test]
fn duration_across_the_pts_wrap() {
    // (ms + 1400) * 90 reaches 2^33 at ms = 95_442_317.9: start a second before.
    let shift = (1i64 << 33) / 90 - 1400 - 1000;
    let (file, _) = segment(shift, None);
    let pts: Vec<u64> = demux(&file).video.iter().filter_map(|p| p.pts).collect();
    assert!(pts.iter().any(|&p| p < 1 << 30) && pts.iter().any(|&p| p > 1 << 32));
    let r = repair(&file).unwrap();
    let (plain, _) = segment(0, None);
    assert_eq!(r.duration_ms, repair(&plain).unwrap().duration_ms);
    assert_eq!(r.duration_ms, video_duration_ms(&file));
    // Not 26.5 hours.
    assert!(r.duration_ms < 60_000, "{} ms", r.duration_ms);
}

#[test]
fn an_unbounded_last_frame_is_kept() {
    // Frames over 64 KiB are written with PES_packet_length 0 (13818-1 allows it for
    // video): nothing says such a frame is short, so it stays.
    let data = Bytes::from([&[0u8, 0, 0xff, 0xf0, 0x65][..], &[0x88; 0xffef]].concat());
    let big = Packet {
        codec: Codec::Video(VideoCodec::H264),
        dts: media::Millis::from_ms(2100),
        cts: 0,
        key: true,
        flv: data.clone(),
        data,
    };
    let (file, ends) = segment(0, Some(big));
    let before = ends[ends.len() - 2];
    assert!(file.len() - before > 0x10000);
    assert_eq!(repair(&file).unwrap().keep_len, file.len() as u64);
    let cut = before + 100 * TS_PACKET_SIZE;
    assert_eq!(repair(&file[..cut]).unwrap().keep_len, cut as u64);
}

#[test]
fn garbage_and_foreign_files() {
    let (mut file, _) = segment(0, None);
    let whole = file.len() as u64;
    // Zeroes after the last packet (a power loss) have no sync byte.
    file.extend_from_slice(&[0; 4 * TS_PACKET_SIZE]);
    assert_eq!(repair(&file).unwrap().keep_len, whole);
    assert!(matches!(
        repair(&[0u8; 2 * TS_PACKET_SIZE][..]),
        Err(RepairError::NotTs(0))
    ));
    assert_eq!(repair(&[][..]).unwrap(), Default::default());
}
