//! The server handshake on arbitrary client bytes (C0, C1, C2 and whatever follows),
//! fed in pieces whose size comes from the first byte. Its bit 0 asks for a C1 that
//! carries a valid Flash Player digest (computed here, at the scheme picked by bit 1,
//! over C1 padded with zeros to its 1536 bytes), so the complex handshake is reached
//! too: the fuzzer cannot forge an HMAC by itself. A C0 other than 3 is refused at
//! once (reliability.md H1); a digest-less C1 falls back to the simple form (H2); the
//! reply is S0S1S2 and nothing past C2 is consumed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use liverec_rtmp::handshake::{
    digest_position, fp_key_text, packet_digest, Handshake, HandshakeKind, PACKET_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut input = rest.to_vec();
    let complex = flags & 1 == 1 && input.first() == Some(&3);
    let base = if flags & 2 == 0 { 8 } else { 772 };
    if complex {
        if input.len() < 1 + PACKET_LEN {
            input.resize(1 + PACKET_LEN, 0);
        }
        let c1 = &mut input[1..1 + PACKET_LEN];
        let pos = digest_position(c1, base).expect("offset bytes inside C1");
        let d = packet_digest(c1, pos, fp_key_text()).expect("digest inside C1");
        c1[pos..pos + 32].copy_from_slice(&d);
    }

    let piece = usize::from(flags >> 2).max(1) * 61;
    let mut h = Handshake::new();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut consumed = 0;
    for p in input.chunks(piece) {
        buf.extend_from_slice(p);
        match h.handle(&mut buf, &mut out) {
            Ok(n) => consumed += n,
            Err(_) => {
                assert_ne!(input[0], 3, "a version-3 C0 was refused");
                assert!(out.is_empty(), "a reply after a refused C0");
                return;
            }
        }
    }
    assert!(input.is_empty() || input[0] == 3, "a bad C0 was accepted");
    assert!(consumed <= input.len());
    assert_eq!(consumed + buf.len(), input.len(), "bytes lost");
    if input.len() > PACKET_LEN {
        assert_eq!(out.len(), 1 + 2 * PACKET_LEN, "S0S1S2 not sent once");
        match h.kind() {
            Some(HandshakeKind::Complex { scheme_base }) => {
                // A random C1 can carry a valid digest at the other scheme only by chance.
                if complex {
                    assert!(scheme_base == 8 || scheme_base == 772);
                }
            }
            Some(HandshakeKind::Simple) => {
                assert!(!complex, "a valid digest was not recognised");
                assert_eq!(
                    &out[1 + PACKET_LEN..],
                    &input[1..1 + PACKET_LEN],
                    "S2 is not C1"
                );
            }
            None => panic!("C1 read but no handshake kind"),
        }
        assert_eq!(h.is_done(), input.len() >= 1 + 2 * PACKET_LEN);
        if h.is_done() {
            assert_eq!(consumed, 1 + 2 * PACKET_LEN, "consumed past C2");
        }
    } else {
        assert!(out.is_empty() && !h.is_done());
    }
});
