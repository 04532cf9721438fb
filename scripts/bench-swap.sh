#!/usr/bin/env bash
# Benchmark (not a test): worker downtime during an image update whose new image
# has a distinct 300 MB layer, for three ways of doing the update:
#
#   a  "seed-style" script: docker stop old; docker rm old; docker pull new;
#      docker run new; then readiness. The new image is NOT present beforehand,
#      so the pull happens during the downtime.
#   b  the floor: docker stop old; docker run new; readiness, with the new image
#      already present.
#   c  gpu-agent (target/release/gpu-agent run --config F) following a tag; the new
#      image is pushed to the tag and absent locally, so the agent must pull it
#      (which it does before stopping the old worker).
#
# Downtime = from the old worker's last good health answer to the new worker's
# first one, measured by agent/examples/downtime_probe.rs polling every 5 ms.
# Each case runs BENCH_RUNS times, alternating between the images fat1 and fat2
# (the v1 test worker plus a layer of random data, different per image); the
# script prints a table with the median, min and max per case.
#
#   scripts/bench-swap.sh
#
# Environment:
#   BENCH_RUNS=5        runs per case
#   BENCH_CASES="a b c" which cases to run
#   BENCH_PORT=18380    the worker's port (network host)
#   BENCH_FAT_MB=300    size of the random layer
#   KEEP_STACK=1        leave the stack running afterwards
#   STACK_DIR, REGISTRY_PORT   see scripts/stack.sh
#
# Files: $STACK_DIR/bench/ (agent config, state and log, probe outputs, results.tsv).
# Exit status: 0 when every requested case was measured BENCH_RUNS times.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

RUNS="${BENCH_RUNS:-5}"
read -r -a CASES <<<"${BENCH_CASES:-a b c}"
PORT="${BENCH_PORT:-18380}"
FAT_MB="${BENCH_FAT_MB:-300}"
B="$STACK_DIR/bench"
REPO="$REGISTRY_ADDR/bench/worker"
HEALTH_URL="http://127.0.0.1:$PORT/cgi-bin/health"
PROBE="$REPO_ROOT/target/release/examples/downtime_probe"
AGENT_BIN="$REPO_ROOT/target/release/gpu-agent"
MANIFEST_V2=application/vnd.docker.distribution.manifest.v2+json

want_case() { [[ " ${CASES[*]} " == *" $1 "* ]]; }

# --- helpers -------------------------------------------------------------------------

health_version_is() { curl -fsS --max-time 2 "$HEALTH_URL" 2>/dev/null | grep -qF "\"version\":\"$1\""; }

# wait_ready SECONDS VERSION: until the worker on PORT answers as VERSION.
wait_ready() {
    wait_for "$1" "the worker to answer as $2 on port $PORT" health_version_is "$2"
}

# digest_of NAME: the registry digest of $REPO:NAME.
digest_of() {
    curl -fsSI -H "Accept: $MANIFEST_V2" "http://$REGISTRY_ADDR/v2/bench/worker/manifests/$1" |
        awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }' | tr -d '\r'
}

# retag FROM TO: points $REPO:TO at $REPO:FROM's manifest, in the registry only
# (no local image needed).
retag() {
    local m="$B/manifest.json"
    curl -fsS -H "Accept: $MANIFEST_V2" -o "$m" "http://$REGISTRY_ADDR/v2/bench/worker/manifests/$1"
    curl -fsS -X PUT -H "Content-Type: $MANIFEST_V2" --data-binary "@$m" \
        "http://$REGISTRY_ADDR/v2/bench/worker/manifests/$2" >/dev/null
}

# remove_image NAME: removes the image of $REPO:NAME from the engine entirely (all
# its tags), so that using it again means a real pull. Fails when something (a
# container) still holds it.
remove_image() {
    local digest ids
    digest="${DIGESTS[$1]}"
    ids="$(dk images --digests --no-trunc --format '{{.Digest}} {{.ID}}' | awk -v d="$digest" '$1 == d { print $2 }' | sort -u)"
    # Also by tag, for an image pulled without its digest recorded.
    ids+=" $(dk image inspect -f '{{.Id}}' "$REPO:$1" 2>/dev/null || true)"
    for id in $ids; do
        dk rmi -f "$id" >/dev/null 2>&1 || true
    done
    for id in $ids; do
        if dk image inspect "$id" >/dev/null 2>&1; then
            warn "image $1 ($id) is still present: $(dk ps -a --filter "ancestor=$id" --format '{{.Names}}' | tr '\n' ' ')"
            return 1
        fi
    done
}

