//! Issue 16: the web console at `/ui` in a real browser. The real daemon, real `ffmpeg`
//! pushes, and Debian's headless Chromium driven over WebDriver (chromedriver +
//! fantoccini): the login prompt, the Live page, a clip task made from the Tasks page,
//! HLS (hls.js), fragmented MP4 and a spliced HLS playlist played in the page, and the
//! whole console behind a reverse proxy under a path prefix on another host name.
//!
//! Each test starts its own daemon, chromedriver and Chromium (killed when the test ends,
//! also on a panic), so they run in parallel.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Daemon;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use testkit::{ffprobe_errors, probe_codecs, probe_duration, require_tool};

const TOKEN: &str = "console-e2e-token";

/// The fixture every push sends: H.264 High 640x360 at 30 fps + AAC stereo, 20 s.
const FIXTURE: &str = "avc_aac_2s.flv";

// ---- processes --------------------------------------------------------------------------

/// Kills the child by its PID when dropped (an ffmpeg push must not outlive the test).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An `ffmpeg` push of the fixture in real time, looped until dropped.
fn push_live(d: &Daemon, stream: &str) -> KillOnDrop {
    let log = d.dir.path().join(format!("ffmpeg-{stream}.log"));
    let child = Command::new(require_tool("ffmpeg"))
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-stream_loop", "-1", "-i"])
        .arg(testkit::fixture(FIXTURE))
        .args(["-c", "copy", "-f", "flv"])
        .arg(d.url("live", stream))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&log).expect("ffmpeg log"),
        ))
        .spawn()
        .expect("spawn ffmpeg");
    KillOnDrop(child)
}

