//! Chunk stream decoding (RTMP 1.0 §5.3) and the chunk-level rows of reliability.md §0.2.

mod common;

use bytes::{BufMut, BytesMut};
use common::{decode_all, decode_bytewise, set_chunk_size, Raw};
use liverec_rtmp::chunk::{msg_type, ChunkDecoder, ChunkEncoder, Message};
use liverec_rtmp::SessionError;

fn dec() -> ChunkDecoder {
    ChunkDecoder::new(8 << 20, 64)
}

/// Decodes `raw` both in one go and byte by byte; both must agree.
fn both(raw: &Raw) -> Vec<Message> {
    let a = decode_all(&mut dec(), &mut raw.bytes()).unwrap();
    let b = decode_bytewise(&mut dec(), &raw.0).unwrap();
    assert_eq!(a, b);
    a
}

fn summary(m: &[Message]) -> Vec<(u32, u32, u8, u32, Vec<u8>)> {
    m.iter()
        .map(|m| {
            (
                m.csid,
                m.timestamp,
                m.type_id,
                m.stream_id,
                m.payload.to_vec(),
            )
        })
        .collect()
}

#[test]
fn fmt0_single_chunk_is_its_own_buffer() {
    let mut r = Raw::new();
    r.fmt0(6, 1000, 5, 9, 1, b"\x17\x00abc");
    let mut buf = r.bytes();
    let (start, end) = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
    let m = dec().decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        (m.csid, m.timestamp, m.type_id, m.stream_id),
        (6, 1000, 9, 1)
    );
    assert_eq!(&m.payload[..], b"\x17\x00abc");
    // The payload does not point into the read buffer, so a frame held in the ring
    // never keeps a whole read block alive.
    let p = m.payload.as_ptr() as usize;
    assert!(p < start || p >= end);
    assert!(buf.is_empty());
}

#[test]
fn fmt1_fmt2_fmt3_inherit_and_accumulate() {
    let mut r = Raw::new();
    r.fmt0(4, 100, 3, 8, 1, b"aaa")
        .fmt1(4, 20, 2, 9, b"bb") // new length and type, ts 120
        .fmt2(4, 33, b"cc") // same length/type, ts 153
        .fmt3(4, None, b"dd"); // new message, previous delta: ts 186
    let m = both(&r);
    assert_eq!(
        summary(&m),
        vec![
            (4, 100, 8, 1, b"aaa".to_vec()),
            (4, 120, 9, 1, b"bb".to_vec()),
            (4, 153, 9, 1, b"cc".to_vec()),
            (4, 186, 9, 1, b"dd".to_vec()),
        ]
    );
}

#[test]
fn fmt3_after_fmt0_adds_the_fmt0_timestamp_as_delta() {
    // ffmpeg's reading of the spec (rtmppkt.c ts_field): after fmt 0 the "delta" is the
    // timestamp field itself.
    let mut r = Raw::new();
    r.fmt0(4, 40, 1, 8, 1, b"a").fmt3(4, None, b"b");
    let m = both(&r);
    assert_eq!(m[1].timestamp, 80);
}

#[test]
fn multi_chunk_message() {
    let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let mut r = Raw::new();
    r.fmt0(5, 7, 300, 9, 1, &payload[..128])
        .fmt3(5, None, &payload[128..256])
        .fmt3(5, None, &payload[256..]);
    let m = both(&r);
    assert_eq!(m.len(), 1);
    assert_eq!(&m[0].payload[..], &payload[..]);
    assert_eq!(m[0].timestamp, 7);
}

#[test]
fn extended_timestamp_fmt0_with_repeating_encoder() {
    let ts = 0x0100_0000;
    let payload = [0xAB; 200];
    let mut r = Raw::new();
    r.fmt0(4, ts, 200, 9, 1, &payload[..128])
        .fmt3(4, Some(ts), &payload[128..]);
    let m = both(&r);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].timestamp, ts);
    assert_eq!(&m[0].payload[..], &payload[..]);
}

#[test]
fn extended_timestamp_fmt0_with_omitting_encoder() {
    let ts = 0x0100_0000;
    let payload = [0xAB; 200];
    let mut r = Raw::new();
    r.fmt0(4, ts, 200, 9, 1, &payload[..128])
        .fmt3(4, None, &payload[128..]);
    let m = both(&r);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].timestamp, ts);
    assert_eq!(&m[0].payload[..], &payload[..]);
}

