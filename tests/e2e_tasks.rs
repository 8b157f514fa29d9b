//! End to end record tasks (R-TK-1…7) over the real HTTP API with real pushes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use testkit::{flv_summary, PublishOptions};

const CONFIG: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nname = \"always\"\nflv = { enable = true, record_interval = 600, file_name = \"{StreamID}\" }\n[[template]]\nid = 2\nname = \"task\"\nflv = { enable = true, record_interval = 600, file_name = \"task-{TaskId}\" }\n";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn create(d: &Daemon, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = d.api_post("/v1/tasks", &body.to_string());
    (status, json(&text))
}

/// A real-time push of `secs` seconds in the background.
fn push_for(
    d: &Daemon,
    stream: &str,
    secs: u64,
) -> (
    tokio::runtime::Runtime,
    tokio::task::JoinHandle<Result<testkit::PublishStats, testkit::PublishError>>,
) {
    let url = d.url("live", stream);
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let h = rt.spawn(async move {
        let opts = PublishOptions {
            realtime: true,
            duration: Some(Duration::from_secs(secs)),
            ..PublishOptions::default()
        };
        testkit::publish_flv(&url, &tags, &opts).await
    });
    (rt, h)
}

#[test]
fn task_requests_are_validated_with_clear_errors() {
    let d = Daemon::start(CONFIG);
    let t = now();
    let base = |extra: serde_json::Value| {
        let mut v = serde_json::json!({"domain": "localhost", "app": "live", "stream": "x", "end_time": t + 60});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    };
    let cases = [
        (base(serde_json::json!({})), 409, "stream_not_live"),
        (
            base(serde_json::json!({"start_time": t + 100})),
            400,
            "invalid_time_range",
        ),
        (
            base(serde_json::json!({"start_time": t + 10, "end_time": t + 10 + 86_401})),
            400,
            "task_too_long",
        ),
        (
            base(
                serde_json::json!({"start_time": t + 7 * 86_400, "end_time": t + 7 * 86_400 + 60}),
            ),
            400,
            "start_too_far",
        ),
        (
            base(serde_json::json!({"start_time": t + 10, "template_id": 99})),
            404,
            "template_not_found",
        ),
        (
            base(serde_json::json!({"start_time": t + 10, "stream_type": 1})),
            400,
            "stream_type_not_supported",
        ),
        (
            base(serde_json::json!({"start_time": t + 10, "stream": "../x"})),
            400,
            "invalid_name",
        ),
        (
            base(serde_json::json!({"start_time": t + 10, "preroll_seconds": 601})),
            400,
            "invalid_preroll",
        ),
        (
            base(serde_json::json!({"start_time": t + 10, "extension": "e".repeat(4097)})),
            400,
            "invalid_extension",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = create(&d, body.clone());
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{body} -> {v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (s, body) = d.api_post("/v1/tasks", "{not json");
    assert_eq!(s, 400);
    assert_eq!(json(&body)["code"], "invalid_request");
    let (s, body) = d.api_get("/v1/tasks/nope");
    assert_eq!(
        (s, json(&body)["code"].as_str()),
        (404, Some("task_not_found"))
    );
    let (s, _) = d.api_post("/v1/tasks/nope/stop", "");
    assert_eq!(s, 404);
    // Too many overlapping tasks on one stream (default limit 10).
    for i in 0..10 {
        let (s, v) = create(
            &d,
            base(serde_json::json!({"start_time": t + 100, "end_time": t + 200 + i})),
        );
        assert_eq!(s, 201, "{v}");
    }
    let (_, metrics) = d.api_get("/metrics");
    assert!(
        metrics.contains("liverec_record_tasks{status=\"scheduled\"} 10\n")
            && metrics.contains("liverec_record_tasks{status=\"recording\"} 0\n"),
        "{metrics}"
    );
    let (s, v) = create(
        &d,
        base(serde_json::json!({"start_time": t + 150, "end_time": t + 160})),
    );
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("too_many_tasks")),
        "{v}"
    );
    // Listing, filtered and paginated.
    let (s, body) = d.api_get("/v1/tasks?stream=x&page_size=4");
    assert_eq!(s, 200);
    let v = json(&body);
    assert_eq!(v["tasks"].as_array().map(|a| a.len()), Some(4));
    let next = v["next_page_token"]
        .as_str()
        .expect("next page")
        .to_string();
    let (_, body) = d.api_get(&format!("/v1/tasks?stream=x&page_size=4&page_token={next}"));
    assert_eq!(json(&body)["tasks"].as_array().map(|a| a.len()), Some(4));
    let (_, body) = d.api_get("/v1/tasks?stream=other");
    assert_eq!(json(&body)["tasks"].as_array().map(|a| a.len()), Some(0));
}

#[test]
fn scheduled_task_records_its_window_beside_the_template_recording() {
    let d = Daemon::start_full(
        "",
        Some("[storage]\nroot = \"{root}\"\npublic_base_url = \"https://cdn.example/rec/\"\n"),
        CONFIG,
    );
    // Created before the stream exists: window from +4 s to +9 s.
    let t = now();
    let (s, v) = create(
        &d,
        serde_json::json!({"domain": "localhost", "app": "live", "stream": "sched", "start_time": t + 4, "end_time": t + 9, "template_id": 2}),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["task_id"].as_str().expect("task id").to_string();
    let (rt, push) = push_for(&d, "sched", 13);
    rt.block_on(push).expect("join").expect("publish");
    let files = d.wait_files(
        "localhost",
        "live",
        "sched",
        "flv",
        2,
        Duration::from_secs(20),
    );
    let task_file = files
        .iter()
        .find(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy() == format!("task-{id}.flv"))
        })
        .unwrap_or_else(|| panic!("no task file in {files:?}"));
    let always = files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == "sched.flv"))
        .expect("template recording, separate from the task's");
    let task_s = flv_summary(task_file).duration.unwrap_or(0.0);
    let always_s = flv_summary(always).duration.unwrap_or(0.0);
    // A 5 s window (whole-second times), starting at a keyframe of a 2 s GOP.
    assert!((2.5..=6.0).contains(&task_s), "task file {task_s} s");
    assert!(always_s > 11.0, "template file {always_s} s");
    let (_, body) = d.api_get(&format!("/v1/tasks/{id}"));
    assert_eq!(json(&body)["status"], "finished", "{body}");

    // R-QY-1: the finished files, by task and by stream and format.
    let (s, body) = d.api_get(&format!("/v1/recordings?stream=sched&task_id={id}"));
    assert_eq!(s, 200, "{body}");
    let v = json(&body);
    let recs = v["recordings"].as_array().expect("list");
    assert_eq!(recs.len(), 1, "{body}");
    let r = &recs[0];
    let key = format!("localhost/live/sched/task-{id}.flv");
    assert_eq!(r["key"], key.as_str());
    assert_eq!(r["format"], "flv");
    assert_eq!(
        r["size"].as_u64(),
        std::fs::metadata(task_file).ok().map(|m| m.len())
    );
    assert!(
        (r["duration"].as_f64().unwrap_or(0.0) - task_s).abs() < 0.1,
        "{r}"
    );
    assert!(r["end_time"].as_i64() >= r["start_time"].as_i64());
    assert_eq!(r["url"], format!("https://cdn.example/rec/{key}").as_str());
    let (_, body) = d.api_get("/v1/recordings?stream=sched&format=flv");
    assert_eq!(
        json(&body)["recordings"].as_array().map(|a| a.len()),
        Some(2),
        "{body}"
    );
    let (_, body) = d.api_get("/v1/recordings?stream=sched&format=mp4");
    assert_eq!(
        json(&body)["recordings"].as_array().map(|a| a.len()),
        Some(0)
    );
    let (_, body) = d.api_get(&format!(
        "/v1/recordings?stream=sched&from={}",
        now() + 3600
    ));
    assert_eq!(
        json(&body)["recordings"].as_array().map(|a| a.len()),
        Some(0),
        "time filter"
    );
}

