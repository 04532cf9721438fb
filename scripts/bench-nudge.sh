#!/usr/bin/env bash
# Benchmark (not a test): the hub's nudge to the new worker container starting,
# with poll_interval = 1h (issue 5's goal: <= 1 s at p99 over 100 nudges).
#
# agent/examples/nudge_bench.rs runs a mock hub in its own process, the real
# release gpu-agent against the private engine and the loopback registry, and
# alternates the worker between two digests (the v1 and v2 test workers pushed
# to $REGISTRY_ADDR/bench/nudge-worker):
#
#   - BENCH_NUDGES nudges naming the digest;
#   - BENCH_PLAIN plain nudges (no digest), each after the tag `bench` was
#     moved in the registry, so the agent also asks the registry.
#
# Each is measured from just before the nudge to the engine's `start` event of
# the new container; the commit (which includes health.stable_for = 1 s) is
# shown for context. Every round waits for the commit and the hub's
# `draining: false` notice before the next.
#
#   scripts/bench-nudge.sh
#
# Environment:
#   BENCH_NUDGES=100    nudges naming a digest
#   BENCH_PLAIN=30      plain nudges (0: none)
#   BENCH_PORT          the worker's port (network host; default: a free one)
#   KEEP_STACK=1        leave the stack running afterwards even if this script
#                       started it (a stack that was already up is always left up)
#   STACK_DIR, REGISTRY_PORT   see scripts/stack.sh
#
# Files: $STACK_DIR/bench-nudge/ (agent config, state and log -v, samples.tsv).
# Exit status: 0 when every round was measured (whether or not the goal is met).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

NUDGES="${BENCH_NUDGES:-100}"
PLAIN="${BENCH_PLAIN:-30}"
B="$STACK_DIR/bench-nudge"
REPO_PATH=bench/nudge-worker
REPO="$REGISTRY_ADDR/$REPO_PATH"
BENCH="$REPO_ROOT/target/release/examples/nudge_bench"
AGENT_BIN="$REPO_ROOT/target/release/gpu-agent"
STARTED_STACK=0

# shellcheck disable=SC2317 # called through the trap
on_exit() {
    local rc=$?
    if [ "$STARTED_STACK" = 1 ] && [ "${KEEP_STACK:-0}" != 1 ]; then
        "$REPO_ROOT/scripts/stack.sh" down >/dev/null || warn "stack.sh down failed"
    fi
    exit "$rc"
}

section "Prerequisites"
ensure_packages docker.io docker-registry busybox-static curl
ensure_cargo

section "Private Docker engine and registry"
trap on_exit EXIT
if ! dk version >/dev/null 2>&1; then
    STARTED_STACK=1
fi
"$REPO_ROOT/scripts/stack.sh" up
"$REPO_ROOT/scripts/build-test-images.sh" v1 v2
mkdir -p "$B"

section "Building gpu-agent and the benchmark (release)"
cargo build --release -p gpu-agent --bin gpu-agent --example nudge_bench

section "Test worker images in $REPO"
for v in v1 v2; do
    dk tag "gpu-agent-test/worker:$v" "$REPO:$v"
    dk push "$REPO:$v" >/dev/null
    dk rmi "$REPO:$v" >/dev/null
    note "$v pushed"
done

section "Nudges: $NUDGES naming a digest, $PLAIN plain (poll_interval 1h)"
args=(--registry "$REGISTRY_ADDR" --repo "$REPO_PATH" --docker-host "$DOCKER_URL"
    --agent-bin "$AGENT_BIN" --nudges "$NUDGES" --plain "$PLAIN" --dir "$B")
[ -z "${BENCH_PORT:-}" ] || args+=(--port "$BENCH_PORT")
"$BENCH" "${args[@]}"
note "agent log (-v): $B/agent.log"
