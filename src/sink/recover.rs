//! Crash recovery (R-ST-4, DESIGN "crash safety by construction"): on start, whatever a
//! killed daemon left in the spool is finalized and stored before anything new is
//! recorded — open files are cut back to their last complete tag / frame / fragment /
//! packet and patched like a normal close, finished files waiting for S3 are queued again,
//! and open HLS playlists get their last segment and `#EXT-X-ENDLIST`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use flv::mux::Patch;
use tracing::{info, warn};

use super::store::Backend;
use super::upload::{meta_path, Job};
use super::{RecMeta, Sink, UpMeta};
use crate::ingest::identity::StreamId;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecoveryReport {
    /// Open files finalized and stored.
    pub finalized: usize,
    /// Finished files whose upload was still pending, queued again.
    pub requeued: usize,
    /// Open playlists ended.
    pub playlists: usize,
    /// Spool bytes found.
    pub bytes: u64,
}

/// A spool file name taken apart (see the layout in `mod.rs`).
#[derive(Debug, Clone, PartialEq)]
struct SpoolName {
    tag: String,
    seq: u64,
    start_ms: i64,
    segment: Option<u64>,
    ext: String,
}

fn parse_name(file: &str) -> Option<SpoolName> {
    let stem = file
        .strip_suffix(".part")
        .or_else(|| file.strip_suffix(".up"))?;
    let mut it = stem.split('.');
    let tag = it.next()?.to_string();
    let seq = it.next()?.parse().ok()?;
    let start_ms = it.next()?.parse().ok()?;
    let mut rest: Vec<&str> = it.collect();
    let ext = rest.pop()?.to_string();
    let segment = match rest.as_slice() {
        [] => None,
        [s] => Some(s.strip_prefix('s')?.parse().ok()?),
        _ => return None,
    };
    Some(SpoolName {
        tag,
        seq,
        start_ms,
        segment,
        ext,
    })
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

#[derive(Default)]
struct Dir {
    metas: HashMap<String, RecMeta>,
    manifests: Vec<PathBuf>,
    parts: Vec<(PathBuf, SpoolName)>,
    ups: Vec<(PathBuf, SpoolName)>,
    /// `{tag}.{seq}` → marker path.
    playlists: BTreeMap<(String, u64), PathBuf>,
    /// Streaming uploads left open.
    mpus: Vec<PathBuf>,
}

pub async fn run(sink: &Arc<Sink>) -> RecoveryReport {
    let spool = sink.spool.clone();
    let dirs = match tokio::task::spawn_blocking(move || scan(&spool)).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            warn!("cannot scan the spool for unfinished files: {e}");
            return RecoveryReport::default();
        }
        Err(e) => {
            warn!("spool scan failed: {e}");
            return RecoveryReport::default();
        }
    };
    let mut report = RecoveryReport::default();
    for (dir, d) in dirs {
        recover_dir(sink, &dir, d, &mut report).await;
    }
    sink.quota.add(report.bytes);
    if report != RecoveryReport::default() {
        info!(
            finalized = report.finalized,
            requeued = report.requeued,
            playlists = report.playlists,
            bytes = report.bytes,
            "recovered unfinished files from the spool"
        );
    }
    report
}

fn scan(spool: &Path) -> std::io::Result<BTreeMap<PathBuf, Dir>> {
    let mut out: BTreeMap<PathBuf, Dir> = BTreeMap::new();
    let mut stack = vec![spool.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for de in std::fs::read_dir(&dir)? {
            let de = de?;
            let path = de.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if de.file_type()?.is_dir() {
                if !name.starts_with('.') {
                    stack.push(path);
                }
                continue;
            }
            let d = out.entry(dir.clone()).or_default();
            if let Some(tag) = name.strip_suffix(".rec.json") {
                match std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<RecMeta>(&b).ok())
                {
                    Some(m) => {
                        d.metas.insert(tag.to_string(), m);
                    }
                    None => warn!(file = %path.display(), "unreadable recording manifest"),
                }
                d.manifests.push(path);
            } else if name.ends_with(".mpu.json") {
                d.mpus.push(path);
            } else if let Some(stem) = name.strip_suffix(".m3u8.json") {
                if let Some((tag, seq)) = stem.split_once('.') {
                    if let Ok(seq) = seq.parse() {
                        d.playlists.insert((tag.to_string(), seq), path);
                    }
                }
            } else if name.ends_with(".part") || name.ends_with(".up") {
                match parse_name(&name) {
                    Some(n) if name.ends_with(".part") => d.parts.push((path, n)),
                    Some(n) => d.ups.push((path, n)),
                    None => {
                        warn!(file = %path.display(), "spool file with an unknown name left alone")
                    }
                }
            }
        }
    }
    Ok(out)
}

