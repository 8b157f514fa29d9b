//! Test support: read our TS back with mpeg2ts's reader and check the invariants every
//! test relies on (188-byte packets, sync bytes, continuity counters per PID).

#![allow(dead_code)]

use std::collections::HashMap;

use bytes::Bytes;
use media::{MediaEvent, Millis, Packet, TrackConfig};
use mpeg2ts::pes::{PesPacketReader, ReadPesPacket};
use mpeg2ts::ts::payload::{Pat, Pmt};
use mpeg2ts::ts::{ReadTsPacket, TsPacket, TsPacketReader, TsPayload};

#[derive(Debug, Clone, PartialEq)]
pub struct Pes {
    pub stream_id: u8,
    pub pts: Option<u64>,
    pub dts: Option<u64>,
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Demuxed {
    pub pats: Vec<Pat>,
    pub pmts: Vec<Pmt>,
    pub packets: Vec<TsPacket>,
    pub video: Vec<Pes>,
    pub audio: Vec<Pes>,
}

pub fn concat(chunks: &[Bytes]) -> Vec<u8> {
    chunks.iter().flat_map(|b| b.iter().copied()).collect()
}

/// Parses a whole TS stream, asserting packet size, sync bytes and continuity counters.
pub fn demux(ts: &[u8]) -> Demuxed {
    assert_eq!(
        ts.len() % 188,
        0,
        "length {} not a multiple of 188",
        ts.len()
    );
    for (i, p) in ts.chunks(188).enumerate() {
        assert_eq!(p[0], 0x47, "packet {i} has no sync byte");
    }
    let mut d = Demuxed::default();
    let mut reader = TsPacketReader::new(ts);
    let mut last_cc: HashMap<u16, u8> = HashMap::new();
    while let Some(p) = reader.read_ts_packet().expect("mpeg2ts reads our TS") {
        let pid = p.header.pid.as_u16();
        let cc = p.header.continuity_counter.as_u8();
        if let Some(&prev) = last_cc.get(&pid) {
            let expected = if p.payload.is_some() {
                (prev + 1) & 15
            } else {
                prev
            };
            assert_eq!(cc, expected, "continuity counter on PID {pid:#x}");
        }
        last_cc.insert(pid, cc);
        match &p.payload {
            Some(TsPayload::Pat(pat)) => d.pats.push(pat.clone()),
            Some(TsPayload::Pmt(pmt)) => d.pmts.push(pmt.clone()),
            _ => {}
        }
        d.packets.push(p);
    }
    let mut reader = PesPacketReader::new(TsPacketReader::new(ts));
    while let Some(p) = reader.read_pes_packet().expect("mpeg2ts reads our PES") {
        let pes = Pes {
            stream_id: p.header.stream_id.as_u8(),
            pts: p.header.pts.map(|t| t.as_u64()),
            dts: p.header.dts.map(|t| t.as_u64()),
            data: p.data,
        };
        if pes.stream_id >= 0xe0 {
            d.video.push(pes);
        } else {
            d.audio.push(pes);
        }
    }
    d
}

/// The configs and frames of a committed FLV fixture, through our FLV parser.
pub fn fixture_events(name: &str) -> (Option<TrackConfig>, Option<TrackConfig>, Vec<Packet>) {
    let (mut video, mut audio, mut packets) = (None, None, Vec::new());
    for tag in testkit::fixture_tags(name) {
        let dts = Millis::from_ms(i64::from(tag.timestamp));
        let parsed = match tag.tag_type {
            flv::TagType::Audio => flv::parse_audio(tag.body.clone(), dts),
            flv::TagType::Video => flv::parse_video(tag.body.clone(), dts),
            _ => continue,
        };
        match parsed.expect("fixture tags parse") {
            flv::Parsed::Event(MediaEvent::Config(c)) => match c.kind() {
                media::TrackKind::Video => video = Some(c),
                media::TrackKind::Audio => audio = Some(c),
            },
            flv::Parsed::Event(MediaEvent::Packet(p)) => packets.push(p),
            _ => {}
        }
    }
    (video, audio, packets)
}
