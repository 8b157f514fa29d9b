#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, then runs every
# test of the workspace. Tests that need ffmpeg/ffprobe fail loudly without them; this
# script makes sure they are there instead of skipping anything.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers the end-to-end tests push with and probe with: ffmpeg/ffprobe, and
# GStreamer's rtmp2sink (a third RTMP client implementation, R-IN-1).
pkgs=()
command -v ffprobe >/dev/null 2>&1 && command -v ffmpeg >/dev/null 2>&1 || pkgs+=(ffmpeg)
if ! command -v gst-launch-1.0 >/dev/null 2>&1 || ! gst-inspect-1.0 rtmp2sink >/dev/null 2>&1 \
   || ! gst-inspect-1.0 flvmux >/dev/null 2>&1 || ! gst-inspect-1.0 h264parse >/dev/null 2>&1; then
  pkgs+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
fi
# systemd-analyze checks the shipped unit file (R-OP-2).
command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
# The console's browser tests (tests/e2e_console.rs) drive headless Chromium through
# chromedriver (Debian's packages; the driver matches the browser's version).
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || pkgs+=(chromium-driver)
# fincore (util-linux) tells the direct-I/O test which file pages the page cache holds.
command -v fincore >/dev/null 2>&1 || pkgs+=(util-linux-extra)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "installing test tools: ${pkgs[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
for tool in ffmpeg ffprobe gst-launch-1.0 systemd-analyze chromium chromedriver fincore; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool still not found after install" >&2; exit 1; }
done

# `failpoints`: the crash-step tests (tests/e2e_crash_steps.rs) abort the daemon at named
# steps; a release build has no such hook.
cargo test --workspace --all-targets --features liverec/failpoints "$@"

# Fuzz smoke (issue 14): every fuzz target for 10 s on its committed corpus, after the
# tests. Needs the nightly toolchain; without it this says why and skips. cargo-fuzz is
# installed like the tools above when nightly is there. Costs 10 s × 10 targets plus the
# fuzz crates' build (about 2 min cold on 2 cores, seconds when warm) and, once, the
# cargo-fuzz install (1–2 min): about 2 min warm, 4–5 min on a fresh machine. The long
# runs are `scripts/fuzz.sh 600`.
if cargo +nightly --version >/dev/null 2>&1; then
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing test tools: cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
  fi
  scripts/fuzz.sh --optional 10
else
  echo "fuzz smoke skipped: the nightly toolchain is not installed (rustup toolchain install nightly)" >&2
fi
