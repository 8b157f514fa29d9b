//! End to end control plane: rules choose the template at publish time (R-TP-3), and a
//! reload (R-TP-6: `POST /v1/reload` or SIGHUP) applies to pushes that start afterwards
//! while a recording in progress keeps its settings; a broken file is refused.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;
use testkit::{flv_summary, PublishOptions};

fn push(d: &Daemon, stream: &str, fixture: &str) {
    let url = d.url("live", stream);
    let tags = Arc::new(testkit::fixture_tags(fixture));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await })
        .expect("publish");
}

const TEMPLATES: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nname = \"flv\"\nflv = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\n[[template]]\nid = 2\nname = \"mp4\"\nmp4 = { enable = true, record_interval = 600, file_name = \"{StreamID}\" }\n[[template]]\nid = 3\nname = \"off\"\nflv = { enable = false }\n";

#[test]
fn rules_pick_the_template_when_a_push_starts() {
    let rules = "[[rule]]\ndomain = \"localhost\"\napp = \"live\"\nstream = \"special\"\ntemplate_id = 2\n[[rule]]\ndomain = \"localhost\"\nstream = \"hidden\"\ntemplate_id = 3\n";
    let d = Daemon::start(&format!("{TEMPLATES}{rules}"));
    push(&d, "special", "avc_only.flv");
    push(&d, "plain", "avc_only.flv");
    push(&d, "hidden", "avc_only.flv");
    let mp4 = d.wait_files(
        "localhost",
        "live",
        "special",
        "mp4",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(mp4.len(), 1);
    assert!(d.files("localhost", "live", "special", "flv").is_empty());
    let flv = d.wait_files(
        "localhost",
        "live",
        "plain",
        "flv",
        1,
        Duration::from_secs(20),
    );
    assert!(!flv.is_empty());
    assert!(d.files("localhost", "live", "plain", "mp4").is_empty());
    // The exclusion template (nothing enabled) records nothing, and says so.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!d.root().join("localhost/live/hidden").exists());
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("hidden") && l.contains("not recording")),
        "{log}"
    );
    assert!(
        log.contains("priority 1"),
        "the log names the rule that applied: {log}"
    );
}

/// `default_template = -1`: streams no rule matches are not recorded; ruled ones are.
#[test]
fn with_no_default_only_ruled_streams_are_recorded() {
    let rules = TEMPLATES.replace("default_template = 1", "default_template = -1")
        + "[[rule]]\ndomain = \"localhost\"\napp = \"live\"\ntemplate_id = 1\n";
    let d = Daemon::start(&rules);
    push(&d, "ruled", "avc_only.flv");
    let url = d.url("other", "unruled");
    let tags = Arc::new(testkit::fixture_tags("avc_only.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await })
        .expect("publish");
    let flv = d.wait_files(
        "localhost",
        "live",
        "ruled",
        "flv",
        1,
        Duration::from_secs(20),
    );
    assert!(!flv.is_empty());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!d.root().join("localhost/other").exists());
    assert!(!d.spool().join("localhost/other").exists());
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("unruled") && l.contains("not recording")),
        "{}",
        d.log()
    );
}