# probe_start NEW [TIMEOUT_S]: starts the probe in the background, expecting
# NEW's version in the answers.
probe_start() {
    "$PROBE" --url "$HEALTH_URL" --expect-body-contains "\"version\":\"$1\"" \
        --timeout-s "${2:-120}" >"$B/probe.json" 2>"$B/probe.err" &
    PROBE_PID=$!
    echo "$PROBE_PID" >"$B/probe.pid"
    # Let it record a few good answers of the old worker first.
    sleep 0.3
}

# probe_result: waits for the probe; sets MS to the downtime it measured, or fails.
probe_result() {
    local rc=0
    wait "$PROBE_PID" || rc=$?
    rm -f "$B/probe.pid"
    cat "$B/probe.json" >>"$B/probes.jsonl"
    if [ "$rc" -ne 0 ]; then
        warn "probe failed ($rc): $(cat "$B/probe.json" "$B/probe.err")"
        return 1
    fi
    MS="$(sed -n 's/.*"downtime_ms":\([0-9.]*\).*/\1/p' "$B/probe.json")"
    [ -n "$MS" ]
}

# record CASE MS: one measurement.
record() {
    printf '%s\t%s\n' "$1" "$2" >>"$B/results.tsv"
    note "$(printf 'case %s run: downtime %8.1f ms' "$1" "$2")"
}

other() { if [ "$1" = fat1 ]; then echo fat2; else echo fat1; fi; }

start_worker() { # NAME IMAGE-TAG
    dk run -d --name "$1" --network host -e PORT="$PORT" "$REPO:$2" >/dev/null
}

remove_bench_containers() {
    local ids
    ids="$(dk ps -aq --filter name=bench- 2>/dev/null || true)"
    # shellcheck disable=SC2086
    [ -z "$ids" ] || dk rm -f $ids >/dev/null 2>&1 || true
}

# stop_agent: stops the agent that case c started (its pid is in a file, as
# cases run in subshells).
stop_agent() {
    local pid
    if pid="$(pid_matches "$B/agent.pid" "$B/agent/agent.toml")"; then
        stop_pid "$pid" gpu-agent 10
    fi
    rm -f "$B/agent.pid"
}

# shellcheck disable=SC2317 # called through the trap
on_exit() {
    local rc=$? pid
    stop_agent
    if pid="$(pid_matches "$B/probe.pid" downtime_probe)"; then kill "$pid" 2>/dev/null || true; fi
    remove_bench_containers
    if [ "${KEEP_STACK:-0}" = 1 ]; then
        note "stack kept running (KEEP_STACK=1)"
    else
        "$REPO_ROOT/scripts/stack.sh" down >/dev/null || warn "stack.sh down failed"
    fi
    exit "$rc"
}

# --- setup -----------------------------------------------------------------------------

section "Prerequisites"
ensure_packages docker.io docker-registry busybox-static curl
ensure_cargo

section "Private Docker engine and registry"
trap on_exit EXIT
"$REPO_ROOT/scripts/stack.sh" up
"$REPO_ROOT/scripts/build-test-images.sh" v1
mkdir -p "$B"
: >"$B/results.tsv"
: >"$B/probes.jsonl"
remove_bench_containers

section "Building the probe$(want_case c && echo ' and gpu-agent') (release)"
AGENT_OK=0
if want_case c; then
    if cargo build --release -p gpu-agent --bin gpu-agent --example downtime_probe; then
        AGENT_OK=1
    else
        warn "gpu-agent does not build: case c is skipped"
    fi
fi
if [ ! -x "$PROBE" ] || [ "$AGENT_OK" = 0 ]; then
    if ! cargo build --release -p gpu-agent --example downtime_probe; then
        # The probe is std-only: build it on its own when the crate does not build.
        warn "the gpu-agent crate does not build: compiling the probe with rustc alone"
        PROBE="$B/downtime_probe"
        rustc --edition 2021 -O -o "$PROBE" agent/examples/downtime_probe.rs
    fi
