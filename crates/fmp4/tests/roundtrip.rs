//! Decode what we encode: mp4-atom reads the init segment and every fragment back.

mod common;

use bytes::Bytes;
use common::*;
use liverec_fmp4::{Fmp4Error, Fmp4Muxer};
use media::{AudioCodec, Codec, Millis, Packet, TrackConfig, VideoCodec};
use mp4_atom::{Any, Atom, Avcc, Codec as Mp4Codec, Decode, Ftyp, Mfra, Moof, Moov, TrunEntry};

const SYNC: u32 = 0x0200_0000;
const NON_SYNC: u32 = 0x0101_0000;

fn video(dts: i64, cts: i32, key: bool, len: usize) -> Packet {
    let data = Bytes::from(vec![(dts & 0xff) as u8; len]);
    Packet {
        codec: Codec::Video(VideoCodec::H264),
        dts: Millis::from_ms(dts),
        cts,
        key,
        flv: data.clone(),
        data,
    }
}

fn aac(dts: i64, len: usize) -> Packet {
    let data = Bytes::from(vec![0x21; len]);
    Packet {
        codec: Codec::Audio(AudioCodec::Aac),
        dts: Millis::from_ms(dts),
        cts: 0,
        key: true,
        flv: data.clone(),
        data,
    }
}

fn aac_config(asc: &'static [u8]) -> TrackConfig {
    TrackConfig {
        codec: Codec::Audio(AudioCodec::Aac),
        record: Bytes::from_static(asc),
        flv: Bytes::new(),
        dts: Millis::ZERO,
    }
}

fn fixture_video() -> TrackConfig {
    load("avc_only.flv").video.unwrap()
}

/// Top-level boxes of a file after the init segment.
fn boxes(file: &[u8]) -> Vec<Any> {
    let mut buf = file;
    let mut v = Vec::new();
    while !buf.is_empty() {
        v.push(Any::decode(&mut buf).unwrap());
    }
    v
}

