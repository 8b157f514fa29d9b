//! Several nodes, one bucket (R-SC-1): real daemons on 127.0.0.1 sharing one in-process S3
//! server (`testkit::s3`, whose conditional writes `crates/testkit/tests/s3_conditional.rs`
//! checks), each with its own spool and node database.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;
use testkit::s3::S3Server;
use testkit::PublishOptions;

/// Template 1 records FLV (one file per push); 2 records nothing and is the default, so
/// files come only from what a test asks for.
const TEMPLATES: &str = "[record]\ndefault_template = 2\n[[template]]\nid = 1\nname = \"flv\"\nflv = { enable = true, record_interval = 600, file_name = \"{StreamID}-{Seq}\" }\n[[template]]\nid = 2\nname = \"nothing\"\n";

fn node(s3: &S3Server, name: &str, rules: &str) -> Daemon {
    Daemon::start_full(
        "",
        Some(&s3.storage_toml("")),
        &format!(
            "[cluster]\nnode_id = \"{name}\"\nsync_interval = 1\nlease_ttl = 3\norphan_after = 60\n{TEMPLATES}{rules}"
        ),
    )
}

fn json(d: &Daemon, path: &str) -> Value {
    let (status, body) = d.api_get(path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

fn post(d: &Daemon, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = d.api_post(path, body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Pushes the fixture in real time for `secs` seconds; Err with the server's refusal.
fn push(d: &Daemon, stream: &str, secs: u64) -> Result<(), String> {
    let url = d.url("live", stream);
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let opts = PublishOptions {
        realtime: true,
        duration: Some(Duration::from_secs(secs)),
        ..Default::default()
    };
    common::rt()
        .block_on(async move { testkit::publish_flv(&url, &tags, &opts).await })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn push_in_background(
    d: &Daemon,
    stream: &str,
    secs: u64,
) -> std::thread::JoinHandle<Result<(), String>> {
    let url = d.url("live", stream);
    std::thread::spawn(move || {
        let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
        let opts = PublishOptions {
            realtime: true,
            duration: Some(Duration::from_secs(secs)),
            ..Default::default()
        };
        common::rt()
            .block_on(async move { testkit::publish_flv(&url, &tags, &opts).await })
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn recordings(d: &Daemon, stream: &str) -> Vec<Value> {
    json(d, &format!("/v1/recordings?stream={stream}"))["recordings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// FLV objects the store holds for `stream`.
fn stored_flv(s3: &S3Server, stream: &str) -> Vec<String> {
    s3.list()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(&format!("localhost/live/{stream}/")) && k.ends_with(".flv"))
        .collect()
}

fn stream_on<'a>(streams: &'a Value, stream: &str) -> Option<&'a Value> {
    streams["streams"]
        .as_array()?
        .iter()
        .find(|s| s["stream"] == stream)
}

#[test]
fn a_task_made_on_one_node_records_on_another_and_is_listed_and_stopped_through_a_third() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let (a, b, c) = (node(&s3, "a", ""), node(&s3, "b", ""), node(&s3, "c", ""));
    let now = common::now_s() as i64;
    let body = format!(
        r#"{{"domain":"localhost","app":"live","stream":"task1","start_time":{now},"end_time":{},"template_id":1}}"#,
        now + 600
    );
    let (status, created) = post(&a, "/v1/tasks", &body);
    assert_eq!(status, 201, "{created}");
    let id = created["task_id"].as_str().expect("task_id").to_string();
    assert_eq!(uuid_version(&id), Some(7), "task ids are UUIDv7: {id}");

    let pusher = push_in_background(&b, "task1", 14);
    // B records it: C lists it as recording, and /v1/streams on C shows it on node b.
    wait_until(
        "the task recording, seen through C",
        Duration::from_secs(20),
        || {
            let t = json(&c, &format!("/v1/tasks/{id}"));
            (t["status"] == "recording").then_some(())
        },
    );
    let listed = json(&c, "/v1/tasks?stream=task1");
    assert_eq!(listed["tasks"][0]["task_id"], id.as_str(), "{listed}");
    let streams = json(&c, "/v1/streams");
    let s = stream_on(&streams, "task1").unwrap_or_else(|| panic!("task1 on C: {streams}"));
    assert_eq!(s["node_id"], "b", "{streams}");
    assert_eq!(s["tasks"][0], id.as_str(), "{streams}");
    std::thread::sleep(Duration::from_secs(3));

    let (status, stopped) = post(&c, &format!("/v1/tasks/{id}/stop"), "");
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    let stopped_at = Instant::now();
    // B ends the task's file within sync_interval, while the push goes on.
    let files = wait_until("the stopped task's file", Duration::from_secs(20), || {
        let r = recordings(&b, "task1");
        (!r.is_empty()).then_some(r)
    });
    let ended_in = stopped_at.elapsed();
    assert!(
        !pusher.is_finished(),
        "the task's file ended with the push, not with the stop (after {ended_in:?})"
    );
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0]["task_id"], id.as_str());
    let duration = files[0]["duration"].as_f64().unwrap();
    assert!(
        (2.0..12.0).contains(&duration),
        "stopped mid-push: {duration} s of a 14 s push"
    );
    pusher.join().unwrap().expect("the push itself goes on");
    // Nothing recorded it on A or C; A sees the task stopped too.
    assert_eq!(stored_flv(&s3, "task1").len(), 1);
    wait_until("A seeing the stop", Duration::from_secs(10), || {
        (json(&a, &format!("/v1/tasks/{id}"))["status"] == "stopped").then_some(())
    });
}

fn uuid_version(id: &str) -> Option<u32> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    hex[12..13].parse::<u32>().ok()
}

#[test]
fn one_stream_pushed_to_two_nodes_at_once_records_once() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let rule = "[[rule]]\ndomain = \"localhost\"\ntemplate_id = 1\n";
    let (a, b) = (node(&s3, "a", rule), node(&s3, "b", rule));
    let on_a = push_in_background(&a, "dup", 6);
    let on_b = push_in_background(&b, "dup", 6);
    let (ra, rb) = (on_a.join().unwrap(), on_b.join().unwrap());
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one node accepts the stream: a {ra:?}, b {rb:?}"
    );
    let refused = ra.err().or(rb.err()).unwrap();
    assert!(refused.contains("BadName"), "{refused}");
    let (winner, loser, loser_name) = if recordings_wait(&a, "dup") {
        (&a, &b, "b")
    } else {
        (&b, &a, "a")
    };
    assert!(recordings_wait(winner, "dup"));
    assert_eq!(
        stored_flv(&s3, "dup").len(),
        1,
        "one recording in the store"
    );
    let holder = if loser_name == "a" { "b" } else { "a" };
    assert!(
        loser
            .log()
            .contains(&format!("is being published on node {holder}")),
        "the refusal names the node: {}",
        loser.log()
    );
}

/// Whether `d` indexed a recording of `stream` within a few seconds.
fn recordings_wait(d: &Daemon, stream: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        if !recordings(d, stream).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn a_killed_nodes_stream_publishes_on_another_after_lease_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let rule = "[[rule]]\ndomain = \"localhost\"\ntemplate_id = 1\n";
    let (mut a, b) = (node(&s3, "a", rule), node(&s3, "b", rule));
    let _on_a = push_in_background(&a, "moving", 30);
    wait_until("the push on A", Duration::from_secs(10), || {
        stream_on(&json(&a, "/v1/streams"), "moving").map(|_| ())
    });
    // While A lives, B refuses the stream.
    let refused = push(&b, "moving", 2).expect_err("A holds the stream");
    assert!(refused.contains("BadName"), "{refused}");
    a.kill9();
    let killed = Instant::now();
    // After lease_ttl (3 s) B takes it.
    let accepted = wait_until("B accepting the stream", Duration::from_secs(20), || {
        push(&b, "moving", 4).ok().map(|_| killed.elapsed())
    });
    assert!(
        accepted >= Duration::from_secs(2),
        "the lease held for its ttl: accepted {accepted:?} after the kill"
    );
    assert!(recordings_wait(&b, "moving"), "B recorded the republish");
    assert!(b.log().contains("took the stream's lease"), "{}", b.log());
    // A is gone from the node list.
    let nodes = json(&b, "/v1/nodes");
    let ids: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["b"], "{nodes}");
}

