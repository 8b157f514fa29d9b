//! The command line (R-OP-1), graceful shutdown on SIGTERM (R-OP-2) and the HTTP API's
//! `/healthz` and `/v1/streams` (R-OP-3), against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use testkit::{ffprobe_errors, flv_summary, media_duration, probe_packets, require_tool};

fn liverec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_liverec"))
        .args(args)
        .output()
        .expect("run liverec")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_config(path: &Path) -> Output {
    liverec(&["check-config", path.to_str().expect("utf-8 path")])
}

#[test]
fn check_config_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let out = check_config(&example);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn check_config_names_file_and_line_of_each_error() {
    let dir = tempfile::tempdir().unwrap();

    // An unknown key on line 3.
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[rtmp]\nlisten = \"127.0.0.1:1935\"\nlisen = 3\n").unwrap();
    let out = check_config(&unknown);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains(&format!("{}:3:", unknown.display())),
        "stderr does not name {}:3: {err}",
        unknown.display()
    );
    assert!(err.contains("lisen"), "stderr does not name the key: {err}");

    // A valid key with an invalid value: a public API address without a token (line 2).
    let no_token = dir.path().join("no_token.toml");
    std::fs::write(&no_token, "[api]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
    let out = check_config(&no_token);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains(&format!("{}:2:", no_token.display())),
        "stderr does not name {}:2: {err}",
        no_token.display()
    );
    assert!(err.contains("token"), "stderr does not say why: {err}");

    // Several errors: each one is reported with its own line.
    let several = dir.path().join("several.toml");
    std::fs::write(
        &several,
        "[rtmp]\nmax_message_bytes = 1\nidle_timeout = 0\n[record]\nhard_cap_factor = 0.5\n",
    )
    .unwrap();
    let out = check_config(&several);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for line in [2, 3, 5] {
        assert!(
            err.contains(&format!("{}:{line}:", several.display())),
            "no error for line {line}: {err}"
        );
    }

    // A missing file.
    let missing = dir.path().join("does-not-exist.toml");
    let out = check_config(&missing);
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "stderr: {err}");
    assert!(out.status.code().is_some(), "killed by a signal: {err}");
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("cannot read"),
        "unclear message for a missing file: {err}"
    );

    // `run` refuses the same bad config before binding anything.
    let out = liverec(&["run", "-c", unknown.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("{}:3:", unknown.display())));
    // R-OP-4: a public API address without a token is refused by `run` too.
    let out = liverec(&["run", "-c", no_token.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("api.token must be set"));
}

