//! The publish flow as ffmpeg, OBS and rtmp2sink drive it, and the session's replies.

mod common;

use amf0::Value;
use bytes::{Bytes, BytesMut};
use common::*;
use liverec_rtmp::chunk::msg_type;
use liverec_rtmp::{ConnectInfo, PublishRequest, ServerConfig, ServerEvent, ServerSession};

fn meta_body() -> Vec<u8> {
    amf0::encode_all(&[
        "onMetaData".into(),
        Value::EcmaArray(vec![
            ("width".into(), 640.0.into()),
            ("height".into(), 360.0.into()),
        ]),
    ])
}

/// connect → releaseStream → FCPublish → createStream → publish, as ffmpeg sends it.
fn publish_prefix(c: &mut Client, app: &str, key: &str) {
    c.set_chunk_size(4096)
        .command(
            0,
            &connect_cmd(app, Some(&format!("rtmp://127.0.0.1:1935/{app}"))),
        )
        .command(0, &cmd("releaseStream", 2.0, &[key.into()]))
        .command(0, &cmd("FCPublish", 3.0, &[key.into()]))
        .command(0, &cmd("createStream", 4.0, &[]));
}

fn has_command(msgs: &[Vec<Value>], name: &str, pred: impl Fn(&[Value]) -> bool) -> bool {
    msgs.iter()
        .any(|v| v.first().and_then(Value::as_str) == Some(name) && pred(v))
}

fn status_code(v: &[Value]) -> Option<(&str, &str)> {
    let info = v.get(3)?;
    Some((info.get("level")?.as_str()?, info.get("code")?.as_str()?))
}

