#![allow(dead_code)]

use bytes::Bytes;
use flv::{FileTag, Parsed, TagType};
use liverec_fmp4::{Fmp4Muxer, Patch};
use media::{MediaEvent, Millis, Packet, TrackConfig, TrackKind};
use std::path::Path;

/// Configs (first of each kind) and frames of an FLV fixture.
pub struct Fixture {
    pub video: Option<TrackConfig>,
    pub audio: Option<TrackConfig>,
    pub packets: Vec<Packet>,
}

pub fn load(name: &str) -> Fixture {
    let mut f = Fixture {
        video: None,
        audio: None,
        packets: Vec::new(),
    };
    for FileTag {
        tag_type,
        timestamp,
        body,
        ..
    } in testkit::fixture_tags(name)
    {
        let dts = Millis::from_ms(i64::from(timestamp));
        let parsed = match tag_type {
            TagType::Audio => flv::parse_audio(body, dts),
            TagType::Video => flv::parse_video(body, dts),
            _ => continue,
        };
        match parsed {
            Ok(Parsed::Event(MediaEvent::Config(c))) => {
                let slot = match c.kind() {
                    TrackKind::Video => &mut f.video,
                    TrackKind::Audio => &mut f.audio,
                };
                slot.get_or_insert(c);
            }
            Ok(Parsed::Event(MediaEvent::Packet(p))) => f.packets.push(p),
            _ => {}
        }
    }
    f
}

/// Muxes packets; returns every emitted buffer in order plus the finish patches.
pub fn mux(f: &Fixture, base: Millis) -> (Vec<Bytes>, Vec<Patch>) {
    let mut m = Fmp4Muxer::new(f.video.as_ref(), f.audio.as_ref(), base).unwrap();
    let mut out = vec![m.init_segment()];
    for p in &f.packets {
        m.push(p, &mut out).unwrap();
    }
    let patches = m.finish(&mut out);
    let total: u64 = out.iter().map(|b| b.len() as u64).sum();
    assert_eq!(total, m.bytes_written());
    (out, patches)
}

pub fn concat(parts: &[Bytes]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

pub fn apply(file: &mut [u8], patches: &[Patch]) {
    for p in patches {
        let o = p.offset as usize;
        file[o..o + 8].copy_from_slice(&p.bytes);
    }
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}
