//! Issue 14, RTMPS ingest: `ffmpeg` pushes `rtmps://` with a certificate made in the test
//! (rcgen) and every frame is recorded; a plain-RTMP client on the TLS port is refused
//! cleanly; a renewed certificate is taken on reload; a bad certificate file is a config
//! error with its line.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Daemon;
use testkit::{require_tool, PublishOptions};

/// A self-signed certificate for 127.0.0.1/localhost, as PEM files in `dir`.
fn certificate(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
    (cert, key)
}

fn rtmps_toml(cert: &Path, key: &Path) -> String {
    format!(
        "[rtmps]\nlisten = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {key:?}\n[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = {{ enable = true, record_interval = 600 }}\n"
    )
}

fn ffmpeg_push(url: &str) -> std::process::Output {
    let ffmpeg = require_tool("ffmpeg");
    std::process::Command::new(&ffmpeg)
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
        .arg(testkit::fixture("avc_aac_2s.flv"))
        .args(["-c", "copy", "-f", "flv"])
        .arg(url)
        .output()
        .expect("run ffmpeg")
}

/// A TLS handshake with `addr` by a client that trusts only `cert_pem` (a self-signed
/// certificate is its own trust anchor): Ok exactly when the listener serves that one.
async fn handshake_trusting(addr: std::net::SocketAddr, cert_pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    connector
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn ffmpeg_pushes_rtmps_and_every_frame_is_recorded() {
    require_tool("ffprobe");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = certificate(dir.path(), "a");
    let d = Daemon::start(&rtmps_toml(&cert, &key));
    let tls = d.rtmps.expect("the ready line names the RTMPS address");
    let out = ffmpeg_push(&format!("rtmps://{tls}/live/secure"));
    assert!(
        out.status.success(),
        "ffmpeg over TLS: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let files = d.wait_files(
        "localhost",
        "live",
        "secure",
        "flv",
        1,
        Duration::from_secs(20),
    );
    common::assert_follows_input(&files, &testkit::fixture("avc_aac_2s.flv"), true, 45.0);

    // Plain RTMP on the TLS port: refused cleanly (an error for the client, nothing
    // recorded, the daemon fine), and plain RTMP on its own port still works.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tags = std::sync::Arc::new(testkit::fixture_tags("avc_only.flv"));
    let plain_on_tls = {
        let tags = tags.clone();
        let url = format!("rtmp://{tls}/live/plain");
        rt.block_on(async move {
            let opts = PublishOptions {
                timeout: Duration::from_secs(5),
                ..PublishOptions::default()
            };
            testkit::publish_flv(&url, &tags, &opts).await
        })
    };
    assert!(plain_on_tls.is_err(), "plain RTMP accepted on the TLS port");
    assert!(!d.root().join("localhost/live/plain").exists());
    let url = d.url("live", "clear");
    rt.block_on(async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await })
        .expect("plain RTMP beside RTMPS");
    d.wait_files(
        "localhost",
        "live",
        "clear",
        "flv",
        1,
        Duration::from_secs(20),
    );
}

#[test]
fn a_renewed_certificate_is_taken_on_reload_and_a_bad_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = certificate(dir.path(), "live");
    let d = Daemon::start(&rtmps_toml(&cert, &key));
    let tls = d.rtmps.expect("rtmps");
    let old_pem = std::fs::read(&cert).expect("cert");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(handshake_trusting(tls, &old_pem))
        .expect("the first certificate is served");
    // A renewal: new files at the same paths, then a reload.
    let (new_cert, new_key) = certificate(dir.path(), "renewed");
    std::fs::copy(&new_cert, &cert).expect("renew cert");
    std::fs::copy(&new_key, &key).expect("renew key");
    let (status, body) = d.api_post("/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    let new_pem = std::fs::read(&new_cert).expect("cert");
    rt.block_on(handshake_trusting(tls, &new_pem))
        .expect("the renewed certificate is served after the reload");
    assert!(
        rt.block_on(handshake_trusting(tls, &old_pem)).is_err(),
        "the old certificate is still served"
    );
    let out = ffmpeg_push(&format!("rtmps://{tls}/live/afterreload"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_files(
        "localhost",
        "live",
        "afterreload",
        "flv",
        1,
        Duration::from_secs(20),
    );
    // A broken certificate file: the reload is refused, naming the file, and the running
    // certificate keeps serving.
    std::fs::write(&cert, "not a certificate\n").expect("break cert");
    let (status, body) = d.api_post("/v1/reload", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("rtmps.cert"), "{body}");
    rt.block_on(handshake_trusting(tls, &new_pem))
        .expect("the running certificate still serves");
    let out = ffmpeg_push(&format!("rtmps://{tls}/live/stillserving"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_files(
        "localhost",
        "live",
        "stillserving",
        "flv",
        1,
        Duration::from_secs(20),
    );
}