#[test]
fn version_prints_the_version() {
    let want = env!("CARGO_PKG_VERSION");
    for args in [&["version"][..], &["--version"][..]] {
        let out = liverec(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = text(&out.stdout);
        assert!(
            stdout.trim() == format!("liverec {want}"),
            "{args:?} printed {stdout:?}"
        );
    }
}

/// A plain HTTP/1.1 GET: `(status, body)`.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the API response");
    let raw = text(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

/// Kills the child by its PID when dropped (an ffmpeg push must not outlive the test).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real ffmpeg push; after ~5 s the daemon gets SIGTERM. It must exit 0 with the push's
/// file finalized: nothing left in the spool, onMetaData duration patched to the media
/// duration, clean for ffprobe, starting on a keyframe. The API is checked while the push
/// is live.
#[test]
fn sigterm_finalizes_a_live_ffmpeg_push_and_exits_0() {
    let ffmpeg = require_tool("ffmpeg");
    require_tool("ffprobe");
    let mut d = Daemon::start("");
    let fixture = testkit::fixture("avc_aac_2s.flv");
    let ffmpeg_log = d.dir.path().join("ffmpeg.log");
    let push = Command::new(ffmpeg)
        .args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-re",
            "-i",
        ])
        .arg(&fixture)
        .args(["-c", "copy", "-f", "flv"])
        .arg(d.url("live", "shutdown"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&ffmpeg_log).unwrap()))
        .spawn()
        .expect("spawn ffmpeg");
    let mut push = KillOnDrop(push);
    let t0 = Instant::now();

    // /healthz
    let (status, body) = http_get(d.api, "/healthz");
    assert_eq!(status, 200, "/healthz body: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/healthz JSON");
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["uploads_pending"], 0, "{v}");
    assert!(v["spool"]["max_bytes"].as_u64() > Some(0), "{v}");

    // /v1/streams lists the push once ffmpeg is publishing.
    let listed = loop {
        let (status, body) = http_get(d.api, "/v1/streams");
        assert_eq!(status, 200, "/v1/streams body: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("/v1/streams JSON");
        let found = v["streams"].as_array().and_then(|a| {
            a.iter()
                .find(|s| {
                    s["domain"] == "localhost" && s["app"] == "live" && s["stream"] == "shutdown"
                })
                .cloned()
        });
        if let Some(s) = found {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(4) {
            panic!(
                "/v1/streams does not list live/shutdown: {body}\nffmpeg: {}\nlog:\n{}",
                std::fs::read_to_string(&ffmpeg_log).unwrap_or_default(),
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        listed["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{listed}"
    );

    std::thread::sleep(Duration::from_secs(5).saturating_sub(t0.elapsed()));
    assert!(
        push.0.try_wait().unwrap().is_none(),
        "ffmpeg ended before the SIGTERM: {}",
        std::fs::read_to_string(&ffmpeg_log).unwrap_or_default()
    );
    let code = d.stop();
    assert_eq!(code, Some(0), "exit code after SIGTERM; log:\n{}", d.log());
    drop(push);

    let parts: Vec<_> = common::walk(&d.spool())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "open files left in the spool: {parts:?}");
    let files = d.files("localhost", "live", "shutdown", "flv");
    assert_eq!(files.len(), 1, "{files:?}; log:\n{}", d.log());
    let f = &files[0];
    let s = flv_summary(f);
    assert!(
        s.read_error.is_none(),
        "{}: {:?}",
        f.display(),
        s.read_error
    );
    assert!(
        s.first_tag_is_metadata,
        "{}: no onMetaData first",
        f.display()
    );
    assert_eq!(s.first_video_is_key, Some(true), "{}", f.display());
    assert!(s.headers_first, "{}", f.display());
    assert!(
        s.video_frames >= 100,
        "{}: only {} video frames after ~5 s",
        f.display(),
        s.video_frames
    );
    let errs = ffprobe_errors(f);
    assert!(errs.is_empty(), "ffprobe on {}: {errs}", f.display());
    let media = media_duration(&probe_packets(f));
    let meta = s.duration.expect("onMetaData.duration");
    assert!(
        (meta - media).abs() <= 0.1,
        "{}: onMetaData duration {meta} s vs media duration {media} s",
        f.display()
    );
    assert!((3.5..=7.0).contains(&media), "media duration {media} s");
    assert_eq!(
        s.filesize,
        Some(s.file_size as f64),
        "{}: onMetaData filesize",
        f.display()
    );
}

/// R-CB: a `[callback]` table is checked like the rest — a URL that is not http(s), a
/// secret not in the `whsec_` + base64 form (the message never echoes it), an unknown
/// event type and a template's bad `callback_url` are errors with their lines.
#[test]
fn check_config_refuses_bad_callback_settings() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[callback]\nurl = \"ftp://x/y\"\nsecret = \"not-a-secret-value\"\nevents = [100, 7]\n[[template]]\nid = 1\ncallback_url = \"nope\"\nflv = { enable = true }\n",
    )
    .unwrap();
    let out = check_config(&bad);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for (line, what) in [
        (2, "http"),
        (3, "whsec_"),
        (4, "event type"),
        (7, "callback_url"),
    ] {
        assert!(
            err.contains(&format!("{}:{line}:", bad.display())) && err.contains(what),
            "line {line} ({what}) not reported: {err}"
        );
    }
    assert!(
        !err.contains("not-a-secret-value"),
        "the secret leaked: {err}"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[callback]\nurl = \"https://platform.example/hook\"\nkey = \"k\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
    )
    .unwrap();
    let out = check_config(&good);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// R-SEC-1: a `[[publish_auth]]` entry without a method, with a bad hook URL, or naming
/// a key file that cannot be read is an error with its line (a reload keeps the running
/// config rather than opening the door).
#[test]
fn check_config_refuses_bad_publish_auth() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[publish_auth]]\ndomain = \"localhost\"\n[[publish_auth]]\ndomain = \"other\"\non_publish = \"ftp://x\"\n[[publish_auth]]\ndomain = \"third\"\nstream_keys_file = \"/nonexistent/keys.txt\"\n",
    )
    .unwrap();
    let out = check_config(&bad);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for (line, what) in [(1, "no method"), (5, "on_publish"), (8, "keys.txt")] {
        assert!(
            err.contains(&format!("{}:{line}:", bad.display())) && err.contains(what),
            "line {line} ({what}) not reported: {err}"
        );
    }
}
