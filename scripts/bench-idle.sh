#!/usr/bin/env bash
# Benchmark (not a test): the agent's idle footprint and the control socket's
# round trip, on the private stack.
#
#   scripts/bench-idle.sh
#
# 1. Runs the release `gpu-agent` with a 5 s poll against the loopback registry
#    (one HEAD every 5 s) once its worker is deployed, and samples its RSS
#    (VmRSS) and CPU time (utime + stime from /proc/PID/stat) over IDLE_SECS
#    (default 60). Goal (issue 3): RSS <= 15 MB, CPU <= 0.1 % of a core.
# 2. Times ROUND_TRIPS (default 200) `agentctl status --json` calls, each a new
#    process, and prints the median and p95. Goal: median <= 10 ms.
#
# Environment: IDLE_SECS, ROUND_TRIPS, BENCH_PORT (default 18480), KEEP_STACK=1.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

IDLE_SECS="${IDLE_SECS:-60}"
ROUND_TRIPS="${ROUND_TRIPS:-200}"
PORT="${BENCH_PORT:-18480}"
B="$STACK_DIR/bench-idle"
REPO="$REGISTRY_ADDR/bench/idle"

agent_pid=""
# shellcheck disable=SC2317 # called through the trap
cleanup() {
    local rc=$?
    if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; fi
    dk rm -f bench-idle >/dev/null 2>&1 || true
    if [ "${KEEP_STACK:-0}" != 1 ]; then
        "$REPO_ROOT/scripts/stack.sh" down >/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT

section "Stack, images, release build"
ensure_packages docker.io docker-registry busybox-static
ensure_cargo
"$REPO_ROOT/scripts/stack.sh" up
"$REPO_ROOT/scripts/build-test-images.sh" v1
cargo build --release -p gpu-agent 2>&1 | tail -1
AGENT="$REPO_ROOT/target/release/gpu-agent"
CTL="$REPO_ROOT/target/release/agentctl"

rm -rf "$B" && mkdir -p "$B"
dk tag gpu-agent-test/worker:v1 "$REPO:stable"
dk push -q "$REPO:stable" >/dev/null
cat >"$B/agent.toml" <<TOML
[agent]
id = "bench-idle"
state_dir = "$B/state"
control_socket = "$B/agent.sock"
[docker]
host = "$DOCKER_URL"
[image]
repository = "$REPO"
tag = "stable"
poll_interval = "5s"
poll_jitter = "0s"
insecure = true
[worker]
name = "bench-idle"
network = "host"
gpus = "none"
env = { PORT = "$PORT" }
stop_timeout = "3s"
[worker.health]
http = "http://127.0.0.1:$PORT/cgi-bin/health"
timeout = "20s"
stable_for = "1s"
TOML
"$AGENT" run --config "$B/agent.toml" >"$B/agent.log" 2>&1 &
agent_pid=$!
wait_for 60 "the worker is deployed" grep -q '"outcome":"success"' "$B/state/history.jsonl" ||
    die "the agent did not deploy: $(tail -5 "$B/agent.log")"
sleep 5 # let the first poll after the deploy settle

section "1. Idle footprint over ${IDLE_SECS}s (poll every 5 s)"
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$agent_pid/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$agent_pid/status"; }
t0=$(cpu_ticks)
max_rss=0
for _ in $(seq "$IDLE_SECS"); do
    r=$(rss_kb)
    [ "$r" -gt "$max_rss" ] && max_rss=$r
    sleep 1
done
t1=$(cpu_ticks)
cpu_pct=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$IDLE_SECS" 'BEGIN {printf "%.3f", 100 * d / hz / s}')
note "RSS now $(rss_kb) kB, max ${max_rss} kB ($(awk -v k="$max_rss" 'BEGIN {printf "%.1f", k / 1024}') MB)"
note "CPU ${cpu_pct} % of one core ($((t1 - t0)) ticks at ${hz} Hz in ${IDLE_SECS} s)"

section "2. agentctl status round trip (${ROUND_TRIPS} calls)"
: >"$B/rt.txt"
for _ in $(seq "$ROUND_TRIPS"); do
    a=$(date +%s%N)
    "$CTL" --socket "$B/agent.sock" status --json >/dev/null
    z=$(date +%s%N)
    echo $(((z - a) / 1000)) >>"$B/rt.txt"
done
sort -n "$B/rt.txt" | awk '{v[NR] = $1} END {
    printf "    median %.2f ms, p95 %.2f ms, min %.2f ms, max %.2f ms\n",
        v[int((NR + 1) / 2)] / 1000, v[int(NR * 0.95)] / 1000, v[1] / 1000, v[NR] / 1000 }'
