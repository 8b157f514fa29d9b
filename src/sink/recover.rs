//! Crash recovery (R-ST-4, DESIGN "crash safety by construction"): on start, whatever a
//! killed daemon left in the spool is finalized and stored before anything new is
//! recorded — open files are cut back to their last complete tag / frame / fragment /
//! packet and patched like a normal close, finished files waiting for S3 are queued again,
//! and open HLS playlists get their last segment and `#EXT-X-ENDLIST`.
//!
//! What is complete is format knowledge and lives in the format crates (`flv::repair`,
//! `aac::repair`, `fmp4::repair`, `mpegts::repair`, sans-IO); this module opens the
//! file, lets the scanner read it, and applies the cut and patches it returns.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use media::repair::{ReadAt, Repair};
use tracing::{info, warn};

use super::store::Backend;
use super::upload::{meta_path, Job, Owed};
use super::{RecMeta, Sink, UpMeta};
use crate::db::FileState;
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
    let mut report = RecoveryReport::default();
    // First the files the database says are owed: a finished file between its `files`
    // row and its indexing may already have left the spool, so the scan below cannot
    // see it; one still in the spool is finished here under the key it was given, and the
    // scan then finds nothing left of it.
    let uploads = resume_owed(sink, &mut report).await;
    let spool = sink.spool.clone();
    let dirs = match tokio::task::spawn_blocking(move || scan(&spool)).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            warn!("cannot scan the spool for unfinished files: {e}");
            start_uploads(sink, uploads);
            return report;
        }
        Err(e) => {
            warn!("spool scan failed: {e}");
            start_uploads(sink, uploads);
            return report;
        }
    };
    // Counted before any upload starts: an upload that completes removes its bytes.
    for d in dirs.values() {
        for (p, _) in d.parts.iter().chain(d.ups.iter()) {
            report.bytes += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        }
    }
    sink.quota.add(report.bytes);
    for (dir, d) in dirs {
        recover_dir(sink, &dir, d, &mut report).await;
    }
    start_uploads(sink, uploads);
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

/// Finishes the files of `files` not yet indexed (R-ST-4). A local store writes the row
/// (`closed`) before its rename into the root and indexes after it, so a crash left each
/// one on one side of that rename: where the file is — still in the spool, in the root,
/// or (after an interrupted copy across filesystems) both — says which. An S3 upload's
/// row (`queued`) names its `{file}.up`: returned, to be uploaded again once the spool's
/// bytes are counted (an upload that completes takes its bytes off the quota).
async fn resume_owed(sink: &Arc<Sink>, report: &mut RecoveryReport) -> Vec<Job> {
    let mut uploads = Vec::new();
    let owed = match sink.db.owed().await {
        Ok(o) => o,
        Err(e) => {
            warn!("cannot read the files owed from the node database: {e}");
            return uploads;
        }
    };
    for f in owed {
        let (id, key, src) = (f.id, f.file.key.clone(), f.file.spool_path.clone());
        if !matches!(f.state, FileState::Closed | FileState::Queued) {
            warn!(id, key, state = %f.state, "owed file in a state no store writes; left for an operator");
            continue;
        }
        match &**sink.backend() {
            Backend::S3(_) if f.state == FileState::Queued => {
                if !src.exists() {
                    forget(sink, id, &key, false).await;
                    continue;
                }
                uploads.push(Job {
                    path: src,
                    owed: Owed::Row(id),
                    key,
                    storage_time: f.file.storage_time,
                    closed: Instant::now(),
                    info: f.file.record,
                });
                report.requeued += 1;
            }
            // Recorded by a local store, now configured for S3: a file still in the
            // spool is found by the scan and uploaded; the row has nothing left to say.
            Backend::S3(_) => forget(sink, id, &key, src.exists()).await,
            Backend::Local { root } => {
                let dest = root.join(&key);
                match (src.exists(), dest.exists()) {
                    // Renamed (or copied) before the crash: only the index is owed — and
                    // the removal of the spool copy after a copy across filesystems.
                    (in_spool, true) => {
                        if in_spool {
                            let _ = std::fs::remove_file(&src);
                        }
                    }
                    // (A `queued` row here: recorded for S3, now stored locally.)
                    (true, false) => {
                        if let Err(e) = sink.move_into_root(&src, root, &key).await {
                            warn!(key, file = %src.display(), "cannot store an owed file, left for the next start: {e}");
                            continue;
                        }
                    }
                    (false, false) => {
                        forget(sink, id, &key, false).await;
                        continue;
                    }
                }
                match sink.db.advance(id, f.state, FileState::Indexed).await {
                    Ok(()) => {
                        info!(key, "stored and indexed a file the last run left owed");
                        report.finalized += 1;
                    }
                    Err(e) => {
                        warn!(
                            key,
                            "cannot index an owed file, left for the next start: {e}"
                        )
                    }
                }
            }
        }
    }
    uploads
}