fn moofs(file: &[u8]) -> Vec<Moof> {
    boxes(file)
        .into_iter()
        .filter_map(|b| match b {
            Any::Moof(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn entries(moof: &Moof, track: usize) -> Vec<TrunEntry> {
    moof.traf[track].trun[0].samples.iter().collect()
}

fn run(m: &mut Fmp4Muxer, packets: &[Packet]) -> (Vec<u8>, Vec<liverec_fmp4::Patch>) {
    let mut out = vec![m.init_segment()];
    for p in packets {
        m.push(p, &mut out).unwrap();
    }
    let patches = m.finish(&mut out);
    let mut file = concat(&out);
    apply(&mut file, &patches);
    (file, patches)
}

#[test]
fn init_segment_decodes_with_original_records() {
    let f = load("avc_aac_2s.flv");
    let (v, a) = (f.video.clone().unwrap(), f.audio.clone().unwrap());
    let mut m = Fmp4Muxer::new(Some(&v), Some(&a), Millis::from_ms(0)).unwrap();
    assert!(m.skipped().is_empty());
    let init = m.init_segment();
    let mut buf = init.as_ref();
    let ftyp = Ftyp::decode(&mut buf).unwrap();
    assert_eq!(ftyp.major_brand, b"iso6".into());
    let moov = Moov::decode(&mut buf).unwrap();
    assert!(buf.is_empty());
    assert_eq!(moov.mvhd.timescale, 1000);
    assert_eq!(moov.trak.len(), 2);

    let vt = &moov.trak[0];
    assert_eq!(vt.tkhd.track_id, 1);
    assert_eq!(
        (vt.tkhd.width.integer(), vt.tkhd.height.integer()),
        (640, 360)
    );
    assert_eq!(vt.mdia.mdhd.timescale, 90_000);
    assert_eq!(vt.mdia.hdlr.handler, b"vide".into());
    match &vt.mdia.minf.stbl.stsd.codecs[..] {
        [Mp4Codec::Avc1(avc1)] => {
            let mut rec = v.record.as_ref();
            assert_eq!(avc1.avcc, Avcc::decode_body(&mut rec).unwrap());
            assert_eq!((avc1.visual.width, avc1.visual.height), (640, 360));
        }
        other => panic!("video sample entry {other:?}"),
    }
    // The avcC box body is the encoder's record byte for byte.
    let at = init.windows(4).position(|w| w == b"avcC").unwrap();
    let size = u32::from_be_bytes(init[at - 4..at].try_into().unwrap()) as usize;
    assert_eq!(&init[at + 4..at - 4 + size], v.record.as_ref());

    let at_ = &moov.trak[1];
    assert_eq!(at_.tkhd.track_id, 2);
    assert_eq!(at_.mdia.mdhd.timescale, 48_000);
    assert_eq!(at_.mdia.hdlr.handler, b"soun".into());
    match &at_.mdia.minf.stbl.stsd.codecs[..] {
        [Mp4Codec::Mp4a(mp4a)] => {
            let dc = &mp4a.esds.es_desc.dec_config;
            assert_eq!(dc.object_type_indication, 0x40);
            assert_eq!(dc.dec_specific.as_ref().unwrap().raw, a.record.to_vec());
            assert_eq!(mp4a.audio.channel_count, 2);
        }
        other => panic!("audio sample entry {other:?}"),
    }

    let mvex = moov.mvex.unwrap();
    assert!(mvex.mehd.is_some());
    assert_eq!(
        mvex.trex.iter().map(|t| t.track_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(mvex
        .trex
        .iter()
        .all(|t| t.default_sample_description_index == 1));
}

#[test]
fn he_aac_asc_is_kept_not_regenerated() {
    // 5-byte ASC (explicit SBR signalling) that a 2-byte regenerated one would lose.
    let asc = &[0x11, 0x88, 0x56, 0xe5, 0x00];
    let mut m = Fmp4Muxer::new(None, Some(&aac_config(asc)), Millis::from_ms(0)).unwrap();
    let init = m.init_segment();
    let mut buf = init.as_ref();
    Ftyp::decode(&mut buf).unwrap();
    let moov = Moov::decode(&mut buf).unwrap();
    let Mp4Codec::Mp4a(mp4a) = &moov.trak[0].mdia.minf.stbl.stsd.codecs[0] else {
        panic!()
    };
    assert_eq!(
        mp4a.esds
            .es_desc
            .dec_config
            .dec_specific
            .as_ref()
            .unwrap()
            .raw,
        asc
    );
    assert!(init.windows(asc.len()).any(|w| w == asc));
}

#[test]
fn gop_fragments_with_bframes_and_negative_cts() {
    // 25 fps, GOP of 10, pattern I P B B P B B ... with signed offsets (an encoder that
    // shifts DTS to PTS of the I frame emits negative B-frame offsets).
    let cts = |i: usize| -> i32 {
        match i % 10 {
            0 => 0,
            i if i % 3 == 1 => 80,
            i if i % 3 == 2 => -40,
            _ => 0,
        }
    };
    let packets: Vec<Packet> = (0..30)
        .map(|i| video(i as i64 * 40, cts(i), i % 10 == 0, 100 + i))
        .collect();
    let mut m = Fmp4Muxer::new(Some(&fixture_video()), None, Millis::from_ms(0)).unwrap();
    let (file, patches) = run(&mut m, &packets);
    let init_len = m.init_segment().len();
    let frags = moofs(&file[init_len..]);
    assert_eq!(frags.len(), 3, "one fragment per GOP");
    for (n, moof) in frags.iter().enumerate() {
        assert_eq!(moof.mfhd.sequence_number, n as u32 + 1);
        let traf = &moof.traf[0];
        assert!(traf.tfhd.default_base_is_moof);
        assert_eq!(
            traf.tfdt.as_ref().unwrap().base_media_decode_time,
            n as u64 * 10 * 3600
        );
        let e = entries(moof, 0);
        assert_eq!(e.len(), 10);
        for (k, s) in e.iter().enumerate() {
            let i = n * 10 + k;
            assert_eq!(s.duration, Some(3600), "sample {i}");
            assert_eq!(s.size, Some(100 + i as u32));
            assert_eq!(s.flags, Some(if k == 0 { SYNC } else { NON_SYNC }));
            assert_eq!(s.cts, Some(i64::from(cts(i)) * 90));
        }
    }
    // mehd states the real duration: 30 frames × 40 ms (last one got the typical 40 ms).
    let mut buf = &file[..];
    Ftyp::decode(&mut buf).unwrap();
    let moov = Moov::decode(&mut buf).unwrap();
    assert_eq!(moov.mvex.unwrap().mehd.unwrap().fragment_duration, 1200);
    assert_eq!(patches.len(), 1);

    // mfra: one tfra entry per fragment, pointing at each moof; mfro closes the file.
    let Some(Any::Mfra(Mfra { tfra, mfro })) = boxes(&file[init_len..]).pop() else {
        panic!("no mfra at the end")
    };
    assert_eq!(mfro.parent_size as usize, {
        let mut v = Vec::new();
        mp4_atom::Encode::encode(
            &Mfra {
                tfra: tfra.clone(),
                mfro: mfro.clone(),
            },
            &mut v,
        )
        .unwrap();
        v.len()
    });
    assert_eq!(tfra.len(), 1);
    assert_eq!(tfra[0].entries.len(), 3);
    for (n, e) in tfra[0].entries.iter().enumerate() {
        let o = e.moof_offset as usize;
        assert_eq!(&file[o + 4..o + 8], b"moof");
        assert_eq!(e.time, n as u64 * 36_000);
    }
}

#[test]
fn aac_durations_are_exactly_1024_at_the_sample_rate() {
    // ms timestamps of 1024-sample frames at 44.1 kHz are rounded (23/23/24 ms ...).
    let packets: Vec<Packet> = (0..300)
        .map(|i| aac((i as f64 * 1024.0 * 1000.0 / 44100.0).round() as i64, 200))
        .collect();
    let mut m = Fmp4Muxer::new(None, Some(&aac_config(&[0x12, 0x10])), Millis::from_ms(0)).unwrap();
    let (file, _) = run(&mut m, &packets);
    let init_len = m.init_segment().len();
    let mut buf = &file[..];
    Ftyp::decode(&mut buf).unwrap();
    let moov = Moov::decode(&mut buf).unwrap();
    assert_eq!(moov.trak[0].mdia.mdhd.timescale, 44_100);
    let mut n = 0u64;
    for moof in moofs(&file[init_len..]) {
        let tfdt = moof.traf[0].tfdt.as_ref().unwrap().base_media_decode_time;
        assert_eq!(tfdt, n * 1024, "tfdt from sample counts");
        let e = entries(&moof, 0);
        // audio-only: cut every ~2 s
        assert!(e.len() as u64 * 1024 <= 2 * 44_100 + 1024);
        for s in &e {
            assert_eq!(s.duration, Some(1024));
            assert_eq!(s.flags, Some(SYNC));
            assert_eq!(s.cts, None);
        }
        n += e.len() as u64;
    }
    assert_eq!(n, 300);
}

#[test]
fn audio_gap_is_kept_not_squeezed() {
    // 10 frames, a 500 ms hole, 10 more: the hole stays (A/V sync, R-FM-5).
    let mut packets: Vec<Packet> = (0..10).map(|i| aac(i * 1024 / 48, 10)).collect();
    packets.extend((0..10).map(|i| aac(1000 + i * 1024 / 48, 10)));
    let mut m = Fmp4Muxer::new(None, Some(&aac_config(&[0x11, 0x90])), Millis::from_ms(0)).unwrap();
    let (file, _) = run(&mut m, &packets);
    let e = entries(&moofs(&file[m.init_segment().len()..])[0], 0);
    let durs: Vec<u32> = e.iter().map(|s| s.duration.unwrap()).collect();
    assert_eq!(durs[9], 48_000 - 9 * 1024);
    assert!(durs.iter().enumerate().all(|(i, &d)| i == 9 || d == 1024));
}

#[test]
fn dts_before_base_and_backwards_never_underflow() {
    let packets = vec![
        aac(990, 10), // 10 ms before the file base
        video(995, 10, true, 50),
        video(1040, 0, false, 50),
        video(1030, 0, false, 50), // backwards
        video(1030, 0, false, 50), // repeated
        video(1120, 0, false, 50),
        aac(1011, 10),
    ];
    let f = load("avc_aac_2s.flv");
    let mut m = Fmp4Muxer::new(f.video.as_ref(), f.audio.as_ref(), Millis::from_ms(1000)).unwrap();
    let (file, _) = run(&mut m, &packets);
    let frags = moofs(&file[m.init_segment().len()..]);
    let mut video_n = 0;
    for moof in &frags {
        for (t, traf) in moof.traf.iter().enumerate() {
            for s in entries(moof, t) {
                assert!(s.duration.unwrap() >= 1);
            }
            if traf.tfhd.track_id == 1 {
                video_n += traf.trun[0].samples.len();
            }
        }
    }
    assert_eq!(video_n, 5);
    let first_video = frags
        .iter()
        .flat_map(|m| &m.traf)
        .find(|t| t.tfhd.track_id == 1)
        .unwrap();
    assert_eq!(first_video.tfdt.as_ref().unwrap().base_media_decode_time, 0);
}

#[test]
fn payloads_are_the_packets_own_bytes() {
    let packets: Vec<Packet> = (0..12).map(|i| video(i * 40, 0, i % 10 == 0, 64)).collect();
    let mut m = Fmp4Muxer::new(Some(&fixture_video()), None, Millis::from_ms(0)).unwrap();
    let mut out = vec![m.init_segment()];
    for p in &packets {
        m.push(p, &mut out).unwrap();
    }
    m.finish(&mut out);
    for p in &packets {
        assert!(
            out.iter()
                .any(|b| b.as_ptr() == p.data.as_ptr() && b.len() == p.data.len()),
            "payload copied"
        );
    }
}

#[test]
fn foreign_packets_are_ignored_and_bad_configs_skipped() {
    let mut m = Fmp4Muxer::new(None, Some(&aac_config(&[0x11, 0x90])), Millis::from_ms(0)).unwrap();
    let mut out = Vec::new();
    m.push(&video(0, 0, true, 10), &mut out).unwrap();
    assert_eq!(m.ignored_packets(), 1);

    let bad = aac_config(&[0x11]);
    let m = Fmp4Muxer::new(Some(&fixture_video()), Some(&bad), Millis::from_ms(0)).unwrap();
    assert_eq!(m.skipped().len(), 1);
    assert!(matches!(
        Fmp4Muxer::new(None, Some(&bad), Millis::from_ms(0)),
        Err(Fmp4Error::NoTracks { .. })
    ));
    // An audio config offered as video is skipped, not misfiled.
    let swapped = aac_config(&[0x11, 0x90]);
    assert!(Fmp4Muxer::new(Some(&swapped), None, Millis::from_ms(0)).is_err());
}

#[test]
fn mp3_track_uses_frame_sample_counts() {
    let header = Bytes::from_static(&[0xFF, 0xFB, 0x90, 0x00]); // MPEG-1 L3 44.1k stereo
    let cfg = TrackConfig {
        codec: Codec::Audio(AudioCodec::Mp3),
        record: header.clone(),
        flv: Bytes::new(),
        dts: Millis::ZERO,
    };
    let packets: Vec<Packet> = (0..20)
        .map(|i| {
            let mut d = header.to_vec();
            d.resize(417, 0);
            let data = Bytes::from(d);
            Packet {
                codec: Codec::Audio(AudioCodec::Mp3),
                dts: Millis::from_ms((i as f64 * 1152.0 * 1000.0 / 44100.0).round() as i64),
                cts: 0,
                key: true,
                flv: data.clone(),
                data,
            }
        })
        .collect();
    let mut m = Fmp4Muxer::new(None, Some(&cfg), Millis::from_ms(0)).unwrap();
    let (file, _) = run(&mut m, &packets);
    let mut buf = &file[..];
    Ftyp::decode(&mut buf).unwrap();
    let moov = Moov::decode(&mut buf).unwrap();
    assert_eq!(moov.trak[0].mdia.mdhd.timescale, 44_100);
    let Mp4Codec::Mp4a(mp4a) = &moov.trak[0].mdia.minf.stbl.stsd.codecs[0] else {
        panic!()
    };
    assert_eq!(mp4a.esds.es_desc.dec_config.object_type_indication, 0x6B);
    let e = entries(&moofs(&file[m.init_segment().len()..])[0], 0);
    assert_eq!(e.len(), 20);
    assert!(e
        .iter()
        .all(|s| s.duration == Some(1152) && s.size == Some(417)));
}