#[test]
fn reload_applies_to_new_pushes_and_keeps_running_recordings() {
    let mut d = Daemon::start(TEMPLATES);
    // A real-time push recording with 4 s files while the config changes under it.
    let url = d.url("live", "long");
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let long = rt.spawn(async move {
        let opts = PublishOptions {
            realtime: true,
            duration: Some(Duration::from_secs(12)),
            ..PublishOptions::default()
        };
        testkit::publish_flv(&url, &tags, &opts).await
    });
    std::thread::sleep(Duration::from_secs(2));

    // A broken file is refused with its line; the daemon keeps the running config.
    let path = d.config_path();
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{good}\n[rtmp]\nbogus = 1\n")).expect("write");
    let (status, body) = d.api_post("/v1/reload", "");
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(v["code"], "invalid_config", "{body}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("config.toml:"),
        "{body}"
    );
    assert!(d.is_running());

    // Template 1 now cuts every 2 s.
    let changed = good.replace("record_interval = 4,", "record_interval = 2,");
    assert_ne!(changed, good);
    std::fs::write(&path, &changed).expect("write");
    let (status, body) = d.api_post("/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    push(&d, "after", "avc_aac_2s.flv");
    rt.block_on(long).expect("join").expect("publish");

    // The push that started before keeps 4 s files; the one after gets 2 s files.
    let long_files = d.wait_files(
        "localhost",
        "live",
        "long",
        "flv",
        2,
        Duration::from_secs(20),
    );
    for f in &long_files[..long_files.len() - 1] {
        let dur = flv_summary(f).duration.unwrap_or(0.0);
        assert!(
            dur >= 3.9,
            "{}: {dur} s, cut by the new interval",
            f.display()
        );
    }
    let after = d.wait_files(
        "localhost",
        "live",
        "after",
        "flv",
        8,
        Duration::from_secs(20),
    );
    let first = flv_summary(&after[0]).duration.unwrap_or(0.0);
    assert!(
        (1.9..3.9).contains(&first),
        "new push uses the new 2 s interval: {first} s"
    );

    // SIGHUP reloads too.
    std::fs::write(&path, &good).expect("write");
    d.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log().matches("config reloaded").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no reload on SIGHUP: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn templates_and_rules_are_listed_and_the_token_is_enforced() {
    let rules = "[[rule]]\ndomain = \"localhost\"\napp = \"live\"\ntemplate_id = 2\n";
    let d = Daemon::start_api("token = \"s3cret\"\n", &format!("{TEMPLATES}{rules}"));
    let auth = "Authorization: Bearer s3cret\r\n";
    let (status, body) = d.api_get("/v1/templates");
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["code"], "unauthorized");
    let (status, _) = d.api_request_with(
        "GET",
        "/v1/templates",
        "Authorization: Bearer wrong\r\n",
        "",
    );
    assert_eq!(status, 401);
    assert_eq!(d.api_get("/healthz").0, 200, "health stays open");

    let (status, body) = d.api_request_with("GET", "/v1/templates", auth, "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let ids: Vec<i64> = v["templates"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["id"].as_i64())
        .collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    assert_eq!(v["templates"][0]["flv"]["record_interval"], 1800);
    let (status, body) = d.api_request_with("GET", "/v1/templates/2", auth, "");
    assert_eq!(status, 200, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(t["mp4"]["enable"], true);
    assert_eq!(t["source"], "config");
    let (status, body) = d.api_request_with("GET", "/v1/templates/99", auth, "");
    assert_eq!(status, 404);
    assert!(body.contains("template_not_found"), "{body}");
    let (status, body) = d.api_request_with("GET", "/v1/rules", auth, "");
    assert_eq!(status, 200);
    let r: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(r["rules"][0]["template_id"], 2);
    assert_eq!(r["rules"][0]["app"], "live");
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn api_templates_and_rules_apply_to_new_pushes_and_survive_a_restart() {
    let rules =
        "[[rule]]\ndomain = \"localhost\"\napp = \"live\"\nstream = \"special\"\ntemplate_id = 2\n";
    let mut d = Daemon::start(&format!("{TEMPLATES}{rules}"));
    let req = |d: &Daemon, m: &str, p: &str, b: &str| {
        let (s, body) = d.api_request(m, p, b);
        (s, json(&body))
    };
    // Config-file templates and rules are read-only over the API.
    let (s, v) = req(&d, "PUT", "/v1/templates/1", "{\"name\":\"x\"}");
    assert_eq!((s, v["code"].as_str()), (403, Some("read_only")), "{v}");
    assert_eq!(req(&d, "DELETE", "/v1/templates/0", "").0, 403);
    assert_eq!(req(&d, "DELETE", "/v1/rules/config-0", "").0, 403);
    let (s, v) = req(&d, "POST", "/v1/templates", "{\"id\":1,\"name\":\"dup\"}");
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("template_exists")),
        "{v}"
    );
    // Validated like the file's.
    let (s, v) = req(
        &d,
        "POST",
        "/v1/templates",
        "{\"name\":\"bad\",\"flv\":{\"enable\":true,\"record_interval\":0}}",
    );
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("record_interval"),
        "{v}"
    );
    let (s, v) = req(&d, "POST", "/v1/templates", "{\"name\":\"bad\",\"nope\":1}");
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );

    let (s, v) = req(
        &d,
        "POST",
        "/v1/templates",
        "{\"name\":\"audio\",\"aac\":{\"enable\":true,\"record_interval\":600,\"file_name\":\"{StreamID}-{Seq}\"}}",
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["source"], "api");
    let tid = v["id"].as_i64().expect("id");
    assert_eq!(tid, 4, "next id after the file's 1..3");
    let rule = format!(
        "{{\"domain\":\"localhost\",\"app\":\"live\",\"stream\":\"viaapi\",\"template_id\":{tid}}}"
    );
    let (s, v) = req(&d, "POST", "/v1/rules", &rule);
    assert_eq!(s, 201, "{v}");
    let rid = v["rule_id"].as_str().expect("rule id").to_string();
    let (s, v) = req(&d, "POST", "/v1/rules", &rule);
    assert_eq!((s, v["code"].as_str()), (409, Some("rule_exists")), "{v}");
    let (s, _) = req(
        &d,
        "POST",
        "/v1/rules",
        "{\"domain\":\"localhost\",\"template_id\":99}",
    );
    assert_eq!(s, 400);
    let (s, v) = req(&d, "DELETE", &format!("/v1/templates/{tid}"), "");
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("template_in_use")),
        "{v}"
    );

    // A push that starts now gets the API's rule and template.
    push(&d, "viaapi", "avc_aac_2s.flv");
    let aac = d.wait_files(
        "localhost",
        "live",
        "viaapi",
        "aac",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(aac.len(), 1);
    assert!(d.files("localhost", "live", "viaapi", "flv").is_empty());

    // Both survive a restart and still apply.
    assert_eq!(d.stop(), Some(0));
    d.restart();
    let (_, v) = req(&d, "GET", &format!("/v1/templates/{tid}"), "");
    assert_eq!(v["source"], "api", "{v}");
    let (_, v) = req(&d, "GET", "/v1/rules", "");
    let sources: Vec<_> = v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["rule_id"].as_str().unwrap_or("").to_string(),
                r["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        sources.contains(&("config-0".into(), "config".into())),
        "{v}"
    );
    assert!(sources.contains(&(rid.clone(), "api".into())), "{v}");
    push(&d, "viaapi", "avc_aac_2s.flv");
    let aac = d.wait_files(
        "localhost",
        "live",
        "viaapi",
        "aac",
        2,
        Duration::from_secs(20),
    );
    assert_eq!(aac.len(), 2);

    // Another node sharing the store made template 9 and a rule meanwhile: exclusive
    // creates refuse to overwrite them.
    let state = d.root().join(".liverec/state");
    std::fs::create_dir_all(state.join("templates")).expect("mkdir");
    std::fs::create_dir_all(state.join("rules")).expect("mkdir");
    std::fs::write(
        state.join("templates/9.json"),
        "{\"id\":9,\"name\":\"theirs\"}",
    )
    .expect("write");
    std::fs::write(
        state.join("rules/localhost~live~theirs.json"),
        "{\"rule_id\":\"localhost~live~theirs\",\"domain\":\"localhost\",\"app\":\"live\",\"stream\":\"theirs\",\"template_id\":1}",
    )
    .expect("write");
    let (s, v) = req(&d, "POST", "/v1/templates", "{\"id\":9,\"name\":\"mine\"}");
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("template_exists")),
        "{v}"
    );
    let (s, v) = req(
        &d,
        "POST",
        "/v1/rules",
        "{\"domain\":\"localhost\",\"app\":\"live\",\"stream\":\"theirs\",\"template_id\":2}",
    );
    assert_eq!((s, v["code"].as_str()), (409, Some("rule_exists")), "{v}");
    let (_, v) = req(&d, "GET", "/v1/templates", "");
    assert!(
        !v["templates"]
            .as_array()
            .expect("list")
            .iter()
            .any(|t| t["id"] == 9),
        "a refused create leaves the running config as it was: {v}"
    );

    assert_eq!(req(&d, "DELETE", &format!("/v1/rules/{rid}"), "").0, 200);
    assert_eq!(
        req(&d, "DELETE", &format!("/v1/templates/{tid}"), "").0,
        200
    );
    assert_eq!(req(&d, "GET", &format!("/v1/templates/{tid}"), "").0, 404);
    assert_eq!(req(&d, "DELETE", &format!("/v1/rules/{rid}"), "").0, 404);
}