fn stream_of(sink: &Sink, dir: &Path) -> Option<StreamId> {
    let rel = dir.strip_prefix(&sink.spool).ok()?;
    let parts: Vec<&str> = rel.iter().filter_map(|s| s.to_str()).collect();
    match parts.as_slice() {
        [domain, app, stream] => Some(StreamId {
            domain: domain.to_string(),
            app: app.to_string(),
            stream: stream.to_string(),
        }),
        _ => None,
    }
}

async fn recover_dir(sink: &Arc<Sink>, dir: &Path, mut d: Dir, report: &mut RecoveryReport) {
    // Streaming uploads of files the last run never finished: aborted; the files are
    // uploaded whole below.
    for rec in std::mem::take(&mut d.mpus) {
        let meta = std::fs::read(&rec)
            .ok()
            .and_then(|b| serde_json::from_slice::<super::upload::MpuMeta>(&b).ok());
        match (meta, &sink.uploader) {
            (Some(m), Some(u)) => u.abort_orphan(m, rec),
            _ => {
                let _ = std::fs::remove_file(&rec);
            }
        }
    }
    for (p, _) in d.parts.iter().chain(d.ups.iter()) {
        report.bytes += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    // Finished files waiting for their upload (S3), except HLS segments: those go with
    // their playlist, in order.
    let ups = std::mem::take(&mut d.ups);
    let (seg_ups, file_ups): (Vec<_>, Vec<_>) =
        ups.into_iter().partition(|(_, n)| n.segment.is_some());
    for (path, _) in file_ups {
        if requeue(sink, &path).await {
            report.requeued += 1;
        }
    }
    // Open files: finalize and store.
    let parts = std::mem::take(&mut d.parts);
    let (seg_parts, file_parts): (Vec<_>, Vec<_>) =
        parts.into_iter().partition(|(_, n)| n.segment.is_some());
    for (path, n) in file_parts {
        let meta = d.metas.get(&n.tag).cloned().or_else(|| {
            let id = stream_of(sink, dir)?;
            Some(RecMeta {
                domain: id.domain,
                app: id.app,
                stream: id.stream,
                ext: n.ext.clone(),
                file_name: format!("{{StreamID}}_recovered_{}_{}", n.tag, n.seq),
                task_id: String::new(),
                storage_time: 0,
                utc_offset_s: 0,
            })
        });
        let Some(meta) = meta else {
            warn!(file = %path.display(), "unfinished file outside a stream directory left alone");
            continue;
        };
        if finalize_file(sink, &path, &n, &meta).await {
            report.finalized += 1;
        }
    }
    // Playlists: their pending and open segments, then the playlist with ENDLIST.
    for ((tag, seq), marker) in std::mem::take(&mut d.playlists) {
        let of_this = |n: &SpoolName| n.tag == tag && n.seq == seq;
        let mut pending: Vec<(PathBuf, SpoolName)> = seg_ups
            .iter()
            .filter(|(_, n)| of_this(n))
            .cloned()
            .collect();
        pending.sort_by_key(|(_, n)| n.segment);
        let open: Vec<(PathBuf, SpoolName)> = seg_parts
            .iter()
            .filter(|(_, n)| of_this(n))
            .cloned()
            .collect();
        let copy = dir.join(format!("{tag}.{seq}.m3u8"));
        if end_playlist(sink, &marker, &copy, pending, open).await {
            report.playlists += 1;
        }
    }
    for m in &d.manifests {
        let _ = std::fs::remove_file(m);
    }
}

async fn requeue(sink: &Arc<Sink>, path: &Path) -> bool {
    let meta = meta_path(path);
    let Some(up) = std::fs::read(&meta)
        .ok()
        .and_then(|b| serde_json::from_slice::<UpMeta>(&b).ok())
    else {
        warn!(file = %path.display(), "finished spool file without its key record left alone");
        return false;
    };
    match (&**sink.backend(), &sink.uploader) {
        (Backend::S3(_), Some(u)) => {
            u.upload_file(Job {
                path: path.to_path_buf(),
                meta,
                key: up.key,
                storage_time: up.storage_time,
                closed: Instant::now(),
                info: up.info,
            });
            true
        }
        (Backend::Local { root }, _) => {
            // Recorded for S3, now configured for a local directory: it goes there.
            let r = sink.move_into_root(path, root, &up.key).await;
            let _ = std::fs::remove_file(&meta);
            r.is_ok()
        }
        _ => false,
    }
}

/// What a repair found: the length to keep, the media duration, and the patches that
/// finalize the file.
#[derive(Debug, PartialEq)]
pub struct Repaired {
    pub len: u64,
    pub duration_ms: i64,
    pub patches: Vec<Patch>,
}

async fn finalize_file(sink: &Arc<Sink>, path: &Path, n: &SpoolName, meta: &RecMeta) -> bool {
    let (p2, ext) = (path.to_path_buf(), n.ext.clone());
    let repaired = tokio::task::spawn_blocking(move || repair_path(&p2, &ext)).await;
    let r = match repaired {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            warn!(file = %path.display(), "cannot repair unfinished file, left in the spool: {e}");
            return false;
        }
        Err(e) => {
            warn!(file = %path.display(), "repair task failed: {e}");
            return false;
        }
    };
    if r.len == 0 {
        let _ = std::fs::remove_file(path);
        return false;
    }
    let start = ms_to_time(n.start_ms);
    let end = start + chrono::Duration::milliseconds(r.duration_ms);
    let name = meta.render(n.seq, start, end);
    match sink
        .store_finished(
            path,
            &meta.id(),
            &name,
            &meta.ext,
            meta.storage_time,
            None,
            Some(meta.record(start, r.duration_ms)),
        )
        .await
    {
        Ok(key) => {
            info!(key = %key, bytes = r.len, duration_ms = r.duration_ms, "recovered unfinished file");
            true
        }
        Err(e) => {
            warn!(file = %path.display(), "storing recovered file failed: {e}");
            false
        }
    }
}

