//! The init segment: `ftyp` + `moov` (R-FM-3).
//!
//! Leaf boxes are encoded by mp4-atom; the containers down to the sample entry are
//! assembled here so that the codec configuration box (avcC / hvcC / av1C) carries the
//! encoder's record byte for byte. mp4-atom would re-encode a decoded record, which can
//! differ (reserved bits, a dropped High-profile extension), and its `Codec::Unknown`
//! cannot be encoded, so there is no pass-through on its side.

use media::{AudioCodec, Codec, VideoCodec};
use mp4_atom::{
    esds::{DecoderConfig, DecoderSpecific, EsDescriptor, SLConfig},
    Audio, Dinf, Dref, Esds, FourCC, Ftyp, Hdlr, Matrix, Mdhd, Mehd, Mp4a, Mvhd, Smhd, Stco, Stsc,
    Stsz, Stts, Tkhd, Trex, Url, Visual, Vmhd,
};

use crate::{Fmp4Error, MOVIE_TIMESCALE};

/// What the init segment needs to know about one track.
pub(crate) struct TrackDesc {
    pub id: u32,
    pub codec: Codec,
    pub timescale: u32,
    pub record: bytes::Bytes,
    pub channels: u16,
    pub sample_rate: u32,
    pub width: u16,
    pub height: u16,
}

pub(crate) struct Init {
    pub bytes: bytes::Bytes,
    /// File offset of mehd's 64-bit `fragment_duration` (the init segment opens the file).
    pub mehd_offset: u64,
}

fn enc<T: mp4_atom::Encode>(v: &T, buf: &mut Vec<u8>) -> Result<(), Fmp4Error> {
    v.encode(buf).map_err(Fmp4Error::Encode)
}

/// A plain container box around already encoded children.
fn wrap(kind: &[u8; 4], body: &[u8]) -> Result<Vec<u8>, Fmp4Error> {
    let size = u32::try_from(body.len() + 8).map_err(|_| Fmp4Error::InitTooLarge)?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    Ok(out)
}

pub(crate) fn build(tracks: &[TrackDesc]) -> Result<Init, Fmp4Error> {
    let mut ftyp = Vec::new();
    let mut brands = vec![
        FourCC::new(b"isom"),
        FourCC::new(b"iso6"),
        FourCC::new(b"mp41"),
    ];
    if tracks
        .iter()
        .any(|t| t.codec == Codec::Video(VideoCodec::H264))
    {
        brands.push(FourCC::new(b"avc1"));
    }
    if tracks
        .iter()
        .any(|t| t.codec == Codec::Video(VideoCodec::Av1))
    {
        brands.push(FourCC::new(b"av01"));
    }
    enc(
        &Ftyp {
            // iso6: tfdt version 1 and signed composition offsets (trun version 1).
            major_brand: FourCC::new(b"iso6"),
            minor_version: 0,
            compatible_brands: brands,
        },
        &mut ftyp,
    )?;

    let mut mvhd = Vec::new();
    enc(
        &Mvhd {
            timescale: MOVIE_TIMESCALE,
            // Fragmented: the duration lives in mehd (patched on finish), not here.
            duration: 0,
            rate: 1.into(),
            volume: 1.into(),
            matrix: Matrix::default(),
            next_track_id: tracks.iter().map(|t| t.id).max().unwrap_or(0) + 1,
            ..Default::default()
        },
        &mut mvhd,
    )?;

    let mut traks = Vec::new();
    for t in tracks {
        traks.extend_from_slice(&trak(t)?);
    }

    let mut mvex_body = Vec::new();
    enc(
        &Mehd {
            // Placeholder; mp4-atom always writes version 1 (64-bit), so the patch is 8 bytes.
            fragment_duration: 0,
        },
        &mut mvex_body,
    )?;
    for t in tracks {
        enc(
            &Trex {
                track_id: t.id,
                default_sample_description_index: 1,
                ..Default::default()
            },
            &mut mvex_body,
        )?;
    }
    let mvex = wrap(b"mvex", &mvex_body)?;

    let mut moov_body = mvhd;
    let mvhd_len = moov_body.len();
    moov_body.extend_from_slice(&traks);
    moov_body.extend_from_slice(&mvex);
    let moov = wrap(b"moov", &moov_body)?;

    // ftyp | moov hdr | mvhd | traks | mvex hdr | mehd hdr | version+flags | duration
    let mehd_offset = (ftyp.len() + 8 + mvhd_len + traks.len() + 8 + 8 + 4) as u64;
    let mut bytes = ftyp;
    bytes.extend_from_slice(&moov);
    Ok(Init {
        bytes: bytes.into(),
        mehd_offset,
    })
}

