//! The chunk decoder alone, with small limits so the limit paths are reached, fed whole
//! and then byte by byte: both must give the same messages.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use liverec_rtmp::chunk::ChunkDecoder;

fuzz_target!(|data: &[u8]| {
    let mut whole = Vec::new();
    let mut d = ChunkDecoder::new(1 << 16, 8);
    let mut buf = BytesMut::from(data);
    let whole_err = loop {
        match d.decode(&mut buf) {
            Ok(Some(m)) => whole.push(m),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };

    let mut bytewise = Vec::new();
    let mut d = ChunkDecoder::new(1 << 16, 8);
    let mut buf = BytesMut::new();
    let mut err = false;
    'outer: for &b in data {
        buf.extend_from_slice(&[b]);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => bytewise.push(m),
                Ok(None) => break,
                Err(_) => {
                    err = true;
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(whole, bytewise, "split input decoded differently");
    assert_eq!(whole_err, err);
});