/// Cuts the file back to what is complete and applies the finalizing patches.
fn repair_path(path: &Path, ext: &str) -> std::io::Result<Repaired> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let r = match ext {
        "flv" => repair_flv(&f)?,
        "aac" => repair_aac(&f)?,
        "mp4" => repair_mp4(&f)?,
        "ts" => repair_ts(&f)?,
        other => {
            return Err(std::io::Error::other(format!(
                "no repair for .{other} files"
            )))
        }
    };
    f.set_len(r.len)?;
    for p in &r.patches {
        f.write_all_at(&p.bytes, p.offset)?;
    }
    Ok(r)
}

fn read_at(f: &std::fs::File, off: u64, n: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; n];
    match f.read_exact_at(&mut buf, off) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// FLV: keep whole tags (header + body + PreviousTagSize), then patch `duration` and
/// `filesize` in `onMetaData` as the muxer does on a normal close.
pub fn repair_flv(f: &std::fs::File) -> std::io::Result<Repaired> {
    let len = f.metadata()?.len();
    let Some(h) = read_at(f, 0, 13)? else {
        return Ok(Repaired {
            len: 0,
            duration_ms: 0,
            patches: Vec::new(),
        });
    };
    if &h[..3] != b"FLV" {
        return Err(std::io::Error::other("not an FLV file"));
    }
    let mut pos = u64::from(u32::from_be_bytes([h[5], h[6], h[7], h[8]])) + 4;
    let (mut first, mut last) = (None::<i64>, 0i64);
    while let Some(th) = read_at(f, pos, 11)? {
        let size = u64::from(u32::from_be_bytes([0, th[1], th[2], th[3]]));
        let next = pos + 11 + size + 4;
        if next > len {
            break;
        }
        let ts = i64::from(u32::from_be_bytes([th[7], th[4], th[5], th[6]]));
        if th[0] & 0x1f != 18 {
            first.get_or_insert(ts);
            last = last.max(ts);
        }
        pos = next;
    }
    let duration_ms = first.map_or(0, |f0| last - f0);
    let head = read_at(f, 0, pos.min(64 * 1024) as usize)?.unwrap_or_default();
    let patches =
        flv::mux::patches_for_existing(&head, duration_ms as f64 / 1000.0, pos).unwrap_or_default();
    Ok(Repaired {
        len: pos,
        duration_ms,
        patches,
    })
}

