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

/// One stored recording file (R-QY-1), indexed when the store confirmed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct FileRecord {
    pub key: String,
    pub format: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    #[serde(default)]
    pub task_id: String,
    /// Wall-clock start and end, unix milliseconds.
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_ms: i64,
    pub size: u64,
}

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

/// How many recently stored keys are remembered for name-collision checks (R-ST-3).
const RECENT: usize = 65_536;

pub struct Index {
    dir: PathBuf,
    /// Every stored recording, also in `{dir}/recordings.jsonl` (loaded at start).
    recordings: Mutex<Vec<FileRecord>>,
    recent: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Serializes appends and sweeps of the hour files.
    files: Mutex<()>,
}

impl Index {
    pub fn new(dir: PathBuf) -> Self {
        // Lines are records or `{"deleted": key}` tombstones written by the sweeper.
        let mut recordings: Vec<FileRecord> = Vec::new();
        if let Ok(t) = std::fs::read_to_string(dir.join("recordings.jsonl")) {
            for l in t.lines() {
                if let Ok(r) = serde_json::from_str::<FileRecord>(l) {
                    recordings.push(r);
                } else if let Some(k) = serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["deleted"].as_str().map(str::to_string))
                {
                    recordings.retain(|r| r.key != k);
                }
            }
        }
        Index {
            dir,
            recordings: Mutex::new(recordings),
            recent: Mutex::new((HashSet::new(), VecDeque::new())),
            files: Mutex::new(()),
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
        // Rounded up to the next whole second, and swept when the clock's whole second
        // reaches it: a file is never deleted before its full storage_time.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let expires =
            (now_ms + 999).div_euclid(1000) + storage_time.min(i64::MAX as u64 / 4) as i64;
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

    /// Records a stored file for queries (R-QY-1); `size` 0 is filled from `root`.
    pub fn record(&self, rec: FileRecord) {
        let line = serde_json::to_vec(&rec).map(|mut l| {
            l.push(b'\n');
            l
        });
        let res = line.map_err(std::io::Error::other).and_then(|l| {
            let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
            std::fs::create_dir_all(&self.dir)?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("recordings.jsonl"))?
                .write_all(&l)
        });
        if let Err(e) = res {
            warn!(key = %rec.key, "cannot write the recordings index: {e}");
        }
        self.recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rec);
    }

    /// Stored recordings matching `f`, oldest first; deleted (expired) ones are gone.
    pub fn query(&self, f: &RecordingFilter) -> Vec<FileRecord> {
        self.recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| {
                f.domain.as_ref().is_none_or(|d| *d == r.domain)
                    && f.app.as_ref().is_none_or(|a| *a == r.app)
                    && f.stream.as_ref().is_none_or(|s| *s == r.stream)
                    && f.format.as_ref().is_none_or(|x| *x == r.format)
                    && f.task_id.as_ref().is_none_or(|t| *t == r.task_id)
                    && f.from.is_none_or(|from| r.end_ms > from * 1000)
                    && f.to.is_none_or(|to| r.start_ms < to * 1000)
            })
            .cloned()
            .collect()
    }

    fn forget(&self, key: &str) {
        self.recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| r.key != key);
        let line = serde_json::json!({ "deleted": key }).to_string() + "\n";
        let _g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("recordings.jsonl"))
            .and_then(|mut f| f.write_all(line.as_bytes()));
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
                rewrite(&path, &keep)?;
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

fn rewrite(path: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let mut text = Vec::new();
    for e in entries {
        text.extend(serde_json::to_vec(e).map_err(std::io::Error::other)?);
        text.push(b'\n');
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
