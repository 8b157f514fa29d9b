//! The publisher against a tiny in-test RTMP server built from this crate's own chunk
//! codec and handshake helpers: enough to prove the command flow, the media replay, the
//! Acknowledgement/ping replies and the Rejected path.

use std::sync::Arc;
use std::time::Duration;

use amf0::Value;
use liverec_testkit::chunk::{encode_to_vec, msg_type, ChunkDecoder};
use liverec_testkit::conn::decode_command;
use liverec_testkit::handshake::{c1_digest_scheme, c2_valid_for, make_c1, make_complex_s1};
use liverec_testkit::probe::{classify_tag, TagKind};
use liverec_testkit::{
    fixture_tags, publish_flv, publish_many, PublishError, PublishOptions, RawConn,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct Seen {
    c1_scheme: Option<u8>,
    c2_ok: bool,
    commands: Vec<String>,
    app: String,
    tc_url: String,
    publish_name: String,
    chunk_size: usize,
    /// (type, timestamp, sha256 of payload)
    media: Vec<(u8, u32, [u8; 32])>,
    metadata: bool,
    acks: usize,
    pongs: usize,
    protocol_error: bool,
}

fn cmd(v: &[Value]) -> Vec<u8> {
    amf0::encode_all(v)
}

/// Serves one connection: handshake (complex S1 when the C1 has a digest), Set Chunk
/// Size 60, Window Ack Size 1000 and a ping request, then answers connect/createStream/publish. Stream names
/// starting with "bad" are refused with NetStream.Publish.BadName.
async fn serve(mut s: TcpStream) -> Seen {
    let mut seen = Seen::default();
    let mut c0c1 = vec![0u8; 1537];
    if s.read_exact(&mut c0c1).await.is_err() {
        return seen;
    }
    seen.c1_scheme = c1_digest_scheme(&c0c1[1..]);
    let s1 = if seen.c1_scheme.is_some() {
        make_complex_s1()
    } else {
        make_c1(false, 0)
    };
    let mut out = vec![3u8];
    out.extend_from_slice(&s1);
    out.extend_from_slice(&c0c1[1..]);
    s.write_all(&out).await.unwrap();
    let mut c2 = vec![0u8; 1536];
    if s.read_exact(&mut c2).await.is_err() {
        return seen;
    }
    seen.c2_ok = c2_valid_for(&s1, &c2);

    // Our replies use a 60-byte chunk size, so the client must apply Set Chunk Size and
    // reassemble continuation chunks.
    let send = |t: u8, sid: u32, p: &[u8]| encode_to_vec(3, t, sid, 0, p, 60);
    let mut w = encode_to_vec(2, msg_type::SET_CHUNK_SIZE, 0, 0, &60u32.to_be_bytes(), 128);
    w.extend(send(msg_type::WINDOW_ACK_SIZE, 0, &1000u32.to_be_bytes()));
    w.extend(encode_to_vec(
        2,
        msg_type::USER_CONTROL,
        0,
        0,
        &[0, 6, 0, 0, 0, 42],
        128,
    ));
    s.write_all(&w).await.unwrap();

    let mut dec = ChunkDecoder::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        loop {
            let m = match dec.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    seen.protocol_error = true;
                    return seen; // drop the connection, like a real server
                }
            };
            seen.chunk_size = dec.chunk_size();
            match m.msg_type {
                msg_type::AUDIO | msg_type::VIDEO => {
                    seen.media
                        .push((m.msg_type, m.timestamp, Sha256::digest(&m.payload).into()));
                }
                msg_type::ACKNOWLEDGEMENT => seen.acks += 1,
                msg_type::USER_CONTROL if m.payload.starts_with(&[0, 7, 0, 0, 0, 42]) => {
                    seen.pongs += 1
                }
                msg_type::DATA_AMF0 => {
                    let v = decode_command(&m).unwrap();
                    seen.metadata = v.first().and_then(Value::as_str) == Some("@setDataFrame")
                        && v.get(1).and_then(Value::as_str) == Some("onMetaData");
                }
                msg_type::COMMAND_AMF0 => {
                    let v = decode_command(&m).unwrap();
                    let name = v[0].as_str().unwrap().to_string();
                    let txn = v[1].clone();
                    seen.commands.push(name.clone());
                    let reply = match name.as_str() {
                        "connect" => {
                            let o = &v[2];
                            seen.app = o.get("app").and_then(Value::as_str).unwrap().into();
                            seen.tc_url = o.get("tcUrl").and_then(Value::as_str).unwrap().into();
                            send(
                                msg_type::COMMAND_AMF0,
                                0,
                                &cmd(&[
                                    "_result".into(),
                                    txn,
                                    amf0::obj([("fmsVer", "FMS/3,0,1,123".into())]),
                                    amf0::obj([
                                        ("level", "status".into()),
                                        ("code", "NetConnection.Connect.Success".into()),
                                    ]),
                                ]),
                            )
                        }
                        "createStream" => send(
                            msg_type::COMMAND_AMF0,
                            0,
                            &cmd(&["_result".into(), txn, Value::Null, Value::Number(7.0)]),
                        ),
                        "publish" => {
                            seen.publish_name = v[3].as_str().unwrap().into();
                            let bad = seen.publish_name.starts_with("bad");
                            let (level, code) = if bad {
                                ("error", "NetStream.Publish.BadName")
                            } else {
                                ("status", "NetStream.Publish.Start")
                            };
                            send(
                                msg_type::COMMAND_AMF0,
                                m.stream_id,
                                &cmd(&[
                                    "onStatus".into(),
                                    Value::Number(0.0),
                                    Value::Null,
                                    amf0::obj([
                                        ("level", level.into()),
                                        ("code", code.into()),
                                        ("description", "test server says so".into()),
                                    ]),
                                ]),
                            )
                        }
                        _ => Vec::new(),
                    };
                    if !reply.is_empty() {
                        let _ = s.write_all(&reply).await;
                    }
                }
                _ => {}
            }
        }
    }
    seen
}