#[test]
fn full_publish_flow_like_ffmpeg() {
    let mut s = ServerSession::new(ServerConfig::default());
    let mut out = ServerOutput::new();

    // Handshake: C0C1 first; the server answers S0S1S2 at once, then waits for C2.
    let hs = client_handshake();
    let mut buf = BytesMut::from(&hs[..1537]);
    s.handle_input(&mut buf).unwrap();
    assert_eq!(s.take_output().unwrap().len(), 1 + 2 * 1536);
    assert!(!s.is_handshake_done());
    let mut buf = BytesMut::from(&hs[1537..]);
    s.handle_input(&mut buf).unwrap();
    assert!(s.is_handshake_done());

    let mut c = Client::new();
    publish_prefix(&mut c, "live", "test?txSecret=abc&txTime=5F5E0FF");
    let mut buf = c.take();
    s.handle_input(&mut buf).unwrap();
    assert!(buf.is_empty());

    let msgs = out.read(&mut s);
    // Window Ack Size, Set Peer Bandwidth (dynamic), Set Chunk Size, then _result.
    let ctl: Vec<(u8, Vec<u8>)> = msgs
        .iter()
        .take(3)
        .map(|m| (m.type_id, m.payload.to_vec()))
        .collect();
    assert_eq!(
        ctl,
        vec![
            (
                msg_type::WINDOW_ACK_SIZE,
                2_500_000u32.to_be_bytes().to_vec()
            ),
            (
                msg_type::SET_PEER_BANDWIDTH,
                [&2_500_000u32.to_be_bytes()[..], &[2]].concat()
            ),
            (msg_type::SET_CHUNK_SIZE, 4096u32.to_be_bytes().to_vec()),
        ]
    );
    let cmds = commands(&msgs);
    assert!(has_command(&cmds, "_result", |v| {
        v[1] == Value::Number(1.0)
            && status_code(v) == Some(("status", "NetConnection.Connect.Success"))
            && v[3].get("objectEncoding") == Some(&Value::Number(0.0))
            && v[2].get("fmsVer").is_some()
    }));
    // createStream's _result carries the new message stream id.
    assert!(has_command(&cmds, "_result", |v| v[1]
        == Value::Number(4.0)
        && v.get(3) == Some(&Value::Number(1.0))));
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::Connected(ConnectInfo {
            app: "live".into(),
            app_query: None,
            tc_url: Some("rtmp://127.0.0.1:1935/live".into()),
            flash_ver: Some("FMLE/3.0 (compatible; Lavf61.7.100)".into()),
        })]
    );

    c.command(
        1,
        &cmd(
            "publish",
            5.0,
            &["test?txSecret=abc&txTime=5F5E0FF".into(), "live".into()],
        ),
    );
    s.handle_input(&mut c.take()).unwrap();
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::PublishRequested(PublishRequest {
            stream_id: 1,
            app: "live".into(),
            tc_url: Some("rtmp://127.0.0.1:1935/live".into()),
            name: "test".into(),
            query: Some("txSecret=abc&txTime=5F5E0FF".into()),
            publish_type: "live".into(),
        })]
    );
    // Nothing is said until the daemon decides.
    assert!(commands(&out.read(&mut s)).is_empty());
    s.accept_publish(1);
    let msgs = out.read(&mut s);
    assert_eq!(msgs[0].type_id, msg_type::USER_CONTROL);
    assert_eq!(&msgs[0].payload[..], &[0, 0, 0, 0, 0, 1]); // StreamBegin 1
    let cmds = commands(&msgs);
    assert!(has_command(&cmds, "onStatus", |v| status_code(v)
        == Some(("status", "NetStream.Publish.Start"))));
    assert_eq!(msgs[1].stream_id, 1);

    let mut sdf = amf0::encode_all(&["@setDataFrame".into()]);
    sdf.extend(meta_body());
    let video = vec![0x17u8; 9000]; // several 4096-byte chunks
    c.msg(4, 0, msg_type::DATA_AMF0, 1, sdf)
        .msg(6, 0, msg_type::VIDEO, 1, video.clone())
        .msg(4, 0, msg_type::AUDIO, 1, vec![0xAF, 0x00, 0x12, 0x10])
        .msg(4, 23, msg_type::AUDIO, 1, vec![0xAF, 0x01, 0x21])
        .command(
            0,
            &cmd(
                "FCUnpublish",
                6.0,
                &["test?txSecret=abc&txTime=5F5E0FF".into()],
            ),
        )
        .command(0, &cmd("deleteStream", 7.0, &[1.0.into()]));
    // Feed in odd-sized pieces, as TCP would.
    let all = c.take();
    let before = s.bytes_received();
    let mut rx = BytesMut::new();
    for piece in all.chunks(1000) {
        rx.extend_from_slice(piece);
        s.handle_input(&mut rx).unwrap();
    }
    assert!(rx.is_empty());
    assert_eq!(
        events(&mut s),
        vec![
            ServerEvent::Metadata {
                stream_id: 1,
                timestamp: 0,
                body: Bytes::from(meta_body())
            },
            ServerEvent::Video {
                stream_id: 1,
                timestamp: 0,
                body: Bytes::from(video)
            },
            ServerEvent::Audio {
                stream_id: 1,
                timestamp: 0,
                body: Bytes::from_static(&[0xAF, 0, 0x12, 0x10])
            },
            ServerEvent::Audio {
                stream_id: 1,
                timestamp: 23,
                body: Bytes::from_static(&[0xAF, 1, 0x21])
            },
            // FCUnpublish and deleteStream: one event.
            ServerEvent::Unpublished { stream_id: 1 },
        ]
    );
    assert_eq!(s.bytes_received(), before + all.len() as u64);
}

#[test]
fn reject_path_sends_error_status_with_the_code() {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut out = ServerOutput::new();
    let mut c = Client::new();
    publish_prefix(&mut c, "live", "bad/name");
    c.command(1, &cmd("publish", 5.0, &["bad/name".into(), "live".into()]));
    s.handle_input(&mut c.take()).unwrap();
    out.read(&mut s);
    let ev = events(&mut s);
    assert!(matches!(ev.last(), Some(ServerEvent::PublishRequested(p)) if p.name == "bad/name"));
    s.reject_publish(1, "NetStream.Publish.BadName", "invalid stream name");
    let cmds = commands(&out.read(&mut s));
    assert!(has_command(&cmds, "onStatus", |v| status_code(v)
        == Some(("error", "NetStream.Publish.BadName"))
        && v[3].get("description").and_then(Value::as_str)
            == Some("invalid stream name")));
    // Media after a rejection is dropped, and accept after reject does nothing.
    c.msg(6, 0, msg_type::VIDEO, 1, vec![0x17, 0, 0, 0, 0]);
    s.handle_input(&mut c.take()).unwrap();
    assert!(events(&mut s).is_empty());
    s.accept_publish(1);
    assert!(s.take_output().is_none());
}

