//! systemd integration (R-OP-2): the notify protocol spoken to a real `NOTIFY_SOCKET`
//! (readiness, watchdog, reload, stop), and the shipped unit file checked by systemd's own
//! `systemd-analyze` (valid, and hardened).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn systemd_analyze() -> &'static str {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "systemd-analyze is required (scripts/test.sh installs the systemd package)"
    );
    "systemd-analyze"
}

/// The unit file with ExecStart pointing at the binary under test.
fn unit_under_test(dir: &std::path::Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/liverec.service"))
            .expect("dist/liverec.service");
    let path = dir.join("liverec.service");
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/liverec", env!("CARGO_BIN_EXE_liverec")),
    )
    .expect("write unit");
    path
}

#[test]
fn the_unit_file_is_valid_and_hardened() {
    let tool = systemd_analyze();
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_under_test(dir.path());
    let out = Command::new(tool)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(tool)
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for liverec.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    // systemd rates 0–10; below 2 is "OK" (4+ is "MEDIUM", 9.6 an unhardened service).
    assert!(level < 2.0, "exposure {level}:\n{text}");
    let unit_text = std::fs::read_to_string(&unit).expect("unit");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
    ] {
        assert!(unit_text.contains(line), "unit lacks {line}");
    }
    // Shutdown may take 30 s (recordings) + 30 s (uploads) + 5 s (catalog): systemd must
    // wait longer before it SIGKILLs.
    let stop: u64 = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(stop > 65, "TimeoutStopSec={stop}");
}

/// Datagrams received on the notify socket until `until` matches one (or the timeout).
fn recv_until(sock: &UnixDatagram, got: &mut Vec<String>, until: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !got.last().is_some_and(|m| m.lines().any(|l| l == until)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {until:?} within {timeout:?}; got {got:?}"
        );
        sock.set_read_timeout(Some(left)).expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

/// The daemon under test, killed if the test fails before it stops it.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn notify_readiness_watchdog_reload_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let cfg = dir.path().join("liverec.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rtmp]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[storage]\nroot = \"{0}/rec\"\n[spool]\ndir = \"{0}/spool\"\n",
            dir.path().display()
        ),
    )
    .expect("config");
    // WATCHDOG_PID must be the daemon's own PID, as systemd sets it: `exec` keeps the
    // shell's PID.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "WATCHDOG_PID=$$ exec '{}' run -c '{}'",
            env!("CARGO_BIN_EXE_liverec"),
            cfg.display()
        ))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn liverec");
    let mut child = Guard(child);
    let mut got = Vec::new();
    recv_until(&sock, &mut got, "READY=1", Duration::from_secs(20));
    // Ready means ready: the RTMP listener accepts by now.
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let rtmp = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rtmp="))
        .unwrap_or_else(|| panic!("no rtmp= in {line:?}"));
    std::net::TcpStream::connect(rtmp).expect("RTMP listener open at READY=1");
    assert!(got[0].contains("STATUS="), "{got:?}");
    // Watchdog pings at half of WATCHDOG_USEC (0.4 s): several within a second.
    let before = got.len();
    std::thread::sleep(Duration::from_millis(1000));
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    sock.set_nonblocking(false).expect("blocking");
    let pings = got[before..]
        .iter()
        .filter(|m| m.trim() == "WATCHDOG=1")
        .count();
    assert!((3..=7).contains(&pings), "{pings} pings in 1 s: {got:?}");
    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    let pid = child.0.id().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status();
        assert!(st.expect("kill").success(), "kill {sig} {pid}");
    };
    signal("-HUP");
    recv_until(&sock, &mut got, "READY=1", Duration::from_secs(10));
    let reload = got
        .iter()
        .find(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1: {got:?}"));
    assert!(reload.contains("MONOTONIC_USEC="), "{reload}");
    // SIGTERM: STOPPING=1, then a clean exit.
    signal("-TERM");
    recv_until(&sock, &mut got, "STOPPING=1", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            assert_eq!(st.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
