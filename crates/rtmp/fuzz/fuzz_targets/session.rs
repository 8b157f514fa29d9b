//! Arbitrary bytes after a valid (simple) handshake, fed in pieces whose sizes come from
//! the input, with every publish request accepted so media paths are reachable.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use liverec_rtmp::{ServerConfig, ServerEvent, ServerSession};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let mut s = ServerSession::new(ServerConfig::default());
    let mut hs = vec![3u8];
    hs.extend_from_slice(&[0u8; 1536 * 2]);
    let mut buf = BytesMut::from(&hs[..]);
    if s.handle_input(&mut buf).is_err() || !s.is_handshake_done() {
        panic!("valid handshake refused");
    }
    let piece = usize::from(split).max(1) * 7;
    let mut buf = BytesMut::new();
    for p in data.chunks(piece) {
        buf.extend_from_slice(p);
        let r = s.handle_input(&mut buf);
        while let Some(ev) = s.poll_event() {
            if let ServerEvent::PublishRequested(p) = ev {
                if split & 1 == 0 {
                    s.accept_publish(p.stream_id);
                } else {
                    s.reject_publish(p.stream_id, "NetStream.Publish.BadName", "fuzz");
                }
            }
        }
        while s.take_output().is_some() {}
        if r.is_err() {
            return;
        }
    }
});
