#!/usr/bin/env bash
# Runs every cargo-fuzz target of the repo (crates/*/fuzz/fuzz_targets/*.rs), one after
# the other, for SECONDS each (default 600), then prints a summary table: executions,
# coverage (`cov:`) and features (`ft:`) from libFuzzer's final status line.
#
#   scripts/fuzz.sh [--optional] [SECONDS]
#   FUZZ_TARGETS="flv/tag amf0/decode" FUZZ_TARGET_DIR=target/fuzz-b scripts/fuzz.sh 600
#
# Inputs: the committed seed corpus crates/<c>/fuzz/corpus/<target>/ (read, never written).
# New inputs libFuzzer finds go to target/fuzz/corpus-new/<c>/<target>/ (ignored by git);
# copy the interesting ones into corpus/ to keep them. Logs: target/fuzz/logs/.
# A crash, leak, timeout or out-of-memory fails the run (exit 1) and prints the
# reproducer's path (crates/<c>/fuzz/artifacts/<target>/...).
#
# Needs the nightly toolchain (`cargo +nightly`) and cargo-fuzz. Without them it fails,
# unless `--optional` is given: then it prints why and exits 0 (the CI smoke).
set -euo pipefail
cd "$(dirname "$0")/.."

optional=0
secs=600
for a in "$@"; do
  case "$a" in
    --optional) optional=1 ;;
    ''|*[!0-9]*) echo "usage: $0 [--optional] [SECONDS]" >&2; exit 2 ;;
    *) secs=$a ;;
  esac
done

unavailable() {
  if [ "$optional" -eq 1 ]; then
    echo "fuzz: skipped: $1" >&2
    exit 0
  fi
  echo "fuzz: $1" >&2
  exit 1
}
cargo +nightly --version >/dev/null 2>&1 \
  || unavailable "the nightly toolchain is not installed (rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 \
  || unavailable "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"

shopt -s nullglob
targets=(crates/*/fuzz/fuzz_targets/*.rs)
# FUZZ_TARGETS="crate/target …" runs only those: two halves can run at once, each with
# its own FUZZ_TARGET_DIR, to use two cores for the long runs.
if [ -n "${FUZZ_TARGETS:-}" ]; then
  picked=()
  for f in "${targets[@]}"; do
    c=${f#crates/}; c=${c%%/*}; t=$(basename "$f" .rs)
    case " $FUZZ_TARGETS " in *" $c/$t "*) picked+=("$f") ;; esac
  done
  targets=("${picked[@]}")
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: no targets found" >&2; exit 1; }

# The fuzz crates are their own workspaces, but they share one target dir (FUZZ_TARGET_DIR,
# default target/fuzz): the sanitizer builds of libFuzzer and of the liverec crates are
# then compiled once, not once per fuzz crate (about 30 s each on 2 cores). Several
# crates have a target named `repair`; that is fine because `cargo fuzz run` re-links the
# right one before it runs it, as long as one fuzz.sh runs at a time.
unset CARGO_TARGET_DIR
tgt=${FUZZ_TARGET_DIR:-target/fuzz}
mkdir -p "$tgt/logs"
tgt=$(cd "$tgt" && pwd)

# Build each fuzz crate once (all its targets in one cargo call) before running anything.
declare -A built
for f in "${targets[@]}"; do
  dir=${f%/fuzz_targets/*}
  [ -n "${built[$dir]:-}" ] && continue
  echo "== building $dir" >&2
  if (cd "$dir" && cargo +nightly fuzz build --target-dir "$tgt" >&2); then
    built[$dir]=ok
  else
    built[$dir]=fail
  fi
done

rows=()
failed=0
for f in "${targets[@]}"; do
  dir=${f%/fuzz_targets/*}
  crate=${dir#crates/}
  crate=${crate%/fuzz}
  t=$(basename "$f" .rs)
  name="$crate/$t"
  if [ "${built[$dir]}" != ok ]; then
    rows+=("$name|BUILD FAILED|-|-|-|-")
    failed=1
    continue
  fi
  found="$tgt/corpus-new/$crate/$t"
  mkdir -p "$dir/corpus/$t" "$found" "$dir/artifacts/$t"
  log="$tgt/logs/$crate-$t.log"
  echo "== $name for ${secs}s (log: $log)" >&2
  # -malloc_limit_mb: one allocation above 256 MiB is a finding (an allocation sized by a
  # length field of the input); -timeout: one input taking over 10 s is a hang.
  set +e
  (cd "$dir" && cargo +nightly fuzz run --target-dir "$tgt" "$t" "$found" "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
      -rss_limit_mb=2048 -malloc_limit_mb=256) >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  status_line=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status_line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")
  new=$(find "$found" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    status=ok
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ -n "$artifact" ]; then
      case "$artifact" in /*) ;; *) artifact="$dir/${artifact#./}" ;; esac
      status="CRASH: $artifact"
    else
      status="FAILED (exit $rc, see $log)"
    fi
    echo "!! $name failed; last lines of $log:" >&2
    tail -n 40 "$log" >&2
  fi
  rows+=("$name|$status|${execs:--}|${cov:--}|${ft:--}|$new")
done

echo
printf '%-16s %12s %7s %7s %9s  %s\n' target execs cov ft new_units status
for r in "${rows[@]}"; do
  IFS='|' read -r name status execs cov ft new <<<"$r"
  printf '%-16s %12s %7s %7s %9s  %s\n' "$name" "$execs" "$cov" "$ft" "$new" "$status"
done
exit "$failed"
