//! Retention (R-ST-5): an index of what this node stored, so expiry never needs to list a
//! whole bucket, and a sweeper that deletes what has expired.
//!
//! A file is indexed only once it is stored (renamed into the recordings directory or
//! confirmed by S3), and an HLS playlist with its segments only when the playlist ends, so
//! an open or not-yet-uploaded file can never be swept. Entries live in one append-only
//! file per hour of expiry (`{spool}/.index/{hour}.jsonl`); a sweep reads only the hours
//! that have begun, so its cost follows what expires, not what is kept.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::store::Backend;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub key: String,
    /// Unix seconds after which the file may be deleted.
    pub expires: i64,
}

pub use crate::model::FileRecord;

#[derive(Debug, Default, Deserialize)]
pub struct RecordingFilter {
    pub domain: Option<String>,
    pub app: Option<String>,
    pub stream: Option<String>,
    /// Unix seconds: files that end after `from` and start before `to`.
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub format: Option<String>,
    pub task_id: Option<String>,
}

/// A change of the recordings catalog, queued in `{dir}/publish.jsonl` until the store
/// has it (see `catalog.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put(FileRecord),
    Delete(String),
}

/// How many recently stored keys are remembered for name-collision checks (R-ST-3).
const RECENT: usize = 65_536;

/// The index before it was split per stream; read once and converted.
const RECORDINGS: &str = "recordings.jsonl";
const RECORDINGS_DIR: &str = "recordings";
const PUBLISH: &str = "publish.jsonl";
const PUBLISH_OFFSET: &str = "publish.offset";

pub struct Index {
    dir: PathBuf,
    /// Every stored recording, on disk only (`recfiles.rs`).
    recordings: super::recfiles::RecFiles,
    recent: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Serializes appends and sweeps of the hour files, and appends to the catalog files.
    files: Mutex<()>,
    /// Catalog changes not yet confirmed by the store.
    pending: AtomicU64,
    pub(super) wake: tokio::sync::Notify,
    /// While a rebuild lists the store: the changes made meanwhile, applied on top.
    journal: Mutex<Option<Vec<Op>>>,
    pub(super) rebuilding: AtomicBool,
    /// There was no local catalog at start (new node, or a lost spool): rebuild it.
    pub(super) needs_rebuild: bool,
}

impl Index {
    pub fn new(dir: PathBuf) -> Self {
        let recordings = super::recfiles::RecFiles::new(dir.join(RECORDINGS_DIR));
        // A line torn by a crash must not glue itself to the next append.
        if let Err(e) = seal(&dir.join(PUBLISH)) {
            warn!(file = %dir.join(PUBLISH).display(), "cannot repair the index file: {e}");
        }
        recordings.seal_all();
        migrate_single_file(&dir, &recordings);
        let had_catalog = recordings.exists() || dir.join(PUBLISH).exists();
        let pending = pending_ops(&dir);
        Index {
            dir,
            recordings,
            recent: Mutex::new((HashSet::new(), VecDeque::new())),
            files: Mutex::new(()),
            pending: AtomicU64::new(pending),
            wake: tokio::sync::Notify::new(),
            journal: Mutex::new(None),
            rebuilding: AtomicBool::new(false),
            needs_rebuild: !had_catalog,
        }
    }

    /// Records a stored file; with `storage_time` > 0 it will expire that many seconds
    /// from now.
    pub fn add(&self, key: &str, storage_time: u64) {
        {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.0.insert(key.to_string()) {
                r.1.push_back(key.to_string());
                if r.1.len() > RECENT {
                    if let Some(old) = r.1.pop_front() {
                        r.0.remove(&old);
                    }
                }
            }
        }
        if storage_time == 0 {
            return;
        }
        self.expire_at(key, expiry(storage_time));
    }

    /// Adds a retention entry with a known expiry (a rebuilt catalog's).
    pub fn expire_at(&self, key: &str, expires: i64) {
        let entry = Entry {
            key: key.to_string(),
            expires,
        };
        if let Err(e) = self.append(&entry) {
            warn!(
                key,
                "cannot index the file for retention, it will not expire: {e}"
            );
        }
    }

