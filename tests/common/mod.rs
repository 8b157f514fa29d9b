//! Runs the real daemon binary on 127.0.0.1 with ephemeral ports and a temp directory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Option<Child>,
    pub rtmp: SocketAddr,
    pub api: SocketAddr,
    /// The RTMPS listener, when the config has `[rtmps]`.
    pub rtmps: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `liverec run` with `extra` TOML appended to a config that binds loopback
    /// ephemeral ports and keeps everything inside a temp dir.
    pub fn start(extra: &str) -> Daemon {
        Self::start_with("", extra)
    }

    pub fn url(&self, app: &str, stream: &str) -> String {
        format!("rtmp://{}/{app}/{stream}", self.rtmp)
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL (a crash): nothing gets finalized.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon did not stop within 40 s after SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Finished files under `{root}/{domain}/{app}/{stream}`, sorted by name.
    pub fn files(&self, domain: &str, app: &str, stream: &str, ext: &str) -> Vec<PathBuf> {
        list(&self.root().join(domain).join(app).join(stream), ext)
    }

    /// Waits until the stream has at least `min` finished files and no open spool file,
    /// and that has held for 500 ms.
    pub fn wait_files(
        &self,
        domain: &str,
        app: &str,
        stream: &str,
        ext: &str,
        min: usize,
        timeout: Duration,
    ) -> Vec<PathBuf> {
        let deadline = Instant::now() + timeout;
        // Settled = no open spool file and the same files for 500 ms: between an HLS
        // segment's close and the next one's open there is briefly no open file while the
        // recording goes on.
        let mut settled: Option<(Instant, Vec<PathBuf>)> = None;
        loop {
            let files = self.files(domain, app, stream, ext);
            let open = list(&self.spool().join(domain).join(app).join(stream), "part");
            if files.len() >= min && open.is_empty() {
                match &settled {
                    Some((since, seen)) if *seen == files => {
                        if since.elapsed() >= Duration::from_millis(500) {
                            return files;
                        }
                    }
                    _ => settled = Some((Instant::now(), files.clone())),
                }
            } else {
                settled = None;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {min} {ext} files of {domain}/{app}/{stream} (have {}, {} open); log:\n{}", files.len(), open.len(), self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Daemon {
    /// Like [`Daemon::start`], with `rtmp_keys` (e.g. `"idle_timeout = 1\n"`) added to the
    /// `[rtmp]` table (which `start` already opens for `listen`, so `extra` cannot repeat it).
    pub fn start_with(rtmp_keys: &str, extra: &str) -> Daemon {
        Self::start_full(rtmp_keys, None, extra)
    }

    /// Like [`Daemon::start_with`], with the whole `[storage]` table given (S3 tests);
    /// `None` = local storage under the temp dir.
    pub fn start_full(rtmp_keys: &str, storage: Option<&str>, extra: &str) -> Daemon {
        Self::start_config(rtmp_keys, "", storage, extra)
    }

    /// With `api_keys` (e.g. `token = "x"`) added to the `[api]` table.
    pub fn start_api(api_keys: &str, extra: &str) -> Daemon {
        Self::start_config("", api_keys, None, extra)
    }

    pub fn start_config(
        rtmp_keys: &str,
        api_keys: &str,
        storage: Option<&str>,
        extra: &str,
    ) -> Daemon {
        Self::start_wrapped(None, rtmp_keys, api_keys, storage, extra)
    }

    /// Like [`Daemon::start_config`], with the daemon exec'd by `sh -c "{shell}; exec
    /// liverec run …"`: `shell` sets up the process first (e.g. `ulimit -f` to make spool
    /// writes fail). A restart runs without it.
    pub fn start_under(shell: &str, extra: &str) -> Daemon {
        Self::start_wrapped(Some(shell), "", "", None, extra)
    }

    /// [`Daemon::start_under`] with the whole `[storage]` table given (S3).
    pub fn start_under_with_storage(shell: &str, storage: &str, extra: &str) -> Daemon {
        Self::start_wrapped(Some(shell), "", "", Some(storage), extra)
    }

    fn start_wrapped(
        shell: Option<&str>,
        rtmp_keys: &str,
        api_keys: &str,
        storage: Option<&str>,
        extra: &str,
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("recordings");
        let spool = dir.path().join("spool");
        let storage = match storage {
            Some(s) => s.replace("{root}", &root.display().to_string()),
            None => format!("[storage]\nroot = {root:?}\n"),
        };
        // `extra` may open `[spool]` itself (a quota test); the spool dir goes into it.
        let spool_line = format!("[spool]\ndir = {spool:?}\n");
        let (spool_table, extra) = if extra.contains("[spool]\n") {
            (String::new(), extra.replacen("[spool]\n", &spool_line, 1))
        } else {
            (spool_line, extra.to_string())
        };
        let cfg = format!(
            "[rtmp]\nlisten = \"127.0.0.1:0\"\n{rtmp_keys}\n[api]\nlisten = \"127.0.0.1:0\"\n{api_keys}\n{storage}\n{spool_table}{extra}\n"
        );
        std::fs::write(dir.path().join("config.toml"), cfg).expect("write config");
        let (child, rtmp, api, rtmps) = spawn_under(dir.path(), shell);
        Daemon {
            child: Some(child),
            rtmp,
            api,
            rtmps,
            dir,
        }
    }

    /// The config file the daemon runs with (tests rewrite it, then reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Sends a signal (e.g. "HUP") to the daemon.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Starts the daemon again on the same directory and config (after `kill9` or
    /// `stop`): what the last run left in the spool is recovered at start.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running daemon");
        let (child, rtmp, api, rtmps) = spawn(self.dir.path());
        self.child = Some(child);
        self.rtmp = rtmp;
        self.api = api;
        self.rtmps = rtmps;
    }

    /// GET on the API; returns (status, body).
    pub fn api_get(&self, path: &str) -> (u16, String) {
        self.api_request("GET", path, "")
    }

    /// POST a JSON body on the API; returns (status, body).
    pub fn api_post(&self, path: &str, body: &str) -> (u16, String) {
        self.api_request("POST", path, body)
    }

    pub fn api_request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.api_request_with(method, path, "", body)
    }

    /// `headers`: extra header lines, each ending in `\r\n`.
    pub fn api_request_with(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.api).expect("connect API");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.api,
            body.len()
        )
        .expect("write request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read response");
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

/// Spawns `liverec run -c {dir}/config.toml`, logging (appended) to `{dir}/daemon.log`,
/// and reads the bound addresses from its ready line.
type Spawned = (Child, SocketAddr, SocketAddr, Option<SocketAddr>);

fn spawn(dir: &Path) -> Spawned {
    spawn_under(dir, None)
}

fn spawn_under(dir: &Path, shell: Option<&str>) -> Spawned {
    let cfg_path = dir.join("config.toml");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .expect("log file");
    let bin = env!("CARGO_BIN_EXE_liverec");
    // `exec` keeps the PID the daemon's, so `kill`, `pid()` and `Drop` reach it.
    let mut cmd = match shell {
        Some(sh) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{sh}; exec \"$0\" \"$@\""))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args(["run", "-c"])
        .arg(&cfg_path)
        .env("RUST_LOG", "info,liverec=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn liverec");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read ready line");
    let log_text = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let field = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in ready line {line:?}; log: {}", log_text()))
            .parse()
            .expect("addr")
    };
    let rtmp = field("rtmp=");
    let api = field("api=");
    let rtmps = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rtmps="))
        .map(|a| a.parse().expect("rtmps addr"));
    (child, rtmp, api, rtmps)
}

