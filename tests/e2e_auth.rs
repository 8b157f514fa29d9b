//! Issue 14, R-SEC-1: publish authentication. Signed push URLs (checked with an md5
//! that is not the daemon's: the `md5` crate through testkit), static stream keys from
//! the config and from a key file re-read on reload, and the `on_publish` hook against a
//! real HTTP server (allow, deny, timeout, down; fail closed and fail open). A refused
//! publisher leaves nothing on disk, its secret is in no log line, and other streams
//! record untouched.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{now_s, rt, Daemon};
use testkit::webhook::{md5_hex, Answer, Receiver};
use testkit::PublishError;
use testkit::PublishOptions;

const KEY1: &str = "tx-key-one";
const KEY2: &str = "tx-key-two";
const STREAM_KEY: &str = "s3cr3t-stream-key";

/// `?txSecret=md5(key + stream + txTime)&txTime=HEX` expiring at `expiry`.
fn signed(key: &str, stream: &str, expiry: u64) -> String {
    let tx_time = format!("{expiry:X}");
    format!(
        "{stream}?txSecret={}&txTime={tx_time}",
        md5_hex(&format!("{key}{stream}{tx_time}"))
    )
}

/// Publishes `fixture` to `live/{stream_and_query}`: Ok, or the code it was refused with.
fn push(d: &Daemon, stream_and_query: &str, fixture: &str) -> Result<(), String> {
    let url = d.url("live", stream_and_query);
    let tags = Arc::new(testkit::fixture_tags(fixture));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match rt.block_on(
        async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await },
    ) {
        Ok(_) => Ok(()),
        Err(PublishError::Rejected { code, .. }) => Err(code),
        Err(e) => Err(format!("not a refusal: {e}")),
    }
}

fn metric(d: &Daemon, line: &str) -> bool {
    d.api_get("/metrics").1.lines().any(|l| l == line)
}

/// The FLV files of `live/{stream}`, once its file is finalized (pushes return first).
fn recorded(d: &Daemon, stream: &str) -> usize {
    d.wait_files(
        "localhost",
        "live",
        stream,
        "flv",
        1,
        Duration::from_secs(20),
    )
    .len()
}

/// Nothing of `stream` under the root or the spool.
fn nothing_of(d: &Daemon, stream: &str) {
    for base in [d.root(), d.spool()] {
        let hits: Vec<_> = common::walk(&base)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(stream))
            .collect();
        assert!(hits.is_empty(), "refused {stream} left {hits:?}");
    }
}

const FLV: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 600 }\n";

#[test]
fn signed_urls_and_stream_keys_allow_and_everything_else_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, "# operators' keys\nfile-key-1\n").expect("keys file");
    let d = Daemon::start(&format!(
        "[[publish_auth]]\ndomain = \"localhost\"\ntx_secret_keys = [\"{KEY1}\", \"{KEY2}\"]\nstream_keys = [\"{STREAM_KEY}\"]\nstream_keys_file = {keys_file:?}\n{FLV}"
    ));
    let later = now_s() + 600;
    // Either key of the rotation, and the static keys.
    push(&d, &signed(KEY1, "tx1", later), "avc_only.flv").expect("txSecret with key 1");
    push(&d, &signed(KEY2, "tx2", later), "avc_only.flv").expect("txSecret with key 2");
    push(&d, &format!("sk?key={STREAM_KEY}"), "avc_only.flv").expect("stream key");
    push(&d, "fk?key=file-key-1", "avc_only.flv").expect("key from the file");
    // The query may ride on the app (`rtmp://h/live?txSecret=…/stream`), where the
    // tcUrl carries it too.
    let on_app = signed(KEY1, "onapp", later);
    let (_, q) = on_app.split_once('?').expect("query");
    let url = format!("rtmp://{}/live?{q}/onapp", d.rtmp);
    let tags = Arc::new(testkit::fixture_tags("avc_only.flv"));
    rt().block_on(
        async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await },
    )
    .expect("txSecret on the app");
    for s in ["tx1", "tx2", "sk", "fk", "onapp"] {
        assert_eq!(recorded(&d, s), 1, "{s} recorded");
    }
    // Refused: no credentials, a wrong key, a signature for another stream, an expired
    // one, a forged one.
    let wrong = [
        ("none", "none".to_string(), "auth_missing"),
        ("badkey", "badkey?key=guess".to_string(), "auth_wrong"),
        (
            "otherstream",
            signed(KEY1, "tx1", later).replacen("tx1", "otherstream", 1),
            "auth_wrong",
        ),
        (
            "expired",
            signed(KEY1, "expired", now_s() - 10),
            "auth_expired",
        ),
        ("forged", signed("not-a-key", "forged", later), "auth_wrong"),
    ];
    for (stream, q, _) in &wrong {
        assert_eq!(
            push(&d, q, "avc_only.flv"),
            Err("NetStream.Publish.Rejected".to_string()),
            "{q}"
        );
        nothing_of(&d, stream);
    }
    assert!(metric(
        &d,
        "liverec_publish_auth_refused_total{reason=\"auth_missing\"} 1"
    ));
    assert!(metric(
        &d,
        "liverec_publish_auth_refused_total{reason=\"auth_wrong\"} 3"
    ));
    assert!(metric(
        &d,
        "liverec_publish_auth_refused_total{reason=\"auth_expired\"} 1"
    ));
    // No secret in any log line, for accepted and refused pushes alike.
    let log = d.log();
    for secret in [STREAM_KEY, "guess", "file-key-1", KEY1, KEY2] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
    for q in wrong.iter().map(|w| w.1.as_str()).chain([on_app.as_str()]) {
        if let Some((_, sig)) = q.split_once("txSecret=") {
            let sig = sig.split('&').next().unwrap_or("");
            assert!(!log.contains(sig), "a txSecret logged:\n{log}");
        }
    }
    // The key file is re-read on reload: a new key works, a removed one no longer does.
    std::fs::write(&keys_file, "file-key-2\n").expect("keys file");
    let (status, body) = d.api_post("/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    push(&d, "fk2?key=file-key-2", "avc_only.flv").expect("new key after reload");
    assert_eq!(
        push(&d, "fk3?key=file-key-1", "avc_only.flv"),
        Err("NetStream.Publish.Rejected".to_string())
    );
}

