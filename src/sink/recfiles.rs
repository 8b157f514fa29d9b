//! The local recordings index on disk (R-QY-1): one append-only JSONL file per stream,
//! `{spool}/.index/recordings/{domain}/{app}/{stream}.jsonl`, holding records and
//! `{"deleted": key}` tombstones. Nothing of it stays in memory, so a daemon that runs for
//! months with files kept forever does not grow with its history, and a query for one
//! stream reads that stream's file only.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::retention::{write_jsonl, FileRecord, RecordingFilter};

/// Below this many lines a file is never compacted (rewriting it would cost more than the
/// tombstones do).
const COMPACT_MIN_LINES: usize = 64;

pub struct RecFiles {
    root: PathBuf,
}

/// What one stream file holds.
pub struct StreamFile {
    pub path: PathBuf,
    pub live: Vec<FileRecord>,
    /// More than half of its lines are dead (tombstones or replaced records).
    pub wants_compaction: bool,
}

impl RecFiles {
    pub fn new(root: PathBuf) -> Self {
        RecFiles { root }
    }

    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    /// The file of the stream a key belongs to: keys are `{domain}/{app}/{stream}/{name}`
    /// (R-ST-3); anything else (a catalog entry from elsewhere) goes to `_other.jsonl`.
    fn file_for(&self, key: &str) -> PathBuf {
        let parts: Vec<&str> = key.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p != "." && p != "..";
        if parts.len() >= 4 && parts[..3].iter().all(|p| ok(p)) {
            self.root
                .join(parts[0])
                .join(parts[1])
                .join(format!("{}.jsonl", parts[2]))
        } else {
            self.root.join("_other.jsonl")
        }
    }

    /// Appends one line (with its newline) to the file of `key`'s stream. The caller
    /// serializes appends.
    pub fn append(&self, key: &str, line: &[u8]) -> std::io::Result<()> {
        let path = self.file_for(key);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?
            .write_all(line)
    }

    /// The stream files a filter can match.
    fn files(&self, f: &RecordingFilter) -> Vec<PathBuf> {
        if let (Some(d), Some(a), Some(s)) = (&f.domain, &f.app, &f.stream) {
            let p = self.file_for(&format!("{d}/{a}/{s}/x"));
            return if p.exists() { vec![p] } else { Vec::new() };
        }
        let mut out = Vec::new();
        let other = self.root.join("_other.jsonl");
        if other.exists() {
            out.push(other);
        }
        for d in subdirs(&self.root, f.domain.as_deref()) {
            for a in subdirs(&d, f.app.as_deref()) {
                let Ok(rd) = std::fs::read_dir(&a) else {
                    continue;
                };
                for e in rd.flatten() {
                    let p = e.path();
                    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                        continue;
                    };
                    let Some(stream) = name.strip_suffix(".jsonl") else {
                        continue;
                    };
                    if f.stream.as_deref().is_none_or(|s| s == stream) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// Every stream file a filter can match, read.
    pub fn read(&self, f: &RecordingFilter) -> Vec<StreamFile> {
        self.files(f)
            .into_iter()
            .filter_map(|p| match read_file(&p) {
                Ok(sf) => Some(sf),
                Err(e) => {
                    warn!(file = %p.display(), "cannot read the recordings index: {e}");
                    None
                }
            })
            .collect()
    }

    /// Rewrites one stream file with only its live records. The caller serializes this
    /// with appends.
    pub fn compact(&self, path: &Path) -> std::io::Result<()> {
        let sf = read_file(path)?;
        write_jsonl(path, &sf.live)
    }

    /// Makes the index exactly `records` (a rebuild): written aside, then swapped in.
    pub fn replace_all(&self, records: &[FileRecord]) -> std::io::Result<()> {
        let fresh = RecFiles::new(self.root.with_extension("new"));
        let _ = std::fs::remove_dir_all(&fresh.root);
        let mut by_file: HashMap<PathBuf, Vec<&FileRecord>> = HashMap::new();
        for r in records {
            by_file.entry(fresh.file_for(&r.key)).or_default().push(r);
        }
        for (path, recs) in by_file {
            write_jsonl(&path, &recs)?;
        }
        std::fs::create_dir_all(&fresh.root)?;
        let old = self.root.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        if self.root.exists() {
            std::fs::rename(&self.root, &old)?;
        }
        std::fs::rename(&fresh.root, &self.root)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Ends every file whose last line a crash tore with a newline, so the next append
    /// does not glue itself to it.
    pub fn seal_all(&self) {
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Err(err) = super::retention::seal(&p) {
                    warn!(file = %p.display(), "cannot repair the recordings index: {err}");
                }
            }
        }
    }
}

fn subdirs(dir: &Path, only: Option<&str>) -> Vec<PathBuf> {
    if let Some(name) = only {
        let p = dir.join(name);
        return if p.is_dir() && name != "." && name != ".." && !name.contains('/') {
            vec![p]
        } else {
            Vec::new()
        };
    }
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Records and tombstones in file order (also the format of the old single-file index).
pub(super) fn read_file(path: &Path) -> std::io::Result<StreamFile> {
    let text = std::fs::read_to_string(path)?;
    // In file order; a later record of a key replaces the earlier one, a tombstone ends it.
    let mut slots: Vec<Option<FileRecord>> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut lines = 0usize;
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        if let Ok(r) = serde_json::from_str::<FileRecord>(l) {
            if let Some(i) = at.insert(r.key.clone(), slots.len()) {
                slots[i] = None;
            }
            slots.push(Some(r));
        } else if let Some(k) = serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["deleted"].as_str().map(str::to_string))
        {
            if let Some(i) = at.remove(&k) {
                slots[i] = None;
            }
        }
        // Anything else is a line torn by a crash: skipped.
    }
    let live: Vec<FileRecord> = slots.into_iter().flatten().collect();
    Ok(StreamFile {
        path: path.to_path_buf(),
        wants_compaction: lines >= COMPACT_MIN_LINES && live.len() * 2 < lines,
        live,
    })
}

#[cfg(test)]
mod tests {
    use super::super::retention::Index;
    use super::*;

