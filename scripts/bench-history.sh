#!/usr/bin/env bash
# Benchmark (not a test): `agentctl history -n 20` on a long history, the
# median of BENCH_RUNS runs (issue 13: a long-lived host answers fast).
#
# Writes BENCH_MB MiB of history lines into a fresh state folder (one file,
# history.jsonl, as a host that never rotated, or just under
# agent.history_max), starts gpu-agent against the private engine with that
# state folder (the worker image does not exist, so it only answers the
# control socket), and times `agentctl history -n 20 --json` end to end
# (process start, socket, read, print), then the whole history for context.
#
#   scripts/bench-history.sh
#
# Environment:
#   BENCH_MB=16          history size in MiB (the default agent.history_max)
#   BENCH_RUNS=15        runs per command; the median is reported
#   BENCH_BIN_DIR        where gpu-agent and agentctl are (default: build
#                        them in release and use target/release); point it at
#                        another build to compare (before/after a change)
#   STACK_DIR, REGISTRY_PORT   see scripts/stack.sh
#
# Files: $STACK_DIR/bench-history/ (config, state, agent log).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

MB="${BENCH_MB:-16}"
RUNS="${BENCH_RUNS:-15}"
B="$STACK_DIR/bench-history"

section "Prerequisites"
ensure_packages docker.io docker-registry busybox-static
"$REPO_ROOT/scripts/stack.sh" up >/dev/null
if [ -z "${BENCH_BIN_DIR:-}" ]; then
    ensure_cargo
    cargo build --release -p gpu-agent --bin gpu-agent --bin agentctl
    BENCH_BIN_DIR="$REPO_ROOT/target/release"
fi
AGENT="$BENCH_BIN_DIR/gpu-agent"
CTL="$BENCH_BIN_DIR/agentctl"

section "A history of $MB MiB"
rm -rf "$B"
mkdir -p "$B/state"
line='{"at":"2026-01-01T00:00:00Z","kind":"update","from":"sha256:1111111111111111111111111111111111111111111111111111111111111111","to":"sha256:2222222222222222222222222222222222222222222222222222222222222222","outcome":"success","trigger":"poll","error":null,"downtime_ms":412}'
lines=$(( MB * 1024 * 1024 / (${#line} + 1) ))
awk -v l="$line" -v n="$lines" 'BEGIN { for (i = 0; i < n; i++) print l }' >"$B/state/history.jsonl"
note "$lines lines, $(du -h "$B/state/history.jsonl" | cut -f1)"

cat >"$B/agent.toml" <<TOML
[agent]
id = "bench-history"
state_dir = "$B/state"
control_socket = "$B/agent.sock"
history_max = "$(( MB + 1 ))m"
[docker]
host = "$DOCKER_URL"
[image]
repository = "$REGISTRY_ADDR/bench/history-none"
poll_interval = "1h"
insecure = true
[worker]
name = "bench-history-worker"
[gpu]
check = false
TOML
# An agent build from before agent.history_max existed refuses the key.
if ! "$AGENT" check-config --config "$B/agent.toml" >/dev/null 2>&1; then
    sed -i '/^history_max/d' "$B/agent.toml"
    note "this build has no agent.history_max; left out"
fi

"$AGENT" run --config "$B/agent.toml" >"$B/agent.log" 2>&1 &
AGENT_PID=$!
trap 'kill "$AGENT_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    "$CTL" --socket "$B/agent.sock" status >/dev/null 2>&1 && break
    sleep 0.1
done

# median_ms CMD...: runs CMD $RUNS times, prints the median wall time in ms.
median_ms() {
    local t0 t1 i
    for i in $(seq 1 "$RUNS"); do
        t0=$(date +%s%N)
        "$@" >/dev/null
        t1=$(date +%s%N)
        echo $(( (t1 - t0) / 1000 ))
    done | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f\n", m/1000}'
}

section "agentctl history ($RUNS runs each, median)"
n20=$(median_ms "$CTL" --socket "$B/agent.sock" history -n 20 --json)
note "history -n 20:  ${n20} ms"
all=$(median_ms "$CTL" --socket "$B/agent.sock" history --json)
note "history (all):  ${all} ms"
kill "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true