fn start_uploads(sink: &Sink, jobs: Vec<Job>) {
    if let Some(u) = &sink.uploader {
        for j in jobs {
            u.upload_file(j);
        }
    }
}

/// Drops the row of a file no longer this node's to finish.
async fn forget(sink: &Sink, id: i64, key: &str, in_spool: bool) {
    if !in_spool {
        warn!(
            key,
            "an owed file is neither in the spool nor in the store; forgetting it"
        );
    }
    if let Err(e) = sink.db.forget(id).await {
        warn!(key, "cannot drop the row of an owed file: {e}");
    }
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
    // Finished files waiting for their upload (S3), except HLS segments: those go with
    // their playlist, in order.
    let ups = std::mem::take(&mut d.ups);
    let (seg_ups, file_ups): (Vec<_>, Vec<_>) =
        ups.into_iter().partition(|(_, n)| n.segment.is_some());
    let paths = file_ups.iter().map(|(p, _)| p.clone()).collect();
    let known: HashMap<PathBuf, FileState> = match sink.db.files_at(paths).await {
        Ok(rows) => rows
            .into_iter()
            .map(|f| (f.file.spool_path, f.state))
            .collect(),
        Err(e) => {
            // Unknown is not "never queued": storing them again could duplicate them.
            warn!(
                "cannot read the upload queue; finished spool files wait for the next start: {e}"
            );
            return;
        }
    };
    for (path, n) in file_ups {
        match known.get(&path) {
            // Indexed just before the crash; only the removal of the copy was left.
            Some(FileState::Indexed) => {
                let _ = std::fs::remove_file(&path);
            }
            // Owed: `resume_owed` queued it.
            Some(_) => {}
            None if meta_path(&path).exists() => {
                if requeue_sidecar(sink, &path).await {
                    report.requeued += 1;
                }
            }
            // Renamed for its upload, the crash came before its row: finished, so the
            // repair below keeps it whole, and it is stored like an open file.
            None => d.parts.push((path, n)),
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
                // Without its marker the recording's callback target is unknown.
                notice: None,
                template: String::new(),
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

/// A finished file of an earlier version's spool: `{file}.up` with its key record
/// `{file}.up.json` beside it.
async fn requeue_sidecar(sink: &Arc<Sink>, path: &Path) -> bool {
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
                owed: Owed::Sidecar(meta),
                key: up.key,
                storage_time: up.storage_time,
                closed: Instant::now(),
                info: up.info,
            });
            true
        }
        (Backend::Local { root }, _) => {
            // Recorded for S3, now configured for a local directory: it goes there, and
            // is indexed before its key record goes (it was not indexed at all before
            // the node database: a crash-order gap of its own).
            let r = sink.move_into_root(path, root, &up.key).await;
            if r.is_ok()
                && super::index_stored(&sink.db, &up.key, up.storage_time, up.info, Vec::new())
                    .await
            {
                let _ = std::fs::remove_file(&meta);
            }
            r.is_ok()
        }
        _ => false,
    }
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
    if r.keep_len == 0 {
        let _ = std::fs::remove_file(path);
        return false;
    }
    let start = ms_to_time(n.start_ms);
    let (duration_ms, end) = recovered_span(start, r.duration_ms);
    let name = meta.render(n.seq, start, end);
    match sink
        .store_finished(
            path,
            &meta.id(),
            &name,
            &meta.ext,
            meta.storage_time,
            None,
            Some(meta.record(start, duration_ms)),
        )
        .await
    {
        Ok(key) => {
            info!(key = %key, bytes = r.keep_len, duration_ms, "recovered unfinished file");
            true
        }
        Err(e) => {
            warn!(file = %path.display(), "storing recovered file failed: {e}");
            false
        }
    }
}

