//! AMF0 decoding of arbitrary bytes as a sequence of values (an RTMP command or an FLV
//! `onMetaData` body), with the default limits and with small ones so the depth and
//! value caps are reached. Whatever decodes is re-encoded: that must decode again, and
//! its encoding must then be stable (a round trip; compared as bytes because a decoded
//! NaN is not equal to itself, and because decoding normalises a few things: invalid
//! UTF-8 becomes U+FFFD, `unsupported` becomes `undefined`, ECMA counts and date
//! time zones are rewritten).
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverec_amf0::{decode_all, encode_all, Decoder, Limits};

fn roundtrip(values: &[liverec_amf0::Value], limits: Limits) {
    let once = encode_all(values);
    let again = Decoder::new(&once, limits)
        .decode_all()
        .expect("re-encoded AMF0 does not decode");
    assert_eq!(again.len(), values.len(), "value count changed");
    assert_eq!(encode_all(&again), once, "re-encoding is not stable");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = decode_all(data) {
        roundtrip(&values, Limits::default());
    }
    let small = Limits {
        max_depth: 3,
        max_values: 16,
    };
    if let Ok(values) = Decoder::new(data, small).decode_all() {
        roundtrip(&values, small);
    }
    // Value by value, as the RTMP session reads a command's optional arguments.
    let mut d = Decoder::new(data, Limits::default());
    while !d.is_empty() {
        let before = d.position();
        if d.next_value().is_err() {
            break;
        }
        assert!(d.position() > before && d.position() <= data.len());
    }
});