fn trak(t: &TrackDesc) -> Result<Vec<u8>, Fmp4Error> {
    let video = matches!(t.codec, Codec::Video(_));
    let mut tkhd = Vec::new();
    enc(
        &Tkhd {
            track_id: t.id,
            enabled: true,
            in_movie: true,
            volume: if video { 0.into() } else { 1.into() },
            matrix: Matrix::default(),
            width: t.width.into(),
            height: t.height.into(),
            ..Default::default()
        },
        &mut tkhd,
    )?;

    let mut mdia = Vec::new();
    enc(
        &Mdhd {
            timescale: t.timescale,
            language: "und".into(),
            ..Default::default()
        },
        &mut mdia,
    )?;
    enc(
        &Hdlr {
            handler: FourCC::new(if video { b"vide" } else { b"soun" }),
            name: if video {
                "VideoHandler"
            } else {
                "SoundHandler"
            }
            .into(),
        },
        &mut mdia,
    )?;

    let mut minf = Vec::new();
    if video {
        enc(&Vmhd::default(), &mut minf)?;
    } else {
        enc(&Smhd::default(), &mut minf)?;
    }
    enc(
        &Dinf {
            dref: Dref {
                entries: vec![Url::default().into()],
            },
        },
        &mut minf,
    )?;

    // Empty sample tables: every sample lives in a fragment.
    let mut stbl = stsd(t)?;
    enc(&Stts::default(), &mut stbl)?;
    enc(&Stsc::default(), &mut stbl)?;
    enc(&Stsz::default(), &mut stbl)?;
    enc(&Stco::default(), &mut stbl)?;
    minf.extend_from_slice(&wrap(b"stbl", &stbl)?);
    mdia.extend_from_slice(&wrap(b"minf", &minf)?);
    tkhd.extend_from_slice(&wrap(b"mdia", &mdia)?);
    wrap(b"trak", &tkhd)
}

fn stsd(t: &TrackDesc) -> Result<Vec<u8>, Fmp4Error> {
    let entry = match t.codec {
        Codec::Video(v) => {
            let (kind, config): (&[u8; 4], &[u8; 4]) = match v {
                // hvc1 (parameter sets in hvcC) is what Apple players require.
                VideoCodec::H264 => (b"avc1", b"avcC"),
                VideoCodec::Hevc => (b"hvc1", b"hvcC"),
                VideoCodec::Av1 => (b"av01", b"av1C"),
            };
            let mut body = Vec::new();
            enc(
                &Visual {
                    data_reference_index: 1,
                    width: t.width,
                    height: t.height,
                    ..Default::default()
                },
                &mut body,
            )?;
            body.extend_from_slice(&wrap(config, &t.record)?);
            wrap(kind, &body)?
        }
        Codec::Audio(a) => {
            let (oti, dec_specific) = match a {
                // 0x40: MPEG-4 Audio; the DecoderSpecificInfo is the encoder's own
                // AudioSpecificConfig (SBR/PS signalling and explicit rates survive).
                AudioCodec::Aac => (
                    0x40,
                    Some(DecoderSpecific {
                        raw: t.record.to_vec(),
                        ..Default::default()
                    }),
                ),
                // 0x6B: MPEG-1 audio, 0x69: MPEG-2 (half rates); MP3 needs no config.
                AudioCodec::Mp3 if t.sample_rate >= 32000 => (0x6B, None),
                AudioCodec::Mp3 => (0x69, None),
            };
            let mut body = Vec::new();
            enc(
                &Mp4a {
                    audio: Audio {
                        data_reference_index: 1,
                        channel_count: t.channels,
                        sample_size: 16,
                        // 16.16 fixed point: rates above 65535 Hz cannot be stated here;
                        // the mdhd timescale carries the real rate.
                        sample_rate: u16::try_from(t.sample_rate).unwrap_or(0).into(),
                    },
                    esds: Esds {
                        es_desc: EsDescriptor {
                            es_id: u16::try_from(t.id).unwrap_or(0),
                            dec_config: DecoderConfig {
                                object_type_indication: oti,
                                stream_type: 5, // audio stream
                                dec_specific,
                                ..Default::default()
                            },
                            sl_config: SLConfig {},
                            ..Default::default()
                        },
                    },
                    btrt: None,
                    taic: None,
                },
                &mut body,
            )?;
            body
        }
    };
    // stsd is a full box: version 0, flags 0, entry_count 1.
    let mut body = vec![0, 0, 0, 0, 0, 0, 0, 1];
    body.extend_from_slice(&entry);
    wrap(b"stsd", &body)
}