#[test]
fn extended_timestamp_exactly_0xffffff() {
    let mut r = Raw::new();
    r.fmt0(4, 0xFF_FFFF, 1, 8, 1, b"x");
    assert_eq!(both(&r)[0].timestamp, 0xFF_FFFF);
}

#[test]
fn fmt1_and_fmt2_extended_value_is_a_delta() {
    let mut r = Raw::new();
    r.fmt0(4, 1000, 1, 9, 1, b"a")
        .fmt1(4, 0x0200_0000, 1, 9, b"b")
        .fmt2(4, 0x0100_0000, b"c")
        // fmt 3 new message after an extended fmt 2: same delta again, ext repeated.
        .fmt3(4, Some(0x0100_0000), b"d");
    let m = both(&r);
    let ts: Vec<u32> = m.iter().map(|m| m.timestamp).collect();
    assert_eq!(
        ts,
        vec![
            1000,
            1000 + 0x0200_0000,
            1000 + 0x0300_0000,
            1000 + 0x0400_0000
        ]
    );
    assert_eq!(&m[3].payload[..], b"d");
}

#[test]
fn interleaved_chunk_streams_are_not_mixed() {
    // rml_rtmp shared one payload buffer across chunk streams (crates.md §1a item 4).
    let audio = vec![0xAA; 300];
    let video = vec![0x55; 200];
    let mut r = Raw::new();
    r.fmt0(4, 10, 300, 8, 1, &audio[..128])
        .fmt0(6, 11, 200, 9, 1, &video[..128])
        .fmt3(4, None, &audio[128..256])
        .fmt3(6, None, &video[128..])
        .fmt3(4, None, &audio[256..]);
    let m = both(&r);
    assert_eq!(
        summary(&m),
        vec![(6, 11, 9, 1, video.clone()), (4, 10, 8, 1, audio.clone())]
    );
}

#[test]
fn set_chunk_size_between_messages() {
    let payload = vec![1u8; 1000];
    let mut r = Raw::new();
    r.fmt0(4, 0, 200, 9, 1, &payload[..128])
        .fmt3(4, None, &payload[128..200]);
    r.0.extend(set_chunk_size(4096));
    r.fmt0(4, 0, 1000, 9, 1, &payload);
    let mut d = dec();
    let m = decode_all(&mut d, &mut r.bytes()).unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m[1].type_id, msg_type::SET_CHUNK_SIZE);
    assert_eq!(m[2].payload.len(), 1000);
    assert_eq!(d.chunk_size(), 4096);
    assert_eq!(decode_bytewise(&mut dec(), &r.0).unwrap(), m);
}

#[test]
fn set_chunk_size_mid_message_applies_to_the_rest_of_it() {
    // A 300-byte video message on csid 6: its first 128-byte chunk, then (on csid 2) a
    // Set Chunk Size of 4096, then the remaining 172 bytes as ONE continuation chunk,
    // which is only a valid chunk under the new size.
    let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let mut r = Raw::new();
    r.fmt0(6, 40, 300, 9, 1, &payload[..128]);
    r.0.extend(set_chunk_size(4096));
    r.fmt3(6, None, &payload[128..]);
    let m = both(&r);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].type_id, msg_type::SET_CHUNK_SIZE);
    assert_eq!((m[1].csid, m[1].timestamp, m[1].type_id), (6, 40, 9));
    assert_eq!(&m[1].payload[..], &payload[..]);
}

#[test]
fn chunk_size_one() {
    let mut r = Raw(set_chunk_size(1));
    r.fmt0(4, 5, 3, 8, 1, b"a")
        .fmt3(4, None, b"b")
        .fmt3(4, None, b"c");
    let m = both(&r);
    assert_eq!(&m[1].payload[..], b"abc");
}

#[test]
fn two_and_three_byte_basic_headers() {
    let mut r = Raw::new();
    r.fmt0(100, 1, 1, 8, 1, b"a")
        .fmt0(400, 2, 1, 9, 1, b"b")
        .fmt0(65599, 3, 1, 9, 1, b"c");
    assert_eq!(r.0[..3], [0x00, 36, 0]); // 2-byte form: csid 100 = 64 + 36
    let m = both(&r);
    assert_eq!(
        m.iter().map(|m| m.csid).collect::<Vec<_>>(),
        vec![100, 400, 65599]
    );
    assert_eq!(&m[1].payload[..], b"b");
}