/// The spool file as the format crates' scanners read it (they do no I/O themselves).
struct SpoolFile<'a> {
    file: &'a std::fs::File,
    len: u64,
}

impl ReadAt for SpoolFile<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        FileExt::read_at(self.file, buf, off)
    }
}

/// Cuts the file back to what is complete and applies the finalizing patches, as the
/// format's scanner says.
pub(super) fn repair_path(path: &Path, ext: &str) -> std::io::Result<Repair> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let src = SpoolFile {
        file: &file,
        len: file.metadata()?.len(),
    };
    let r = match ext {
        "flv" => flv::repair::repair(&src).map_err(std::io::Error::other)?,
        "aac" => aac::repair::repair(&src).map_err(std::io::Error::other)?,
        "mp4" => fmp4::repair::repair(&src).map_err(std::io::Error::other)?,
        "ts" => mpegts::repair::repair(&src).map_err(std::io::Error::other)?,
        other => {
            return Err(std::io::Error::other(format!(
                "no repair for .{other} files"
            )))
        }
    };
    // The scanners promise this; a file is never grown or written past its kept end.
    if !r.in_bounds(src.len) {
        return Err(std::io::Error::other(format!(
            "repair out of bounds for a {}-byte file: {r:?}",
            src.len
        )));
    }
    file.set_len(r.keep_len)?;
    for p in &r.patches {
        file.write_all_at(&p.bytes, p.offset)?;
    }
    Ok(r)
}

