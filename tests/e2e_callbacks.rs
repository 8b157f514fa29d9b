//! Issue 13, R-CB-1…4: file and status events, signed, delivered at least once to a real
//! HTTP receiver (testkit's), checked against the recordings index and the stored
//! objects, and verified with implementations that are not ours (the `md5` crate, the
//! `standardwebhooks` reference crate).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{now_s, rt, Daemon};
use serde_json::Value;
use testkit::s3::S3Server;
use testkit::webhook::{md5_sign, verify_standard_webhook, Answer, Received, Receiver};
use testkit::PublishOptions;

/// A Standard Webhooks secret (`whsec_` + base64 of 24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WRONG_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const KEY: &str = "k3y";

fn callback_toml(url: &str, more: &str) -> String {
    format!("[callback]\nurl = \"{url}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n{more}\n")
}

fn push(d: &Daemon, stream: &str, fixture: &str) -> Result<(), String> {
    let url = d.url("live", stream);
    let tags = Arc::new(testkit::fixture_tags(fixture));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn json(r: &Received) -> Value {
    r.json().expect("a callback body is JSON")
}

/// The requests that were answered 2xx, one per event id (the first such answer).
fn delivered(all: &[Received]) -> Vec<(Received, Value)> {
    let mut seen = std::collections::HashSet::new();
    all.iter()
        .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
        .filter_map(|r| {
            let id = r.header("webhook-id")?.to_string();
            seen.insert(id).then(|| (r.clone(), json(r)))
        })
        .collect()
}

fn of_type(d: &[(Received, Value)], t: u64) -> Vec<(Received, Value)> {
    d.iter()
        .filter(|(_, v)| v["event_type"] == t)
        .cloned()
        .collect()
}

fn record_events(d: &[(Received, Value)], stream: &str) -> Vec<String> {
    of_type(d, 332)
        .iter()
        .filter(|(_, v)| v["stream_id"] == stream)
        .map(|(_, v)| {
            format!(
                "{}:{}",
                v["file_format"].as_str().unwrap_or(""),
                v["record_event"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn recordings(d: &Daemon, query: &str) -> Vec<Value> {
    let (status, body) = d.api_get(&format!("/v1/recordings?{query}"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["recordings"].as_array().cloned().unwrap_or_default()
}

/// An address where a receiver listened and no longer does (connection refused), and
/// its URL: the endpoint is down until `Receiver::start_on` the address.
fn receiver_down(rt: &tokio::runtime::Runtime) -> (std::net::SocketAddr, String) {
    let recv = rt.block_on(Receiver::start()).expect("receiver");
    let (addr, url) = (recv.addr(), recv.url());
    rt.block_on(recv.stop());
    (addr, url)
}

/// Waits until `query` lists at least `n` recordings.
fn wait_recordings(d: &Daemon, query: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while recordings(d, query).len() < n {
        assert!(std::time::Instant::now() < deadline, "files not indexed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bytes of an HLS recording: its playlist's segments.
fn hls_size(root: &Path, key: &str) -> u64 {
    let playlist = root.join(key);
    let text = std::fs::read_to_string(&playlist).expect("playlist");
    let dir = playlist.parent().expect("dir");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            std::fs::metadata(dir.join(l.trim()))
                .expect("segment")
                .len()
        })
        .sum()
}

/// R-CB-1, R-CB-3: every file of a push in every format gives exactly one file event
/// whose fields match its recordings entry and its stored object; the md5 `sign` and the
/// Standard Webhooks headers verify with independent implementations, and not with a
/// wrong secret; each format's start and end are status events, in order.
#[test]
fn every_file_gives_one_signed_event_that_matches_the_index_and_the_object() {
    let rt = rt();
    let recv = rt.block_on(Receiver::start()).expect("receiver");
    let d = Daemon::start_full(
        "",
        Some("[storage]\nroot = \"{root}\"\npublic_base_url = \"https://cdn.example/rec/\"\n"),
        &format!(
            "{}[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 4 }}\nmp4 = {{ enable = true, record_interval = 4 }}\naac = {{ enable = true, record_interval = 4 }}\nhls = {{ enable = true, record_interval = 600, segment_duration = 2 }}\n",
            callback_toml(&recv.url(), "")
        ),
    );
    push(&d, "cam?txSecret=s3cr3t&x=1", "avc_aac_2s.flv").expect("publish");
    let all = rt.block_on(recv.wait_for(
        "record_ended of all four formats",
        Duration::from_secs(30),
        |r| {
            delivered(r)
                .iter()
                .filter(|(_, v)| v["record_event"] == "record_ended")
                .count()
                >= 4
        },
    ));
    // File events follow their files' indexing; wait until every indexed file has one.
    let mut recs = recordings(&d, "stream=cam");
    let mut files = of_type(&delivered(&all), 100);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while files.len() < recs.len() || recs.len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} file events for {} recordings",
            files.len(),
            recs.len()
        );
        std::thread::sleep(Duration::from_millis(200));
        recs = recordings(&d, "stream=cam");
        files = of_type(&delivered(&recv.received()), 100);
    }
    let all = recv.received();
    // FLV, MP4 and AAC cut at 4 s of 20 s (5 files each) and one playlist.
    let by_format = recs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["format"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
        m
    });
    assert_eq!(
        by_format,
        BTreeMap::from([
            ("aac".to_string(), 5),
            ("flv".to_string(), 5),
            ("hls".to_string(), 1),
            ("mp4".to_string(), 5)
        ]),
        "{recs:?}"
    );
    assert_eq!(files.len(), recs.len(), "one event per file");
    let by_key: HashMap<String, &Value> = files
        .iter()
        .map(|(_, v)| (v["object_key"].as_str().unwrap_or("").to_string(), v))
        .collect();
    assert_eq!(by_key.len(), recs.len(), "no file announced twice");
    let root = d.root();
    for r in &recs {
        let key = r["key"].as_str().expect("key");
        let e = by_key
            .get(key)
            .unwrap_or_else(|| panic!("no event for {key}"));
        let format = r["format"].as_str().expect("format");
        let on_disk = if format == "hls" {
            hls_size(&root, key)
        } else {
            std::fs::metadata(root.join(key)).expect("object").len()
        };
        assert_eq!(e["file_size"], on_disk, "{key}: the stored object's size");
        assert_eq!(e["file_size"], r["size"], "{key}: the index's size");
        assert_eq!(e["file_format"], format);
        assert_eq!(e["file_id"], key);
        assert_eq!(e["domain"], "localhost");
        assert_eq!(e["app"], "live");
        assert_eq!(e["stream_id"], "cam");
        assert_eq!(e["stream_param"], "txSecret=***&x=1", "secrets redacted");
        assert_eq!(e["video_url"], format!("https://cdn.example/rec/{key}"));
        assert_eq!(e["task_id"], "");
        assert_eq!(e["extension"], "");
        let (start_ms, end_ms) = (
            r["start_time_ms"].as_i64().expect("start"),
            r["end_time_ms"].as_i64().expect("end"),
        );
        assert_eq!(e["start_time"], start_ms.div_euclid(1000));
        assert_eq!(e["start_time_usec"], start_ms.rem_euclid(1000) * 1000);
        assert_eq!(e["end_time"], end_ms.div_euclid(1000));
        assert_eq!(e["end_time_usec"], end_ms.rem_euclid(1000) * 1000);
        let duration = r["duration"].as_f64().expect("duration");
        assert_eq!(e["duration"], duration.round() as i64, "{key}");
        assert_eq!(e["gaps"], serde_json::json!([]));
    }
    // Signatures, on every request that arrived (events of both types).
    assert!(!all.is_empty());
    let now = now_s();
    for r in &all {
        let v = json(r);
        assert_eq!(r.header("webhook-id"), v["event_id"].as_str());
        let t = v["t"].as_u64().expect("t");
        assert!(
            t > now + 500 && t <= now + 600,
            "t = now + sign_ttl: {t} vs {now}"
        );
        assert_eq!(v["sign"], md5_sign(KEY, t), "md5(key + t)");
        verify_standard_webhook(SECRET, r).expect("Standard Webhooks signature");
        assert!(
            verify_standard_webhook(WRONG_SECRET, r).is_err(),
            "a receiver with another secret must refuse it"
        );
    }
    // Each format's recording started and ended, in that order.
    let status = record_events(&delivered(&all), "cam");
    for f in ["flv", "mp4", "aac", "hls"] {
        let start = status
            .iter()
            .position(|s| *s == format!("{f}:record_start_succeeded"));
        let end = status
            .iter()
            .position(|s| *s == format!("{f}:record_ended"));
        assert!(
            matches!((start, end), (Some(a), Some(b)) if a < b),
            "{f}: {status:?}"
        );
    }
    rt.block_on(recv.stop());
}

/// R-CB-4: non-2xx answers and a timeout are retried with backoff, with the same event
/// id each time, until the receiver takes the event; a stream's later events wait for
/// its earlier one.
#[test]
fn a_failing_receiver_gets_the_same_event_until_it_takes_it_and_order_is_kept() {
    let rt = rt();
    let recv = rt.block_on(Receiver::start()).expect("receiver");
    // The first event of the push (its start) meets 500, 500, no answer, then 200.
    recv.script([Answer::Status(500), Answer::Status(500), Answer::Hang]);
    let d = Daemon::start(&format!(
        "{}[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 600 }}\n",
        callback_toml(&recv.url(), "timeout = 1")
    ));
    push(&d, "cam", "avc_only.flv").expect("publish");
    let all = rt.block_on(recv.wait_for(
        "the file event after the retried start event",
        Duration::from_secs(40),
        |r| {
            let d = delivered(r);
            of_type(&d, 100).len() == 1
                && d.iter().any(|(_, v)| v["record_event"] == "record_ended")
        },
    ));
    let first_id = all[0].header("webhook-id").expect("id").to_string();
    let tries: Vec<&Received> = all
        .iter()
        .filter(|r| r.header("webhook-id") == Some(first_id.as_str()))
        .collect();
    let answers: Vec<Option<u16>> = tries.iter().map(|r| r.answered).collect();
    assert_eq!(answers, [Some(500), Some(500), None, Some(200)], "{all:?}");
    assert_eq!(json(tries[0])["record_event"], "record_start_succeeded");
    for r in &tries {
        let v = json(r);
        assert_eq!(v["event_id"], first_id.as_str(), "the same event each time");
        verify_standard_webhook(SECRET, r).expect("signed afresh on each attempt");
    }
    // Backoff: the retries were spread (1 s, then 2 s, then the 1 s timeout and 4 s),
    // not sent back to back.
    let spread = tries[3]
        .at
        .duration_since(tries[0].at)
        .expect("arrival order");
    assert!(spread >= Duration::from_secs(4), "{spread:?}");
    // In order: the file event (queued long before the start event was taken) arrived
    // only after it.
    let start_taken = tries[3].at;
    for r in all
        .iter()
        .filter(|r| r.header("webhook-id") != Some(first_id.as_str()))
    {
        assert!(
            r.at >= start_taken,
            "an event of the stream overtook its start event"
        );
    }
    let (_, sent) = d.api_get("/v1/callbacks?status=sent");
    let v: Value = serde_json::from_str(&sent).expect("json");
    let entry = v["callbacks"]
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["event_id"] == first_id.as_str())
        .cloned()
        .expect("listed as sent");
    assert_eq!(entry["attempts"], 4, "{entry}");
    let (_, metrics) = d.api_get("/metrics");
    assert!(
        metrics.contains("liverec_callbacks_retried_total 3"),
        "{metrics}"
    );
    assert!(metrics.contains("liverec_callbacks_pending 0"), "{metrics}");
    rt.block_on(recv.stop());
}

/// R-CB-4: events queued while the receiver is down survive the daemon's `kill -9` and
/// restart, and every file is announced exactly once when both are back.
#[test]
fn events_survive_kill9_while_the_receiver_is_down() {
    let rt = rt();
    let (addr, url) = receiver_down(&rt);
    let mut d = Daemon::start(&format!(
        "{}[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 4 }}\n",
        callback_toml(&url, "timeout = 1")
    ));
    push(&d, "cam", "avc_aac_2s.flv").expect("publish");
    wait_recordings(&d, "stream=cam", 5);
    let keys: Vec<String> = recordings(&d, "stream=cam")
        .iter()
        .map(|r| r["key"].as_str().expect("key").to_string())
        .collect();
    let (_, pending) = d.api_get("/v1/callbacks?status=pending");
    assert!(
        pending.contains("cannot connect"),
        "attempts were made: {pending}"
    );
    d.kill9();
    d.restart();
    let recv = rt
        .block_on(Receiver::start_on(addr))
        .expect("receiver back");
    let all = rt.block_on(recv.wait_for(
        "a file event per file after the restart",
        Duration::from_secs(60),
        |r| of_type(&delivered(r), 100).len() >= keys.len(),
    ));
    // A moment more for any duplicate to show.
    std::thread::sleep(Duration::from_secs(2));
    let all = if recv.received().len() > all.len() {
        recv.received()
    } else {
        all
    };
    let files = of_type(&delivered(&all), 100);
    let mut announced: Vec<String> = files
        .iter()
        .map(|(_, v)| v["object_key"].as_str().unwrap_or("").to_string())
        .collect();
    announced.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(
        announced, expected,
        "each file once, by a distinct event id"
    );
    rt.block_on(recv.stop());
}

/// R-SP-4 through R-CB-1/2: a spliced HLS recording is one file event, after its window,
/// carrying its gap; the window opening and the push returning are paused/resumed status
/// events, in order.
#[test]
fn a_spliced_playlist_is_one_file_event_with_its_gap_and_paused_resumed_events() {
    let rt = rt();
    let recv = rt.block_on(Receiver::start()).expect("receiver");
    let d = Daemon::start(&format!(
        "{}[record]\ndefault_template = 1\n[[template]]\nid = 1\nhls = {{ enable = true, segment_duration = 2, record_interval = 600, continue_timeout = 3 }}\n",
        callback_toml(&recv.url(), "")
    ));
    push(&d, "cam", "avc_aac_2s.flv").expect("first push");
    // A reconnect 1.5 s later, well inside the window.
    std::thread::sleep(Duration::from_millis(1500));
    push(&d, "cam", "avc_aac_2s.flv").expect("second push, inside the window");
    let all = rt.block_on(recv.wait_for(
        "the playlist's file event after the window",
        Duration::from_secs(30),
        |r| {
            let d = delivered(r);
            of_type(&d, 100).len() == 1
                && d.iter().any(|(_, v)| v["record_event"] == "record_ended")
        },
    ));
    let files = of_type(&delivered(&all), 100);
    let e = &files[0].1;
    assert_eq!(e["file_format"], "hls");
    let gaps = e["gaps"].as_array().expect("gaps");
    assert_eq!(gaps.len(), 1, "{e}");
    let recs = recordings(&d, "stream=cam");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(e["gaps"], recs[0]["gaps"], "the index's gap");
    assert_eq!(e["object_key"], recs[0]["key"]);
    assert_eq!(
        record_events(&delivered(&all), "cam"),
        [
            "hls:record_start_succeeded",
            "hls:record_paused",
            "hls:record_resumed",
            "hls:record_paused",
            "hls:record_ended"
        ]
    );
    rt.block_on(recv.stop());
}

/// R-ST-4's status callback and R-CB-2's `record_start_failed` and `record_error`: the
/// store refusing a file is its recording's error, the spool reaching its quota (the
/// store down) is an event, the publish it refuses is one with the reason, and the spool
/// draining when the store returns is one.
#[test]
fn a_full_spool_and_the_publish_it_refuses_are_status_events() {
    let rt = rt();
    let recv = rt.block_on(Receiver::start()).expect("receiver");
    let dir = tempfile::tempdir().expect("tempdir");
    let s3_root = dir.path().join("s3");
    let mut s3 = S3Server::start(&s3_root);
    let addr = s3.addr;
    let storage = s3.storage_toml("");
    s3.stop();
    let d = Daemon::start_full(
        "",
        Some(&storage),
        &format!(
            "{}[spool]\nmax_bytes = 400000\n[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 4 }}\n",
            callback_toml(&recv.url(), "")
        ),
    );
    push(&d, "first", "avc_aac_2s.flv").expect("first publish");
    rt.block_on(
        recv.wait_for("spool_quota_reached", Duration::from_secs(20), |r| {
            delivered(r)
                .iter()
                .any(|(_, v)| v["record_event"] == "spool_quota_reached")
        }),
    );
    assert!(
        push(&d, "second", "avc_aac_2s.flv").is_err(),
        "publish past the quota is refused"
    );
    let all = rt.block_on(recv.wait_for(
        "record_start_failed of the refused publish",
        Duration::from_secs(20),
        |r| record_events(&delivered(r), "second").contains(&":record_start_failed".to_string()),
    ));
    let failed = delivered(&all)
        .into_iter()
        .find(|(_, v)| v["stream_id"] == "second")
        .expect("event");
    assert!(
        failed.1["reason"]
            .as_str()
            .is_some_and(|r| r.contains("spool full")),
        "{}",
        failed.1
    );
    let quota = delivered(&all)
        .into_iter()
        .find(|(_, v)| v["record_event"] == "spool_quota_reached")
        .expect("quota event")
        .1;
    assert_eq!(quota["stream_id"], "");
    assert!(quota["spool_bytes"].as_u64() >= quota["spool_max_bytes"].as_u64());
    // Each of the first push's files that the store refused is a `record_error` of its
    // recording (a storage failure, R-CB-2), once per file.
    let storage_errors: Vec<Value> = delivered(&all)
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v["record_event"] == "record_error" && v["stream_id"] == "first")
        .collect();
    assert!(!storage_errors.is_empty(), "no storage record_error");
    for e in &storage_errors {
        assert_eq!(e["file_format"], "flv");
        assert!(
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("storage failing")),
            "{e}"
        );
    }
    assert!(storage_errors.len() <= 5, "{storage_errors:?}");
    let _s3 = S3Server::start_on(&s3_root, addr);
    rt.block_on(recv.wait_for(
        "spool_quota_cleared once the store is back",
        Duration::from_secs(60),
        |r| {
            delivered(r)
                .iter()
                .any(|(_, v)| v["record_event"] == "spool_quota_cleared")
        },
    ));
    // The first push's files reach the store and are announced.
    rt.block_on(recv.wait_for(
        "the first push's file events",
        Duration::from_secs(60),
        |r| {
            of_type(&delivered(r), 100)
                .iter()
                .filter(|(_, v)| v["stream_id"] == "first")
                .count()
                == 5
        },
    ));
    rt.block_on(recv.stop());
}

/// R-CB-4: an event not taken within `max_age` is kept as failed, listed by the API,
/// and sent again — same id — by `POST /v1/callbacks/{id}/retry`.
#[test]
fn a_failed_event_is_listed_and_can_be_sent_again() {
    let rt = rt();
    let (addr, url) = receiver_down(&rt);
    let d = Daemon::start(&format!(
        "{}[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 600 }}\n",
        callback_toml(&url, "max_age = 2\nevents = [100]")
    ));
    push(&d, "cam", "avc_only.flv").expect("publish");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let (_, body) = d.api_get("/v1/callbacks?status=failed");
        let v: Value = serde_json::from_str(&body).expect("json");
        let list = v["callbacks"].as_array().cloned().unwrap_or_default();
        if !list.is_empty() {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "never failed: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(failed.len(), 1, "{failed:?}");
    let id = failed[0]["event_id"].as_str().expect("id").to_string();
    assert_eq!(failed[0]["event_type"], 100);
    assert!(failed[0]["attempts"].as_u64() >= Some(2), "{failed:?}");
    assert!(d.log().contains("given up"), "{}", d.log());
    let (_, metrics) = d.api_get("/metrics");
    assert!(
        metrics.contains("liverec_callbacks_failed_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("liverec_callbacks_failed 1"), "{metrics}");

    let recv = rt
        .block_on(Receiver::start_on(addr))
        .expect("receiver back");
    let (status, body) = d.api_post(&format!("/v1/callbacks/{id}/retry"), "");
    assert_eq!(status, 200, "{body}");
    let all = rt.block_on(
        recv.wait_for("the retried event", Duration::from_secs(10), |r| {
            !delivered(r).is_empty()
        }),
    );
    assert_eq!(
        all[0].header("webhook-id"),
        Some(id.as_str()),
        "the same event id"
    );
    let (status, body) = d.api_post(&format!("/v1/callbacks/{id}/retry"), "");
    assert_eq!(status, 409, "only failed events are retried: {body}");
    let (status, _) = d.api_post("/v1/callbacks/no-such-event/retry", "");
    assert_eq!(status, 404);
    let (status, _) = d.api_get("/v1/callbacks?status=bogus");
    assert_eq!(status, 400);
    rt.block_on(recv.stop());
}

/// R-CB-2: a spool write failure (here a file-size limit) is one `record_error` event
/// per episode, with the error.
#[test]
fn a_write_failure_is_a_record_error_event() {
    let rt = rt();
    let recv = rt.block_on(Receiver::start()).expect("receiver");
    let d = Daemon::start_under(
        "ulimit -f 800; trap '' XFSZ",
        &format!(
            "{}[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 600 }}\n",
            callback_toml(&recv.url(), "")
        ),
    );
    push(&d, "cam", "avc_aac_2s.flv").expect("publish");
    let all = rt.block_on(recv.wait_for(
        "record_error and record_ended",
        Duration::from_secs(30),
        |r| {
            let s = record_events(&delivered(r), "cam");
            s.contains(&"flv:record_error".to_string())
                && s.contains(&"flv:record_ended".to_string())
        },
    ));
    let errors: Vec<Value> = delivered(&all)
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v["record_event"] == "record_error")
        .collect();
    // The 1.2 MB push meets the 400 KiB limit in several files; each new file's first
    // write works again, so each failure is its own episode — never more events than
    // files cut short.
    let cut = d.log().matches("spool write failed").count();
    assert!(
        !errors.is_empty() && errors.len() <= cut,
        "{errors:?} for {cut} failures"
    );
    for e in &errors {
        assert!(
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("File too large")),
            "{e}"
        );
    }
    rt.block_on(recv.stop());
}

/// R-CB-4: on a graceful stop the daemon keeps sending pending events until its grace
/// ends: a receiver that comes back during the shutdown gets them all before the exit.
#[test]
fn a_graceful_stop_delivers_pending_events_within_its_grace() {
    let rt = rt();
    let (addr, url) = receiver_down(&rt);
    let mut d = Daemon::start(&format!(
        "{}[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 4 }}\n",
        callback_toml(&url, "events = [100]")
    ));
    push(&d, "cam", "avc_aac_2s.flv").expect("publish");
    wait_recordings(&d, "stream=cam", 5);
    // The stream's first event has failed (connection refused) and waits for a retry;
    // the other four wait behind it (one stream, in order).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = d.api_get("/v1/callbacks?status=pending");
        let v: Value = serde_json::from_str(&body).expect("json");
        let list = v["callbacks"].as_array().cloned().unwrap_or_default();
        if list.len() == 5 && list.iter().any(|c| c["attempts"].as_u64() >= Some(1)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let recv = rt
        .block_on(Receiver::start_on(addr))
        .expect("receiver back");
    assert_eq!(d.stop(), Some(0), "clean exit");
    let files = of_type(&delivered(&recv.received()), 100);
    assert_eq!(
        files.len(),
        5,
        "every pending event went out before the exit"
    );
    rt.block_on(recv.stop());
}
