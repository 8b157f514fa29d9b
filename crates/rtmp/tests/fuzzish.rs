//! Deterministic random input after a valid handshake: no panics, whatever happens
//! (reliability.md C12, §1.8). The cargo-fuzz targets in `fuzz/` go further.

mod common;

use amf0::Value;
use bytes::BytesMut;
use common::*;
use liverec_rtmp::chunk::{msg_type, ChunkDecoder};
use liverec_rtmp::{ServerConfig, ServerEvent, ServerSession};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Feeds `data` in random-sized pieces; answers publish requests; drains everything.
/// Returns the number of events seen.
fn drive(rng: &mut StdRng, data: &[u8]) -> usize {
    let mut seen = 0;
    let mut s = session_after_handshake(ServerConfig::default());
    let mut buf = BytesMut::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(700));
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        let r = s.handle_input(&mut buf);
        while let Some(ev) = s.poll_event() {
            seen += 1;
            if let ServerEvent::PublishRequested(p) = ev {
                s.accept_publish(p.stream_id);
            }
        }
        while s.take_output().is_some() {}
        if r.is_err() {
            break;
        }
    }
    seen
}

#[test]
fn random_bytes_after_handshake() {
    let mut rng = StdRng::seed_from_u64(0x5EED_1935);
    for _ in 0..3000 {
        let len = rng.random_range(0..2000);
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        // Bias the first byte towards small csids with fmt 0 so more inputs get past the
        // first header.
        if let Some(b) = data.first_mut() {
            *b &= 0x07;
        }
        let _ = drive(&mut rng, &data);
        let mut d = ChunkDecoder::new(1 << 16, 8);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = d.decode(&mut buf) {}
    }
}

#[test]
fn mutated_publish_flows() {
    let mut c = Client::new();
    c.set_chunk_size(100)
        .command(0, &connect_cmd("live?vhost=v", Some("rtmp://h/live")))
        .command(0, &cmd("createStream", 2.0, &[]))
        .command(1, &cmd("publish", 3.0, &["k?a=b".into(), "live".into()]));
    let mut sdf = amf0::encode_all(&["@setDataFrame".into(), "onMetaData".into()]);
    sdf.extend(amf0::encode_all(&[Value::EcmaArray(vec![(
        "w".into(),
        1.0.into(),
    )])]));
    c.msg(4, 0, msg_type::DATA_AMF0, 1, sdf)
        .msg(6, 0x00FF_FFF0, msg_type::VIDEO, 1, vec![0x17; 350])
        .msg(4, 0x0100_0010, msg_type::AUDIO, 1, vec![0xAF; 30])
        .msg(6, 5, msg_type::AGGREGATE, 1, {
            let mut v = vec![9, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0x17, 1];
            v.extend_from_slice(&13u32.to_be_bytes());
            v
        })
        .command(0, &cmd("deleteStream", 4.0, &[1.0.into()]));
    let base = c.take().to_vec();

    let mut rng = StdRng::seed_from_u64(42);
    // Unmutated: connect, publish, metadata, video, audio, aggregate video, unpublish.
    assert_eq!(drive(&mut rng, &base), 7);
    for _ in 0..3000 {
        let mut data = base.clone();
        for _ in 0..rng.random_range(1..8) {
            let i = rng.random_range(0..data.len());
            match rng.random_range(0..4) {
                0 => data[i] = rng.random(),
                1 => data[i] ^= 1 << rng.random_range(0..8),
                2 => data[i] = [0, 0xFF, 0x7F, 0x80][rng.random_range(0..4)],
                _ => {
                    let j = (i + rng.random_range(0..64)).min(data.len());
                    data.drain(i..j);
                    if data.is_empty() {
                        break;
                    }
                }
            }
        }
        let _ = drive(&mut rng, &data);
    }
}

#[test]
fn random_handshakes() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..500 {
        let mut data = vec![0u8; rng.random_range(0..4000)];
        rng.fill_bytes(&mut data);
        if let Some(b) = data.first_mut() {
            *b = 3;
        }
        let mut s = ServerSession::new(ServerConfig::default());
        let mut buf = BytesMut::from(&data[..]);
        let _ = s.handle_input(&mut buf);
    }
}