/// A recovered file's duration and end. A corrupt file may state any duration; one
/// past what a timestamp can hold is reported as 0 rather than overflow `start + it`.
pub(super) fn recovered_span(start: DateTime<Utc>, duration_ms: u64) -> (i64, DateTime<Utc>) {
    let ms = i64::try_from(duration_ms).unwrap_or(i64::MAX);
    match chrono::Duration::try_milliseconds(ms).and_then(|d| start.checked_add_signed(d)) {
        Some(end) => (ms, end),
        None => (0, start),
    }
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
    let names = hls::PlaylistKey::new(&key);
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
        if r.keep_len == 0 || r.duration_ms == 0 {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let seg_key = names.segment_key(n.segment.unwrap_or(0));
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
    let duration_ms = i64::try_from(playlist.duration_ms()).unwrap_or(i64::MAX);
    let info = up.info.clone().or_else(|| {
        let id = stream_of(sink, marker.parent()?)?;
        let start = playlist
            .segments()
            .first()
            .and_then(|s| s.program_date_time)
            .unwrap_or_else(Utc::now);
        Some(crate::model::FileRecord {
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
        i.end_ms = i.start_ms.saturating_add(duration_ms);
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
            let segment_keys = names.segment_keys(&playlist);
            for seg_key in &segment_keys {
                size += std::fs::metadata(root.join(seg_key)).map_or(0, |m| m.len());
            }
            let info = info.map(|mut i| {
                i.size = size;
                i
            });
            // Indexed before the marker goes: a crash in between recovers it again.
            if super::index_stored(&sink.db, &key, up.storage_time, info, segment_keys).await {
                let _ = std::fs::remove_file(marker);
            }
            true
        }
        (Backend::S3(_), Some(u)) => {
            // In the background and in order: segments first, then the playlist; the
            // records go only once the store has it all.
            let mut jobs = Vec::new();
            for (path, n) in pending {
                let meta = meta_path(&path);
                let sidecar = std::fs::read(&meta)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<UpMeta>(&b).ok());
                let (key, owed) = match sidecar {
                    Some(m) => (m.key, Owed::Sidecar(meta)),
                    None => (
                        pending_segment_key(&names, &playlist, n.segment.unwrap_or(0)),
                        Owed::Segment,
                    ),
                };
                jobs.push(Job {
                    path,
                    owed,
                    key,
                    storage_time: up.storage_time,
                    closed: Instant::now(),
                    info: None,
                });
            }
            for (path, seg_key) in extra {
                let Ok(job) = sink
                    .queue_upload(&path, &seg_key, up.storage_time, None, true)
                    .await
                else {
                    continue;
                };
                jobs.push(job);
            }
            let seg_keys = names.segment_keys(&playlist);
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

/// The key of segment `n` waiting for its upload: as the playlist copy names it (a key
/// taken by another file got a `_k` suffix when it was claimed), else as it is derived.
fn pending_segment_key(names: &hls::PlaylistKey, playlist: &hls::MediaPlaylist, n: u64) -> String {
    let exact = names.segment_key(n);
    let stem = names.segment_name(n);
    playlist
        .segments()
        .iter()
        .map(|s| names.key_of(&s.uri))
        .find(|k| {
            let file = super::file_of(k);
            file == super::file_of(&exact)
                || file
                    .strip_prefix(&format!("{stem}_"))
                    .and_then(|rest| rest.strip_suffix(".ts"))
                    .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or(exact)
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

    fn temp_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    /// An FLV as the recorder leaves it open, cut in the middle of its last tag.
    fn crashed_flv() -> Vec<u8> {
        let info = flv::MetaInfo {
            has_video: true,
            ..flv::MetaInfo::default()
        };
        let mut m = flv::FlvMuxer::new(info, media::Millis::ZERO);
        let mut out = vec![m.header()];
        for i in 0..50 {
            let body = bytes::Bytes::from(vec![0x17; 200 + i]);
            m.write_tag(
                media::TrackKind::Video,
                media::Millis::from_ms(i as i64 * 40),
                &body,
                &mut out,
            );
        }
        let mut file: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        file.truncate(file.len() - 100);
        file
    }

    #[test]
    fn repair_applies_what_the_scanner_says_to_the_file() {
        let data = crashed_flv();
        let expect = flv::repair::repair(&data).unwrap();
        assert!(expect.keep_len < data.len() as u64);
        assert_eq!(expect.patches.len(), 2);
        let mut fixed = data.clone();
        expect.apply(&mut fixed);

        let (_d, path) = temp_with(&data);
        let r = repair_path(&path, "flv").unwrap();
        assert_eq!(r, expect);
        assert_eq!(std::fs::read(&path).unwrap(), fixed);
        // Repairing again changes nothing.
        assert_eq!(repair_path(&path, "flv").unwrap().keep_len, r.keep_len);
        assert_eq!(std::fs::read(&path).unwrap(), fixed);
    }

    #[test]
    fn the_file_reads_like_the_bytes() {
        // Larger than the scanners' read-ahead, so reads cross chunks of the file.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (_d, path) = temp_with(&data);
        let file = std::fs::File::open(&path).unwrap();
        let src = SpoolFile {
            file: &file,
            len: data.len() as u64,
        };
        let mut w = media::repair::Window::new(&src);
        assert_eq!(
            w.get(65_530, 100_000).unwrap(),
            Some(&data[65_530..165_530])
        );
        assert_eq!(w.get(299_999, 2).unwrap(), None);
    }

    #[test]
    fn what_cannot_be_repaired_is_left_as_it_is() {
        let (_d, path) = temp_with(b"not an flv file at all");
        assert!(repair_path(&path, "flv").is_err());
        assert!(repair_path(&path, "mkv").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"not an flv file at all");
        // ADTS with a torn last frame: cut to whole frames.
        let p = aac::AdtsParams::from_asc(&[0x11, 0x90]).unwrap();
        let mut data = Vec::new();
        for _ in 0..10 {
            data.extend_from_slice(&p.header(100).unwrap());
            data.extend_from_slice(&[0x21; 100]);
        }
        data.truncate(data.len() - 30);
        let (_d, path) = temp_with(&data);
        let r = repair_path(&path, "aac").unwrap();
        assert_eq!(r.keep_len, 9 * 107);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 9 * 107);
    }

    #[test]
    fn absurd_durations_do_not_overflow() {
        let start = ms_to_time(1_700_000_000_000);
        assert_eq!(recovered_span(start, 1500).0, 1500);
        assert_eq!(recovered_span(start, u64::MAX), (0, start));
        assert_eq!(recovered_span(start, i64::MAX as u64 / 2), (0, start));
    }
}