    fn rec(key: &str, start_ms: i64) -> FileRecord {
        let p: Vec<&str> = key.split('/').collect();
        FileRecord {
            key: key.into(),
            format: "flv".into(),
            domain: p[0].into(),
            app: p[1].into(),
            stream: p[2].into(),
            start_ms,
            end_ms: start_ms + 1000,
            ..Default::default()
        }
    }

    fn lines(p: &Path) -> usize {
        std::fs::read_to_string(p).unwrap().lines().count()
    }

    #[test]
    fn one_file_per_stream_and_a_stream_query_reads_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::new(dir.path().join("i"));
        idx.record(rec("d/live/a/a-1.flv", 2000), 0);
        idx.record(rec("d/live/b/b-1.flv", 1000), 0);
        idx.record(rec("d/live/a/a-0.flv", 0), 0);
        let root = dir.path().join("i/recordings");
        assert_eq!(lines(&root.join("d/live/a.jsonl")), 2);
        assert_eq!(lines(&root.join("d/live/b.jsonl")), 1);
        let files = RecFiles::new(root.clone());
        let only_a = RecordingFilter {
            domain: Some("d".into()),
            app: Some("live".into()),
            stream: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(files.files(&only_a), [root.join("d/live/a.jsonl")]);
        let keys = |f: &RecordingFilter| -> Vec<String> {
            idx.query(f).into_iter().map(|r| r.key).collect()
        };
        assert_eq!(keys(&only_a), ["d/live/a/a-0.flv", "d/live/a/a-1.flv"]);
        // Without a full stream name every file is read; oldest first across streams.
        let just_stream = RecordingFilter {
            stream: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(keys(&just_stream), ["d/live/b/b-1.flv"]);
        assert_eq!(
            keys(&RecordingFilter::default()),
            ["d/live/a/a-0.flv", "d/live/b/b-1.flv", "d/live/a/a-1.flv"]
        );
    }

    #[test]
    fn a_file_of_mostly_tombstones_is_compacted_by_the_next_query() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::new(dir.path().join("i"));
        for n in 0..100 {
            idx.record(rec(&format!("d/live/s/{n}.flv"), n), 1);
        }
        let file = dir.path().join("i/recordings/d/live/s.jsonl");
        let f = RecordingFilter::default();
        for n in 0..80 {
            idx.expire_now_for_test(&format!("d/live/s/{n}.flv"));
        }
        assert_eq!(lines(&file), 180);
        let got: Vec<i64> = idx.query(&f).into_iter().map(|r| r.start_ms).collect();
        assert_eq!(got, (80..100).collect::<Vec<_>>());
        assert_eq!(lines(&file), 20, "compacted to the live records");
        assert_eq!(idx.query(&f).len(), 20);
        // A key recorded again after its tombstone is live again.
        idx.record(rec("d/live/s/5.flv", 5), 0);
        assert_eq!(idx.query(&f).len(), 21);
    }

    #[test]
    fn the_single_file_index_of_earlier_versions_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let i = dir.path().join("i");
        std::fs::create_dir_all(&i).unwrap();
        let mut old = String::new();
        for r in [rec("d/a/s/1.flv", 1), rec("d/a/t/2.flv", 2)] {
            old += &serde_json::to_string(&r).unwrap();
            old += "\n";
        }
        old += "{\"deleted\":\"d/a/s/1.flv\"}\n";
        std::fs::write(i.join("recordings.jsonl"), old).unwrap();
        let idx = Index::new(i.clone());
        assert!(!i.join("recordings.jsonl").exists());
        let got: Vec<String> = idx
            .query(&RecordingFilter::default())
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(got, ["d/a/t/2.flv"]);
    }
}