#[test]
fn a_template_made_on_one_node_applies_on_another_and_every_node_lists_every_recording() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let (a, b, c) = (node(&s3, "a", ""), node(&s3, "b", ""), node(&s3, "c", ""));
    // Each node's first heartbeat follows its ready line by a moment.
    let nodes = wait_until("three live nodes", Duration::from_secs(10), || {
        let nodes = json(&c, "/v1/nodes");
        (nodes["nodes"].as_array().map(Vec::len) == Some(3)).then_some(nodes)
    });
    for n in nodes["nodes"].as_array().unwrap() {
        assert!(
            n["last_seen"].as_i64().unwrap() > 0 && n["streams"] == 0,
            "{n}"
        );
    }
    let (status, t) = post(
        &a,
        "/v1/templates",
        r#"{"id": 7, "name": "aac", "aac": {"enable": true, "record_interval": 600, "file_name": "{StreamID}-{Seq}"}}"#,
    );
    assert_eq!(status, 201, "{t}");
    let (status, r) = post(
        &a,
        "/v1/rules",
        r#"{"domain": "localhost", "app": "live", "stream": "", "template_id": 7}"#,
    );
    assert_eq!(status, 201, "{r}");
    wait_until("B seeing the template", Duration::from_secs(10), || {
        let (status, _) = b.api_get("/v1/templates/7");
        (status == 200).then_some(())
    });
    push(&b, "from_b", 4).expect("push to B");
    // Also a stream on A with the same rule, so C lists recordings of two nodes.
    push(&a, "from_a", 3).expect("push to A");
    for d in [&a, &b, &c] {
        let ok = wait_until(
            "every node listing both recordings",
            Duration::from_secs(20),
            || {
                let all = json(d, "/v1/recordings")["recordings"]
                    .as_array()
                    .cloned()?;
                let aac_b = all
                    .iter()
                    .any(|r| r["stream"] == "from_b" && r["format"] == "aac");
                let aac_a = all
                    .iter()
                    .any(|r| r["stream"] == "from_a" && r["format"] == "aac");
                (aac_a && aac_b).then_some(all)
            },
        );
        assert!(ok.iter().all(|r| r["format"] == "aac"), "{ok:?}");
    }
    // Deleting the rule on C takes it away on B too.
    let rule_id = r["rule_id"].as_str().unwrap();
    let (status, _) = c.api_request("DELETE", &format!("/v1/rules/{rule_id}"), "");
    assert_eq!(status, 200);
    wait_until("B losing the rule", Duration::from_secs(10), || {
        let rules = json(&b, "/v1/rules");
        (!rules.to_string().contains(rule_id)).then_some(())
    });
}