#[test]
fn timestamps_wrap_past_2_pow_32_via_deltas() {
    let mut r = Raw::new();
    r.fmt0(4, 0xFFFF_FFF0, 1, 9, 1, b"a")
        .fmt2(4, 0x20, b"b")
        .fmt1(4, 0xFFFF_FFFF, 1, 9, b"c"); // a "negative" delta of -1
    let m = both(&r);
    let ts: Vec<u32> = m.iter().map(|m| m.timestamp).collect();
    assert_eq!(ts, vec![0xFFFF_FFF0, 0x10, 0x0F]);
}

#[test]
fn audio_and_video_on_one_csid_with_backward_timestamp() {
    // C11: Tencent Meeting sends both on one csid; audio can be behind video.
    let mut r = Raw::new();
    r.fmt0(4, 1000, 2, 9, 1, b"vv")
        .fmt0(4, 990, 1, 8, 1, b"a")
        .fmt1(4, 40, 2, 9, b"vw");
    let m = both(&r);
    assert_eq!(
        summary(&m),
        vec![
            (4, 1000, 9, 1, b"vv".to_vec()),
            (4, 990, 8, 1, b"a".to_vec()),
            (4, 1030, 9, 1, b"vw".to_vec()),
        ]
    );
}

#[test]
fn abort_drops_partial_message() {
    let mut r = Raw::new();
    r.fmt0(4, 0, 200, 9, 1, &[1; 128]);
    r.fmt0(2, 0, 4, msg_type::ABORT, 0, &4u32.to_be_bytes());
    r.fmt0(4, 0, 2, 9, 1, b"ok");
    let mut d = dec();
    let m = decode_all(&mut d, &mut r.bytes()).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(&m[1].payload[..], b"ok");
    assert_eq!(d.buffered(), 0);
}

#[test]
fn encoder_roundtrip_with_extended_timestamps() {
    let mut enc = ChunkEncoder::new();
    let mut buf = BytesMut::new();
    let msgs: Vec<Message> = [
        (0u32, 10usize),
        (0x0100_0000, 5000),
        (0xFFFF_FFFF, 129),
        (5, 0),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(ts, len))| Message {
        csid: [3, 64, 320, 65599][i],
        timestamp: ts,
        type_id: 9,
        stream_id: 1,
        payload: (0..len).map(|j| j as u8).collect::<Vec<_>>().into(),
    })
    .collect();
    for m in &msgs {
        enc.encode(m, &mut buf).unwrap();
    }
    assert_eq!(decode_bytewise(&mut dec(), &buf).unwrap(), msgs);
    enc.set_chunk_size(1);
    let mut b1 = BytesMut::from(&set_chunk_size(1)[..]);
    enc.encode(&msgs[1], &mut b1).unwrap();
    // 5000 one-byte chunks on csid 64 (2-byte basic header), each repeating the
    // extended timestamp.
    assert_eq!(b1.len(), 16 + (2 + 11 + 4) + 4999 * (2 + 4) + 5000);
    let m = decode_all(&mut dec(), &mut b1).unwrap();
    assert_eq!(m[1], msgs[1]);
}

// ---- malformed input (reliability.md §0.2) ----

#[test]
fn set_chunk_size_zero_is_rejected() {
    // C5
    let e = decode_all(&mut dec(), &mut BytesMut::from(&set_chunk_size(0)[..])).unwrap_err();
    assert!(
        matches!(e, SessionError::InvalidChunkSize { size: 0, .. }),
        "{e}"
    );
}

#[test]
fn set_chunk_size_with_msb_is_rejected_but_2_pow_31_minus_1_accepted() {
    // C7
    for size in [0x8000_0000u32, 0xFFFF_FFFF] {
        let e = decode_all(&mut dec(), &mut BytesMut::from(&set_chunk_size(size)[..])).unwrap_err();
        assert!(matches!(e, SessionError::InvalidChunkSize { .. }), "{e}");
    }
    let mut r = Raw(set_chunk_size(0x7FFF_FFFF));
    r.fmt0(4, 0, 3, 9, 1, b"abc");
    let mut d = dec();
    let m = decode_all(&mut d, &mut r.bytes()).unwrap();
    assert_eq!(d.chunk_size(), 0x7FFF_FFFF);
    assert_eq!(&m[1].payload[..], b"abc");
}

#[test]
fn truncated_set_chunk_size_is_rejected() {
    let mut r = Raw::new();
    r.fmt0(2, 0, 2, msg_type::SET_CHUNK_SIZE, 0, &[0, 1]);
    let e = decode_all(&mut dec(), &mut r.bytes()).unwrap_err();
    assert!(matches!(e, SessionError::TruncatedControl { .. }), "{e}");
}

