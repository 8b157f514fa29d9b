#!/usr/bin/env bash
# Start/stop a liverec instance for the shared peer benchmark (../shared/bench/run-matrix.sh),
# with the same interface as ../shared/bench/nginx-ctl.sh:
#   liverec-ctl.sh start MODE [WORKERS] [PORT] [WORKDIR]   -> prints the daemon's PID
#   liverec-ctl.sh stop  [WORKDIR]                          -> SIGTERM (finalizes files), waits
#   liverec-ctl.sh kill9 [WORKDIR]                          -> SIGKILL, by PID
# MODE: flv | hls | both (as nginx-ctl.sh) | all (FLV + HLS + fMP4 + AAC, each with
# the FLV interval for MP4/AAC).  WORKERS is accepted for interface
# compatibility and ignored (liverec is one process; `[runtime] worker_threads`, by
# default one runtime worker per two cores, set it through EXTRA_TOML).
# Env: LIVEREC (binary; default <repo>/target/release/liverec, built with
#      `cargo build --release` if missing, into $CARGO_TARGET_DIR when that is set),
#      RECORD_INTERVAL (FLV record_interval in seconds, default 10),
#      HLS_FRAGMENT (HLS segment_duration in seconds, default 4, like nginx-ctl.sh);
#      an HLS recording is one playlist per push (record_interval 86400, as nginx's
#      hls_playlist_length 24h),
#      DIRECT_IO (`[spool] direct_io`: auto | on | off; unset = the daemon's default,
#      and a build older than the key runs too),
#      LOG_LEVEL (default info), STOP_TIMEOUT (seconds to wait after SIGTERM, default 60),
#      EXTRA_TOML (a file appended to the generated config, e.g. one holding
#      `[ingest]` / `ring_seconds = 1.0`, for experiments; leave unset for comparisons).
# Recordings land in WORKDIR/out/{domain}/{app}/{stream}/ (*.flv, *.m3u8 + *.ts), open files in
# WORKDIR/spool, logs in WORKDIR/logs/{stdout,stderr}.log. Only the PID this script
# started is ever signalled.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
cmd="${1:?start|stop|kill9}"; shift

alive() { # running and not a zombie waiting for its (re)parent to reap it
  local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

default_bin() {
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then echo "$CARGO_TARGET_DIR/release/liverec"
  else echo "$REPO/target/release/liverec"; fi
}

case "$cmd" in
start)
  MODE="${1:?mode}"; WORKERS="${2:-1}"; PORT="${3:-19360}"; WORKDIR="${4:-/tmp/peer-bench/liverec-$PORT}"
  FLV=false; HLS=false; MP4=false; AAC=false
  case "$MODE" in
    flv) FLV=true;;
    hls) HLS=true;;
    both) FLV=true; HLS=true;;
    all) FLV=true; HLS=true; MP4=true; AAC=true;;
    *) echo "liverec-ctl.sh: bad mode '$MODE' (flv | hls | both | all)" >&2; exit 2;;
  esac
  : "$WORKERS"  # ignored, see above
  LIVEREC="${LIVEREC:-$(default_bin)}"
  if [ ! -x "$LIVEREC" ]; then
    echo "liverec-ctl.sh: $LIVEREC missing, building it (cargo build --release)" >&2
    (cd "$REPO" && cargo build --release --bin liverec >&2)
    [ -x "$LIVEREC" ] || { echo "liverec-ctl.sh: build did not produce $LIVEREC" >&2; exit 1; }
  fi
  mkdir -p "$WORKDIR/logs" "$WORKDIR/out" "$WORKDIR/spool"
  cat > "$WORKDIR/liverec.toml" <<EOF
# written by benches/liverec-ctl.sh (peer benchmark, mode $MODE)
[rtmp]
listen = "127.0.0.1:$PORT"

[api]
listen = "127.0.0.1:0"

[storage]
kind = "local"
root = "$WORKDIR/out"

[spool]
dir = "$WORKDIR/spool"
${DIRECT_IO:+direct_io = \"$DIRECT_IO\"}

[record]
default_template = 1

[log]
format = "text"
level = "${LOG_LEVEL:-info}"

[[template]]
id = 1
name = "bench-$MODE"
flv = { enable = $FLV, record_interval = ${RECORD_INTERVAL:-10} }
hls = { enable = $HLS, record_interval = 86400, segment_duration = ${HLS_FRAGMENT:-4} }
mp4 = { enable = $MP4, record_interval = ${RECORD_INTERVAL:-10} }
aac = { enable = $AAC, record_interval = ${RECORD_INTERVAL:-10} }
EOF
  if [ -n "${EXTRA_TOML:-}" ]; then { echo; cat "$EXTRA_TOML"; } >> "$WORKDIR/liverec.toml"; fi
  "$LIVEREC" check-config "$WORKDIR/liverec.toml" >"$WORKDIR/logs/check-config.txt" 2>&1 || {
    echo "liverec-ctl.sh: invalid config:" >&2; cat "$WORKDIR/logs/check-config.txt" >&2; exit 1; }
  NO_COLOR=1 "$LIVEREC" run -c "$WORKDIR/liverec.toml" \
      >"$WORKDIR/logs/stdout.log" 2>"$WORKDIR/logs/stderr.log" </dev/null &
  PID=$!
  echo "$PID" > "$WORKDIR/liverec.pid"
  ok=0
  for _ in $(seq 200); do   # wait for the ready line and for OUR process to listen on the port
    if grep -q '^liverec ready ' "$WORKDIR/logs/stdout.log" 2>/dev/null &&
       ss -ltnpH "sport = :$PORT" 2>/dev/null | grep -q "pid=$PID,"; then ok=1; break; fi
    alive "$PID" || break
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    echo "liverec failed to listen on 127.0.0.1:$PORT (port taken?):" >&2
    tail -5 "$WORKDIR/logs/stderr.log" >&2 || true
    kill -TERM "$PID" 2>/dev/null || true
    exit 1
  fi
  echo "$PID"
  ;;
stop|kill9)
  WORKDIR="${1:-/tmp/peer-bench/liverec-19360}"
  PID=$(cat "$WORKDIR/liverec.pid")
  if [ "$cmd" = kill9 ]; then
    kill -KILL "$PID" 2>/dev/null || true
    for _ in $(seq 50); do alive "$PID" || break; sleep 0.1; done
    exit 0
  fi
  kill -TERM "$PID" 2>/dev/null || true
  t=$(( ${STOP_TIMEOUT:-60} * 10 ))
  for _ in $(seq "$t"); do alive "$PID" || break; sleep 0.1; done
  if alive "$PID"; then
    echo "liverec-ctl.sh: PID $PID still running ${STOP_TIMEOUT:-60} s after SIGTERM, sending SIGKILL" >&2
    kill -KILL "$PID" 2>/dev/null || true
    exit 1
  fi
  ;;
*) echo "usage: $0 start MODE [WORKERS] [PORT] [WORKDIR] | stop [WORKDIR] | kill9 [WORKDIR]" >&2; exit 2;;
esac