#[test]
fn app_and_stream_queries_are_split_and_joined() {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut c = Client::new();
    c.command(0, &connect_cmd("live?vhost=x.example", None))
        .command(0, &cmd("createStream", 2.0, &[]))
        .command(
            1,
            &cmd("publish", 3.0, &["key?token=t".into(), "record".into()]),
        );
    s.handle_input(&mut c.take()).unwrap();
    let ev = events(&mut s);
    assert_eq!(
        ev[0],
        ServerEvent::Connected(ConnectInfo {
            app: "live".into(),
            app_query: Some("vhost=x.example".into()),
            tc_url: None,
            flash_ver: Some("FMLE/3.0 (compatible; Lavf61.7.100)".into()),
        })
    );
    let ServerEvent::PublishRequested(p) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!((p.app.as_str(), p.name.as_str()), ("live", "key"));
    assert_eq!(p.query.as_deref(), Some("vhost=x.example&token=t"));
    assert_eq!(p.tc_url, None);
    assert_eq!(p.publish_type, "record");
}

#[test]
fn publish_without_type_defaults_to_live_and_object_encoding_is_echoed() {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut out = ServerOutput::new();
    let mut c = Client::new();
    c.command(
        0,
        &[
            "connect".into(),
            1.0.into(),
            amf0::obj([("app", "live".into()), ("objectEncoding", 3.0.into())]),
        ],
    )
    .command(0, &cmd("createStream", 2.0, &[]))
    .command(1, &cmd("publish", 3.0, &["k".into()]));
    s.handle_input(&mut c.take()).unwrap();
    let cmds = commands(&out.read(&mut s));
    assert!(has_command(&cmds, "_result", |v| v[3]
        .get("objectEncoding")
        == Some(&Value::Number(3.0))));
    let ev = events(&mut s);
    assert!(matches!(&ev[1], ServerEvent::PublishRequested(p) if p.publish_type == "live"));
}

fn publishing_session() -> (ServerSession, Client) {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut c = Client::new();
    publish_prefix(&mut c, "live", "k");
    c.command(1, &cmd("publish", 5.0, &["k".into(), "live".into()]));
    s.handle_input(&mut c.take()).unwrap();
    s.accept_publish(1);
    events(&mut s);
    s.take_output();
    (s, c)
}

#[test]
fn metadata_without_set_data_frame_and_amf3_data() {
    let (mut s, mut c) = publishing_session();
    let mut amf3 = vec![0u8];
    amf3.extend(meta_body());
    c.msg(4, 5, msg_type::DATA_AMF0, 1, meta_body())
        .msg(4, 6, msg_type::DATA_AMF3, 1, amf3)
        .msg(
            4,
            7,
            msg_type::DATA_AMF0,
            1,
            amf0::encode_all(&["onTextData".into()]),
        );
    s.handle_input(&mut c.take()).unwrap();
    let ev = events(&mut s);
    assert_eq!(ev.len(), 2);
    assert_eq!(
        ev[0],
        ServerEvent::Metadata {
            stream_id: 1,
            timestamp: 5,
            body: meta_body().into()
        }
    );
    assert_eq!(
        ev[1],
        ServerEvent::Metadata {
            stream_id: 1,
            timestamp: 6,
            body: meta_body().into()
        }
    );
}

#[test]
fn media_on_a_stream_that_is_not_publishing_is_dropped() {
    let (mut s, mut c) = publishing_session();
    c.msg(6, 0, msg_type::VIDEO, 2, vec![0x17, 1])
        .msg(6, 0, msg_type::VIDEO, 0, vec![0x17, 1]);
    s.handle_input(&mut c.take()).unwrap();
    assert!(events(&mut s).is_empty());
    assert_eq!(s.dropped_unpublished_media(), 2);
}

