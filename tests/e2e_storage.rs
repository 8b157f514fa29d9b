//! End to end storage (R-ST-1…5): recordings uploaded to a real S3 protocol server
//! (s3s-fs, in-process, SigV4 checked), a storage outage, a crash and restart, the spool
//! quota, and retention — always with the real daemon and real pushes.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;
use testkit::s3::S3Server;
use testkit::{ffprobe_errors, flv_summary, require_tool, PublishOptions};

const ALL_FORMATS: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nname = \"all\"\nflv = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\nmp4 = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\naac = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\nhls = { enable = true, record_interval = 600, segment_duration = 2, file_name = \"{StreamID}-{Seq}\" }\n";

fn push(d: &Daemon, stream: &str, fixture: &str, opts: PublishOptions) -> Result<(), String> {
    let url = d.url("live", stream);
    let tags = Arc::new(testkit::fixture_tags(fixture));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move { testkit::publish_flv(&url, &tags, &opts).await })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every `.part`/`.up` file (open or waiting for upload) under the spool.
fn spool_files(d: &Daemon) -> Vec<PathBuf> {
    common::walk(&d.spool())
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.ends_with(".part") || s.ends_with(".up") || s.ends_with(".m3u8.json")
        })
        .collect()
}

/// Waits until the spool holds nothing open or waiting and the daemon says no upload is
/// pending, for 1 s in a row.
fn wait_drained(d: &Daemon, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut since: Option<Instant> = None;
    loop {
        let (status, body) = d.api_get("/healthz");
        let idle = status == 200
            && body.contains("\"uploads_pending\":0")
            && body.contains("\"index_unpublished\":0")
            && spool_files(d).is_empty();
        match (idle, since) {
            (true, Some(t)) if t.elapsed() > Duration::from_secs(1) => return,
            (true, None) => since = Some(Instant::now()),
            (false, _) => since = None,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "spool not drained: {:?}, healthz {body}; log:\n{}",
            spool_files(d),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The objects of one stream in the bucket, by extension, in recording order.
fn objects(s3: &S3Server, prefix: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = s3
        .list()
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(&format!(".{ext}")))
        .map(|(k, _)| s3.object_path(&k))
        .collect();
    v = common::ordered(v);
    v
}

/// Asserts the FLV objects hold exactly `expected` frames (hash and kind), in order.
fn assert_flv_frames(files: &[PathBuf], expected: &[(media::TrackKind, [u8; 32])]) {
    let mut got = Vec::new();
    for f in files {
        let errors = ffprobe_errors(f);
        assert!(errors.is_empty(), "{}: {errors}", f.display());
        got.extend(flv_summary(f).frame_hashes());
    }
    assert_eq!(got.len(), expected.len(), "frame count");
    assert!(got == expected, "frames differ from the input");
}

fn input_frames(fixture: &str, times: usize) -> Vec<(media::TrackKind, [u8; 32])> {
    let one = flv_summary(&testkit::fixture(fixture)).frame_hashes();
    let mut all = Vec::new();
    for _ in 0..times {
        all.extend(one.iter().cloned());
    }
    all
}

#[test]
fn s3_push_with_all_formats_lands_in_the_bucket() {
    require_tool("ffprobe");
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"));
    let d = Daemon::start_full("", Some(&s3.storage_toml("pre/fix")), ALL_FORMATS);
    assert!(d.log().contains("S3 bucket reachable"), "{}", d.log());
    push(&d, "s3", "avc_aac_2s.flv", PublishOptions::default()).expect("publish");
    wait_drained(&d, Duration::from_secs(60));

    let prefix = "pre/fix/localhost/live/s3/";
    let keys: Vec<String> = s3.list().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.iter()
            .all(|k| k.starts_with(prefix) || k.starts_with("pre/fix/.liverec/state/")),
        "every key is {{prefix}}/{{domain}}/{{app}}/{{stream}}/… or the daemon's state: {keys:?}"
    );
    for ext in ["flv", "mp4", "aac", "m3u8", "ts"] {
        assert!(
            !objects(&s3, prefix, ext).is_empty(),
            "no .{ext} object: {keys:?}"
        );
    }
    // Every object probes cleanly; the FLV objects hold exactly the input's frames.
    for ext in ["mp4", "aac", "ts"] {
        for f in objects(&s3, prefix, ext) {
            let errors = ffprobe_errors(&f);
            assert!(errors.is_empty(), "{}: {errors}", f.display());
        }
    }
    assert_flv_frames(
        &objects(&s3, prefix, "flv"),
        &input_frames("avc_aac_2s.flv", 1),
    );
    // The playlist is final and names only segments the bucket has.
    let playlists = objects(&s3, prefix, "m3u8");
    assert_eq!(playlists.len(), 1, "{keys:?}");
    let text = std::fs::read_to_string(&playlists[0]).expect("playlist");
    let (pl, ended) = hls::MediaPlaylist::parse(&text).expect("parse playlist");
    assert!(ended, "ENDLIST: {text}");
    for s in pl.segments() {
        let key = format!("{prefix}{}", s.uri);
        assert!(keys.contains(&key), "{key} listed but not stored");
    }
    let out = std::process::Command::new(require_tool("ffmpeg"))
        .args(["-v", "error", "-i"])
        .arg(&playlists[0])
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    // Every stored file is in the recordings index once, with its object's size.
    let (_, body) = d.api_get("/v1/recordings?stream=s3");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let recs = v["recordings"].as_array().expect("list");
    for ext in ["flv", "mp4", "aac"] {
        let objs = objects(&s3, prefix, ext);
        let indexed: Vec<_> = recs.iter().filter(|r| r["format"] == ext).collect();
        assert_eq!(indexed.len(), objs.len(), "{ext}: {body}");
        for r in indexed {
            let key = r["key"].as_str().expect("key");
            let size = std::fs::metadata(s3.object_path(&format!("pre/fix/{key}")))
                .map(|m| m.len())
                .ok();
            assert_eq!(r["size"].as_u64(), size, "{key}");
        }
    }
    assert_eq!(
        recs.iter().filter(|r| r["format"] == "hls").count(),
        1,
        "{body}"
    );
}

#[test]
fn s3_large_files_go_up_in_parts() {
    large_file_goes_up_in_parts("");
}

/// `[spool] direct_io = "on"` with S3: the uploader reads each part of the spool file
/// while the recorder writes its blocks around the page cache and its tail through it.
#[test]
fn s3_large_files_go_up_whole_when_spool_writes_are_direct() {
    let d = large_file_goes_up_in_parts("[spool]\ndirect_io = \"on\"\n");
    assert!(
        d.log().contains("around the page cache (O_DIRECT)"),
        "{}",
        d.log()
    );
    assert!(!d.log().contains("direct I/O unavailable"), "{}", d.log());
}

fn large_file_goes_up_in_parts(spool: &str) -> Daemon {
    // A part size of 5 MiB (the S3 minimum) and a file bigger than that: multipart.
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"));
    let storage = format!("{}part_size = 5242880\n", s3.storage_toml(""));
    let d = Daemon::start_full(
        "",
        Some(&storage),
        &format!("{spool}[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 600, file_name = \"{{StreamID}}\" }}\n"),
    );
    // ~12 MB: more than two parts, so parts go up while the file is still recorded.
    let opts = PublishOptions {
        loops: 9,
        ..PublishOptions::default()
    };
    push(&d, "big", "avc_aac_2s.flv", opts).expect("publish");
    wait_drained(&d, Duration::from_secs(60));
    let files = objects(&s3, "localhost/live/big/", "flv");
    assert_eq!(files.len(), 1);
    let size = std::fs::metadata(&files[0]).expect("object").len();
    assert!(size > 10 << 20, "{size} bytes: not a multipart-sized file");
    assert_flv_frames(&files, &input_frames("avc_aac_2s.flv", 10));
    // Finalized: the patched first part made it into the object.
    let summary = flv_summary(&files[0]);
    assert_eq!(summary.filesize, Some(size as f64));
    assert!(
        summary.duration.unwrap_or(0.0) > 190.0,
        "{:?}",
        summary.duration
    );
    assert!(d.log().contains("uploaded (streamed)"), "{}", d.log());
    let keys: Vec<String> = s3.list().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.iter().all(|k| !k.starts_with(".liverec/uploading/")),
        "temporary upload keys left: {keys:?}"
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
    d
}

#[test]
fn s3_outage_of_30_s_mid_push_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3_root = dir.path().join("s3");
    let mut s3 = S3Server::start(&s3_root);
    let addr = s3.addr;
    let d = Daemon::start_full(
        "",
        Some(&s3.storage_toml("")),
        "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\nhls = { enable = true, record_interval = 600, segment_duration = 2, file_name = \"{StreamID}\" }\n",
    );
    let url = d.url("live", "outage");
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // 40 s in real time (the fixture twice); the store is down from 4 s to 34 s.
    let pushing = rt.spawn(async move {
        let opts = PublishOptions {
            realtime: true,
            loops: 1,
            ..PublishOptions::default()
        };
        testkit::publish_flv(&url, &tags, &opts).await
    });
    std::thread::sleep(Duration::from_secs(4));
    s3.stop();
    std::thread::sleep(Duration::from_secs(30));
    // Files kept closing during the outage: they are in the spool.
    let waiting = spool_files(&d)
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".up"))
        .count();
    assert!(
        waiting >= 5,
        "expected files waiting in the spool, found {waiting}"
    );
    let s3 = S3Server::start_on(&s3_root, addr);
    rt.block_on(pushing).expect("join").expect("publish");
    wait_drained(&d, Duration::from_secs(90));

    let prefix = "localhost/live/outage/";
    assert_flv_frames(
        &objects(&s3, prefix, "flv"),
        &input_frames("avc_aac_2s.flv", 2),
    );
    let playlists = objects(&s3, prefix, "m3u8");
    assert_eq!(playlists.len(), 1);
    let text = std::fs::read_to_string(&playlists[0]).expect("playlist");
    let (pl, ended) = hls::MediaPlaylist::parse(&text).expect("parse");
    assert!(ended, "{text}");
    let total: f64 = pl.segments().iter().map(|s| s.duration).sum();
    assert!((total - 40.0).abs() < 0.2, "playlist spans {total} s");
    for s in pl.segments() {
        let f = s3.object_path(&format!("{prefix}{}", s.uri));
        assert!(f.exists(), "{} missing", s.uri);
    }
    assert_eq!(s3.open_multipart_uploads(), 0);
    let log = d.log();
    assert!(log.contains("storage failing"), "the outage is logged");
    assert!(log.contains("storage answering again"), "and its end");
    assert!(
        log.matches("storage failing").count() <= 2,
        "an outage is one warning, not one per file"
    );
}