    /// Records a stored file for queries (R-QY-1): in the local catalog at once, and
    /// queued for the store's copy, from which the catalog can be rebuilt.
    pub fn record(&self, mut rec: FileRecord, storage_time: u64) {
        // Computed after the file's own retention entry (`add`), so never earlier.
        rec.expires = if storage_time == 0 {
            0
        } else {
            expiry(storage_time)
        };
        let res = self.append_catalog(&rec.key, &rec, &Op::Put(rec.clone()));
        if let Err(e) = res {
            warn!(key = %rec.key, "cannot write the recordings index: {e}");
        }
    }

    /// Appends one line to the stream's index file and the change to the publish queue.
    fn append_catalog<T: Serialize>(&self, key: &str, line: &T, op: &Op) -> std::io::Result<()> {
        let mut l = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        l.push(b'\n');
        let mut o = serde_json::to_vec(op).map_err(std::io::Error::other)?;
        o.push(b'\n');
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            j.push(op.clone());
        }
        std::fs::create_dir_all(&self.dir)?;
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
        };
        self.recordings.append(key, &l)?;
        open(PUBLISH)?.write_all(&o)?;
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
        Ok(())
    }

    /// Catalog changes the store has not confirmed yet.
    pub fn unpublished(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    /// The queued changes from the confirmed offset on, each with the offset after it.
    pub(super) fn queued_ops(&self) -> std::io::Result<Vec<(Op, u64)>> {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let start = read_offset(&self.dir);
        let data = match std::fs::read(self.dir.join(PUBLISH)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut pos = (start as usize).min(data.len());
        while let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') {
            let end = pos + nl + 1;
            match serde_json::from_slice::<Op>(&data[pos..end - 1]) {
                Ok(op) => out.push((op, end as u64)),
                // A line torn by a crash: nothing to publish, but it must be passed.
                Err(e) => {
                    warn!(offset = pos, "skipping a bad recordings publish line: {e}");
                    out.push((Op::Delete(String::new()), end as u64));
                }
            }
            pos = end;
        }
        Ok(out)
    }

    /// The store has every queued change up to `end`; an emptied queue is removed.
    pub(super) fn published(&self, end: u64) -> std::io::Result<()> {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        let len = std::fs::metadata(self.dir.join(PUBLISH))
            .map(|m| m.len())
            .unwrap_or(0);
        if end >= len {
            std::fs::remove_file(self.dir.join(PUBLISH)).or_else(not_found_ok)?;
            std::fs::remove_file(self.dir.join(PUBLISH_OFFSET)).or_else(not_found_ok)
        } else {
            let tmp = self.dir.join("publish.offset.tmp");
            std::fs::write(&tmp, end.to_string())?;
            std::fs::rename(&tmp, self.dir.join(PUBLISH_OFFSET))
        }
    }

    /// Starts recording the changes made while a rebuild lists the store.
    pub(super) fn journal_start(&self) {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        *self.journal.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    pub(super) fn journal_stop(&self) {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        *self.journal.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Replaces the catalog with what the store listed plus the changes made meanwhile;
    /// returns how many recordings it holds.
    pub(super) fn replace(&self, listed: Vec<FileRecord>) -> std::io::Result<usize> {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let journal = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        let mut by_key: std::collections::HashMap<String, FileRecord> =
            listed.into_iter().map(|r| (r.key.clone(), r)).collect();
        for op in journal {
            match op {
                Op::Put(r) => {
                    by_key.insert(r.key.clone(), r);
                }
                Op::Delete(k) => {
                    by_key.remove(&k);
                }
            }
        }
        let all: Vec<FileRecord> = by_key.into_values().collect();
        self.recordings.replace_all(&all)?;
        Ok(all.len())
    }

    /// Stored recordings matching `f`, oldest first; deleted (expired) ones are gone.
    /// Reads the index files (one per stream); compacts those mostly made of tombstones.
    pub fn query(&self, f: &RecordingFilter) -> Vec<FileRecord> {
        let mut out = Vec::new();
        for sf in self.recordings.read(f) {
            if sf.wants_compaction {
                let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = self.recordings.compact(&sf.path) {
                    warn!(file = %sf.path.display(), "cannot compact the recordings index: {e}");
                }
            }
            out.extend(sf.live.into_iter().filter(|r| {
                f.domain.as_ref().is_none_or(|d| *d == r.domain)
                    && f.app.as_ref().is_none_or(|a| *a == r.app)
                    && f.stream.as_ref().is_none_or(|s| *s == r.stream)
                    && f.format.as_ref().is_none_or(|x| *x == r.format)
                    && f.task_id.as_ref().is_none_or(|t| *t == r.task_id)
                    && f.from
                        .is_none_or(|from| r.end_ms > from.saturating_mul(1000))
                    && f.to.is_none_or(|to| r.start_ms < to.saturating_mul(1000))
            }));
        }
        out.sort_by(|a, b| (a.start_ms, &a.key).cmp(&(b.start_ms, &b.key)));
        out
    }

    fn forget(&self, key: &str) {
        // Only recordings have index and catalog entries; HLS segments, swept with their
        // playlist, do not.
        if key.ends_with(".ts") {
            return;
        }
        let res = self.append_catalog(
            key,
            &serde_json::json!({ "deleted": key }),
            &Op::Delete(key.to_string()),
        );
        if let Err(e) = res {
            warn!(key, "cannot write the recordings index: {e}");
        }
    }

    /// What the sweeper does once a file is deleted (tests of the index).
    #[cfg(test)]
    pub fn expire_now_for_test(&self, key: &str) {
        self.forget(key);
    }

    pub fn recently_stored(&self, key: &str) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .contains(key)
    }

    fn hour_file(&self, hour: i64) -> PathBuf {
        self.dir.join(format!("{hour}.jsonl"))
    }

    fn append(&self, e: &Entry) -> std::io::Result<()> {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(&self.dir)?;
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.hour_file(e.expires.div_euclid(3600)))?;
        f.write_all(&line)
    }

    /// Takes the entries expired at `now` out of the index (the caller deletes them
    /// and gives back the ones it could not delete with [`Index::restore`]).
    pub fn take_expired(&self, now: i64) -> std::io::Result<Vec<Entry>> {
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let now_hour = now.div_euclid(3600);
        let mut out = Vec::new();
        for de in rd {
            let path = de?.path();
            let Some(hour) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|h| h.parse::<i64>().ok())
            else {
                continue;
            };
            if hour > now_hour {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let (mut due, mut keep) = (Vec::new(), Vec::new());
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Entry>(line) {
                    Ok(e) if e.expires <= now => due.push(e),
                    Ok(e) => keep.push(e),
                    // A torn last line after a crash: dropped, loudly.
                    Err(err) => {
                        warn!(file = %path.display(), "skipping a bad retention index line: {err}")
                    }
                }
            }
            if due.is_empty() {
                continue;
            }
            if keep.is_empty() {
                std::fs::remove_file(&path)?;
            } else {
                write_jsonl(&path, &keep)?;
            }
            out.extend(due);
        }
        Ok(out)
    }

    /// Puts entries back (a delete failed; the next sweep tries again).
    pub fn restore(&self, entries: &[Entry]) {
        for e in entries {
            if let Err(err) = self.append(e) {
                warn!(key = %e.key, "cannot re-index a file whose delete failed: {err}");
            }
        }
    }
}