#[test]
fn auth_is_per_domain_and_app_and_other_streams_record_untouched() {
    // Only app `secure` needs a key; `live` stays open.
    let d = Daemon::start(&format!(
        "[[publish_auth]]\ndomain = \"localhost\"\napp = \"secure\"\nstream_keys = [\"{STREAM_KEY}\"]\n{FLV}"
    ));
    // A real-time publisher on the open app records throughout the refusals.
    let url = d.url("live", "steady");
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let rt = rt();
    let steady = rt.spawn(async move {
        let opts = PublishOptions {
            realtime: true,
            duration: Some(Duration::from_secs(4)),
            ..PublishOptions::default()
        };
        testkit::publish_flv(&url, &tags, &opts).await
    });
    std::thread::sleep(Duration::from_millis(500));
    let secure = |q: &str| {
        let url = format!("rtmp://{}/secure/{q}", d.rtmp);
        let tags = Arc::new(testkit::fixture_tags("avc_only.flv"));
        rt.block_on(
            async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await },
        )
    };
    for _ in 0..5 {
        assert!(matches!(
            secure("cam?key=nope"),
            Err(PublishError::Rejected { .. })
        ));
    }
    secure(&format!("ok?key={STREAM_KEY}")).expect("the key opens app secure");
    let stats = rt.block_on(steady).expect("join").expect("steady publish");
    let files = d.wait_files(
        "localhost",
        "live",
        "steady",
        "flv",
        1,
        Duration::from_secs(20),
    );
    // Every media message the steady publisher sent is a frame of its file (the
    // sequence headers are two of them).
    let got = testkit::flv_summary(&files[0]);
    assert_eq!(
        (got.video_frames + got.audio_frames + 2) as u64,
        stats.media_messages,
        "{got:?}"
    );
    nothing_of(&d, "cam");
    assert_eq!(
        d.wait_files(
            "localhost",
            "secure",
            "ok",
            "flv",
            1,
            Duration::from_secs(20)
        )
        .len(),
        1
    );
}

#[test]
fn the_on_publish_hook_allows_denies_and_fails_closed_or_open() {
    let rt = rt();
    let hook = rt.block_on(Receiver::start()).expect("hook server");
    let d = Daemon::start(&format!(
        "[[publish_auth]]\ndomain = \"localhost\"\non_publish = \"{}\"\non_publish_timeout = 1\non_unpublish = \"{}\"\n{FLV}",
        hook.url(),
        hook.url()
    ));
    // 2xx allows; the hook sees who publishes what, with the query as sent.
    push(&d, "allowed?token=t0k&x=1", "avc_only.flv").expect("hook allows");
    let seen = rt.block_on(hook.wait_for(
        "on_publish and on_unpublish",
        Duration::from_secs(10),
        |r| r.len() >= 2,
    ));
    let publish = seen[0].json().expect("json");
    assert_eq!(publish["action"], "on_publish");
    assert_eq!(publish["domain"], "localhost");
    assert_eq!(publish["app"], "live");
    assert_eq!(publish["stream"], "allowed");
    assert_eq!(publish["client_ip"], "127.0.0.1");
    assert_eq!(publish["query"], "token=t0k&x=1");
    assert_eq!(publish["params"]["token"], "t0k");
    assert_eq!(seen[1].json().expect("json")["action"], "on_unpublish");
    assert_eq!(recorded(&d, "allowed"), 1);
    // Anything else refuses.
    hook.script([Answer::Status(403)]);
    assert_eq!(
        push(&d, "denied", "avc_only.flv"),
        Err("NetStream.Publish.Rejected".into())
    );
    // No answer within on_publish_timeout: fail closed.
    hook.script([Answer::Hang]);
    let t = std::time::Instant::now();
    assert_eq!(
        push(&d, "slowhook", "avc_only.flv"),
        Err("NetStream.Publish.Rejected".into())
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The hook down: fail closed.
    let addr = hook.addr();
    rt.block_on(hook.stop());
    assert_eq!(
        push(&d, "downhook", "avc_only.flv"),
        Err("NetStream.Publish.Rejected".into())
    );
    for s in ["denied", "slowhook", "downhook"] {
        nothing_of(&d, s);
    }
    assert!(metric(
        &d,
        "liverec_publish_auth_refused_total{reason=\"hook_denied\"} 1"
    ));
    assert!(metric(
        &d,
        "liverec_publish_auth_refused_total{reason=\"hook_unreachable\"} 2"
    ));
    assert!(!d.log().contains("t0k"), "the hook's query secret logged");

    // fail_open: the same outage allows.
    let d2 = Daemon::start(&format!(
        "[[publish_auth]]\ndomain = \"localhost\"\non_publish = \"http://{addr}/hook\"\non_publish_timeout = 1\non_publish_fail_open = true\n{FLV}"
    ));
    push(&d2, "openfail", "avc_only.flv").expect("fail open allows");
    assert_eq!(recorded(&d2, "openfail"), 1);
    assert!(
        d2.log().contains("allowed by on_publish_fail_open"),
        "{}",
        d2.log()
    );
}
