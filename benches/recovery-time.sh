#!/usr/bin/env bash
# Recovery time after kill -9 (issue 11): N real-time HD streams are recorded with the
# given mode (liverec-ctl.sh: flv | both | all), the daemon is killed with SIGKILL after
# PUSH_S seconds with every file open, and restarted on the same spool; the time from
# the restart to the ready line (recovery runs before the listeners open) is printed
# with what recovery did, and the recordings are checked: no spool file left, one
# finished file per stream and format.
#   benches/recovery-time.sh MODE [N] [PUSH_S]
# Env: LIVEREC (release binary), FIXTURE (default /tmp/peer-bench/fixtures/hd.flv),
#      WORKDIR (default /tmp/recovery-bench), PORT (default 19371).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MODE="${1:?mode}"; N="${2:-100}"; PUSH_S="${3:-20}"
FIXTURE="${FIXTURE:-/tmp/peer-bench/fixtures/hd.flv}"
WORKDIR="${WORKDIR:-/tmp/recovery-bench}"; PORT="${PORT:-19371}"
export RECORD_INTERVAL=600
rm -rf "$WORKDIR"; mkdir -p "$WORKDIR"
"$HERE/liverec-ctl.sh" start "$MODE" 1 "$PORT" "$WORKDIR" >/dev/null
python3 "$HERE/../../shared/bench/rtmp_pub.py" --url "rtmp://127.0.0.1:$PORT/live" \
  --fixture "$FIXTURE" -n "$N" --duration $((PUSH_S + 30)) >"$WORKDIR/pub.json" 2>"$WORKDIR/pub.err" &
PUB=$!
sleep "$PUSH_S"
"$HERE/liverec-ctl.sh" kill9 "$WORKDIR"
kill "$PUB" 2>/dev/null || true; wait "$PUB" 2>/dev/null || true
open_files=$(find "$WORKDIR/spool" -name '*.part' | wc -l)
spool_mb=$(du -sm "$WORKDIR/spool" | cut -f1)
# Cold cache: recovery reads every open file back from the disk, not the page cache.
sync
if [ "$(id -u)" = 0 ]; then echo 3 > /proc/sys/vm/drop_caches
else echo 3 | sudo -n tee /proc/sys/vm/drop_caches >/dev/null 2>&1 || echo "(page cache not dropped: not root)" >&2; fi
t0=$(date +%s.%N)
"$HERE/liverec-ctl.sh" start "$MODE" 1 "$PORT" "$WORKDIR" >/dev/null
t1=$(date +%s.%N)
left=$(find "$WORKDIR/spool" -name '*.part' -o -name '*.up' -o -name '*.m3u8.json' | wc -l)
recovered=$(grep -o 'recovered unfinished files from the spool.*' "$WORKDIR/logs/stderr.log" | head -1 || true)
"$HERE/liverec-ctl.sh" stop "$WORKDIR"
files=$(find "$WORKDIR/out" -type f \( -name '*.flv' -o -name '*.mp4' -o -name '*.aac' -o -name '*.m3u8' \) | wc -l)
python3 - "$MODE" "$N" "$open_files" "$spool_mb" "$t0" "$t1" "$left" "$files" "$recovered" <<'PY'
import json, sys
mode, n, open_files, spool_mb, t0, t1, left, files, rec = sys.argv[1:]
print(json.dumps({"mode": mode, "streams": int(n), "open_files_at_kill": int(open_files),
                  "spool_mb": int(spool_mb), "restart_to_ready_s": round(float(t1) - float(t0), 2),
                  "spool_files_left": int(left), "finished_files": int(files), "log": rec}))
PY