/// When a file stored now with `storage_time` (> 0) expires: rounded up to the next whole
/// second, and swept when the clock's whole second reaches it, so a file is never deleted
/// before its full storage_time.
fn expiry(storage_time: u64) -> i64 {
    let now_ms = chrono::Utc::now().timestamp_millis();
    (now_ms + 999).div_euclid(1000) + storage_time.min(i64::MAX as u64 / 4) as i64
}

fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Converts the single-file index of earlier versions (records and tombstones in one
/// `recordings.jsonl`) into per-stream files.
fn migrate_single_file(dir: &Path, recordings: &super::recfiles::RecFiles) {
    let old = dir.join(RECORDINGS);
    // Same lines as a stream file: records and tombstones.
    let Ok(live) = super::recfiles::read_file(&old).map(|f| f.live) else {
        return;
    };
    match recordings.replace_all(&live) {
        Ok(()) => {
            let _ = std::fs::remove_file(&old);
            info!(
                recordings = live.len(),
                "recordings index converted to one file per stream"
            );
        }
        Err(e) => warn!("cannot convert the recordings index: {e}"),
    }
}

/// Ends a file that does not end with a newline with one.
pub(super) fn seal(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    if last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(())
}

fn read_offset(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(PUBLISH_OFFSET))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Whole queued lines after the confirmed offset (the count a restart resumes with).
fn pending_ops(dir: &Path) -> u64 {
    let Ok(data) = std::fs::read(dir.join(PUBLISH)) else {
        return 0;
    };
    let start = (read_offset(dir) as usize).min(data.len());
    data[start..].iter().filter(|&&b| b == b'\n').count() as u64
}

/// Replaces `path` with one JSON line per item, through a temporary file and a rename.
pub(super) fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> std::io::Result<()> {
    let mut text = Vec::new();
    for e in items {
        text.extend(serde_json::to_vec(e).map_err(std::io::Error::other)?);
        text.push(b'\n');
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, path)
}

/// Deletes expired files every `every` until `stop`.
pub async fn sweeper(
    index: Arc<Index>,
    backend: Arc<Backend>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        sweep_once(&index, &backend).await;
    }
}