/// docs/openapi.json and the router agree: every documented method and path answers
/// (never the router's bare 404/405), and every documented error code is one of ours.
/// API writes that cannot reach the store fail with `503 storage_unavailable` and change
/// nothing: no template, rule or task exists afterwards, here or after the store returns.
#[test]
fn api_writes_answer_503_and_change_nothing_while_the_store_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s3 = testkit::s3::S3Server::start(&dir.path().join("s3"));
    let addr = s3.addr;
    let d = Daemon::start_full("", Some(&s3.storage_toml("")), TEMPLATES);
    let req = |m: &str, p: &str, b: &str| {
        let (s, body) = d.api_request(m, p, b);
        (s, json(&body))
    };
    let (s, v) = req("DELETE", "/v1/rules/localhost~live~nosuch", "");
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("rule_not_found")),
        "{v}"
    );
    s3.stop();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let task = format!(
        "{{\"domain\":\"localhost\",\"app\":\"live\",\"stream\":\"later\",\"start_time\":{},\"end_time\":{}}}",
        now + 600,
        now + 900
    );
    for (path, body) in [
        ("/v1/templates", "{\"id\":7,\"name\":\"x\"}"),
        (
            "/v1/rules",
            "{\"domain\":\"localhost\",\"stream\":\"y\",\"template_id\":2}",
        ),
        ("/v1/tasks", task.as_str()),
    ] {
        let (s, v) = req("POST", path, body);
        assert_eq!(
            (s, v["code"].as_str()),
            (503, Some("storage_unavailable")),
            "POST {path}: {v}"
        );
    }
    let (_, v) = req("GET", "/v1/templates/7", "");
    assert_eq!(v["code"], "template_not_found", "{v}");
    let (_, v) = req("GET", "/v1/rules", "");
    assert!(
        !v.to_string().contains("\"stream\":\"y\""),
        "rule kept after a failed store write: {v}"
    );
    let (_, v) = req("GET", "/v1/tasks", "");
    assert_eq!(v["tasks"].as_array().map(Vec::len), Some(0), "{v}");
    // Back: the same writes succeed.
    let _s3 = testkit::s3::S3Server::start_on(&dir.path().join("s3"), addr);
    let (s, v) = req("POST", "/v1/templates", "{\"id\":7,\"name\":\"x\"}");
    assert_eq!(s, 201, "{v}");
}