/// Listens on 127.0.0.1:0 and serves `n` connections; returns the port and a handle
/// yielding what each connection saw (in accept order).
async fn server(n: usize) -> (u16, tokio::task::JoinHandle<Vec<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let mut hs = Vec::new();
        for _ in 0..n {
            let (s, _) = l.accept().await.unwrap();
            hs.push(tokio::spawn(serve(s)));
        }
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    });
    (port, h)
}

fn expected_media(tags: &[flv::FileTag], loops: u32) -> Vec<(u8, u32, [u8; 32])> {
    let av: Vec<_> = tags
        .iter()
        .filter(|t| t.tag_type != flv::TagType::Script)
        .collect();
    let last = av.iter().map(|t| t.timestamp).max().unwrap();
    let min_step = |ty| {
        let ts: Vec<u32> = av
            .iter()
            .filter(|t| t.tag_type == ty)
            .map(|t| t.timestamp)
            .collect();
        ts.windows(2).map(|w| w[1] - w[0]).filter(|&d| d > 0).min()
    };
    let step = min_step(flv::TagType::Video)
        .or_else(|| min_step(flv::TagType::Audio))
        .unwrap();
    let mut out = Vec::new();
    for l in 0..=loops {
        for t in &av {
            if l > 0 && classify_tag(t.tag_type, &t.body).0 == TagKind::SequenceHeader {
                continue;
            }
            out.push((
                t.tag_type.to_u8(),
                t.timestamp + l * (last + step),
                Sha256::digest(&t.body).into(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn publishes_a_fixture_with_loops_and_answers_acks_and_pings() {
    let tags = fixture_tags("avc_aac_1s.flv");
    for (chunk, complex) in [(4096, false), (128, true), (60000, false)] {
        let (port, srv) = server(1).await;
        let opts = PublishOptions {
            chunk_size: chunk,
            complex_handshake: complex,
            loops: 1,
            ..Default::default()
        };
        let url = format!("rtmp://127.0.0.1:{port}/live?vhost=a.com/cam1?token=x");
        let st = publish_flv(&url, &tags, &opts).await.unwrap();
        let seen = srv.await.unwrap().pop().unwrap();
        assert_eq!(seen.c1_scheme.is_some(), complex);
        assert!(seen.c2_ok, "C2 answers S1");
        assert_eq!(
            seen.commands,
            [
                "connect",
                "releaseStream",
                "FCPublish",
                "createStream",
                "publish",
                "FCUnpublish",
                "deleteStream"
            ]
        );
        assert_eq!(seen.app, "live?vhost=a.com");
        assert_eq!(
            seen.tc_url,
            format!("rtmp://127.0.0.1:{port}/live?vhost=a.com")
        );
        assert_eq!(seen.publish_name, "cam1?token=x");
        assert_eq!(seen.chunk_size, chunk as usize);
        assert!(seen.metadata);
        assert!(seen.acks >= 1, "acknowledged the 1000-byte window");
        assert_eq!(seen.pongs, 1, "answered the ping");
        let want = expected_media(&tags, 1);
        assert_eq!(seen.media.len(), want.len());
        assert!(seen.media == want, "media differs (chunk size {chunk})");
        assert_eq!(st.media_messages as usize, want.len());
        assert_eq!(st.stream_id, 7);
        assert!(st.acks_sent >= 1);
        assert!(st.bytes_sent > tags.iter().map(|t| t.body.len() as u64).sum::<u64>());
    }
}

#[tokio::test]
async fn rejected_publish_is_an_error_with_the_code() {
    let (port, srv) = server(1).await;
    let tags = fixture_tags("aac_only.flv");
    let r = publish_flv(
        &format!("rtmp://127.0.0.1:{port}/live/bad..name"),
        &tags,
        &PublishOptions::default(),
    )
    .await;
    match r {
        Err(PublishError::Rejected { code, description }) => {
            assert_eq!(code, "NetStream.Publish.BadName");
            assert_eq!(description, "test server says so");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let seen = srv.await.unwrap().pop().unwrap();
    assert!(seen.media.is_empty());
}

#[tokio::test]
async fn realtime_pacing_and_duration_limit() {
    let tags = fixture_tags("avc_aac_2s.flv");
    let (port, srv) = server(1).await;
    let opts = PublishOptions {
        realtime: true,
        duration: Some(Duration::from_millis(700)),
        ..Default::default()
    };
    let st = publish_flv(&format!("rtmp://127.0.0.1:{port}/live/rt"), &tags, &opts)
        .await
        .unwrap();
    let seen = srv.await.unwrap().pop().unwrap();
    assert!(
        st.duration >= Duration::from_millis(650),
        "{:?}",
        st.duration
    );
    assert!(st.duration < Duration::from_secs(3), "{:?}", st.duration);
    let last = seen.media.iter().map(|m| m.1).max().unwrap();
    assert!(
        (600..=740).contains(&last),
        "sent up to {last} ms in 0.7 s: {:?}",
        seen.media
            .iter()
            .map(|m| (m.0, m.1))
            .filter(|m| m.1 > 700)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn publish_many_runs_concurrent_streams() {
    let tags = Arc::new(fixture_tags("aac_only.flv"));
    let (port, srv) = server(4).await;
    let res = publish_many(
        &format!("rtmp://127.0.0.1:{port}/live"),
        4,
        tags.clone(),
        &PublishOptions::default(),
    )
    .await;
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    let mut names: Vec<String> = srv
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            assert_eq!(s.media.len(), expected_media(&tags, 0).len());
            s.publish_name
        })
        .collect();
    names.sort();
    assert_eq!(names, ["s0", "s1", "s2", "s3"]);
}

#[tokio::test]
async fn raw_conn_steps_and_malformed_input() {
    let (port, srv) = server(1).await;
    let mut c = RawConn::connect(("127.0.0.1", port)).await.unwrap();
    c.handshake().await.unwrap();
    c.connect_app("live", &format!("rtmp://127.0.0.1:{port}/live"))
        .await
        .unwrap();
    let id = c.create_stream().await.unwrap();
    assert_eq!(id, 7);
    assert_eq!(
        c.publish(id, "cam").await.unwrap(),
        "NetStream.Publish.Start"
    );
    c.announce_chunk_size(300).await.unwrap();
    c.send_message(6, msg_type::VIDEO, id, 0x0100_0000, &[0x17, 0, 0, 0, 0])
        .await
        .unwrap();
    c.set_chunk_size(128);
    // A fmt-3 chunk on a chunk stream never opened: the server must drop us.
    c.send_raw(&[0xc9, 1, 2, 3]).await.unwrap();
    assert!(c.is_closed_within(Duration::from_secs(5)).await);
    let seen = srv.await.unwrap().pop().unwrap();
    assert!(seen.protocol_error);
    assert_eq!(seen.chunk_size, 300);
    assert_eq!(seen.media.len(), 1);
    assert_eq!(seen.media[0].1, 0x0100_0000);
}