/// The S3 requests an idle node makes over `secs` seconds, after it settled.
fn idle_requests(s3: &S3Server, secs: u64) -> Vec<String> {
    std::thread::sleep(Duration::from_secs(3));
    let before = s3.requests().len();
    std::thread::sleep(Duration::from_secs(secs));
    s3.requests()[before..].to_vec()
}

#[test]
fn a_single_node_makes_no_cluster_requests_and_an_idle_cluster_node_few() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let single = Daemon::start_full("", Some(&s3.storage_toml("")), TEMPLATES);
    let idle = idle_requests(&s3, 6);
    assert!(
        idle.iter().all(|r| !r.contains(".liverec/cluster")),
        "no [cluster]: no cluster requests: {idle:?}"
    );
    assert!(
        idle.is_empty(),
        "an idle single node asks the store nothing: {idle:?}"
    );
    drop(single);

    // sync_interval = 1, lease_ttl = 3: per 6 s one HEAD of the change stamp and one LIST
    // of the recordings log per second, a heartbeat PUT per second.
    let n = node(&s3, "a", "");
    let idle = idle_requests(&s3, 6);
    let count = |m: &str, what: &str| {
        idle.iter()
            .filter(|r| r.starts_with(m) && r.contains(what))
            .count()
    };
    let (heads, lists, puts) = (
        count("HEAD", "changes.json"),
        count("GET", "list-type=2"),
        count("PUT", "nodes/a.json"),
    );
    eprintln!("idle cluster node, 6 s at sync_interval 1 s, lease_ttl 3 s: {} requests: {heads} HEAD stamp, {lists} LIST, {puts} PUT heartbeat", idle.len());
    assert!((4..=8).contains(&heads), "{idle:?}");
    assert!((4..=8).contains(&lists), "{idle:?}");
    assert!((4..=8).contains(&puts), "{idle:?}");
    assert_eq!(
        idle.len(),
        heads + lists + puts,
        "nothing else at idle: {idle:?}"
    );
    drop(n);
}

#[test]
fn a_gone_nodes_files_still_expire_from_another_node_after_orphan_after() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let storage = format!("{}retention_sweep_interval = 1\n", s3.storage_toml(""));
    let cluster = |name: &str| {
        Daemon::start_full(
            "",
            Some(&storage),
            &format!(
                "[cluster]\nnode_id = \"{name}\"\nsync_interval = 1\nlease_ttl = 3\norphan_after = 5\n[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 600, storage_time = 25, file_name = \"{{StreamID}}\" }}\nhls = {{ enable = true, record_interval = 600, segment_duration = 1, storage_time = 25, file_name = \"{{StreamID}}\" }}\n"
            ),
        )
    };
    let (mut a, b) = (cluster("a"), cluster("b"));
    push(&a, "short_lived", 3).expect("push to A");
    // B knows A's files (flv and hls) before A goes.
    wait_until("B indexing A's files", Duration::from_secs(20), || {
        let r = recordings(&b, "short_lived");
        (r.len() == 2 && r.iter().all(|f| f["node_id"] == "a")).then_some(())
    });
    let stored = || {
        s3.list()
            .into_iter()
            .filter(|(k, _)| k.starts_with("localhost/live/short_lived/"))
            .count()
    };
    assert!(stored() >= 3, "an FLV, a playlist and its segments");
    a.kill9();
    // A never returns: B takes its retention over after orphan_after and deletes the
    // files (segments included) when they expire.
    wait_until("A's files expiring from B", Duration::from_secs(60), || {
        (stored() == 0).then_some(())
    });
    assert!(
        b.log().contains("its files now expire from this node"),
        "{}",
        b.log()
    );
}