#[test]
fn s3_kill_9_then_restart_stores_every_file() {
    require_tool("ffprobe");
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"));
    let mut d = Daemon::start_full(
        "",
        Some(&s3.storage_toml("")),
        "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 600, file_name = \"{StreamID}\" }\nmp4 = { enable = true, record_interval = 600, file_name = \"{StreamID}\" }\nhls = { enable = true, record_interval = 600, segment_duration = 2, file_name = \"{StreamID}\" }\n",
    );
    let url = d.url("live", "crash");
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pushing = rt.spawn(async move {
        let opts = PublishOptions {
            realtime: true,
            ..PublishOptions::default()
        };
        testkit::publish_flv(&url, &tags, &opts).await
    });
    std::thread::sleep(Duration::from_secs(9));
    // What had reached the spool when the daemon died.
    let dir_spool = d.spool().join("localhost/live/crash");
    let flv_part = common::list(&dir_spool, "part")
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".flv.part"))
        .expect("open FLV in the spool");
    d.kill9();
    pushing.abort();
    let spooled = std::fs::read(&flv_part).expect("spool FLV");
    let spooled_frames = testkit::probe::flv_summary_bytes(spooled.into()).frame_hashes();
    assert!(
        spooled_frames.len() > 100,
        "{} frames spooled",
        spooled_frames.len()
    );

    d.restart();
    wait_drained(&d, Duration::from_secs(60));
    let prefix = "localhost/live/crash/";
    let flv = objects(&s3, prefix, "flv");
    assert_eq!(flv.len(), 1, "{:?}", s3.list());
    // Finalized (duration patched) and holding every frame that was in the spool: the
    // repair may only drop a torn last tag.
    let summary = flv_summary(&flv[0]);
    let got = summary.frame_hashes();
    assert!(got.len() >= spooled_frames.len().saturating_sub(1));
    assert_eq!(got[..], spooled_frames[..got.len()]);
    let meta_duration = summary.duration.unwrap_or(0.0);
    assert!(
        meta_duration > 3.0,
        "duration {meta_duration} patched in onMetaData"
    );
    assert_eq!(
        summary.filesize,
        Some(summary.file_size as f64),
        "filesize patched"
    );
    for ext in ["flv", "mp4", "ts"] {
        let files = objects(&s3, prefix, ext);
        assert!(
            !files.is_empty(),
            "no .{ext} after recovery: {:?}",
            s3.list()
        );
        for f in files {
            let errors = ffprobe_errors(&f);
            assert!(errors.is_empty(), "{}: {errors}", f.display());
        }
    }
    let playlists = objects(&s3, prefix, "m3u8");
    assert_eq!(playlists.len(), 1);
    let text = std::fs::read_to_string(&playlists[0]).expect("playlist");
    let (pl, ended) = hls::MediaPlaylist::parse(&text).expect("parse");
    assert!(ended, "recovery ends the playlist: {text}");
    for s in pl.segments() {
        assert!(
            s3.object_path(&format!("{prefix}{}", s.uri)).exists(),
            "{} listed, not stored",
            s.uri
        );
    }
    // The playlist recovery ended is in the recordings index, spanning its segments,
    // sized as the stored segments.
    let recs = recordings(&d, "stream=crash&format=hls");
    assert_eq!(recs.len(), 1, "{recs:?}");
    let listed_ms: f64 = pl.segments().iter().map(|s| s.duration * 1000.0).sum();
    let dur_ms = recs[0]["duration"].as_f64().expect("duration") * 1000.0;
    assert!(
        (dur_ms - listed_ms).abs() < 2.0 * pl.segments().len() as f64,
        "indexed {dur_ms} ms, playlist {listed_ms} ms"
    );
    let seg_bytes: u64 = pl
        .segments()
        .iter()
        .map(|s| {
            std::fs::metadata(s3.object_path(&format!("{prefix}{}", s.uri)))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(recs[0]["size"].as_u64(), Some(seg_bytes), "{:?}", recs[0]);
    assert_eq!(
        recs[0]["key"].as_str(),
        Some(&*format!("{prefix}{}", file_name(&playlists[0])))
    );
    for ext in ["flv", "mp4"] {
        let r = recordings(&d, &format!("stream=crash&format={ext}"));
        assert_eq!(r.len(), 1, "{ext}: {r:?}");
    }
    assert!(
        d.log().contains("recovered unfinished files"),
        "{}",
        d.log()
    );
    assert_eq!(s3.open_multipart_uploads(), 0);
}

/// Issue 10: with S3 every stored object that a close produced — files, HLS segments and
/// the final playlist — is one close → stored observation, and every finalized file one
/// finalize observation under its format, as histogram buckets.
#[test]
fn s3_metrics_histograms_count_each_stored_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"));
    let d = Daemon::start_full("", Some(&s3.storage_toml("m")), ALL_FORMATS);
    push(&d, "hist", "avc_aac_2s.flv", PublishOptions::default()).expect("publish");
    wait_drained(&d, Duration::from_secs(60));
    let (_, text) = d.api_get("/metrics");
    let value = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let prefix = "m/localhost/live/hist/";
    let stored: usize = ["flv", "mp4", "aac", "ts", "m3u8"]
        .iter()
        .map(|ext| objects(&s3, prefix, ext).len())
        .sum();
    assert_eq!(
        value("liverec_upload_latency_seconds_bucket{backend=\"s3\",le=\"+Inf\"}"),
        stored as u64,
        "{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.starts_with("liverec_upload_latency_seconds_bucket{backend=\"s3\","))
            .count()
            > 5,
        "{text}"
    );
    let mut finalized = 0;
    for (format, ext) in [
        ("flv", "flv"),
        ("mp4", "mp4"),
        ("aac", "aac"),
        ("hls", "m3u8"),
    ] {
        let n = value(&format!(
            "liverec_finalize_seconds_bucket{{format=\"{format}\",le=\"+Inf\"}}"
        ));
        assert_eq!(
            n,
            objects(&s3, prefix, ext).len() as u64,
            "{format}: {text}"
        );
        finalized += n;
    }
    assert_eq!(value("liverec_files_finalized_total"), finalized, "{text}");
    assert!(!text.contains("backend=\"local\""), "{text}");
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `GET /v1/recordings?{query}`, sorted by key.
fn recordings(d: &Daemon, query: &str) -> Vec<serde_json::Value> {
    let (status, body) = d.api_get(&format!("/v1/recordings?{query}"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut list = v["recordings"].as_array().cloned().unwrap_or_default();
    list.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    list
}

/// Every page of `GET /v1/recordings?{query}` with `page_size` = `size`, in order.
fn walk_pages(d: &Daemon, query: &str, size: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..1000 {
        let mut url = format!("/v1/recordings?{query}&page_size={size}");
        if let Some(t) = &token {
            url.push_str(&format!("&page_token={t}"));
        }
        let (status, body) = d.api_get(&url);
        assert_eq!(status, 200, "{url}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let page = v["recordings"].as_array().cloned().unwrap_or_default();
        assert!(page.len() <= size, "{body}");
        out.extend(page);
        match v["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => {
                assert!(v["next_page_token"].is_null(), "{body}");
                return out;
            }
        }
    }
    panic!("pages never ended: {out:?}");
}

/// R-QY-1: the index is rebuilt from the store's catalog: at start when the spool lost
/// it, and on request (picking up what another node sharing the store recorded).
fn index_rebuild(
    d: &mut Daemon,
    catalog: &dyn Fn(&str) -> Option<Vec<u8>>,
    plant: &dyn Fn(&str, &[u8]),
) {
    push(d, "idx", "avc_aac_2s.flv", PublishOptions::default()).expect("publish");
    wait_drained(d, Duration::from_secs(60));
    let (_, metrics) = d.api_get("/metrics");
    assert!(
        metrics.contains("liverec_recordings_index_unpublished 0\n"),
        "{metrics}"
    );
    let before = recordings(d, "stream=idx");
    let formats: std::collections::BTreeSet<_> = before
        .iter()
        .map(|r| r["format"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        formats.into_iter().collect::<Vec<_>>(),
        ["aac", "flv", "hls", "mp4"],
        "{before:?}"
    );
    // Pages: one recording each, walked by token, give the whole list oldest first; the
    // last page says there is no next one; a token it never handed out is a 400.
    let pages = walk_pages(d, "stream=idx", 1);
    assert_eq!(pages.len(), before.len(), "{pages:?}");
    for w in pages.windows(2) {
        let key = |r: &serde_json::Value| (r["start_time_ms"].as_i64(), r["key"].to_string());
        assert!(key(&w[0]) < key(&w[1]), "not oldest first: {pages:?}");
    }
    let mut sorted = pages.clone();
    sorted.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    assert_eq!(sorted, before);
    let (status, body) = d.api_get("/v1/recordings?stream=idx&page_size=1000");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"next_page_token\":null"), "{body}");
    for bad in ["zz", "31", "not-a-token"] {
        let (status, body) = d.api_get(&format!("/v1/recordings?page_token={bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"code\":\"invalid_page_token\""), "{body}");
    }
    // Each entry has its object in the store's catalog, with the same fields.
    for r in &before {
        let key = r["key"].as_str().expect("key");
        let obj = catalog(key).unwrap_or_else(|| panic!("no catalog object for {key}"));
        let v: serde_json::Value = serde_json::from_slice(&obj).expect("catalog JSON");
        assert_eq!(v["size"], r["size"], "{v} vs {r}");
        assert_eq!(v["start_ms"], r["start_time_ms"], "{v} vs {r}");
        assert_eq!(v["end_ms"], r["end_time_ms"], "{v} vs {r}");
    }
    assert_eq!(d.stop(), Some(0));
    lose_node_db(&d.spool());
    d.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while recordings(d, "stream=idx") != before {
        assert!(
            Instant::now() < deadline,
            "index not rebuilt: {:?}; log:\n{}",
            recordings(d, "stream=idx"),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.log().contains("rebuilt it from the store"), "{}", d.log());

    // Another node stored a file meanwhile: a rebuild on request shows it.
    let theirs = serde_json::json!({
        "key": "localhost/live/other/other-0.flv", "format": "flv",
        "domain": "localhost", "app": "live", "stream": "other",
        "start_ms": 1_700_000_000_000i64, "end_ms": 1_700_000_004_000i64,
        "duration_ms": 4000, "size": 1234,
    });
    plant(
        "localhost/live/other/other-0.flv",
        theirs.to_string().as_bytes(),
    );
    assert!(recordings(d, "stream=other").is_empty());
    let (status, body) = d.api_post("/v1/recordings/rebuild", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["recordings"].as_u64(), Some(before.len() as u64 + 1));
    let other = recordings(d, "stream=other");
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0]["size"], 1234);
    assert_eq!(other[0]["duration"], 4.0);
    assert_eq!(other[0]["start_time"], 1_700_000_000);
    assert_eq!(recordings(d, "stream=idx"), before);
}

