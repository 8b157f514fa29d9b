//! The one-time import of the JSON-lines index that `sink::retention` and
//! `sink::recfiles` kept in `{spool}/.index/` before issue 11:
//!
//! - `recordings/{domain}/{app}/{stream}.jsonl` and `recordings/_other.jsonl`: FileRecord
//!   lines and `{"deleted": key}` tombstones; a later line of a key replaces the earlier.
//!   `recordings.jsonl`, the single file of still earlier versions, has the same lines.
//!   After a crash inside `RecFiles::replace_all`, `recordings.new` is the complete one
//!   when `recordings` is gone and `recordings.old` is left.
//! - `{hour}.jsonl`: retention entries `{"key", "expires"}` (unix seconds).
//! - `publish.jsonl` with `publish.offset`: catalog changes (`{"put": record}`,
//!   `{"delete": key}`); those after the offset were not yet in the store.
//!
//! Any of them may end in a line torn by a crash; an unreadable line is skipped with a
//! warning naming the file and line. Everything goes in in one transaction together with
//! the `imported` mark, and only then is the directory renamed aside, so a crash anywhere
//! either leaves nothing imported or the mark that stops a second import.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::Deserialize;
use tracing::{info, warn};

use super::{get_meta, outbox, put_recording, schedule, set_meta, Ctx, DbError, FileRecord, Op};

/// Mirrors `retention::Entry`, so this import outlives that module.
#[derive(Deserialize)]
struct OldEntry {
    key: String,
    expires: i64,
}

#[derive(Debug, Default, PartialEq)]
pub(super) struct Imported {
    pub recordings: usize,
    pub retention: usize,
    pub outbox: usize,
    pub skipped_lines: usize,
    /// The old spool had a local catalog (no rebuild from the store needed).
    pub catalog: bool,
}

/// Imports `dir` unless this database already did; then moves it aside.
pub(super) fn import_once(
    db: &mut Connection,
    dir: &Path,
    now_ms: i64,
) -> Result<Option<Imported>, DbError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let done = get_meta(db, "imported")?.is_some();
    let report = if done {
        // Committed before a crash kept the rename from happening.
        None
    } else {
        let tx = db.transaction().ctx("import", dir.display())?;
        let report = import(&tx, dir)?;
        set_meta(
            &tx,
            "imported",
            &serde_json::json!({ "from": dir.display().to_string(), "at_ms": now_ms }).to_string(),
        )?;
        if report.catalog {
            set_meta(&tx, "catalog_ready", "1")?;
        }
        tx.commit().ctx("import", dir.display())?;
        info!(
            dir = %dir.display(),
            recordings = report.recordings,
            retention = report.retention,
            unpublished = report.outbox,
            skipped_lines = report.skipped_lines,
            "old JSON-lines index imported into the node database"
        );
        Some(report)
    };
    let aside = aside_name(dir);
    if let Err(e) = std::fs::rename(dir, &aside) {
        // Harmless: the `imported` mark keeps the next start from importing it again.
        warn!(dir = %dir.display(), "cannot move the imported index aside: {e}");
    }
    Ok(report)
}

/// `{dir}.imported`, or `{dir}.imported.N` when that is taken.
fn aside_name(dir: &Path) -> PathBuf {
    let base = dir.as_os_str().to_os_string();
    let mut n = 0u32;
    loop {
        let mut name = base.clone();
        name.push(".imported");
        if n > 0 {
            name.push(format!(".{n}"));
        }
        let p = PathBuf::from(name);
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

pub(super) fn import(tx: &rusqlite::Transaction<'_>, dir: &Path) -> Result<Imported, DbError> {
    let mut report = Imported::default();
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DbError::Io {
            op: "importing the old index",
            path,
            source,
        }
    };

    // Recordings: the single old file first (its conversion runs before any append to
    // the per-stream files), then the stream files; each key lives in one stream file.
    let mut live: HashMap<String, FileRecord> = HashMap::new();
    let single = dir.join("recordings.jsonl");
    let mut catalog = single.exists();
    let mut rec_files = Vec::new();
    if single.exists() {
        rec_files.push(single);
    }
    let root = dir.join("recordings");
    let (new, old) = (dir.join("recordings.new"), dir.join("recordings.old"));
    let root = if root.is_dir() {
        Some(root)
    } else if new.is_dir() && old.is_dir() {
        Some(new)
    } else {
        None
    };
    if let Some(root) = root {
        catalog = true;
        let mut found = Vec::new();
        walk(&root, &mut found).map_err(read_err(&root))?;
        found.sort();
        rec_files.extend(found);
    }
    for path in &rec_files {
        let data = std::fs::read(path).map_err(read_err(path))?;
        for (n, line) in lines(&data) {
            if let Ok(r) = serde_json::from_slice::<FileRecord>(line) {
                live.insert(r.key.clone(), r);
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(line) {
                Ok(v) if v["deleted"].is_string() => {
                    if let Some(k) = v["deleted"].as_str() {
                        live.remove(k);
                    }
                }
                Ok(_) => skip(&mut report, path, n, "neither a record nor a tombstone"),
                Err(e) => skip(&mut report, path, n, &e.to_string()),
            }
        }
    }
    let mut recs: Vec<FileRecord> = live.into_values().collect();
    recs.sort_by(|a, b| (a.start_ms, &a.key).cmp(&(b.start_ms, &b.key)));
    for r in &recs {
        put_recording(tx, r)?;
    }
    report.recordings = recs.len();

    // Retention: every hour file; a key in several keeps its latest expiry (R-ST-5).
    let mut hours = Vec::new();
    for de in std::fs::read_dir(dir).map_err(read_err(dir))? {
        let path = de.map_err(read_err(dir))?.path();
        let is_hour = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jsonl"))
            .is_some_and(|h| h.parse::<i64>().is_ok());
        if is_hour && path.is_file() {
            hours.push(path);
        }
    }
    hours.sort();
    for path in &hours {
        let data = std::fs::read(path).map_err(read_err(path))?;
        for (n, line) in lines(&data) {
            match serde_json::from_slice::<OldEntry>(line) {
                Ok(e) => {
                    schedule(tx, &e.key, e.expires.saturating_mul(1000), None)?;
                    report.retention += 1;
                }
                Err(e) => skip(&mut report, path, n, &e.to_string()),
            }
        }
    }

    // The publish queue from its confirmed offset.
    let queue = dir.join("publish.jsonl");
    if queue.exists() {
        catalog = true;
        let data = std::fs::read(&queue).map_err(read_err(&queue))?;
        let offset = std::fs::read_to_string(dir.join("publish.offset"))
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(data.len());
        // Line numbers count from the top of the file, as an editor shows them.
        let first_line = data[..offset].iter().filter(|&&b| b == b'\n').count();
        for (n, line) in lines(&data[offset..]) {
            match serde_json::from_slice::<Op>(line) {
                Ok(op) => {
                    outbox(tx, &op)?;
                    report.outbox += 1;
                }
                Err(e) => skip(&mut report, &queue, first_line + n, &e.to_string()),
            }
        }
    }
    report.catalog = catalog;
    Ok(report)
}

fn skip(report: &mut Imported, path: &Path, line: usize, why: &str) {
    report.skipped_lines += 1;
    warn!(file = %path.display(), line, "skipping an unreadable line of the old index: {why}");
}

/// Non-blank lines with their 1-based numbers (a torn last line has no newline).
fn lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    data.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
}

/// Every `.jsonl` file under `dir`.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for de in std::fs::read_dir(dir)? {
        let p = de?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "jsonl") {
            out.push(p);
        }
    }
    Ok(())
}
