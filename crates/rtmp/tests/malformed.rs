//! Bad input at the session level (reliability.md §0.1–0.4). Each case must end in an
//! error or a silently ignored message, and never in a panic.

mod common;

use amf0::Value;
use bytes::BytesMut;
use common::*;
use liverec_rtmp::chunk::msg_type;
use liverec_rtmp::{Limits, ServerConfig, ServerEvent, ServerSession, SessionError};

fn feed(s: &mut ServerSession, c: &mut Client) -> Result<(), SessionError> {
    s.handle_input(&mut c.take())
}

fn connected() -> (ServerSession, Client) {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut c = Client::new();
    c.command(0, &connect_cmd("live", None));
    feed(&mut s, &mut c).unwrap();
    events(&mut s);
    (s, c)
}

fn publishing() -> (ServerSession, Client) {
    let (mut s, mut c) = connected();
    c.command(0, &cmd("createStream", 2.0, &[]))
        .command(1, &cmd("publish", 3.0, &["k".into(), "live".into()]));
    feed(&mut s, &mut c).unwrap();
    s.accept_publish(1);
    events(&mut s);
    (s, c)
}

#[test]
fn c0_not_3_is_refused_and_the_session_stays_dead() {
    // H1
    let mut s = ServerSession::new(ServerConfig::default());
    let mut buf = BytesMut::from(&[0x16, 0x03, 0x01][..]);
    let e = s.handle_input(&mut buf).unwrap_err();
    assert!(
        matches!(e, SessionError::BadVersion { version: 0x16, .. }),
        "{e}"
    );
    assert!(s.take_output().is_none());
    assert_eq!(s.handle_input(&mut buf).unwrap_err(), SessionError::Failed);
}

#[test]
fn handshake_one_byte_at_a_time_then_chunks_in_the_same_buffer() {
    let mut s = ServerSession::new(ServerConfig::default());
    let mut input = client_handshake();
    let mut c = Client::new();
    c.command(0, &connect_cmd("live", None));
    input.extend_from_slice(&c.take());
    let mut buf = BytesMut::new();
    for b in input.iter() {
        buf.extend_from_slice(&[*b]);
        s.handle_input(&mut buf).unwrap();
    }
    assert!(s.is_handshake_done());
    assert_eq!(s.bytes_received(), input.len() as u64);
    assert!(matches!(events(&mut s)[..], [ServerEvent::Connected(_)]));
}

#[test]
fn set_chunk_size_zero_closes_the_session() {
    let (mut s, mut c) = connected();
    c.msg(2, 0, msg_type::SET_CHUNK_SIZE, 0, vec![0, 0, 0, 0]);
    assert!(matches!(
        feed(&mut s, &mut c),
        Err(SessionError::InvalidChunkSize { size: 0, .. })
    ));
}