#[test]
fn aggregate_messages_are_split_with_rebased_timestamps() {
    let (mut s, mut c) = publishing_session();
    let tag = |ty: u8, ts: u32, body: &[u8]| {
        let mut v = vec![ty];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&ts.to_be_bytes()[1..]);
        v.push((ts >> 24) as u8);
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(body);
        v.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
        v
    };
    let mut agg = tag(9, 0x0100_0000, b"\x27\x01v");
    agg.extend(tag(8, 0x0100_0015, b"\xaf\x01a"));
    c.msg(6, 500, msg_type::AGGREGATE, 1, agg);
    s.handle_input(&mut c.take()).unwrap();
    assert_eq!(
        events(&mut s),
        vec![
            ServerEvent::Video {
                stream_id: 1,
                timestamp: 500,
                body: Bytes::from_static(b"\x27\x01v")
            },
            ServerEvent::Audio {
                stream_id: 1,
                timestamp: 521,
                body: Bytes::from_static(b"\xaf\x01a")
            },
        ]
    );
}

#[test]
fn acknowledgement_carries_the_total_byte_count() {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut out = ServerOutput::new();
    let mut c = Client::new();
    c.msg(
        2,
        0,
        msg_type::WINDOW_ACK_SIZE,
        0,
        1000u32.to_be_bytes().to_vec(),
    );
    let mut acks = Vec::new();
    for i in 0..6 {
        if i > 0 {
            c.msg(4, 0, msg_type::AUDIO, 0, vec![1u8; 600]);
        }
        s.handle_input(&mut c.take()).unwrap();
        for m in out.read(&mut s) {
            assert_eq!(m.type_id, msg_type::ACKNOWLEDGEMENT);
            let seq = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            assert_eq!(u64::from(seq), s.bytes_received());
            acks.push(seq);
        }
    }
    // The handshake (3073) and the Window Ack Size message (16) already exceed the window;
    // then each 600-byte message is 12 + 600 + 4 continuation headers = 616 bytes, so an
    // ack follows every second one, with the TOTAL count, not the count since the last ack.
    assert_eq!(acks, vec![3089, 3089 + 2 * 616, 3089 + 4 * 616]);
}

#[test]
fn ping_request_is_answered() {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut out = ServerOutput::new();
    let mut c = Client::new();
    c.msg(
        2,
        0,
        msg_type::USER_CONTROL,
        0,
        vec![0, 6, 0, 0, 0x12, 0x34],
    );
    s.handle_input(&mut c.take()).unwrap();
    let m = out.read(&mut s);
    assert_eq!(m.len(), 1);
    assert_eq!(&m[0].payload[..], &[0, 7, 0, 0, 0x12, 0x34]);
}

#[test]
fn close_stream_on_the_message_stream_unpublishes_once() {
    let (mut s, mut c) = publishing_session();
    c.command(1, &cmd("closeStream", 0.0, &[]))
        .command(0, &cmd("deleteStream", 8.0, &[1.0.into()]))
        .msg(6, 0, msg_type::VIDEO, 1, vec![0x17, 1]);
    s.handle_input(&mut c.take()).unwrap();
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::Unpublished { stream_id: 1 }]
    );
}

#[test]
fn unknown_commands_are_ignored() {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut c = Client::new();
    c.command(0, &connect_cmd("live", None))
        .command(0, &cmd("_checkbw", 2.0, &[]))
        .command(0, &cmd("getStreamLength", 3.0, &["x".into()]))
        .command(0, &[Value::Number(1.0)]); // no name at all
    s.handle_input(&mut c.take()).unwrap();
    assert_eq!(events(&mut s).len(), 1);
}

#[test]
fn amf3_command_with_leading_zero_byte() {
    let mut s = session_after_handshake(ServerConfig::default());
    let mut c = Client::new();
    let mut body = vec![0u8];
    body.extend(amf0::encode_all(&connect_cmd("live", None)));
    c.msg(3, 0, msg_type::COMMAND_AMF3, 0, body);
    s.handle_input(&mut c.take()).unwrap();
    assert!(matches!(events(&mut s)[..], [ServerEvent::Connected(_)]));
}