#[test]
fn message_length_above_limit_fails_on_the_header() {
    // C4: limit 1 MiB, declared 16 MiB - 1: the error comes from the 12 header bytes alone,
    // before any payload arrives and before anything is allocated for it.
    let mut d = ChunkDecoder::new(1 << 20, 64).with_offset(3073);
    let mut r = Raw::new();
    r.fmt0(4, 0, 0xFF_FFFF, 9, 1, &[]);
    assert_eq!(r.0.len(), 12);
    let e = decode_all(&mut d, &mut r.bytes()).unwrap_err();
    assert_eq!(
        e,
        SessionError::MessageTooLarge {
            csid: 4,
            len: 0xFF_FFFF,
            max: 1 << 20,
            offset: 3073
        }
    );
    assert_eq!(d.buffered(), 0);
}

#[test]
fn declared_length_is_not_preallocated() {
    // C4: a message declared at the limit buffers only what has arrived.
    let mut d = ChunkDecoder::new(8 << 20, 64);
    let mut r = Raw::new();
    r.fmt0(4, 0, 8 << 20, 9, 1, &[0; 128]);
    assert!(decode_all(&mut d, &mut r.bytes()).unwrap().is_empty());
    assert_eq!(d.buffered(), 128);
}

#[test]
fn fmt1_shrinking_length_mid_message_is_an_error() {
    // rml_rtmp's subtract-with-overflow (crates.md §1a item 2); C3.
    let mut r = Raw::new();
    r.fmt0(4, 0, 300, 9, 1, &[0; 128])
        .fmt1(4, 0, 10, 9, &[0; 10]);
    let e = decode_all(&mut dec(), &mut r.bytes()).unwrap_err();
    assert!(
        matches!(
            e,
            SessionError::HeaderMidMessage {
                csid: 4,
                fmt: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn fmt0_mid_message_is_an_error() {
    let mut r = Raw::new();
    r.fmt0(4, 0, 300, 9, 1, &[0; 128]).fmt0(4, 0, 1, 9, 1, b"x");
    let e = decode_all(&mut dec(), &mut r.bytes()).unwrap_err();
    assert!(
        matches!(e, SessionError::HeaderMidMessage { fmt: 0, .. }),
        "{e}"
    );
}

#[test]
fn fresh_csid_with_fmt_1_2_3_is_an_error() {
    // C2
    for fmt in 1..=3u8 {
        let mut r = Raw::new();
        match fmt {
            1 => r.fmt1(7, 0, 1, 9, b"x"),
            2 => r.fmt2(7, 0, b"x"),
            _ => r.fmt3(7, None, b"x"),
        };
        let e = decode_all(&mut dec(), &mut r.bytes()).unwrap_err();
        assert_eq!(
            e,
            SessionError::FreshChunkStream {
                csid: 7,
                fmt,
                offset: 0
            }
        );
    }
}

#[test]
fn too_many_chunk_streams() {
    // C1
    let mut d = ChunkDecoder::new(1 << 20, 64);
    let mut r = Raw::new();
    for csid in 3..3 + 64 {
        r.fmt0(csid, 0, 1, 9, 1, b"x");
    }
    assert_eq!(decode_all(&mut d, &mut r.bytes()).unwrap().len(), 64);
    let mut r = Raw::new();
    r.fmt0(1000, 0, 1, 9, 1, b"x");
    let e = decode_all(&mut d, &mut r.bytes()).unwrap_err();
    assert!(
        matches!(
            e,
            SessionError::TooManyChunkStreams {
                csid: 1000,
                max: 64,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn partial_messages_across_chunk_streams_are_bounded() {
    // 64 csids × a message just under the limit would pin 64 × the limit.
    let mut d = ChunkDecoder::new(1000, 64);
    let mut r = Raw(set_chunk_size(900));
    let mut err = None;
    for csid in 3..10 {
        r.fmt0(csid, 0, 1000, 9, 1, &[0; 900]);
        if let Err(e) = decode_all(&mut d, &mut r.bytes()) {
            err = Some(e);
            break;
        }
        r.0.clear();
    }
    assert!(
        matches!(err, Some(SessionError::TooMuchBuffered { max: 2000, .. })),
        "{err:?}"
    );
}

#[test]
fn incomplete_input_is_left_in_the_buffer() {
    let mut r = Raw::new();
    r.fmt0(4, 0, 5, 9, 1, b"abc");
    let mut buf = r.bytes();
    let mut d = dec();
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), 15);
    buf.put_slice(b"de");
    assert_eq!(&d.decode(&mut buf).unwrap().unwrap().payload[..], b"abcde");
    assert_eq!(d.offset(), 17);
}
