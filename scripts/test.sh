#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, then runs every
# test of the workspace. Tests that need ffmpeg/ffprobe fail loudly without them; this
# script makes sure they are there instead of skipping anything.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffprobe >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1; then
  echo "ffmpeg/ffprobe missing: installing (apt-get install -y ffmpeg)" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi
command -v ffprobe >/dev/null 2>&1 || { echo "ffprobe still not found after install" >&2; exit 1; }

cargo test --workspace --all-targets "$@"
