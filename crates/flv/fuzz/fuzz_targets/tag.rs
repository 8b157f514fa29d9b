//! FLV tag parsing of arbitrary bytes: the input as a whole FLV file (`FlvReader`, every
//! tag body then parsed as audio/video like the replay publisher does), and the input
//! as one RTMP audio and one RTMP video message body (`parse_audio` / `parse_video`,
//! legacy FLV and Enhanced RTMP incl. ModEx chains). Never a panic; what parses is a
//! view of the body it came from.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use liverec_flv::{parse_audio, parse_video, FlvReader, Parsed, TagType};
use liverec_media::{MediaEvent, Millis};

fn check(body: &Bytes, r: Result<Parsed, liverec_flv::TagError>) {
    match r {
        Ok(Parsed::Event(MediaEvent::Packet(p))) => {
            assert_eq!(&p.flv, body, "packet flv is not the body");
            assert!(!p.data.is_empty(), "empty frame emitted");
            assert!(
                body.ends_with(&p.data),
                "packet data is not a suffix of the body"
            );
        }
        Ok(Parsed::Event(MediaEvent::Config(c))) => {
            assert_eq!(&c.flv, body, "config flv is not the body");
            assert!(
                body.ends_with(&c.record),
                "record is not a suffix of the body"
            );
        }
        Ok(Parsed::Event(_)) | Ok(Parsed::Skip(_)) => {}
        Err(e) => {
            // Every error renders (Display must not panic on odd FourCCs).
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let dts = Millis::from_ms(0);
    check(&bytes, parse_audio(bytes.clone(), dts));
    check(&bytes, parse_video(bytes.clone(), dts));

    if let Ok(mut r) = FlvReader::new(bytes.clone()) {
        let mut last = 0;
        while let Ok(Some(t)) = r.next_tag() {
            assert!(t.offset >= last && t.offset + 11 + t.body.len() + 4 <= data.len());
            last = t.offset + 1;
            let dts = Millis::from_ms(i64::from(t.timestamp));
            match t.tag_type {
                TagType::Audio => check(&t.body, parse_audio(t.body.clone(), dts)),
                TagType::Video => check(&t.body, parse_video(t.body.clone(), dts)),
                TagType::Script | TagType::Other(_) => {}
            }
        }
    }
});