#[test]
fn s3_recordings_index_is_rebuilt_from_the_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s3 = S3Server::start(&dir.path().join("s3"));
    let mut d = Daemon::start_full("", Some(&s3.storage_toml("p")), ALL_FORMATS);
    let obj = |key: &str| format!("p/.liverec/state/recordings/{key}.json");
    index_rebuild(
        &mut d,
        &|key| std::fs::read(s3.object_path(&obj(key))).ok(),
        &|key, data| s3.put(&obj(key), data),
    );
    // With the store down a rebuild is refused and the index stays as it was.
    let before = recordings(&d, "");
    s3.stop();
    let (status, body) = d.api_post("/v1/recordings/rebuild", "");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"code\":\"store_unavailable\""), "{body}");
    assert_eq!(recordings(&d, ""), before);
}

#[test]
fn local_recordings_index_is_rebuilt_from_the_directory() {
    let mut d = Daemon::start_full("", Some("[storage]\nroot = \"{root}\"\n"), ALL_FORMATS);
    let root = d.root();
    let obj = move |key: &str| root.join(format!(".liverec/state/recordings/{key}.json"));
    let obj2 = obj.clone();
    index_rebuild(&mut d, &|key| std::fs::read(obj(key)).ok(), &|key, data| {
        let p = obj2(key);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("plant");
    });
}

