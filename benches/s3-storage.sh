#!/usr/bin/env bash
# Storage figures for issue 4: `delay` = close->stored delays of ~460 uploads (20 streams, 30 s);
# `outage` = RSS and spool while the S3 server (testkit liverec-s3) is down 60 s of a 100 s push.
# Needs `cargo build --release --bins -p liverec -p liverec-testkit`. Only PIDs it started are signalled.
# Issue 4 measurements: close->stored delay, and RSS with S3 down 60 s while 20 streams push.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"; REPO="$(cd "$HERE/.." && pwd)"
M=${WORK:-/tmp/liverec-s3-bench}; BIN=${BIN:-$REPO/target/release}
mkdir -p $M
MODE=${1:-delay}   # delay | outage
rm -rf $M/s3 $M/spool $M/log; mkdir -p $M/s3
$BIN/liverec-s3 $M/s3 19400 > $M/s3.out 2>&1 & S3PID=$!
sleep 1
cat > $M/liverec.toml <<EOT
[rtmp]
listen = "127.0.0.1:19361"
[api]
listen = "127.0.0.1:19362"
[storage]
kind = "s3"
bucket = "rec"
endpoint = "http://127.0.0.1:19400"
allow_http = true
access_key_id = "liverec-test"
secret_access_key = "liverec-test-secret-key"
[spool]
dir = "$M/spool"
[record]
default_template = 1
[[template]]
id = 1
flv = { enable = true, record_interval = 4, file_name = "{StreamID}-{Seq}" }
hls = { enable = true, record_interval = 600, segment_duration = 2, file_name = "{StreamID}" }
EOT
RUST_LOG=info,liverec=debug $BIN/liverec run -c $M/liverec.toml > $M/daemon.out 2> $M/log & LPID=$!
sleep 1
rss() { awk '/VmRSS/{print $2}' /proc/$LPID/status; }
echo "base_rss_kb $(rss)"
if [ "$MODE" = delay ]; then
  $BIN/liverec-load --url rtmp://127.0.0.1:19361/live --fixture $REPO/fixtures/avc_aac_2s.flv -n 20 --duration 30 > $M/load.out 2>&1
  sleep 5
else
  $BIN/liverec-load --url rtmp://127.0.0.1:19361/live --fixture $REPO/fixtures/avc_aac_2s.flv -n 20 --duration 100 > $M/load.out 2>&1 & PUB=$!
  sleep 15; echo "rss_before_outage_kb $(rss)"
  kill $S3PID; wait $S3PID 2>/dev/null
  peak=0
  for i in $(seq 1 60); do r=$(rss); [ "$r" -gt "$peak" ] && peak=$r; sleep 1; done
  echo "rss_peak_during_outage_kb $peak  rss_end_outage_kb $(rss)"
  du -sb $M/spool | awk '{print "spool_bytes_after_outage", $1}'
  $BIN/liverec-s3 $M/s3 19400 > $M/s3.out 2>&1 & S3PID=$!
  wait $PUB
  for i in $(seq 1 60); do n=$(find $M/spool -name '*.up' | wc -l); [ "$n" = 0 ] && break; sleep 1; done
  echo "drained_after_s $i rss_after_kb $(rss)"
fi
kill -TERM $LPID; wait $LPID
kill $S3PID; wait $S3PID 2>/dev/null
grep -o 'delay_ms=[0-9]*' $M/log | cut -d= -f2 | sort -n > $M/delays
python3 - <<PY
d=[int(x) for x in open("$M/delays")]
if d:
    import statistics
    print("uploads", len(d), "median_ms", statistics.median(d), "p90_ms", d[int(len(d)*0.9)], "worst_ms", max(d))
PY
grep -c "upload failed" $M/log | sed 's/^/upload_failed_lines /'