#[test]
fn openapi_document_matches_the_router() {
    let doc: serde_json::Value = json(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json"),
    );
    assert_eq!(doc["openapi"], "3.0.3");
    let d = Daemon::start(TEMPLATES);
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().expect("methods") {
            let url = path.replace("{id}", "doc-probe");
            let (status, body) = d.api_request(&method.to_uppercase(), &url, "{}");
            let answered_by_a_handler = !(status == 405 || (status == 404 && body.is_empty()));
            assert!(answered_by_a_handler, "{method} {path}: {status} {body:?}");
            // A documented status the handler returned.
            let documented = op["responses"]
                .as_object()
                .is_some_and(|r| r.contains_key(&status.to_string()));
            assert!(
                documented,
                "{method} {path} answered {status} ({body}), not documented"
            );
            checked += 1;
        }
    }
    assert!(checked >= 17, "{checked} operations");
    // And a route that is not documented does not exist.
    let (status, _) = d.api_get("/v1/undocumented");
    assert_eq!(status, 404);
}

/// R-OP-3: `/metrics` counts connections, bytes in and files, and they add up with what
/// a push left on disk.
#[test]
fn metrics_count_connections_bytes_and_files() {
    let d = Daemon::start(TEMPLATES);
    push(&d, "m1", "avc_aac_2s.flv");
    push(&d, "m2", "avc_only.flv");
    let files: Vec<_> = ["m1", "m2"]
        .iter()
        .flat_map(|s| d.wait_files("localhost", "live", s, "flv", 1, Duration::from_secs(20)))
        .collect();
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let fixture_bytes: u64 = ["avc_aac_2s.flv", "avc_only.flv"]
        .iter()
        .map(|f| {
            std::fs::metadata(testkit::fixture(f))
                .expect("fixture")
                .len()
        })
        .sum();
    // Files are finalized after the publisher leaves: wait until nothing is open.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = d.api_get("/metrics");
        if metric(&text, "liverec_recordings_open") == 0
            && metric(&text, "liverec_connections") == 0
            && metric(&text, "liverec_files_finalized_total") as usize >= files.len()
        {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(metric(&text, "liverec_connections_total"), 2, "{text}");
    // Every FLV body byte came over RTMP, plus chunk headers and the handshake.
    let bytes_in = metric(&text, "liverec_bytes_in_total");
    assert!(
        bytes_in > fixture_bytes * 9 / 10 && bytes_in < fixture_bytes * 2,
        "{bytes_in} bytes in for {fixture_bytes} bytes of FLV"
    );
    let on_disk = common::walk(&d.root().join("localhost"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "flv"))
        .count() as u64;
    assert_eq!(
        metric(&text, "liverec_files_finalized_total"),
        on_disk,
        "{text}"
    );
    assert_eq!(metric(&text, "liverec_files_failed_total"), 0, "{text}");
    // Issue 10: close → stored and finalize times are histograms (`_bucket` lines, not
    // summaries), one observation per stored file.
    let finalized = metric(&text, "liverec_files_finalized_total");
    for (series, at_least) in [
        (
            "liverec_upload_latency_seconds_bucket{backend=\"local\",le=\"+Inf\"}",
            on_disk,
        ),
        (
            "liverec_finalize_seconds_bucket{format=\"flv\",le=\"+Inf\"}",
            finalized,
        ),
        ("liverec_finalize_seconds_count{format=\"flv\"}", finalized),
    ] {
        let n = metric(&text, series);
        assert!(n >= at_least.max(1), "{series} is {n}:\n{text}");
    }
    for prefix in [
        "liverec_upload_latency_seconds_bucket{",
        "liverec_finalize_seconds_bucket{",
    ] {
        let buckets = text.lines().filter(|l| l.starts_with(prefix)).count();
        assert!(buckets > 5, "{prefix}: {buckets} buckets in:\n{text}");
    }
    assert!(!text.contains("quantile="), "{text}");
    // Every series from before the exporter still renders with its type.
    for (name, kind) in [
        ("liverec_spool_bytes", "gauge"),
        ("liverec_spool_max_bytes", "gauge"),
        ("liverec_upload_queue", "gauge"),
        ("liverec_publish_refused_spool_full_total", "counter"),
        ("liverec_streams", "gauge"),
        ("liverec_connections_total", "counter"),
        ("liverec_connections", "gauge"),
        ("liverec_bytes_in_total", "counter"),
        ("liverec_recordings_open", "gauge"),
        ("liverec_files_finalized_total", "counter"),
        ("liverec_files_failed_total", "counter"),
        ("liverec_recordings_index_unpublished", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind}:\n{text}"
        );
        metric(&text, name);
    }
    assert!(
        text.contains("# TYPE liverec_record_tasks gauge\n")
            && text.contains("liverec_record_tasks{status=\"scheduled\"} 0\n"),
        "{text}"
    );
}