/// ADTS: keep whole frames; each is 1024 samples at the header's sample rate.
pub fn repair_aac(f: &std::fs::File) -> std::io::Result<Repaired> {
    const RATES: [i64; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let len = f.metadata()?.len();
    let (mut pos, mut frames, mut rate) = (0u64, 0i64, 0i64);
    while let Some(h) = read_at(f, pos, 7)? {
        if h[0] != 0xff || h[1] & 0xf0 != 0xf0 {
            break;
        }
        let flen = (u64::from(h[3] & 3) << 11) | (u64::from(h[4]) << 3) | u64::from(h[5] >> 5);
        if flen < 7 || pos + flen > len {
            break;
        }
        rate = RATES
            .get(usize::from((h[2] >> 2) & 0xf))
            .copied()
            .unwrap_or(0);
        frames += 1;
        pos += flen;
    }
    let duration_ms = if rate > 0 {
        frames * 1024 * 1000 / rate
    } else {
        0
    };
    Ok(Repaired {
        len: pos,
        duration_ms,
        patches: Vec::new(),
    })
}

/// Fragmented MP4: keep `ftyp`/`moov` and every complete `moof` + `mdat` pair, then state
/// the kept duration in `mehd` as a normal close does (each track's end = its last
/// fragment's `tfdt` plus its sample durations, in its own timescale).
pub fn repair_mp4(f: &std::fs::File) -> std::io::Result<Repaired> {
    use mp4_atom::{Decode, Moof, Moov};
    let len = f.metadata()?.len();
    let (mut pos, mut keep) = (0u64, 0u64);
    let mut in_fragment = false;
    let mut moov: Option<(u64, Vec<u8>)> = None;
    // Per track: (end in the track timescale) of the complete fragments so far, and of the
    // fragment being read (committed when its mdat is complete).
    let mut ends: HashMap<u32, u64> = HashMap::new();
    let mut pending: HashMap<u32, u64> = HashMap::new();
    while let Some(h) = read_at(f, pos, 8)? {
        let mut size = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
        let kind = [h[4], h[5], h[6], h[7]];
        if size == 1 {
            let Some(l) = read_at(f, pos + 8, 8)? else {
                break;
            };
            size = u64::from_be_bytes(l.try_into().unwrap_or([0; 8]));
        } else if size == 0 {
            size = len - pos;
        }
        if size < 8 || pos + size > len {
            break;
        }
        match &kind {
            b"moov" if size < 16 << 20 => {
                moov = read_at(f, pos, size as usize)?.map(|b| (pos, b));
            }
            b"moof" if size < 64 << 20 => {
                pending.clear();
                if let Some(b) = read_at(f, pos, size as usize)? {
                    if let Ok(m) = Moof::decode(&mut &b[..]) {
                        for traf in &m.traf {
                            let base = traf.tfdt.as_ref().map_or(0, |t| t.base_media_decode_time);
                            let default = traf.tfhd.default_sample_duration.unwrap_or(0);
                            let dur: u64 = traf
                                .trun
                                .iter()
                                .flat_map(|t| t.samples.iter())
                                .map(|s| u64::from(s.duration.unwrap_or(default)))
                                .sum();
                            pending.insert(traf.tfhd.track_id, base + dur);
                        }
                    }
                }
            }
            _ => {}
        }
        pos += size;
        match &kind {
            b"moof" => in_fragment = true,
            b"mdat" => {
                in_fragment = false;
                keep = pos;
                for (id, end) in pending.drain() {
                    let e = ends.entry(id).or_default();
                    *e = (*e).max(end);
                }
            }
            _ if !in_fragment => keep = pos,
            _ => {}
        }
    }
    let mut duration_ms = 0i64;
    let mut patches = Vec::new();
    if let Some((at, bytes)) = &moov {
        if let Ok(m) = Moov::decode(&mut &bytes[..]) {
            for t in &m.trak {
                let ts = u64::from(t.mdia.mdhd.timescale.max(1));
                if let Some(end) = ends.get(&t.tkhd.track_id) {
                    let ms = (u128::from(*end) * 1000).div_ceil(u128::from(ts));
                    duration_ms = duration_ms.max(i64::try_from(ms).unwrap_or(i64::MAX));
                }
            }
            // mehd's fragment_duration, in the movie timescale.
            let movie_ts = u128::from(m.mvhd.timescale.max(1));
            if let Some(p) = bytes.windows(4).position(|w| w == b"mehd") {
                let v = bytes.get(p + 4).copied().unwrap_or(0);
                let value = (duration_ms.max(0) as u128 * movie_ts / 1000) as u64;
                let offset = at + p as u64 + 8;
                // Our muxer writes version 1 (64-bit); anything else is left as it is.
                if v == 1 && offset + 8 <= keep {
                    patches.push(Patch {
                        offset,
                        bytes: value.to_be_bytes(),
                    });
                }
            }
        }
    }
    Ok(Repaired {
        len: keep,
        duration_ms,
        patches,
    })
}

/// MPEG-TS: whole 188-byte packets, cut before the last video PES (it may be partial);
/// the duration is the span of the kept video PTS plus one frame.
pub fn repair_ts(f: &std::fs::File) -> std::io::Result<Repaired> {
    let len = f.metadata()?.len();
    let whole = len - len % 188;
    let Some(data) = read_at(f, 0, whole as usize)? else {
        return Ok(Repaired {
            len: 0,
            duration_ms: 0,
            patches: Vec::new(),
        });
    };
    // PES starts (offset, pid, pts) of every stream.
    let mut starts: Vec<(usize, u16, Option<i64>)> = Vec::new();
    for (i, p) in data.chunks_exact(188).enumerate() {
        if p[0] != 0x47 {
            break;
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        if !pusi || pid == 0 || pid == 0x1fff {
            continue;
        }
        let afc = (p[3] >> 4) & 3;
        let mut off = 4usize;
        if afc == 2 {
            continue;
        }
        if afc == 3 {
            off += 1 + usize::from(p[4]);
        }
        let pes = p.get(off..).unwrap_or(&[]);
        if pes.len() < 14 || pes[..3] != [0, 0, 1] {
            continue;
        }
        let sid = pes[3];
        let pts = (pes[7] & 0x80 != 0).then(|| {
            let b = &pes[9..14];
            (i64::from(b[0] >> 1 & 7) << 30)
                | (i64::from(b[1]) << 22)
                | (i64::from(b[2] >> 1) << 15)
                | (i64::from(b[3]) << 7)
                | i64::from(b[4] >> 1)
        });
        let video = (0xe0..=0xef).contains(&sid);
        starts.push((i * 188, if video { 1 } else { 2 }, pts));
    }
    let last_video = starts.iter().rposition(|s| s.1 == 1);
    let keep = match last_video {
        Some(i) if i > 0 => starts[i].0 as u64,
        _ => whole,
    };
    let mut pts: Vec<i64> = starts
        .iter()
        .filter(|s| (s.0 as u64) < keep && (last_video.is_none() || s.1 == 1))
        .filter_map(|s| s.2)
        .collect();
    pts.sort_unstable();
    let duration_ms = match (pts.first(), pts.last()) {
        (Some(a), Some(b)) if pts.len() > 1 => {
            let frame = (b - a) / (pts.len() as i64 - 1);
            (b - a + frame) / 90
        }
        _ => 0,
    };
    Ok(Repaired {
        len: keep,
        duration_ms,
        patches: Vec::new(),
    })
}

/// Ends an open playlist: stores its pending and open segments (in order), then the
/// playlist with `#EXT-X-ENDLIST`.
async fn end_playlist(
    sink: &Arc<Sink>,
    marker: &Path,
    copy: &Path,
    pending: Vec<(PathBuf, SpoolName)>,
    open: Vec<(PathBuf, SpoolName)>,
) -> bool {
    let Some(up) = std::fs::read(marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<UpMeta>(&b).ok())
    else {
        warn!(file = %marker.display(), "unreadable playlist record left alone");
        return false;
    };
    let key = up.key.clone();
    let stem = super::file_of(&key)
        .strip_suffix(".m3u8")
        .unwrap_or(super::file_of(&key))
        .to_string();
    let id_prefix = key
        .rsplit_once('/')
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    // The playlist as last written: the spool copy (S3) or the stored one (local).
    let text = match &**sink.backend() {
        Backend::Local { root } => tokio::fs::read_to_string(root.join(&key)).await.ok(),
        Backend::S3(_) => tokio::fs::read_to_string(copy).await.ok(),
    };
    let mut playlist = text
        .and_then(|t| hls::MediaPlaylist::parse(&t).ok())
        .map(|(p, _)| p)
        .unwrap_or_default();
    // The segment that was being written: cut back to whole packets and appended.
    let mut extra: Vec<(PathBuf, String)> = Vec::new();
    for (path, n) in open {
        let p2 = path.clone();
        let r = tokio::task::spawn_blocking(move || repair_path(&p2, "ts")).await;
        let Ok(Ok(r)) = r else {
            warn!(file = %path.display(), "cannot repair an unfinished HLS segment");
            continue;
        };
        if r.len == 0 || r.duration_ms <= 0 {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let seg_n = n.segment.unwrap_or(0);
        let seg_key = format!("{id_prefix}/{stem}_{seg_n}.ts");
        playlist.push_segment(hls::Segment {
            uri: super::file_of(&seg_key).to_string(),
            duration: r.duration_ms as f64 / 1000.0,
            program_date_time: Some(ms_to_time(n.start_ms)),
            discontinuity: false,
        });
        extra.push((path, seg_key));
    }
    let text = playlist.render(true);
    // Its recordings index entry: the one the marker holds (or, from a marker written
    // before markers held one, what the stream directory and the playlist say), spanning
    // the segments it ended with.
    let duration_ms: i64 = playlist
        .segments()
        .iter()
        .map(|s| (s.duration * 1000.0).round() as i64)
        .sum();
    let info = up.info.clone().or_else(|| {
        let id = stream_of(sink, marker.parent()?)?;
        let start = playlist
            .segments()
            .first()
            .and_then(|s| s.program_date_time)
            .unwrap_or_else(Utc::now);
        Some(super::retention::FileRecord {
            domain: id.domain,
            app: id.app,
            stream: id.stream,
            start_ms: start.timestamp_millis(),
            ..Default::default()
        })
    });
    let info = info.map(|mut i| {
        i.key = key.clone();
        i.format = "hls".into();
        i.duration_ms = duration_ms;
        i.end_ms = i.start_ms + duration_ms;
        i
    });
    match (&**sink.backend(), &sink.uploader) {
        (Backend::Local { root }, _) => {
            for (path, seg_key) in &extra {
                if let Err(e) = sink.move_into_root(path, root, seg_key).await {
                    warn!(key = %seg_key, "storing a recovered segment failed: {e}");
                }
            }
            if let Err(e) = sink.put_local(root, &key, text.into_bytes()).await {
                warn!(key = %key, "ending a recovered playlist failed: {e}");
                return false;
            }
            let mut size = 0;
            for s in playlist.segments() {
                let seg_key = format!("{id_prefix}/{}", s.uri);
                size += std::fs::metadata(root.join(&seg_key)).map_or(0, |m| m.len());
                sink.index.add(&seg_key, up.storage_time);
            }
            sink.index.add(&key, up.storage_time);
            if let Some(mut i) = info {
                i.size = size;
                sink.index.record(i, up.storage_time);
            }
            let _ = std::fs::remove_file(marker);
            true
        }
        (Backend::S3(_), Some(u)) => {
            // In the background and in order: segments first, then the playlist; the
            // records go only once the store has it all.
            let mut jobs = Vec::new();
            for (path, n) in pending {
                let meta = meta_path(&path);
                let Some(m) = std::fs::read(&meta)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<UpMeta>(&b).ok())
                else {
                    continue;
                };
                let _ = n;
                jobs.push(Job {
                    path,
                    meta,
                    key: m.key,
                    storage_time: up.storage_time,
                    closed: Instant::now(),
                    info: None,
                });
            }
            for (path, seg_key) in extra {
                let Ok(job) = sink
                    .queue_upload(&path, &seg_key, up.storage_time, None)
                    .await
                else {
                    continue;
                };
                jobs.push(job);
            }
            let seg_keys: Vec<String> = playlist
                .segments()
                .iter()
                .map(|s| format!("{id_prefix}/{}", s.uri))
                .collect();
            u.recover_playlist(
                jobs,
                key,
                text,
                seg_keys,
                up.storage_time,
                copy.to_path_buf(),
                marker.to_path_buf(),
                info,
            );
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_names_round_trip() {
        assert_eq!(
            parse_name("r17-3.4.1700000000123.flv.part"),
            Some(SpoolName {
                tag: "r17-3".into(),
                seq: 4,
                start_ms: 1_700_000_000_123,
                segment: None,
                ext: "flv".into()
            })
        );
        assert_eq!(
            parse_name("r17-3.0.1700000000123.s12.ts.up"),
            Some(SpoolName {
                tag: "r17-3".into(),
                seq: 0,
                start_ms: 1_700_000_000_123,
                segment: Some(12),
                ext: "ts".into()
            })
        );
        assert_eq!(parse_name("r17-3.x.1.flv.part"), None);
        assert_eq!(parse_name("r17-3.1.1.flv"), None);
        assert_eq!(parse_name("r17-3.1.1.q2.ts.part"), None);
    }

    fn temp_with(bytes: &[u8]) -> (tempfile::TempDir, std::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        (dir, f)
    }

    fn adts(len: usize) -> Vec<u8> {
        // 48 kHz (index 3), stereo, frame length `len`.
        let mut h = vec![0xff, 0xf1, 0x4c, 0x80, 0, 0x1f, 0xfc];
        h[3] |= ((len >> 11) & 3) as u8;
        h[4] = ((len >> 3) & 0xff) as u8;
        h[5] = (((len & 7) << 5) as u8) | 0x1f;
        h.resize(len, 0x21);
        h
    }

    #[test]
    fn aac_keeps_whole_frames() {
        let mut data = Vec::new();
        for _ in 0..47 {
            data.extend(adts(100));
        }
        let whole = data.len() as u64;
        data.extend(&adts(100)[..60]);
        let (_d, f) = temp_with(&data);
        let r = repair_aac(&f).unwrap();
        assert_eq!(r.len, whole);
        assert_eq!(r.duration_ms, 47 * 1024 * 1000 / 48000);
    }

    #[test]
    fn mp4_drops_a_fragment_without_its_mdat() {
        let boxed = |kind: &[u8; 4], body: usize| {
            let mut b = ((body + 8) as u32).to_be_bytes().to_vec();
            b.extend(kind);
            b.resize(body + 8, 0);
            b
        };
        let mut data = boxed(b"ftyp", 8);
        data.extend(boxed(b"moov", 100));
        data.extend(boxed(b"moof", 50));
        data.extend(boxed(b"mdat", 500));
        let whole = data.len() as u64;
        data.extend(boxed(b"moof", 50));
        let mut partial = boxed(b"mdat", 500);
        partial.truncate(200);
        data.extend(partial);
        let (_d, f) = temp_with(&data);
        assert_eq!(repair_mp4(&f).unwrap().len, whole);
        // A moof whose mdat is missing entirely goes too.
        let (_d, f) = temp_with(&data[..whole as usize + 58]);
        assert_eq!(repair_mp4(&f).unwrap().len, whole);
    }
}