#[test]
fn message_above_the_configured_limit_is_refused_on_its_header() {
    let config = ServerConfig {
        limits: Limits {
            max_message_bytes: 1 << 20,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let mut s = session_after_handshake(config);
    let mut r = Raw::new();
    r.fmt0(6, 0, 0xFF_FFFF, 9, 1, &[]);
    let e = s.handle_input(&mut r.bytes()).unwrap_err();
    assert_eq!(
        e,
        SessionError::MessageTooLarge {
            csid: 6,
            len: 0xFF_FFFF,
            max: 1 << 20,
            offset: 3073
        }
    );
    assert!(e.to_string().contains("at byte 3073"), "{e}");
}

#[test]
fn fresh_csid_with_fmt3() {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut r = Raw::new();
    r.fmt3(9, None, b"xyz");
    let e = s.handle_input(&mut r.bytes()).unwrap_err();
    assert!(matches!(
        e,
        SessionError::FreshChunkStream {
            csid: 9,
            fmt: 3,
            ..
        }
    ));
}

#[test]
fn truncated_amf_in_a_command() {
    // A5
    let mut s = session_after_handshake(ServerConfig::default());
    let mut body = amf0::encode_all(&connect_cmd("live", None));
    body.truncate(body.len() - 5);
    let mut c = Client::new();
    c.msg(3, 0, msg_type::COMMAND_AMF0, 0, body);
    let e = feed(&mut s, &mut c).unwrap_err();
    assert!(
        matches!(
            e,
            SessionError::Amf {
                source: amf0::Error::Truncated { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn deeply_nested_amf_in_connect() {
    // A2: 100 000 levels must hit the depth cap, not overflow the stack.
    for marker in [0x03u8, 0x08, 0x0a] {
        let mut body = amf0::encode_all(&["connect".into(), 1.0.into()]);
        for _ in 0..100_000 {
            match marker {
                0x03 => body.extend_from_slice(&[0x03, 0, 1, b'a']),
                0x08 => body.extend_from_slice(&[0x08, 0, 0, 0, 1, 0, 1, b'a']),
                _ => body.extend_from_slice(&[0x0a, 0, 0, 0, 1]),
            }
        }
        let mut s = session_after_handshake(ServerConfig::default());
        let mut c = Client::new();
        c.msg(3, 0, msg_type::COMMAND_AMF0, 0, body);
        let e = feed(&mut s, &mut c).unwrap_err();
        assert!(
            matches!(
                e,
                SessionError::Amf {
                    source: amf0::Error::TooDeep { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn amf_string_length_past_the_end() {
    // A1: CVE-2012-4750 shape, a 0xFFFF string length with a 7-byte body.
    let mut body = amf0::encode_all(&["connect".into(), 1.0.into()]);
    body.extend_from_slice(&[0x03, 0, 3, b'a', b'p', b'p', 0x02, 0xFF, 0xFF]);
    body.extend_from_slice(b"livexyz");
    let mut s = session_after_handshake(ServerConfig::default());
    let mut c = Client::new();
    c.msg(3, 0, msg_type::COMMAND_AMF0, 0, body);
    assert!(matches!(
        feed(&mut s, &mut c),
        Err(SessionError::Amf { .. })
    ));
}

#[test]
fn ecma_count_of_4_billion_in_metadata_is_harmless() {
    // A3: the count must not be used to reserve anything.
    let (mut s, mut c) = publishing();
    let mut body = amf0::encode_all(&["@setDataFrame".into(), "onMetaData".into()]);
    body.extend_from_slice(&[0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 9]);
    c.msg(4, 0, msg_type::DATA_AMF0, 1, body);
    feed(&mut s, &mut c).unwrap();
    assert!(matches!(events(&mut s)[..], [ServerEvent::Metadata { .. }]));
}

#[test]
fn set_data_frame_alone_is_ignored_before_connect_and_while_publishing() {
    // rml_rtmp panicked on this before connect (crates.md §1a item 1).
    let mut s = session_after_handshake(ServerConfig::default());
    let mut c = Client::new();
    c.msg(
        4,
        0,
        msg_type::DATA_AMF0,
        0,
        amf0::encode_all(&["@setDataFrame".into()]),
    );
    feed(&mut s, &mut c).unwrap();
    assert!(events(&mut s).is_empty());

    let (mut s, mut c) = publishing();
    c.msg(
        4,
        0,
        msg_type::DATA_AMF0,
        1,
        amf0::encode_all(&["@setDataFrame".into()]),
    )
    .msg(4, 0, msg_type::DATA_AMF0, 1, vec![])
    .msg(4, 0, msg_type::DATA_AMF0, 1, vec![0x10, 0x00]) // typed object marker (A4)
    .msg(4, 0, msg_type::DATA_AMF3, 1, vec![0x11]);
    feed(&mut s, &mut c).unwrap();
    assert!(events(&mut s).is_empty());
}

#[test]
fn command_with_too_few_values() {
    // rml_rtmp's `drain(..3)` panic (crates.md §1a item 3).
    for values in [
        vec![Value::from("connect")],
        vec!["connect".into(), 1.0.into()],
        vec!["connect".into(), 1.0.into(), Value::Null],
        vec![
            "connect".into(),
            1.0.into(),
            amf0::obj([("tcUrl", "rtmp://h/x".into())]),
        ],
    ] {
        let mut s = session_after_handshake(ServerConfig::default());
        let mut c = Client::new();
        c.command(0, &values);
        let e = feed(&mut s, &mut c).unwrap_err();
        assert!(
            matches!(e, SessionError::BadCommand { .. }),
            "{values:?}: {e}"
        );
    }
    let (mut s, mut c) = connected();
    c.command(0, &cmd("createStream", 2.0, &[]))
        .command(1, &cmd("publish", 3.0, &[]));
    assert!(matches!(
        feed(&mut s, &mut c),
        Err(SessionError::BadCommand { .. })
    ));
    // deleteStream without a stream id is what GStreamer's rtmp2sink sends at the end:
    // it ends the publish, it is never a protocol error.
    let (mut s, mut c) = connected();
    c.command(0, &cmd("deleteStream", 2.0, &[]));
    assert!(feed(&mut s, &mut c).is_ok());
}

#[test]
fn publish_or_create_stream_before_connect() {
    // A6
    for values in [
        cmd("publish", 1.0, &["k".into()]),
        cmd("createStream", 1.0, &[]),
    ] {
        let mut s = session_after_handshake(ServerConfig::default());
        let mut c = Client::new();
        c.command(0, &values);
        let e = feed(&mut s, &mut c).unwrap_err();
        assert!(
            matches!(
                e,
                SessionError::CommandOutOfOrder {
                    reason: "before connect",
                    ..
                }
            ),
            "{e}"
        );
        assert!(events(&mut s).is_empty());
    }
}

#[test]
fn connect_twice() {
    let (mut s, mut c) = connected();
    c.command(0, &connect_cmd("live", None));
    assert!(matches!(
        feed(&mut s, &mut c),
        Err(SessionError::CommandOutOfOrder { .. })
    ));
}

#[test]
fn create_stream_1000_times() {
    // A6, rust-media-libs #39: at most 2 message streams per connection.
    let (mut s, mut c) = connected();
    for i in 0..1000 {
        c.command(0, &cmd("createStream", 2.0 + f64::from(i), &[]));
    }
    let e = feed(&mut s, &mut c).unwrap_err();
    assert!(
        matches!(e, SessionError::TooManyMessageStreams { max: 2, .. }),
        "{e}"
    );
    let mut out = ServerOutput::new();
    let results = commands(&out.read(&mut s));
    // connect's _result, then only two createStream results.
    let txns: Vec<&Value> = results.iter().map(|v| &v[1]).collect();
    assert_eq!(
        txns,
        vec![
            &Value::Number(1.0),
            &Value::Number(2.0),
            &Value::Number(3.0)
        ]
    );
}

#[test]
fn publish_twice_and_publish_on_an_unknown_stream() {
    let (mut s, mut c) = publishing();
    c.command(0, &cmd("createStream", 4.0, &[]))
        .command(2, &cmd("publish", 5.0, &["k2".into()]));
    assert!(matches!(
        feed(&mut s, &mut c),
        Err(SessionError::PublishTwice { stream_id: 2, .. })
    ));

    let (mut s, mut c) = connected();
    c.command(7, &cmd("publish", 5.0, &["k".into()]));
    assert!(matches!(
        feed(&mut s, &mut c),
        Err(SessionError::CommandOutOfOrder { .. })
    ));
}

#[test]
fn empty_audio_and_video_bodies_are_dropped_and_counted() {
    // M1
    let (mut s, mut c) = publishing();
    c.msg(4, 0, msg_type::AUDIO, 1, vec![])
        .msg(6, 0, msg_type::VIDEO, 1, vec![])
        .msg(6, 0, msg_type::VIDEO, 1, vec![0x17]);
    feed(&mut s, &mut c).unwrap();
    let ev = events(&mut s);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(s.dropped_empty_media(), 2);
}

#[test]
fn aggregate_with_sub_tag_length_past_the_end() {
    let (mut s, mut c) = publishing();
    let mut agg = vec![9, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0];
    agg.extend_from_slice(&[0x17; 10]);
    c.msg(6, 0, msg_type::AGGREGATE, 1, agg);
    let e = feed(&mut s, &mut c).unwrap_err();
    assert!(
        matches!(e, SessionError::MalformedAggregate { at: 0, .. }),
        "{e}"
    );
    assert!(events(&mut s).is_empty());
}

#[test]
fn late_messages_after_unpublish() {
    // A7: use-after-close paths.
    let (mut s, mut c) = publishing();
    c.command(0, &cmd("deleteStream", 4.0, &[1.0.into()]))
        .command(0, &cmd("FCUnpublish", 5.0, &["k".into()]))
        .command(1, &cmd("closeStream", 0.0, &[]))
        .msg(6, 0, msg_type::VIDEO, 1, vec![0x17, 1])
        .msg(
            4,
            0,
            msg_type::DATA_AMF0,
            1,
            amf0::encode_all(&["onMetaData".into()]),
        );
    feed(&mut s, &mut c).unwrap();
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::Unpublished { stream_id: 1 }]
    );
    s.accept_publish(1);
    s.reject_publish(1, "x", "y");
    s.accept_publish(99);
}

#[test]
fn truncated_control_messages_are_ignored_or_refused() {
    let (mut s, mut c) = connected();
    c.msg(2, 0, msg_type::WINDOW_ACK_SIZE, 0, vec![1])
        .msg(2, 0, msg_type::USER_CONTROL, 0, vec![0, 6])
        .msg(2, 0, msg_type::SET_PEER_BANDWIDTH, 0, vec![])
        .msg(2, 0, msg_type::ACKNOWLEDGEMENT, 0, vec![])
        .msg(2, 0, 0x7f, 0, vec![1, 2, 3]);
    feed(&mut s, &mut c).unwrap();
    c.msg(2, 0, msg_type::ABORT, 0, vec![1]);
    assert!(matches!(
        feed(&mut s, &mut c),
        Err(SessionError::TruncatedControl { .. })
    ));
}