#[test]
fn realtime_task_with_preroll_stops_at_once() {
    // Pre-roll reaches back as far as the ring holds: keep 8 s.
    let d = Daemon::start(&format!("{CONFIG}[ingest]\nring_seconds = 8.0\n"));
    let (rt, push) = push_for(&d, "live1", 16);
    std::thread::sleep(Duration::from_secs(7));
    let created_ms = now_ms();
    let (s, v) = create(
        &d,
        serde_json::json!({"domain": "localhost", "app": "live", "stream": "live1", "end_time": now() + 60, "template_id": 2, "preroll_seconds": 4, "extension": "clip"}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["task"]["status"], "recording", "{v}");
    assert_eq!(v["task"]["extension"], "clip");
    let id = v["task_id"].as_str().expect("id").to_string();
    // /v1/streams says which tasks record the stream.
    let (_, body) = d.api_get("/v1/streams");
    let streams = json(&body);
    let live = streams["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["stream"] == "live1"))
        .unwrap_or_else(|| panic!("live1 not listed: {body}"));
    assert_eq!(live["tasks"][0], id.as_str(), "{body}");
    std::thread::sleep(Duration::from_secs(3));
    let (s, body) = d.api_post(&format!("/v1/tasks/{id}/stop"), "");
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["status"], "stopped");
    // Stopped: its file is finished while the push goes on.
    let name = format!("task-{id}.flv");
    let file = d.root().join("localhost/live/live1").join(&name);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "task file not finished on stop; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // 3 s after the request plus a pre-roll of 4–6 s (2 s GOPs) ≈ 7–9 s.
    let dur = flv_summary(&file).duration.unwrap_or(0.0);
    assert!((6.0..=10.5).contains(&dur), "task file {dur} s");
    // Its wall-clock start is when its first (pre-roll) packet arrived, 4–6 s before the
    // task was created, not when the task's writer opened (issue 10); its end is when its
    // last packet arrived, after the stop was asked for (~3 s after the creation).
    // The index entry follows the file's move into place.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let v = loop {
        let (s, body) = d.api_get(&format!("/v1/recordings?stream=live1&task_id={id}"));
        assert_eq!(s, 200, "{body}");
        let v = json(&body);
        if v["recordings"][0].is_object() || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let r = &v["recordings"][0];
    let body = v.to_string();
    let start = r["start_time_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("{body}"));
    let end = r["end_time_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("{body}"));
    let back = created_ms - start;
    assert!(
        (3_500..=6_800).contains(&back),
        "starts {back} ms before the task: {r}"
    );
    assert!(
        (2_000..=5_000).contains(&(end - created_ms)),
        "ends {} ms after the task: {r}",
        end - created_ms
    );
    assert!(
        ((end - start) as f64 / 1000.0 - dur).abs() < 0.6,
        "span vs duration {dur} s: {r}"
    );
    rt.block_on(push).expect("join").expect("publish");
}

#[test]
fn tasks_survive_a_restart_and_still_fire() {
    let mut d = Daemon::start(CONFIG);
    let t = now();
    let (s, v) = create(
        &d,
        serde_json::json!({"domain": "localhost", "app": "live", "stream": "later", "start_time": t + 5, "end_time": t + 10, "template_id": 2, "extension": "kept"}),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["task_id"].as_str().expect("id").to_string();
    let (s, v) = create(
        &d,
        serde_json::json!({"domain": "localhost", "app": "live", "stream": "later", "start_time": t + 3000, "end_time": t + 3600}),
    );
    assert_eq!(s, 201, "{v}");
    let stopped = v["task_id"].as_str().expect("id").to_string();
    assert_eq!(d.api_post(&format!("/v1/tasks/{stopped}/stop"), "").0, 200);
    assert_eq!(d.stop(), Some(0));
    d.restart();
    let (s, body) = d.api_get(&format!("/v1/tasks/{id}"));
    assert_eq!(s, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["extension"], "kept");
    assert_eq!(v["end_time"], t + 10);
    let (_, body) = d.api_get(&format!("/v1/tasks/{stopped}"));
    assert_eq!(json(&body)["status"], "stopped", "a stop survives too");
    // And it still fires: the push covers the window.
    let (rt, push) = push_for(&d, "later", 12);
    rt.block_on(push).expect("join").expect("publish");
    let name = format!("task-{id}.flv");
    let files = d.wait_files(
        "localhost",
        "live",
        "later",
        "flv",
        2,
        Duration::from_secs(20),
    );
    assert!(
        files
            .iter()
            .any(|f| f.file_name().is_some_and(|n| n.to_string_lossy() == name)),
        "{files:?}"
    );
}

/// Finished tasks do not pile up: `record.task_history` after their end they are gone from
/// the API and the state store; a task still scheduled stays.
#[test]
fn finished_tasks_are_pruned_after_the_task_history() {
    let d = Daemon::start(&CONFIG.replace(
        "default_template = 1\n",
        "default_template = 1\ntask_history = 1\n",
    ));
    let t = now();
    let (s, short) = create(
        &d,
        serde_json::json!({"domain": "localhost", "app": "live", "stream": "p",
            "start_time": t + 1, "end_time": t + 2}),
    );
    assert_eq!(s, 201, "{short}");
    let (s, long) = create(
        &d,
        serde_json::json!({"domain": "localhost", "app": "live", "stream": "p",
            "start_time": t + 1, "end_time": t + 3600}),
    );
    assert_eq!(s, 201, "{long}");
    let id = short["task_id"].as_str().expect("task_id").to_string();
    let stored = d.root().join(format!(".liverec/state/tasks/{id}.json"));
    assert!(stored.exists(), "persisted at creation");
    let path = format!("/v1/tasks/{id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen_finished = false;
    loop {
        let (s, body) = d.api_get(&path);
        if s == 404 {
            break;
        }
        let v = json(&body);
        if v["status"] == "finished" {
            seen_finished = true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "finished task never pruned: {v}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen_finished, "readable as finished before it went");
    assert!(now() >= t + 3, "pruned before end_time + task_history");
    assert!(!stored.exists(), "its stored copy goes too");
    // The log line may land a moment after the API stopped answering for the task.
    let logged = std::time::Instant::now() + Duration::from_secs(5);
    while !d.log().contains("record task pruned") {
        assert!(std::time::Instant::now() < logged, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (s, _) = d.api_get(&format!(
        "/v1/tasks/{}",
        long["task_id"].as_str().expect("task_id")
    ));
    assert_eq!(s, 200, "a task whose window is open stays");
}