/// Every file and directory under `dir` (recursively), as paths relative to `dir`, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    fn go(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                go(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

/// Files of one recording in recording order, for names made by a `{StreamID}-{Seq}`
/// pattern.
pub fn ordered(mut files: Vec<PathBuf>) -> Vec<PathBuf> {
    files.sort_by_key(|p| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('-').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    files
}

/// Checks that `files`, in order, continue the input's per-track packet sequence (as
/// ffprobe demuxes both): nothing skipped or repeated, each packet at the input's
/// presentation time shifted by one constant per file (±`tolerance_ms`), and — when
/// `same_bytes` — with the input's exact bytes (R-FM-5).
pub fn assert_follows_input(files: &[PathBuf], input: &Path, same_bytes: bool, tolerance_ms: f64) {
    assert_follows_packets(
        files,
        &testkit::probe_packet_hashes(input),
        same_bytes,
        tolerance_ms,
    );
}

/// [`assert_follows_input`] against packets already probed (and maybe trimmed, e.g. an
/// AAC priming packet a file cannot hold).
pub fn assert_follows_packets(
    files: &[PathBuf],
    want: &[testkit::HashedPacket],
    same_bytes: bool,
    tolerance_ms: f64,
) {
    use media::TrackKind;
    let by_kind = |k| want.iter().filter(|p| p.kind == k).collect::<Vec<_>>();
    let (want_v, want_a) = (by_kind(TrackKind::Video), by_kind(TrackKind::Audio));
    let (mut next_v, mut next_a) = (0usize, 0usize);
    for f in files {
        let mut shift = None;
        // JSON, not CSV: ffprobe's CSV splits packets that carry side data (AAC priming
        // in ffmpeg-made MP4s) over two lines.
        for p in testkit::probe_packet_hashes(f) {
            let (list, next) = match p.kind {
                TrackKind::Video => (&want_v, &mut next_v),
                TrackKind::Audio => (&want_a, &mut next_a),
            };
            let w = list.get(*next).unwrap_or_else(|| {
                panic!("{}: more {:?} packets than the input", f.display(), p.kind)
            });
            if same_bytes {
                assert_eq!(
                    p.sha256,
                    w.sha256,
                    "{}: {:?} packet {} differs from the input",
                    f.display(),
                    p.kind,
                    *next
                );
            }
            *next += 1;
            let shift = *shift.get_or_insert(w.pts_ms - p.pts_ms);
            assert!(
                (p.pts_ms + shift - w.pts_ms).abs() <= tolerance_ms,
                "{}: {:?} packet {} re-timed: {} + {shift} vs {}",
                f.display(),
                p.kind,
                *next - 1,
                p.pts_ms,
                w.pts_ms
            );
        }
    }
    assert_eq!(
        (next_v, next_a),
        (want_v.len(), want_a.len()),
        "packets over all files"
    );
}

/// Every track's DTS strictly increases (what ffmpeg's "non monotonically increasing
/// dts" complains about), and ffprobe reports no error.
pub fn assert_monotonic(f: &Path) {
    use media::TrackKind;
    let errors = testkit::ffprobe_errors(f);
    assert!(errors.is_empty(), "{}: {errors}", f.display());
    let packets = testkit::probe_packets(f);
    for kind in [TrackKind::Video, TrackKind::Audio] {
        let dts: Vec<f64> = packets
            .iter()
            .filter(|p| p.kind == kind && !p.dts_ms.is_nan())
            .map(|p| p.dts_ms)
            .collect();
        for w in dts.windows(2) {
            assert!(
                w[1] > w[0],
                "{}: {kind:?} DTS {} then {}",
                f.display(),
                w[0],
                w[1]
            );
        }
    }
}

/// How many `#EXT-X-DISCONTINUITY` tags a playlist has.
pub fn discontinuities(playlist: &Path) -> usize {
    std::fs::read_to_string(playlist)
        .expect("playlist")
        .lines()
        .filter(|l| l.trim() == "#EXT-X-DISCONTINUITY")
        .count()
}

/// A two-worker runtime for tests that run async helpers (a receiver, a publisher)
/// beside the blocking daemon API.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A counter or gauge of a `/metrics` text, by its exact series name.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Unix seconds now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
