//! Issue 11: crash-ordered steps. A closed file goes closed → (queued) → stored → indexed
//! → expired → deleted, each step one durable record. The daemon, built with
//! `--features failpoints` (`scripts/test.sh` does), aborts at the named step
//! (`LIVEREC_FAILPOINT`, `src/failpoint.rs`) like `kill -9`; a restart without it must
//! finish the file: stored once, listed once by `GET /v1/recordings` with its size, and
//! deleted when its `storage_time` runs out — never forgotten, never indexed twice.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Daemon;
use testkit::s3::S3Server;
use testkit::PublishOptions;

/// Seconds a recorded file is kept: long enough to see it indexed before it expires.
const KEEP_S: i64 = 5;

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Local,
    S3,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Flv,
    Hls,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Flv => "flv",
            Format::Hls => "m3u8",
        }
    }
    fn api(self) -> &'static str {
        match self {
            Format::Flv => "flv",
            Format::Hls => "hls",
        }
    }
}

fn unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

struct Run {
    d: Daemon,
    s3: Option<S3Server>,
    // Holds the S3 server's directory; dropped last.
    _dir: tempfile::TempDir,
    format: Format,
}

impl Run {
    fn start(step: &str, store: Store, format: Format) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let s3 = (store == Store::S3).then(|| S3Server::start(&dir.path().join("s3")));
        let storage = match &s3 {
            Some(s3) => format!("{}retention_sweep_interval = 1\n", s3.storage_toml("")),
            None => "[storage]\nroot = \"{root}\"\nretention_sweep_interval = 1\n".into(),
        };
        let fmt = match format {
            Format::Flv => format!(
                "flv = {{ enable = true, record_interval = 600, storage_time = {KEEP_S}, file_name = \"{{StreamID}}\" }}"
            ),
            Format::Hls => format!(
                "hls = {{ enable = true, record_interval = 600, segment_duration = 1, storage_time = {KEEP_S}, file_name = \"{{StreamID}}\" }}"
            ),
        };
        let d = Daemon::start_under_with_storage(
            &format!("export LIVEREC_FAILPOINT={step}"),
            &storage,
            &format!("[record]\ndefault_template = 1\n[[template]]\nid = 1\n{fmt}\n"),
        );
        Run {
            d,
            s3,
            _dir: dir,
            format,
        }
    }

    fn push(&self) {
        let url = self.d.url("live", "cam");
        let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(
            async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await },
        )
        .expect("publish");
    }

    /// Waits for the armed step to abort the daemon; reaps it.
    fn wait_crash(&mut self, step: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.d.is_running() {
            assert!(
                Instant::now() < deadline,
                "the daemon never reached failpoint {step}: is it built with `--features \
                 liverec/failpoints` (scripts/test.sh builds it so)? log:\n{}",
                self.d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.d.kill9();
        assert!(
            self.d
                .log()
                .contains(&format!("failpoint {step}: aborting")),
            "the daemon died, but not at {step}; log:\n{}",
            self.d.log()
        );
    }

    /// The recording's stored objects with their sizes: the file, or the playlist and
    /// its segments.
    fn stored(&self) -> Vec<(String, u64)> {
        let prefix = "localhost/live/cam/";
        match &self.s3 {
            Some(s3) => s3
                .list()
                .into_iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .collect(),
            None => common::walk(&self.d.root().join(prefix))
                .into_iter()
                .filter_map(|rel| {
                    let p = self.d.root().join(prefix).join(&rel);
                    let m = std::fs::metadata(&p).ok()?;
                    m.is_file()
                        .then(|| (format!("{prefix}{}", rel.display()), m.len()))
                })
                .collect(),
        }
    }

    fn recordings(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.d.api_get("/v1/recordings?stream=cam");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["recordings"].as_array().cloned().unwrap_or_default()
    }

    /// Nothing left owed in the spool: no open, queued or unended file.
    fn spool_clean(&self) -> bool {
        common::walk(&self.d.spool()).iter().all(|p| {
            let p = p.to_string_lossy();
            !(p.ends_with(".part") || p.ends_with(".up") || p.ends_with(".m3u8.json"))
        })
    }

    /// Waits until the file is stored and indexed, exactly once; returns its entry.
    fn wait_stored_and_indexed(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let recs = self.recordings();
            let objects = self.stored();
            if recs.len() == 1 && self.spool_clean() {
                let r = &recs[0];
                let key = r["key"].as_str().expect("key").to_string();
                let size = r["size"].as_u64().expect("size");
                assert_eq!(r["format"], self.format.api(), "{r}");
                let main: Vec<_> = objects
                    .iter()
                    .filter(|(k, _)| k.ends_with(&format!(".{}", self.format.ext())))
                    .collect();
                assert_eq!(main.len(), 1, "stored once: {objects:?}");
                assert_eq!(main[0].0, key, "{objects:?}");
                let stored: u64 = match self.format {
                    Format::Flv => main[0].1,
                    // An HLS recording's size is its segments'.
                    Format::Hls => objects
                        .iter()
                        .filter(|(k, _)| k.ends_with(".ts"))
                        .map(|(_, n)| n)
                        .sum(),
                };
                assert_eq!(size, stored, "{r} vs {objects:?}");
                assert!(size > 0, "{r}");
                return r.clone();
            }
            assert!(
                recs.len() <= 1,
                "indexed more than once: {recs:?}; log:\n{}",
                self.d.log()
            );
            assert!(
                Instant::now() < deadline,
                "not stored and indexed after the restart: {recs:?}, {objects:?}; log:\n{}",
                self.d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The entry expires `KEEP_S` after it was stored (not before), and then the file,
    /// its segments and its entry go.
    fn check_expiry(&self, entry: &serde_json::Value, stored_after: f64) {
        let expires = entry["expire_time"].as_i64().expect("expire_time") as f64;
        assert!(
            expires >= stored_after.floor() + KEEP_S as f64 - 1.0
                && expires <= unix_s() + KEEP_S as f64 + 1.0,
            "expires {expires}: not {KEEP_S} s after it was stored ({stored_after})"
        );
        while unix_s() < expires - 1.0 {
            assert!(
                !self.stored().is_empty(),
                "deleted before its storage_time ran out"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline =
            Instant::now() + Duration::from_secs_f64((expires - unix_s()).max(0.0) + 6.0);
        while !self.stored().is_empty() || !self.recordings().is_empty() {
            assert!(
                Instant::now() < deadline,
                "not deleted on time: {:?}, {:?}; log:\n{}",
                self.stored(),
                self.recordings(),
                self.d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Crash at `step` while the file goes forward; restart; it is finished and expires.
fn crash_then_finish(step: &str, store: Store, format: Format) {
    let mut run = Run::start(step, store, format);
    let before = unix_s();
    run.push();
    run.wait_crash(step, Duration::from_secs(20));
    run.d.restart();
    let entry = run.wait_stored_and_indexed();
    run.check_expiry(&entry, before);
    assert_eq!(run.d.stop(), Some(0));
}

/// Crash after an expired file was deleted but before its schedule row and entry went:
/// the restart's sweep finishes the deletion (a missing file counts as deleted).
fn crash_after_delete(store: Store) {
    let step = "retention.deleted";
    let mut run = Run::start(step, store, Format::Flv);
    run.push();
    // Stored and indexed before it expires (the crash comes with its deletion).
    let entry = run.wait_stored_and_indexed();
    run.wait_crash(step, Duration::from_secs(KEEP_S as u64 + 20));
    assert!(run.stored().is_empty(), "deleted before the crash");
    let catalog: Option<PathBuf> = (store == Store::Local).then(|| {
        run.d.root().join(format!(
            ".liverec/state/recordings/{}.json",
            entry["key"].as_str().expect("key")
        ))
    });
    run.d.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run.recordings().is_empty() || catalog.as_ref().is_some_and(|c| c.exists()) {
        assert!(
            Instant::now() < deadline,
            "the deletion was not finished after the restart: {:?}; log:\n{}",
            run.recordings(),
            run.d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(run.stored().is_empty());
    assert_eq!(run.d.stop(), Some(0));
}

#[test]
fn local_crash_after_close() {
    crash_then_finish("file.closed", Store::Local, Format::Flv);
}

#[test]
fn local_crash_after_owed() {
    crash_then_finish("local.owed", Store::Local, Format::Flv);
}

#[test]
fn local_crash_after_stored() {
    crash_then_finish("local.stored", Store::Local, Format::Flv);
}

#[test]
fn local_hls_crash_after_stored() {
    crash_then_finish("hls.stored", Store::Local, Format::Hls);
}

#[test]
fn local_crash_after_delete() {
    crash_after_delete(Store::Local);
}

#[test]
fn s3_crash_after_close() {
    crash_then_finish("file.closed", Store::S3, Format::Flv);
}

#[test]
fn s3_crash_after_renamed() {
    crash_then_finish("s3.renamed", Store::S3, Format::Flv);
}

#[test]
fn s3_crash_after_queued() {
    crash_then_finish("s3.queued", Store::S3, Format::Flv);
}

#[test]
fn s3_crash_after_stored() {
    crash_then_finish("s3.stored", Store::S3, Format::Flv);
}

#[test]
fn s3_crash_after_indexed() {
    crash_then_finish("s3.indexed", Store::S3, Format::Flv);
}

#[test]
fn s3_hls_crash_after_stored() {
    crash_then_finish("hls.stored", Store::S3, Format::Hls);
}

#[test]
fn s3_crash_after_delete() {
    crash_after_delete(Store::S3);
}

/// A spool written by the previous release queued each upload as `{file}.up` with its key
/// record `{file}.up.json` beside it; this release keeps that queue in the node database
/// and must still upload and index what an upgrade finds.
#[test]
fn an_earlier_versions_upload_queue_is_still_uploaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"));
    let mut d = Daemon::start_full("", Some(&s3.storage_toml("")), "");
    assert_eq!(d.stop(), Some(0));
    let stream = d.spool().join("localhost/live/old");
    std::fs::create_dir_all(&stream).expect("spool dir");
    let up = stream.join("r1-1.0.1764000000000.flv.up");
    let bytes = std::fs::read(testkit::fixture("avc_aac_2s.flv")).expect("fixture");
    std::fs::write(&up, &bytes).expect("write .up");
    let key = "localhost/live/old/old_2025.flv";
    // The previous release's `UpMeta`, as it wrote it.
    let record = serde_json::json!({
        "key": key,
        "storage_time": 0,
        "info": {
            "key": key, "format": "flv", "domain": "localhost", "app": "live",
            "stream": "old", "task_id": "", "start_ms": 1_764_000_000_000i64,
            "end_ms": 1_764_000_002_000i64, "duration_ms": 2000, "size": bytes.len(),
            "expires": 0
        }
    });
    std::fs::write(
        stream.join("r1-1.0.1764000000000.flv.up.json"),
        record.to_string(),
    )
    .expect("write .up.json");
    d.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = d.api_get("/v1/recordings?stream=old");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let recs = v["recordings"].as_array().cloned().unwrap_or_default();
        let stored = std::fs::read(s3.object_path(key)).ok();
        if recs.len() == 1 && stored.is_some() && !up.exists() {
            assert_eq!(recs[0]["key"], key, "{body}");
            assert_eq!(stored.as_deref(), Some(&bytes[..]), "uploaded as it was");
            assert!(
                !stream.join("r1-1.0.1764000000000.flv.up.json").exists(),
                "its key record goes with it"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old queue was not uploaded: {recs:?}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.stop(), Some(0));
}