fi

# --- the fat images: v1 + FAT_MB of random data, pushed, then removed locally ---------------

section "Fat images (${FAT_MB} MB random layer each) in $REPO"
declare -A DIGESTS
V1_HASH="$(dk image inspect -f '{{ index .Config.Labels "gpu-agent-test.src-hash" }}' gpu-agent-test/worker:v1)"
STAMP="$V1_HASH $FAT_MB"
fat_fresh() {
    [ "$(head -n 1 "$B/fat.stamp" 2>/dev/null)" = "$STAMP" ] || return 1
    local n d
    for n in fat1 fat2; do
        d="$(digest_of "$n")" && [ -n "$d" ] || return 1
        [ "$(grep "^$n " "$B/fat.stamp" | cut -d' ' -f2)" = "$d" ] || return 1
    done
}
if fat_fresh; then
    note "fat1 and fat2 already in the registry (same sources)"
else
    ctx="$B/fat-context"
    mkdir -p "$ctx"
    for n in fat1 fat2; do
        cat >"$ctx/Dockerfile" <<EOF
FROM gpu-agent-test/worker:v1
RUN dd if=/dev/urandom of=/fat.bin bs=1M count=$FAT_MB 2>/dev/null && echo $n >/worker/VERSION
LABEL gpu-agent-test.version=$n
EOF
        note "building and pushing $n"
        if ! DOCKER_BUILDKIT=0 dk build -t "gpu-agent-test/worker:$n" "$ctx" >"$B/build.log" 2>&1; then
            tail -n 20 "$B/build.log" >&2
            die "building $n failed"
        fi
        dk tag "gpu-agent-test/worker:$n" "$REPO:$n"
        dk push "$REPO:$n" >/dev/null
    done
    { echo "$STAMP"; for n in fat1 fat2; do echo "$n $(digest_of "$n")"; done; } >"$B/fat.stamp"
fi
for n in fat1 fat2; do
    DIGESTS[$n]="$(digest_of "$n")"
    note "$n = ${DIGESTS[$n]}"
    # Only the registry keeps them: each case decides what is present locally.
    dk rmi -f "gpu-agent-test/worker:$n" >/dev/null 2>&1 || true
    remove_image "$n" || die "cannot remove $n from the engine"
done

# --- (a) seed-style: stop, rm, pull, run -----------------------------------------------

case_a() {
    section "Case a: docker stop; docker rm; docker pull; docker run (image not present)"
    local cur=fat1 new i name
    dk pull -q "$REPO:$cur" >/dev/null
    start_worker bench-a-0 "$cur"
    wait_ready 30 "$cur" || return 1
    name=bench-a-0
    for ((i = 1; i <= RUNS; i++)); do
        new="$(other "$cur")"
        remove_image "$new" || return 1
        probe_start "$new"
        dk stop -t 10 "$name" >/dev/null
        dk rm "$name" >/dev/null
        dk pull -q "$REPO:$new" >/dev/null
        start_worker "bench-a-$i" "$new"
        probe_result
        record a "$MS"
        name="bench-a-$i" cur="$new"
    done
    dk rm -f "$name" >/dev/null
}

# --- (b) the floor: stop, run (image present) -------------------------------------------

case_b() {
    section "Case b: docker stop; docker run (image present)"
    local cur=fat1 new i name
    dk pull -q "$REPO:fat1" >/dev/null
    dk pull -q "$REPO:fat2" >/dev/null
    start_worker bench-b-0 "$cur"
    wait_ready 30 "$cur" || return 1
    name=bench-b-0
    for ((i = 1; i <= RUNS; i++)); do
        new="$(other "$cur")"
        probe_start "$new"
        dk stop -t 10 "$name" >/dev/null
        start_worker "bench-b-$i" "$new"
        probe_result
        record b "$MS"
        dk rm "$name" >/dev/null
        name="bench-b-$i" cur="$new"
    done
    dk rm -f "$name" >/dev/null
}

# --- (c) gpu-agent ----------------------------------------------------------------------