/// An `ffmpeg` push of the whole fixture as fast as the daemon takes it; returns when
/// ffmpeg has disconnected.
fn push_file(d: &Daemon, stream: &str) {
    let out = Command::new(require_tool("ffmpeg"))
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
        .arg(testkit::fixture(FIXTURE))
        .args(["-c", "copy", "-f", "flv"])
        .arg(d.url("live", stream))
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// chromedriver and the headless Chromium it starts, in their own process group: the
/// session is closed at the end of a test, and the group killed when dropped (a panic).
struct Browser {
    client: Option<Client>,
    driver: Child,
    dir: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = require_tool("chromium");
        let chromedriver = require_tool("chromedriver");
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile");
        let downloads = dir.path().join("downloads");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let mut b = Browser {
            client: None,
            driver,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--autoplay-policy=no-user-gesture-required",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
                // Downloads (the FLV button) land in the test's own directory.
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let caps = caps.as_object().cloned().expect("object");
        let conn = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(conn)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no WebDriver session from chromedriver: {e}; log:\n{}",
                    std::fs::read_to_string(b.dir.path().join("chromedriver.log"))
                        .unwrap_or_default()
                )
            });
        b.client = Some(client);
        b
    }

    /// Where the browser saves downloads.
    fn downloads(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

// ---- the daemon's API from the test -----------------------------------------------------

fn auth(token: Option<&str>) -> String {
    token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default()
}

fn api_json(d: &Daemon, token: Option<&str>, method: &str, path: &str, body: &str) -> Value {
    let (status, text) = d.api_request_with(method, path, &auth(token), body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls `/v1/streams` until `stream` is live with `ready` true of its entry.
fn wait_stream(
    d: &Daemon,
    token: Option<&str>,
    stream: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = api_json(d, token, "GET", "/v1/streams", "");
        if let Some(s) = v["streams"].as_array().and_then(|a| {
            a.iter()
                .find(|s| s["stream"] == stream && s["state"] == "live")
        }) {
            if ready(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{stream} not live within 30 s: {v}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `/v1/recordings?{query}` until it lists at least one recording.
fn wait_recordings(d: &Daemon, token: Option<&str>, query: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = api_json(d, token, "GET", &format!("/v1/recordings?{query}"), "");
        let list = v["recordings"].as_array().cloned().unwrap_or_default();
        if !list.is_empty() {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "no recording for {query} within 60 s; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Blocking test code (the harness's sync helpers) inside the async tests.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ---- the page ---------------------------------------------------------------------------

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// What the page shows and what its player recorded, for failure messages.
async fn page_state(c: &Client) -> String {
    let v = c
        .execute(
            "return JSON.stringify({url: location.href, text: document.body.innerText.slice(0, 3000), \
             playerErrors: window.liverecConsole && window.liverecConsole.playerErrors});",
            vec![],
        )
        .await
        .unwrap_or(Value::Null);
    v.as_str().unwrap_or("(no page state)").to_string()
}

/// Runs `script` (which `return`s a value) until it returns something truthy.
async fn wait_for(c: &Client, what: &str, script: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(v) = c.execute(script, vec![]).await {
            if truthy(&v) {
                return v;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; page: {}",
                page_state(c).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(value).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Text of the Live table's cell `field` in the row of `id` (domain/app/stream), or null.
fn live_cell(id: &str, field: &str) -> String {
    live_check(id, field, "t")
}

/// `cond` (JS over the cell's text `t`) for the Live table's cell `field` of `id`.
fn live_check(id: &str, field: &str, cond: &str) -> String {
    format!(
        "const td = document.querySelector('#live-table tr[data-stream=\"{id}\"] td[data-field=\"{field}\"]'); \
         if (!td) return null; const t = td.textContent; return {cond};"
    )
}

const LOGIN_SHOWN: &str = "return !document.querySelector('#login').hidden;";

/// Opens `url`, waits for the login prompt and logs in with `token`.
async fn open_and_log_in(c: &Client, url: &str, token: &str) {
    c.goto(url).await.expect("goto");
    wait_for(c, "the login prompt", LOGIN_SHOWN, Duration::from_secs(20)).await;
    fill(c, "#token", token).await;
    click(c, "#login-submit").await;
}

fn console_url(d: &Daemon) -> String {
    format!("http://{}/ui/", d.api)
}

/// Waits until the page's player has played past `secs` and checks it did so cleanly:
/// no `error` event and no fatal hls.js error recorded, decoded video frames.
async fn assert_plays_past(c: &Client, secs: f64) -> Value {
    let script = format!(
        "const v = document.querySelector('#player video'); \
         return v && v.currentTime > {secs} ? v.currentTime : null;"
    );
    wait_for(
        c,
        &format!("the video to play past {secs} s"),
        &script,
        Duration::from_secs(60),
    )
    .await;
    let v = js(
        c,
        "const v = document.querySelector('#player video'); \
         return {t: v.currentTime, error: v.error && v.error.code, src: v.src, \
                 frames: v.getVideoPlaybackQuality().totalVideoFrames, \
                 width: v.videoWidth, height: v.videoHeight, \
                 errors: window.liverecConsole.playerErrors, \
                 shownError: document.querySelector('#player-error').hidden ? null : \
                   document.querySelector('#player-error').textContent};",
    )
    .await;
    assert_eq!(v["error"], Value::Null, "media error: {v}");
    assert_eq!(v["errors"], json!([]), "errors while playing: {v}");
    assert_eq!(v["shownError"], Value::Null, "{v}");
    assert!(
        v["frames"].as_u64().is_some_and(|n| n > 0),
        "no frames: {v}"
    );
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(640), Some(360)),
        "{v}"
    );
    v
}

/// Templates: `[record] default_template = 1` with the given format tables.
fn template(formats: &str) -> String {
    format!("[record]\ndefault_template = 1\n[[template]]\nid = 1\n{formats}")
}

// ---- the tests --------------------------------------------------------------------------

/// With `[api] token`: the page asks for it, a wrong one brings the prompt back with the
/// API's error and no data, the right one shows the live stream; the token stays in
/// sessionStorage (not localStorage, not the URL). `/ui` redirects to `ui/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_asks_for_the_token_and_refuses_a_wrong_one() {
    let d = blocking(|| Daemon::start_api(&format!("token = \"{TOKEN}\""), ""));
    let _push = push_live(&d, "cam");
    blocking(|| wait_stream(&d, Some(TOKEN), "cam", |_| true));
    let b = Browser::start().await;
    let c = b.c();
    // The files need no token; `/ui` sends the browser to `ui/`.
    c.goto(&format!("http://{}/ui", d.api)).await.expect("goto");
    wait_for(c, "the login prompt", LOGIN_SHOWN, Duration::from_secs(20)).await;
    assert_eq!(
        c.current_url().await.expect("url").as_str(),
        console_url(&d),
        "/ui redirects to ui/"
    );
    let rows = "return document.querySelectorAll('#live-table tbody tr').length;";
    assert_eq!(js(c, rows).await, json!(0));
    assert_eq!(
        js(c, "return document.querySelector('#login-error').hidden;").await,
        json!(true),
        "no error before a token was tried"
    );

    fill(c, "#token", "not-the-token").await;
    click(c, "#login-submit").await;
    let err = wait_for(
        c,
        "the refused token's error",
        "const e = document.querySelector('#login-error'); \
         return !document.querySelector('#login').hidden && !e.hidden ? e.textContent : null;",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        err.as_str()
            .is_some_and(|e| e.contains("missing or wrong bearer token")),
        "the API's message: {err}"
    );
    assert_eq!(
        js(c, rows).await,
        json!(0),
        "no stream data after a wrong token"
    );
    assert_eq!(
        js(c, "return document.querySelector('#view-live').hidden;").await,
        json!(true)
    );
    assert_eq!(
        js(c, "return sessionStorage.length;").await,
        json!(0),
        "a refused token is not kept"
    );

    fill(c, "#token", TOKEN).await;
    click(c, "#login-submit").await;
    wait_for(
        c,
        "the live stream after the right token",
        &live_cell("localhost/live/cam", "stream"),
        Duration::from_secs(20),
    )
    .await;
    let store = js(
        c,
        "return {session: sessionStorage.getItem('liverec.token'), local: localStorage.length, \
                 url: location.href, login: document.querySelector('#login').hidden};",
    )
    .await;
    assert_eq!(store["session"], json!(TOKEN), "{store}");
    assert_eq!(store["local"], json!(0), "{store}");
    assert_eq!(store["login"], json!(true), "{store}");
    assert!(
        !store["url"].as_str().unwrap_or("").contains(TOKEN),
        "{store}"
    );

    // The Health page, and the metrics fetched with the token.
    c.goto(&format!("{}#health", console_url(&d)))
        .await
        .expect("goto");
    let field = |f: &str| {
        format!("return document.querySelector('#health dd[data-field=\"{f}\"]').textContent;")
    };
    wait_for(c, "the version", &field("version"), Duration::from_secs(20)).await;
    assert_eq!(js(c, &field("status")).await, json!("ok"));
    for f in ["config_source", "node_id", "uploads_pending", "callbacks"] {
        let v = js(c, &field(f)).await;
        assert!(truthy(&v), "{f}: {v}; page: {}", page_state(c).await);
    }
    let spool = js(c, &field("spool")).await;
    assert!(
        spool.as_str().is_some_and(|s| s.contains(" of ")),
        "spool bytes of max: {spool}"
    );
    click(c, "#metrics-link").await;
    wait_for(
        c,
        "the metrics",
        "const m = document.querySelector('#metrics'); \
         return !m.hidden && m.textContent.includes('liverec_spool_bytes');",
        Duration::from_secs(20),
    )
    .await;
    b.close().await;
}

/// A live ffmpeg push on the Live page: codec, resolution, fps, bitrate, client address
/// and open file from the DOM, updated by polling (the page is not reloaded): when the
/// push ends the stream waits out its `continue_timeout` with a deadline, then goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_push_shows_on_the_live_page() {
    // The FLV waits 3 s for the stream to come back after the push ends.
    let d = blocking(|| {
        Daemon::start(&template(
            "flv = { enable = true, record_interval = 600, continue_timeout = 3 }\n",
        ))
    });
    let push = push_live(&d, "cam");
    blocking(|| wait_stream(&d, None, "cam", |_| true));
    let b = Browser::start().await;
    let c = b.c();
    c.goto(&console_url(&d)).await.expect("goto");
    let id = "localhost/live/cam";
    // The codec and the resolution come from the stream's configuration record.
    wait_for(
        c,
        "640x360 on the Live page",
        &live_check(id, "resolution", "t === '640x360'"),
        Duration::from_secs(20),
    )
    .await;
    js(c, "window.__notReloaded = true; return null;").await;
    let cell = |f: &str| live_cell(id, f);
    let video = js(c, &cell("video")).await;
    assert!(
        video.as_str().is_some_and(|v| v.starts_with("h264")),
        "video: {video}"
    );
    let audio = js(c, &cell("audio")).await;
    assert!(
        audio.as_str().is_some_and(|a| a.starts_with("aac")),
        "audio: {audio}"
    );
    let peer = js(c, &cell("peer")).await;
    assert!(
        peer.as_str().is_some_and(|p| p.starts_with("127.0.0.1:")),
        "client address: {peer}"
    );
    // fps and bitrate are measured over the last seconds: wait for them to settle near
    // the fixture's 30 fps and ~460 kb/s.
    wait_for(
        c,
        "about 30 fps",
        &live_check(id, "fps", "parseFloat(t) > 25 && parseFloat(t) < 35"),
        Duration::from_secs(20),
    )
    .await;
    wait_for(
        c,
        "a bitrate",
        &live_check(id, "bitrate", "parseFloat(t) > 100 && parseFloat(t) < 5000"),
        Duration::from_secs(20),
    )
    .await;
    let files = js(c, &cell("files")).await;
    assert!(
        files.as_str().is_some_and(|f| f.contains("flv")),
        "open files: {files}"
    );
    assert!(
        js(c, &cell("uptime"))
            .await
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "uptime"
    );
    // Polling: the push ends, the row goes, the page stays the same page.
    drop(push);
    let waiting = wait_for(
        c,
        "the stream waiting for its push to return",
        &live_check(id, "state", "t.startsWith('waiting until ') ? t : null"),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        js(
            c,
            &format!("return document.querySelector('#live-table tr[data-stream=\"{id}\"]').dataset.state;")
        )
        .await,
        json!("waiting"),
        "{waiting}"
    );
    wait_for(
        c,
        "the row to go after the window",
        &format!(
            "return !document.querySelector('#live-table tr[data-stream=\"{id}\"]') && \
                    !document.querySelector('#live-empty').hidden;"
        ),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        js(c, "return window.__notReloaded === true;").await,
        json!(true)
    );
    b.close().await;
}

/// The Tasks page: a clip of a stream that is not live shows the API's error verbatim; a
/// clip of the live stream ("the last 2 s and the next 2 s") records a file of that task
/// (listed by the API, on disk, clean for ffprobe); a scheduled window is made from its
/// form and stopped with its Stop button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_made_on_the_tasks_page_records_a_file() {
    require_tool("ffprobe");
    // Nothing records but tasks (a task's template 0 is the built-in FLV).
    let d = blocking(|| Daemon::start("[record]\ndefault_template = -1\n"));
    let _push = push_live(&d, "cam");
    // A few seconds of the stream to clip.
    blocking(|| {
        wait_stream(&d, None, "cam", |s| {
            s["started"]
                .as_u64()
                .is_some_and(|t| unix_now().saturating_sub(t) >= 4)
        })
    });
    let b = Browser::start().await;
    let c = b.c();
    c.goto(&format!("{}#tasks", console_url(&d)))
        .await
        .expect("goto");
    wait_for(
        c,
        "the Tasks page",
        "return !document.querySelector('#view-tasks').hidden;",
        Duration::from_secs(20),
    )
    .await;

    // A stream that is not live: the API's own words.
    let now = unix_now();
    let (status, text) = d.api_post(
        "/v1/tasks",
        &json!({"domain": "localhost", "app": "live", "stream": "nope", "end_time": now + 5, "preroll_seconds": 2}).to_string(),
    );
    assert_eq!(status, 409, "{text}");
    let want: Value = serde_json::from_str(&text).expect("JSON");
    for (name, value) in [
        ("domain", "localhost"),
        ("app", "live"),
        ("stream", "nope"),
        ("preroll", "2"),
        ("next", "3"),
    ] {
        fill(c, &format!("#clip-form input[name=\"{name}\"]"), value).await;
    }
    click(c, "#clip-submit").await;
    let shown = wait_for(
        c,
        "the refused clip's error",
        "const e = document.querySelector('#task-error'); return e.hidden ? null : e.textContent;",
        Duration::from_secs(20),
    )
    .await;
    let msg = want["message"].as_str().expect("message");
    assert!(
        shown.as_str().is_some_and(|s| s.contains(msg)),
        "page shows {shown}, the API said {want}"
    );

    fill(c, "#clip-form input[name=\"stream\"]", "cam").await;
    click(c, "#clip-submit").await;
    let task_id = wait_for(
        c,
        "the created task",
        "const r = document.querySelector('#task-result'); \
         return r.hidden ? null : r.dataset.taskId;",
        Duration::from_secs(20),
    )
    .await;
    let task_id = task_id.as_str().expect("task id").to_string();
    assert_eq!(
        js(c, "return document.querySelector('#task-error').hidden;").await,
        json!(true)
    );
    wait_for(
        c,
        "the task in the list",
        &format!("return !!document.querySelector('#tasks-table tr[data-task=\"{task_id}\"]');"),
        Duration::from_secs(20),
    )
    .await;
    let task = api_json(&d, None, "GET", &format!("/v1/tasks/{task_id}"), "");
    assert_eq!(task["preroll_seconds"], json!(2), "{task}");
    assert_eq!(task["stream"], json!("cam"), "{task}");

    // The task's file: listed with its task id, on disk, clean.
    let recs = blocking(|| wait_recordings(&d, None, &format!("task_id={task_id}")));
    let key = recs[0]["key"].as_str().expect("key");
    let path = d.root().join(key);
    assert!(path.is_file(), "{} missing; {recs:?}", path.display());
    assert_eq!(ffprobe_errors(&path), "", "{}", path.display());
    assert_eq!(probe_codecs(&path), ["h264", "aac"], "{}", path.display());
    let secs = probe_duration(&path);
    // The next 3 s, and what the ring held of the last 2 s (it keeps the newest GOP,
    // 2 s in this fixture, so the preroll starts at a keyframe up to 2 s back).
    assert!(
        (2.5..12.0).contains(&secs),
        "up to 2 s of preroll and 3 s after: {secs} s in {}; {recs:?}",
        path.display()
    );

    // A scheduled window from its form, then stopped from the list.
    for (name, value) in [
        ("domain", "localhost"),
        ("app", "live"),
        ("stream", "later"),
    ] {
        fill(c, &format!("#schedule-form input[name=\"{name}\"]"), value).await;
    }
    js(
        c,
        "const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 19); \
         const f = document.querySelector('#schedule-form').elements; \
         f.start.value = local(Date.now() + 3600e3); f.end.value = local(Date.now() + 7200e3); return null;",
    )
    .await;
    js(
        c,
        "document.querySelector('#task-result').hidden = true; return null;",
    )
    .await;
    click(c, "#schedule-submit").await;
    let scheduled = wait_for(
        c,
        "the scheduled task",
        &format!(
            "const r = document.querySelector('#task-result'); \
             return !r.hidden && r.dataset.taskId !== '{task_id}' ? r.dataset.taskId : null;"
        ),
        Duration::from_secs(20),
    )
    .await;
    let scheduled = scheduled.as_str().expect("id").to_string();
    let t = api_json(&d, None, "GET", &format!("/v1/tasks/{scheduled}"), "");
    assert_eq!(t["status"], json!("scheduled"), "{t}");
    let start = t["start_time"].as_u64().expect("start") as i64;
    assert!((start - (now as i64 + 3600)).abs() < 60, "{t}");
    let stop = format!("#tasks-table tr[data-task=\"{scheduled}\"] button[data-action=\"stop\"]");
    wait_for(
        c,
        "its Stop button",
        &format!("return !!document.querySelector('{stop}');"),
        Duration::from_secs(20),
    )
    .await;
    click(c, &stop).await;
    wait_for(
        c,
        "the task stopped in the list",
        &format!(
            "const r = document.querySelector('#tasks-table tr[data-task=\"{scheduled}\"]'); \
             return r && r.dataset.status === 'stopped';"
        ),
        Duration::from_secs(20),
    )
    .await;
    let t = api_json(&d, None, "GET", &format!("/v1/tasks/{scheduled}"), "");
    assert_eq!(t["status"], json!("stopped"), "{t}");
    b.close().await;
}

/// Opens the Recordings page logged in and presses Play on the recording of `format`.
async fn play_recording(c: &Client, d: &Daemon, format: &str) {
    open_and_log_in(c, &format!("{}#recordings", console_url(d)), TOKEN).await;
    let play = format!("#rec-table tr[data-format=\"{format}\"] button[data-action=\"play\"]");
    wait_for(
        c,
        &format!("a {format} recording on the Recordings page"),
        &format!("return !!document.querySelector('{play}');"),
        Duration::from_secs(20),
    )
    .await;
    click(c, &play).await;
}

/// A recorded HLS playlist plays in the page through hls.js, its playlist and segments
/// fetched with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_hls_playlist_plays_through_hls_js() {
    let d = blocking(|| {
        Daemon::start_api(
            &format!("token = \"{TOKEN}\""),
            &template("hls = { enable = true, record_interval = 600, segment_duration = 2 }\n"),
        )
    });
    blocking(|| push_file(&d, "cam"));
    let recs = blocking(|| wait_recordings(&d, Some(TOKEN), "format=hls"));
    assert!(
        recs[0]["key"]
            .as_str()
            .is_some_and(|k| k.ends_with(".m3u8")),
        "{recs:?}"
    );
    let b = Browser::start().await;
    let c = b.c();
    play_recording(c, &d, "hls").await;
    let v = assert_plays_past(c, 3.0).await;
    // Media Source Extensions: hls.js feeds the element.
    assert!(
        v["src"].as_str().is_some_and(|s| s.starts_with("blob:")),
        "{v}"
    );
    assert_eq!(
        js(
            c,
            "return typeof window.Hls === 'function' && window.Hls.isSupported();"
        )
        .await,
        json!(true)
    );
    b.close().await;
}

/// A recorded fragmented MP4 plays natively in `<video>`, fetched with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_mp4_plays_natively() {
    let d = blocking(|| {
        Daemon::start_api(
            &format!("token = \"{TOKEN}\""),
            &template("mp4 = { enable = true, record_interval = 600 }\n"),
        )
    });
    blocking(|| push_file(&d, "cam"));
    blocking(|| wait_recordings(&d, Some(TOKEN), "format=mp4"));
    let b = Browser::start().await;
    let c = b.c();
    play_recording(c, &d, "mp4").await;
    let v = assert_plays_past(c, 3.0).await;
    assert!(
        v["src"].as_str().is_some_and(|s| s.starts_with("blob:")),
        "{v}"
    );
    b.close().await;
}

/// The Recordings page: each row's file URL (this API) and public URL, a page at a time
/// with `next_page_token`, the format filter; a recorded AAC plays in `<audio>` and an
/// FLV is downloaded with its exact bytes, both fetched with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_aac_plays_and_an_flv_downloads() {
    let d = blocking(|| {
        Daemon::start_config(
            "",
            &format!("token = \"{TOKEN}\""),
            Some("[storage]\nroot = \"{root}\"\npublic_base_url = \"https://cdn.example/rec\"\n"),
            &template(
                "aac = { enable = true, record_interval = 600 }\n\
                 flv = { enable = true, record_interval = 600 }\n",
            ),
        )
    });
    blocking(|| push_file(&d, "cam"));
    blocking(|| wait_recordings(&d, Some(TOKEN), "format=aac"));
    let flv = blocking(|| wait_recordings(&d, Some(TOKEN), "format=flv")).remove(0);
    let b = Browser::start().await;
    let c = b.c();
    open_and_log_in(c, &format!("{}#recordings", console_url(&d)), TOKEN).await;
    let formats = |want: &str| {
        format!(
            "return Array.from(document.querySelectorAll('#rec-table tbody tr')) \
               .map((r) => r.dataset.format).sort().join(',') === '{want}';"
        )
    };
    wait_for(
        c,
        "both recordings",
        &formats("aac,flv"),
        Duration::from_secs(20),
    )
    .await;
    // Each row's URLs: the file through this API, and the public one.
    let urls = js(
        c,
        "return Array.from(document.querySelectorAll('#rec-table tbody tr')).map((r) => [r.dataset.key, \
           r.querySelector('input[data-url=\"file\"]').value, \
           r.querySelector('input[data-url=\"public\"]').value]);",
    )
    .await;
    for row in urls.as_array().expect("rows") {
        let key = row[0].as_str().expect("key");
        assert_eq!(
            row[1],
            json!(format!("http://{}/v1/files/{key}", d.api)),
            "{urls}"
        );
        assert_eq!(
            row[2],
            json!(format!("https://cdn.example/rec/{key}")),
            "{urls}"
        );
    }
    // A page at a time: one per page, then the next page.
    fill(c, "#rec-page-size", "1").await;
    click(c, "#rec-search").await;
    let one = "const r = document.querySelectorAll('#rec-table tbody tr'); \
               return r.length === 1 && !document.querySelector('#rec-next').hidden ? r[0].dataset.format : null;";
    let first = wait_for(c, "the first page of one", one, Duration::from_secs(20)).await;
    click(c, "#rec-next").await;
    let second = wait_for(
        c,
        "the second page",
        &format!(
            "const r = document.querySelectorAll('#rec-table tbody tr'); \
             return r.length === 1 && r[0].dataset.format !== '{}' && \
               !document.querySelector('#rec-first').hidden ? r[0].dataset.format : null;",
            first.as_str().unwrap_or("")
        ),
        Duration::from_secs(20),
    )
    .await;
    let mut both = [first, second].map(|v| v.as_str().unwrap_or("").to_string());
    both.sort();
    assert_eq!(both, ["aac", "flv"]);
    fill(c, "#rec-page-size", "50").await;
    // Only the AAC one after filtering by format.
    js(
        c,
        "document.querySelector('#rec-format').value = 'aac'; return null;",
    )
    .await;
    click(c, "#rec-search").await;
    wait_for(
        c,
        "the AAC recording alone",
        &formats("aac"),
        Duration::from_secs(20),
    )
    .await;
    click(
        c,
        "#rec-table tr[data-format=\"aac\"] button[data-action=\"play\"]",
    )
    .await;
    wait_for(
        c,
        "the audio to play past 1 s",
        "const a = document.querySelector('#player audio'); return a && a.currentTime > 1;",
        Duration::from_secs(60),
    )
    .await;
    let a = js(
        c,
        "const a = document.querySelector('#player audio'); \
         return {error: a.error && a.error.code, src: a.src, errors: window.liverecConsole.playerErrors};",
    )
    .await;
    assert_eq!(a["error"], Value::Null, "{a}");
    assert_eq!(a["errors"], json!([]), "{a}");
    assert!(
        a["src"].as_str().is_some_and(|s| s.starts_with("blob:")),
        "{a}"
    );

    js(
        c,
        "document.querySelector('#rec-format').value = 'flv'; return null;",
    )
    .await;
    click(c, "#rec-search").await;
    wait_for(
        c,
        "the FLV recording alone",
        &formats("flv"),
        Duration::from_secs(20),
    )
    .await;
    click(
        c,
        "#rec-table tr[data-format=\"flv\"] button[data-action=\"play\"]",
    )
    .await;
    wait_for(
        c,
        "the download link",
        "return !!document.querySelector('#player-download');",
        Duration::from_secs(20),
    )
    .await;
    let got = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             const a = document.querySelector('#player-download'); \
             fetch(a.href).then((r) => r.arrayBuffer()).then((b) => done({ \
               name: a.download, size: b.byteLength, \
               magic: String.fromCharCode(...new Uint8Array(b.slice(0, 3))) }));",
            vec![],
        )
        .await
        .expect("read the download");
    let key = flv["key"].as_str().expect("key");
    assert_eq!(
        got["name"],
        json!(key.rsplit('/').next().expect("name")),
        "{got}"
    );
    assert_eq!(got["size"], flv["size"], "{got}");
    assert_eq!(got["magic"], json!("FLV"), "{got}");
    // The browser saved it: the stored file's exact bytes.
    let saved = b.downloads().join(got["name"].as_str().expect("name"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = std::fs::read(d.root().join(key)).expect("stored FLV");
    while std::fs::read(&saved).ok().as_ref() != Some(&stored) {
        assert!(
            Instant::now() < deadline,
            "{} not saved with the stored bytes; downloads: {:?}",
            saved.display(),
            common::walk(&b.downloads())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.close().await;
}

/// Seconds of media before the first `#EXT-X-DISCONTINUITY` of a playlist.
fn first_part_secs(playlist: &Path) -> f64 {
    let text = std::fs::read_to_string(playlist).expect("playlist");
    let (before, _) = text
        .split_once("#EXT-X-DISCONTINUITY\n")
        .unwrap_or_else(|| panic!("no discontinuity in {text}"));
    before
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .map(|l| {
            l.trim_end_matches(',')
                .split(',')
                .next()
                .and_then(|s| s.parse::<f64>().ok())
                .expect("EXTINF")
        })
        .sum()
}

/// A spliced HLS playlist (a push, a reconnect inside `continue_timeout`) plays across its
/// `#EXT-X-DISCONTINUITY` without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spliced_hls_playlist_plays_across_the_discontinuity() {
    let d = blocking(|| {
        Daemon::start_api(
            &format!("token = \"{TOKEN}\""),
            &template("hls = { enable = true, record_interval = 600, segment_duration = 2, continue_timeout = 4 }\n"),
        )
    });
    blocking(|| {
        push_file(&d, "cam");
        std::thread::sleep(Duration::from_millis(1500));
        push_file(&d, "cam");
    });
    let recs = blocking(|| wait_recordings(&d, Some(TOKEN), "format=hls"));
    assert_eq!(recs.len(), 1, "one spliced playlist: {recs:?}");
    let playlist: PathBuf = d.root().join(recs[0]["key"].as_str().expect("key"));
    assert_eq!(common::discontinuities(&playlist), 1);
    let first = first_part_secs(&playlist);
    assert!(first > 15.0, "first part {first} s");
    let b = Browser::start().await;
    let c = b.c();
    play_recording(c, &d, "hls").await;
    assert_plays_past(c, 0.5).await;
    // Close to the end of the first push, then on across the discontinuity.
    js(
        c,
        &format!(
            "document.querySelector('#player video').currentTime = {}; return null;",
            first - 2.0
        ),
    )
    .await;
    let v = assert_plays_past(c, first + 1.5).await;
    assert!(v["t"].as_f64().is_some_and(|t| t > first + 1.5), "{v}");
    b.close().await;
}

/// One request the proxy forwarded (or refused): method, path, bearer header present.
type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

struct Proxy {
    addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reverse proxy as an operator would put in front of the daemon: `/lr/…` on this
/// listener is `…` on the daemon's API, method, headers, body and response copied (a
/// redirect passed on as it is); anything else is a 404.
async fn start_proxy(upstream: SocketAddr) -> Proxy {
    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::http::{header, StatusCode};
    use axum::response::Response;

    #[derive(Clone)]
    struct Ctx {
        upstream: SocketAddr,
        client: reqwest::Client,
        seen: Seen,
    }

    async fn forward(State(cx): State<Ctx>, req: Request) -> Response {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let bearer = req.headers().contains_key(header::AUTHORIZATION);
        cx.seen
            .lock()
            .expect("seen")
            .push((req.method().to_string(), pq.clone(), bearer));
        let Some(rest) = pq.strip_prefix("/lr").filter(|r| r.starts_with('/')) else {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Body::from("not under /lr/"))
                .expect("response");
        };
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("request body");
        let mut out = cx
            .client
            .request(parts.method, format!("http://{}{rest}", cx.upstream));
        for (k, v) in &parts.headers {
            if k != header::HOST && k != header::CONNECTION {
                out = out.header(k, v);
            }
        }
        let resp = match out.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Body::from(e.to_string()))
                    .expect("response")
            }
        };
        let mut back = Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            if k != header::CONNECTION
                && k != header::TRANSFER_ENCODING
                && k != header::CONTENT_LENGTH
            {
                back = back.header(k, v);
            }
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        back.body(Body::from(bytes)).expect("response")
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let cx = Ctx {
        upstream,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        seen: seen.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(cx);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Proxy { addr, seen, task }
}

/// Behind a reverse proxy under `/lr/` on another host name (`localhost`, the daemon is
/// on 127.0.0.1): `/lr/ui` redirects to `/lr/ui/`, the page logs in, lists the live
/// stream and plays an HLS recording, and every request it makes stays under the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_behind_a_proxy_under_a_path_prefix() {
    let d = blocking(|| {
        Daemon::start_api(
            &format!("token = \"{TOKEN}\""),
            &template("hls = { enable = true, record_interval = 600, segment_duration = 2 }\n"),
        )
    });
    // A finished HLS recording to play, and a live stream.
    blocking(|| push_file(&d, "old"));
    let old = blocking(|| wait_recordings(&d, Some(TOKEN), "stream=old&format=hls")).remove(0);
    let old_key = old["key"].as_str().expect("key").to_string();
    let _push = push_live(&d, "cam");
    blocking(|| wait_stream(&d, Some(TOKEN), "cam", |_| true));
    let proxy = start_proxy(d.api).await;
    let b = Browser::start().await;
    let c = b.c();
    let origin = format!("http://localhost:{}", proxy.addr.port());
    open_and_log_in(c, &format!("{origin}/lr/ui"), TOKEN).await;
    assert_eq!(
        c.current_url().await.expect("url").as_str(),
        format!("{origin}/lr/ui/")
    );
    wait_for(
        c,
        "the live stream through the proxy",
        &live_check("localhost/live/cam", "resolution", "t === '640x360'"),
        Duration::from_secs(20),
    )
    .await;
    // The HLS recording plays through the proxy: the file URL is under the prefix, and
    // hls.js fetches the playlist and its segments there with the token.
    click(c, "#nav a[data-view=\"recordings\"]").await;
    let row = format!("#rec-table tr[data-key=\"{old_key}\"]");
    let url = wait_for(
        c,
        "the HLS recording through the proxy",
        &format!(
            "const i = document.querySelector('{row} input[data-url=\"file\"]'); return i && i.value;"
        ),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(url, json!(format!("{origin}/lr/v1/files/{old_key}")));
    click(c, &format!("{row} button[data-action=\"play\"]")).await;
    assert_plays_past(c, 1.0).await;
    let seen = proxy.seen.lock().expect("seen").clone();
    assert!(
        seen.iter()
            .any(|(_, p, bearer)| *p == format!("/lr/v1/files/{old_key}") && *bearer),
        "the playlist through the proxy with the token: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(_, p, bearer)| p.starts_with("/lr/v1/files/") && p.ends_with(".ts") && *bearer),
        "segments through the proxy with the token: {seen:?}"
    );
    let strays: Vec<_> = seen
        .iter()
        .filter(|(_, p, _)| !p.starts_with("/lr/"))
        .collect();
    assert!(strays.is_empty(), "requests outside the prefix: {strays:?}");
    for want in [
        "/lr/ui/app.js",
        "/lr/ui/style.css",
        "/lr/ui/vendor/hls.js/hls.light.min.js",
    ] {
        assert!(
            seen.iter().any(|(_, p, _)| p == want),
            "{want} not loaded: {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .any(|(m, p, bearer)| m == "GET" && p == "/lr/v1/streams" && *bearer),
        "the stream list with the token through the proxy: {seen:?}"
    );
    b.close().await;
}
