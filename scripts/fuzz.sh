#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for SECONDS_PER_TARGET
# (default 60), one after another, and prints each one's executions, crashes
# and corpus size. Exits non-zero if any target crashed; the crash artifact's
# path is in the output (fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# cargo-fuzz needs nightly flags: on the stable toolchain they are allowed with
# RUSTC_BOOTSTRAP=1 (set here). cargo-fuzz is installed if missing.
#
# The committed corpus (fuzz/corpus/<target>/) seeds each run and is not
# written to; what a run finds goes to fuzz/target/corpus/<target>/. With
# FUZZ_MERGE=1 the inputs that add coverage are merged into the committed
# corpus afterwards (libFuzzer -merge=1 counting edges only, so it stays small;
# `cargo fuzz cmin -s none <target> -- -use_counters=0` minimises it again).
# FUZZ_SANITIZER (default none: the crates forbid unsafe code) is passed to
# cargo fuzz --sanitizer; FUZZ_TARGETS="a b" runs only those.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs="${1:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    start=$(date +%s)
    cargo install cargo-fuzz --locked
    echo "cargo-fuzz installed in $(($(date +%s) - start)) s"
fi

# -O: release; -a: debug assertions (and so overflow checks) on.
flags=(--sanitizer "$sanitizer" -O -a)
targets="${FUZZ_TARGETS:-$(cd fuzz && cargo fuzz list)}"

echo "==> cargo fuzz build (${sanitizer} sanitizer)"
start=$(date +%s)
(cd fuzz && cargo fuzz build "${flags[@]}")
echo "built in $(($(date +%s) - start)) s"

logs=fuzz/target/logs
mkdir -p "$logs"
summary=()
n=0
crashed=0
for t in $targets; do
    n=$((n + 1))
    scratch="fuzz/target/corpus/$t"
    mkdir -p "$scratch" "fuzz/corpus/$t"
    log="$logs/$t.log"
    echo "==> $t: ${secs} s"
    rc=0
    # Paths relative to fuzz/, where cargo fuzz runs.
    (cd fuzz && cargo fuzz run "${flags[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10) \
        >"$log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    if [ -z "$execs" ]; then
        # No final stats (a crash): the last "#N" status line.
        execs=$(grep -o '^#[0-9]*' "$log" | tr -d '#' | tail -1 || true)
    fi
    files="$(find "fuzz/corpus/$t" -type f | wc -l) files (+$(find "$scratch" -type f | wc -l) found)"
    if [ "$rc" -ne 0 ]; then
        crashed=$((crashed + 1))
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | awk '{print $5}' | tail -1 || true)
        echo "CRASH in $t (exit $rc): artifact ${artifact:-?}; log $log"
        grep -m1 -B2 -A25 -E 'panicked|ERROR: libFuzzer|deadly signal' "$log" || tail -40 "$log"
        summary+=("$(printf '%-18s %6s s %12s execs  CRASHED  corpus %s' "$t" "$secs" "${execs:-?}" "$files")")
    else
        summary+=("$(printf '%-18s %6s s %12s execs  ok       corpus %s' "$t" "$secs" "${execs:-?}" "$files")")
    fi
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        (cd fuzz && cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "target/corpus/$t" -- -merge=1 -use_counters=0) \
            >>"$log" 2>&1 || true
    fi
done

echo "==> fuzz summary (${secs} s per target)"
printf '%s\n' "${summary[@]}"
echo "fuzz: $n targets, $crashed crashed"
[ "$crashed" -eq 0 ]