# history_has DIGEST: the agent's history has a successful update to DIGEST.
history_has() {
    grep -F "\"$1\"" "$B/agent/state/history.jsonl" 2>/dev/null | grep -qE '"outcome": ?"success"'
}

case_c() {
    section "Case c: gpu-agent (pre-pull, then stop and start)"
    if [ "$AGENT_OK" != 1 ]; then
        warn "no gpu-agent binary: case c skipped"
        return 1
    fi
    local cur=fat1 new i A="$B/agent"
    rm -rf "$A"
    mkdir -p "$A/state"
    cat >"$A/agent.toml" <<EOF
[agent]
id = "bench-host"
state_dir = "$A/state"
control_socket = "$A/agent.sock"

[docker]
host = "$DOCKER_URL"

[image]
repository = "$REPO"
tag = "fat"
poll_interval = "1s"
poll_jitter = "0s"
insecure = true

[worker]
name = "bench-worker"
network = "host"
env = { PORT = "$PORT" }
gpus = "none"
stop_timeout = "10s"

[worker.health]
http = "$HEALTH_URL"
timeout = "60s"
stable_for = "2s"
EOF
    remove_image fat1 || true
    remove_image fat2 || true
    retag "$cur" fat
    "$AGENT_BIN" run --config "$A/agent.toml" >"$A/agent.log" 2>&1 &
    echo $! >"$B/agent.pid"
    if ! wait_ready 120 "$cur"; then
        tail -n 30 "$A/agent.log" >&2
        return 1
    fi
    sleep 3 # stable_for, then commit
    for ((i = 1; i <= RUNS; i++)); do
        new="$(other "$cur")"
        remove_image "$new" || warn "run $i: $new is still present, so the agent's pull is not measured"
        probe_start "$new" 240
        retag "$new" fat
        if ! probe_result; then
            tail -n 30 "$A/agent.log" >&2
            return 1
        fi
        record c "$MS"
        if ! wait_for 120 "the agent to commit $new" history_has "${DIGESTS[$new]}"; then
            tail -n 30 "$A/agent.log" >&2
            return 1
        fi
        cur="$new"
    done
    stop_agent
    dk rm -f bench-worker >/dev/null 2>&1 || true
}

# --- run, then the table ------------------------------------------------------------------

# Each case runs in a subshell with errexit on (a failing step ends that case,
# not the benchmark).
failed=()
for c in "${CASES[@]}"; do
    case "$c" in a | b | c) ;; *) die "unknown case '$c' (known: a b c)" ;; esac
done
for c in "${CASES[@]}"; do
    set +e
    (
        set -eE
        trap 'warn "case $c: \"$BASH_COMMAND\" failed (line $LINENO)"' ERR
        "case_$c"
    )
    rc=$?
    set -e
    [ "$rc" -eq 0 ] || failed+=("$c")
done

section "Downtime per update (ms), $RUNS runs per case, ${FAT_MB} MB new layer"
label_of() {
    case "$1" in
    a) echo "a: stop, rm, pull, run" ;;
    b) echo "b: stop, run (floor)" ;;
    c) echo "c: gpu-agent" ;;
    esac
}
printf '    %-24s %5s %10s %10s %10s\n' case runs median min max
for c in "${CASES[@]}"; do
    vals="$(awk -F'\t' -v c="$c" '$1 == c { print $2 }' "$B/results.tsv" | sort -n)"
    if [ -z "$vals" ]; then
        printf '    %-24s %5s %10s %10s %10s\n' "$(label_of "$c")" 0 - - -
        continue
    fi
    awk -v label="$(label_of "$c")" '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "    %-24s %5d %10.1f %10.1f %10.1f\n", label, NR, m, v[1], v[NR]
    }' <<<"$vals"
done
note "raw: $B/results.tsv, probe outputs: $B/probes.jsonl"

for c in "${CASES[@]}"; do
    n="$(awk -F'\t' -v c="$c" '$1 == c' "$B/results.tsv" | wc -l)"
    [ "$n" -eq "$RUNS" ] || failed+=("$c")
done
if [ "${#failed[@]}" -gt 0 ]; then
    warn "not fully measured: $(printf '%s\n' "${failed[@]}" | sort -u | tr '\n' ' ')"
    exit 1
fi