#[test]
fn spool_quota_refuses_new_publishes_while_the_store_is_down() {
    require_tool("ffprobe");
    let dir = tempfile::tempdir().expect("tempdir");
    let s3_root = dir.path().join("s3");
    let mut s3 = S3Server::start(&s3_root);
    let addr = s3.addr;
    let storage = s3.storage_toml("");
    s3.stop();
    let d = Daemon::start_full(
        "",
        Some(&storage),
        "[spool]\nmax_bytes = 400000\n[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\n",
    );
    assert!(d.log().contains("NOT reachable"), "{}", d.log());
    push(&d, "first", "avc_aac_2s.flv", PublishOptions::default()).expect("first publish");
    // Its files wait in the spool, over the quota; the next publish is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.api_get("/healthz").1.contains("spool_full") {
        assert!(
            Instant::now() < deadline,
            "spool never full: {}",
            d.api_get("/healthz").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = push(&d, "second", "avc_aac_2s.flv", PublishOptions::default());
    assert!(refused.is_err(), "publish past the quota must be refused");
    assert!(d.log().contains("spool full"), "{}", d.log());
    let (_, metrics) = d.api_get("/metrics");
    assert!(
        metrics.contains("liverec_publish_refused_spool_full_total 1"),
        "{metrics}"
    );
    let (_, health) = d.api_get("/healthz");
    assert!(health.contains("spool_full"), "{health}");
    // The store comes back: the first push's files are stored whole, nothing of the
    // refused one exists.
    let s3 = S3Server::start_on(&s3_root, addr);
    wait_drained(&d, Duration::from_secs(60));
    assert_flv_frames(
        &objects(&s3, "localhost/live/first/", "flv"),
        &input_frames("avc_aac_2s.flv", 1),
    );
    assert!(objects(&s3, "localhost/live/second/", "flv").is_empty());
    // And publishing works again.
    push(&d, "third", "avc_only.flv", PublishOptions::default()).expect("publish after drain");
}

#[test]
fn retention_deletes_expired_files_but_never_an_open_one() {
    let d = Daemon::start_full(
        "",
        Some("[storage]\nroot = \"{root}\"\nretention_sweep_interval = 1\n"),
        "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 600, storage_time = 2, file_name = \"{StreamID}\" }\n",
    );
    // A short push: its file closes at once and expires 2 s later.
    push(&d, "done", "avc_only.flv", PublishOptions::default()).expect("publish");
    let done = d.wait_files(
        "localhost",
        "live",
        "done",
        "flv",
        1,
        Duration::from_secs(20),
    );
    // Its entry in the store's recordings catalog appears (and goes with the file).
    let catalog = d
        .root()
        .join(".liverec/state/recordings/localhost/live/done/done.flv.json");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !catalog.exists() {
        assert!(Instant::now() < deadline, "no catalog entry for {done:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A long real-time push with the same template: its file stays open meanwhile.
    let url = d.url("live", "open");
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pushing = rt.spawn(async move {
        let opts = PublishOptions {
            realtime: true,
            duration: Some(Duration::from_secs(8)),
            ..PublishOptions::default()
        };
        testkit::publish_flv(&url, &tags, &opts).await
    });
    let deadline = Instant::now() + Duration::from_secs(6);
    while done[0].exists() {
        assert!(
            Instant::now() < deadline,
            "expired file not deleted; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !d.root().join("localhost/live/done").exists(),
        "its empty directory goes too"
    );
    // …and its entry in the store's recordings catalog.
    let deadline = Instant::now() + Duration::from_secs(5);
    while catalog.exists() {
        assert!(
            Instant::now() < deadline,
            "catalog entry of a deleted file kept"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The open recording was not touched: still open in the spool, still growing.
    let open: Vec<_> = common::list(&d.spool().join("localhost/live/open"), "part");
    assert_eq!(open.len(), 1, "{open:?}");
    // Batched writes (256 KiB): wait for the first batch to land in it.
    let deadline = Instant::now() + Duration::from_secs(7);
    while std::fs::metadata(&open[0]).expect("open file").len() == 0 {
        assert!(Instant::now() < deadline, "open file never written");
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(pushing).expect("join").expect("publish");
    // Closed now: kept for its 2 s, then deleted.
    let files = d.wait_files(
        "localhost",
        "live",
        "open",
        "flv",
        1,
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(files[0].exists(), "deleted before its storage_time ran out");
    let deadline = Instant::now() + Duration::from_secs(6);
    while files[0].exists() {
        assert!(Instant::now() < deadline, "expired file not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.log().contains("retention: deleted expired file"));
}

/// A node that lost its spool (and with it the retention index) still expires the files it
/// stored before: the rebuilt catalog carries each file's expiry, and an HLS recording's
/// segments come from its stored playlist.
#[test]
fn retention_survives_a_lost_index() {
    let mut d = Daemon::start_full(
        "",
        Some("[storage]\nroot = \"{root}\"\nretention_sweep_interval = 1\n"),
        "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 600, storage_time = 10, file_name = \"{StreamID}\" }\nhls = { enable = true, record_interval = 600, segment_duration = 2, storage_time = 10, file_name = \"{StreamID}\" }\n",
    );
    push(&d, "keep10", "avc_aac_2s.flv", PublishOptions::default()).expect("publish");
    wait_drained(&d, Duration::from_secs(30));
    let dir = d.root().join("localhost/live/keep10");
    let stored = common::walk(&dir);
    assert!(
        stored.iter().any(|p| p.to_string_lossy().ends_with(".ts"))
            && stored.iter().any(|p| p.to_string_lossy().ends_with(".flv")),
        "{stored:?}"
    );
    let recs = recordings(&d, "stream=keep10");
    assert_eq!(recs.len(), 2, "{recs:?}");
    let expiry = recs[0]["expire_time"].as_i64().expect("expire_time");
    assert_eq!(d.stop(), Some(0));
    lose_node_db(&d.spool());
    d.restart();
    let now = chrono::Utc::now().timestamp();
    assert!(
        now < expiry,
        "test too slow: files expired ({expiry}) before the restart ({now})"
    );
    let deadline = Instant::now() + Duration::from_secs(25);
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "files stored before the index was lost never expired: {:?}; log:\n{}",
            common::walk(&dir),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        chrono::Utc::now().timestamp() >= expiry,
        "deleted before its storage_time"
    );
    assert!(d.log().contains("retention restored"), "{}", d.log());
}

/// Loses the node database (recordings index, retention schedule, catalog outbox), as a
/// lost or replaced spool would: the file and its WAL companions.
fn lose_node_db(spool: &std::path::Path) {
    std::fs::remove_file(spool.join(".liverec.db")).expect("lose the node database");
    for side in [".liverec.db-wal", ".liverec.db-shm"] {
        match std::fs::remove_file(spool.join(side)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {side}: {e}"),
        }
    }
}

/// Upgrade (issue 11): a spool with the JSON-lines index of earlier versions is imported
/// into the node database on the first start: its recordings answer the API, its
/// retention schedule still expires what is due, and the old directory is moved aside.
#[test]
fn an_old_json_lines_index_is_imported_on_the_first_start() {
    let mut d = Daemon::start_full(
        "",
        Some("[storage]\nroot = \"{root}\"\nretention_sweep_interval = 1\n"),
        "",
    );
    assert_eq!(d.stop(), Some(0));
    lose_node_db(&d.spool());
    // A stored file, due long ago, and a recording kept forever, as the old index wrote
    // them (one file per stream, one per hour of expiry, and the catalog queue).
    let due = d.root().join("localhost/live/old/due.flv");
    std::fs::create_dir_all(due.parent().expect("parent")).expect("mkdir");
    std::fs::write(&due, b"FLV").expect("stored file");
    let old = d.spool().join(".index");
    std::fs::create_dir_all(old.join("recordings/localhost/live")).expect("mkdir");
    let kept = serde_json::json!({
        "key": "localhost/live/old/kept.flv", "format": "flv",
        "domain": "localhost", "app": "live", "stream": "old", "task_id": "",
        "start_ms": 1_700_000_000_000i64, "end_ms": 1_700_000_004_000i64,
        "duration_ms": 4000, "size": 1234, "expires": 0,
    });
    std::fs::write(
        old.join("recordings/localhost/live/old.jsonl"),
        format!("{kept}\n"),
    )
    .expect("old recordings");
    let expires = 1_700_000_100i64;
    std::fs::write(
        old.join(format!("{}.jsonl", expires / 3600)),
        format!("{{\"key\":\"localhost/live/old/due.flv\",\"expires\":{expires}}}\n"),
    )
    .expect("old retention");
    std::fs::write(old.join("publish.jsonl"), format!("{{\"put\":{kept}}}\n")).expect("old queue");
    d.restart();
    let recs = recordings(&d, "stream=old");
    assert_eq!(recs.len(), 1, "{recs:?}; log:\n{}", d.log());
    assert_eq!(recs[0]["key"], "localhost/live/old/kept.flv");
    assert_eq!(recs[0]["size"], 1234);
    assert!(!old.exists(), "the old index is moved aside");
    assert!(d.spool().join(".index.imported").is_dir());
    let deadline = Instant::now() + Duration::from_secs(20);
    while due.exists() {
        assert!(
            Instant::now() < deadline,
            "the imported schedule never expired the due file; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.stop(), Some(0));
    assert!(d.spool().join(".liverec.db").is_file());
}