pub async fn sweep_once(index: &Index, backend: &Backend) {
    let now = chrono::Utc::now().timestamp();
    let due = match index.take_expired(now) {
        Ok(d) => d,
        Err(e) => {
            warn!("retention sweep cannot read its index: {e}");
            return;
        }
    };
    let mut failed = Vec::new();
    for e in due {
        match delete(backend, &e.key).await {
            Ok(()) => {
                index.forget(&e.key);
                info!(key = %e.key, "retention: deleted expired file")
            }
            Err(err) => {
                warn!(key = %e.key, "retention: delete failed, will retry: {err}");
                failed.push(e);
            }
        }
    }
    index.restore(&failed);
}

async fn delete(backend: &Backend, key: &str) -> Result<(), String> {
    match backend {
        Backend::Local { root } => {
            object_store::path::Path::parse(key).map_err(|e| e.to_string())?;
            let path = root.join(key);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.to_string()),
            }
            // Empty stream/app/domain directories go too; a non-empty one stops this.
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || tokio::fs::remove_dir(d).await.is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        }
        Backend::S3(s3) => {
            use object_store::ObjectStoreExt;
            let loc = s3.path(key).map_err(|e| e.to_string())?;
            match s3.store.delete(&loc).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_by_hour_file_and_come_back_when_restored() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::new(dir.path().join("i"));
        idx.add("a/b/c/forever.flv", 0);
        idx.add("a/b/c/short.flv", 2);
        idx.add("a/b/c/long.flv", 86_400 * 3);
        assert!(idx.recently_stored("a/b/c/forever.flv"));
        let now = chrono::Utc::now().timestamp();
        assert!(idx.take_expired(now).unwrap().is_empty());
        let due = idx.take_expired(now + 3).unwrap();
        assert_eq!(
            due.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["a/b/c/short.flv"]
        );
        // Taken out: a second sweep does not see it again…
        assert!(idx.take_expired(now + 3).unwrap().is_empty());
        // …unless its delete failed and it was put back.
        idx.restore(&due);
        assert_eq!(idx.take_expired(now + 3).unwrap(), due);
        let later = idx.take_expired(now + 86_400 * 3 + 1).unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].key, "a/b/c/long.flv");
    }

    fn rec(key: &str, start_ms: i64) -> FileRecord {
        FileRecord {
            key: key.into(),
            format: "flv".into(),
            start_ms,
            ..Default::default()
        }
    }

    #[test]
    fn catalog_changes_queue_in_order_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let i = dir.path().join("i");
        let idx = Index::new(i.clone());
        assert!(idx.needs_rebuild, "no catalog yet");
        idx.record(rec("a.flv", 1), 0);
        idx.record(rec("b.flv", 2), 0);
        idx.add("b.flv", 1);
        idx.forget("b.flv");
        // A segment (never recorded) is forgotten without a catalog change.
        idx.forget("seg_1.ts");
        assert_eq!(idx.unpublished(), 3);
        let ops = idx.queued_ops().unwrap();
        let kinds: Vec<Op> = ops.iter().map(|(o, _)| o.clone()).collect();
        assert_eq!(
            kinds,
            [
                Op::Put(rec("a.flv", 1)),
                Op::Put(rec("b.flv", 2)),
                Op::Delete("b.flv".into())
            ]
        );
        idx.published(ops[0].1).unwrap();
        assert_eq!(idx.unpublished(), 2);
        // A restart resumes after the confirmed one, with the same local catalog.
        drop(idx);
        let idx = Index::new(i.clone());
        assert!(!idx.needs_rebuild);
        assert_eq!(idx.unpublished(), 2);
        assert_eq!(idx.queued_ops().unwrap().len(), 2);
        assert_eq!(idx.query(&RecordingFilter::default()), [rec("a.flv", 1)]);
        for (_, end) in idx.queued_ops().unwrap() {
            idx.published(end).unwrap();
        }
        assert_eq!(idx.unpublished(), 0);
        assert!(!i.join(PUBLISH).exists(), "an emptied queue is removed");
        assert!(!i.join(PUBLISH_OFFSET).exists());
    }

    #[test]
    fn query_time_bounds_from_the_network_cannot_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::new(dir.path().join("i"));
        let mut r = rec("a.flv", 1000);
        r.end_ms = 5000;
        idx.record(r, 0);
        let q = |from, to| {
            idx.query(&RecordingFilter {
                from,
                to,
                ..Default::default()
            })
            .len()
        };
        assert_eq!(q(Some(i64::MAX), None), 0);
        assert_eq!(q(None, Some(i64::MIN)), 0);
        assert_eq!(q(Some(i64::MIN), Some(i64::MAX)), 1);
    }

    #[test]
    fn a_torn_queue_line_is_passed_and_does_not_glue_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let i = dir.path().join("i");
        std::fs::create_dir_all(&i).unwrap();
        std::fs::write(i.join(PUBLISH), b"{\"delete\":\"x.flv\"}\n{\"put\":{\"ke").unwrap();
        std::fs::write(i.join(RECORDINGS), b"{\"key\":\"x.f").unwrap();
        let idx = Index::new(i.clone());
        idx.record(rec("c.flv", 3), 0);
        let ops: Vec<Op> = idx
            .queued_ops()
            .unwrap()
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        assert_eq!(
            ops,
            [
                Op::Delete("x.flv".into()),
                Op::Delete(String::new()),
                Op::Put(rec("c.flv", 3))
            ]
        );
        drop(idx);
        let idx = Index::new(i);
        assert_eq!(idx.query(&RecordingFilter::default()), [rec("c.flv", 3)]);
    }

    #[test]
    fn a_rebuild_keeps_the_changes_made_while_it_listed() {
        let dir = tempfile::tempdir().unwrap();
        let i = dir.path().join("i");
        let idx = Index::new(i.clone());
        idx.record(rec("stale.flv", 0), 0);
        idx.journal_start();
        idx.record(rec("new.flv", 5), 0);
        idx.record(rec("gone.flv", 6), 0);
        idx.forget("gone.flv");
        let n = idx
            .replace(vec![rec("listed.flv", 1), rec("gone.flv", 6)])
            .unwrap();
        assert_eq!(n, 2);
        let want = [rec("listed.flv", 1), rec("new.flv", 5)];
        assert_eq!(idx.query(&RecordingFilter::default()), want);
        // And so on disk.
        drop(idx);
        assert_eq!(
            Index::new(i).query(&RecordingFilter::default()),
            want,
            "the local catalog file was rewritten"
        );
    }

    #[tokio::test]
    async fn local_sweep_deletes_expired_files_and_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rec");
        std::fs::create_dir_all(root.join("d/a/s")).unwrap();
        std::fs::create_dir_all(root.join("d/a/t")).unwrap();
        std::fs::write(root.join("d/a/s/x.flv"), b"x").unwrap();
        std::fs::write(root.join("d/a/t/y.flv"), b"y").unwrap();
        let idx = Index::new(dir.path().join("i"));
        idx.add("d/a/s/x.flv", 1);
        idx.add("d/a/t/y.flv", 0);
        let backend = Backend::Local { root: root.clone() };
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // take_expired compares whole seconds; make sure a second boundary passed.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        sweep_once(&idx, &backend).await;
        assert!(
            !root.join("d/a/s").exists(),
            "expired file and its empty dir"
        );
        assert!(root.join("d/a/t/y.flv").exists(), "kept forever");
    }
}
