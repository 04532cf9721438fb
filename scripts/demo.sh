#!/usr/bin/env bash
# The demo: gpu-agent keeping a worker container on the right image, end to end,
# on this machine, with a private Docker engine and a loopback registry.
#
#   scripts/demo.sh
#
# It brings up the stack (scripts/stack.sh), builds the test worker images and a
# release build of gpu-agent and of the mock hub (hub-client's mock-hub), starts
# the mock hub on 127.0.0.1:$DEMO_HUB_PORT, writes $STACK_DIR/demo/agent.toml
# (poll once an hour: the hub's nudges drive it), then:
#   1. pushes worker v1 as 127.0.0.1:5055/demo/worker:stable and starts the agent,
#      which deploys v1 (the hub has no opinion yet: the registry's tag decides);
#   2. pushes v2 as :stable and has the hub nudge the agent: it pre-pulls v2,
#      tells the hub to stop sending jobs, drains v1 (2 in-flight jobs, one
#      finishing per second), swaps, verifies v2 (health, then its registration
#      with the hub) and tells the hub to send jobs again;
#   3. pushes the `broken` worker (health 500) as :stable and nudges: the agent
#      swaps, sees it fail, rolls back to v2 and marks the digest bad; a second
#      nudge leaves it out;
#   4. the hub decides: it names v1 as this host's digest and nudges; the agent
#      goes back to v1 although the tag says otherwise;
#   5. prints the update history (history.jsonl) and what the hub heard, stops
#      the agent and shows that the worker keeps running.
# Every wait has a timeout; on failure the agent's log tail is printed. Exit 0
# only if every step was seen.
#
# Environment:
#   KEEP_STACK=1   leave the stack (and the demo worker) running at the end
#   DEMO_PORT      the worker's port (default: 18080)
#   DEMO_HUB_PORT  the mock hub's port (default: 18081)
#   STACK_DIR, REGISTRY_PORT   see scripts/stack.sh
#   RUST_LOG       passed to the agent when set
#   GPU_AGENT_BIN  use this gpu-agent binary instead of building one
#                  (default: a release build, target/release/gpu-agent)
#   MOCK_HUB_BIN   likewise for the mock hub (default: target/release/mock-hub)
#
# Files: $STACK_DIR/demo/{agent.toml,agent.log,state/,events/events.log}.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DEMO="$STACK_DIR/demo"
PORT="${DEMO_PORT:-18080}"
REPO="$REGISTRY_ADDR/demo/worker"
CONFIG="$DEMO/agent.toml"
STATE="$DEMO/state"
AGENT_LOG="$DEMO/agent.log"
EVENTS="$DEMO/events/events.log"
HEALTH_URL="http://127.0.0.1:$PORT/cgi-bin/health"
WORKER=demo-worker
AGENT_BIN="${GPU_AGENT_BIN:-$REPO_ROOT/target/release/gpu-agent}"
AGENT_PID=
HUB_PORT="${DEMO_HUB_PORT:-18081}"
HUB_URL="http://127.0.0.1:$HUB_PORT"
HUB_BIN="${MOCK_HUB_BIN:-$REPO_ROOT/target/release/mock-hub}"
HUB_PID=
AGENT_ID=demo-host

# --- helpers -------------------------------------------------------------------

agent_log_tail() {
    printf -- '--- last lines of %s ---\n' "$AGENT_LOG" >&2
    tail -n 40 "$AGENT_LOG" >&2 2>/dev/null || echo "(no log)" >&2
    printf -- '---\n' >&2
}

fail() {
    printf '\n\033[1;31mDEMO FAILED:\033[0m %s\n' "$*" >&2
    agent_log_tail
    exit 1
}

# wait_until SECONDS WHAT CMD...: polls CMD every 0.5 s; fails the demo on timeout.
wait_until() {
    local timeout="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + timeout))
    note "waiting (up to ${timeout}s) until $what"
    until "$@" >/dev/null 2>&1; do
        if [ -n "$AGENT_PID" ] && ! kill -0 "$AGENT_PID" 2>/dev/null; then
            fail "the agent exited while waiting until $what"
        fi
        ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting until $what"
        sleep 0.5
    done
}

health() { curl -fsS --max-time 2 "$HEALTH_URL"; }
health_version_is() { health | grep -qF "\"version\":\"$1\""; }

# The digest label of the managed worker container.
worker_digest() { dk inspect -f '{{ index .Config.Labels "gpu-agent.digest" }}' "$WORKER"; }
worker_digest_is() { [ "$(worker_digest 2>/dev/null)" = "$1" ]; }
worker_id() { dk inspect -f '{{ .Id }}' "$WORKER"; }

# push VARIANT: tags a worker image as $REPO:stable, pushes it, prints its digest.
push_stable() {
    local out digest
    dk tag "gpu-agent-test/worker:$1" "$REPO:stable"
    out="$(dk push "$REPO:stable" 2>&1)" || {
        echo "$out" >&2
        fail "docker push $REPO:stable failed"
    }
    digest="$(sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' <<<"$out" | tail -n 1)"
    [ -n "$digest" ] || fail "no digest in the push output: $out"
    echo "$digest"
}

show_managed() {
    dk ps --filter label=gpu-agent.managed=true --filter "name=^$WORKER\$" --format \
        'table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Label "gpu-agent.managed"}}\t{{.Label "gpu-agent.digest"}}'
}

# show_events [SINCE_MS]: the workers' events, with seconds relative to SINCE_MS.
show_events() {
    local since="${1:-0}"
    [ -s "$EVENTS" ] || {
        note "(no events yet)"
        return 0
    }
    awk -v since="$since" '$1 >= since {
        printf "    %s  %+8.3fs  %-7s %s\n", strftime("%H:%M:%S", int($1 / 1000)), ($1 - since) / 1000, $2, $3
    }' "$EVENTS"
}

# events_in_order SINCE_MS "VERSION EVENT"...: each event is seen, in this order, after SINCE_MS.
events_in_order() {
    local since="$1"
    shift
    awk -v since="$since" -v want="$(printf '%s\n' "$@")" '
        BEGIN { n = split(want, w, "\n"); i = 1 }
        $1 >= since && i <= n && ($2 " " $3) == w[i] { i++ }
        END { exit (i <= n) }' "$EVENTS"
}

state_has_bad_digest() {
    local f="$STATE/state.json"
    [ -s "$f" ] || return 1
    if command -v python3 >/dev/null; then
        python3 - "$f" "$1" <<'EOF'
import json, sys
state = json.load(open(sys.argv[1]))
sys.exit(0 if sys.argv[2] in json.dumps(state.get("bad_digests")) else 1)
EOF
    else
        tr -d ' \n' <"$f" | grep -qE "\"bad_digests\":\[[^]]*$1"
    fi
}

# history_has KIND TO OUTCOME: a history line for an update to TO with OUTCOME.
history_has() {
    local f="$STATE/history.jsonl"
    [ -s "$f" ] || return 1
    grep -F "\"$2\"" "$f" | grep -E "\"kind\": ?\"$1\"" | grep -qE "\"outcome\": ?\"$3\""
}

# history_has_second KIND TO OUTCOME: a second such line (v1 is deployed twice).
history_has_second() {
    local f="$STATE/history.jsonl"
    [ -s "$f" ] || return 1
    [ "$(grep -F "\"to\":\"$2\"" "$f" | grep -E "\"kind\": ?\"$1\"" | grep -cE "\"outcome\": ?\"$3\"")" -ge 2 ]
}

print_history() {
    local f="$STATE/history.jsonl"
    if command -v python3 >/dev/null; then
        NAMES="v1=$D_V1 v2=$D_V2 broken=$D_BROKEN" python3 - "$f" <<'EOF'
import json, os, sys
names = {}
for pair in os.environ["NAMES"].split():
    name, _, digest = pair.partition("=")
    names[digest] = name
def short(d):
    if not d:
        return "-"
    return names.get(d, d.split(":")[-1][:12])
fmt = "    {:<20} {:<9} {:<8} {:<8} {:<12} {:>11}  {}"
print(fmt.format("at", "kind", "from", "to", "outcome", "downtime_ms", "error"))
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    try:
        r = json.loads(line)
    except ValueError:
        print("    (not JSON) " + line.rstrip())
        continue
    dt = r.get("downtime_ms")
    print(fmt.format(str(r.get("at", ""))[:19], str(r.get("kind")), short(r.get("from")),
                     short(r.get("to")), str(r.get("outcome")),
                     "-" if dt is None else str(dt), r.get("error") or ""))
EOF
    elif command -v jq >/dev/null; then
        jq -c '{kind, from, to, outcome, downtime_ms, error}' "$f"
    else
        cat "$f"
    fi
}

# hub_nudge: the hub tells the agent to check now.
hub_nudge() {
    curl -fsS --max-time 5 -X POST "$HUB_URL/mock/agents/$AGENT_ID/nudge" -d '{"reason":"demo"}' >/dev/null ||
        fail "the mock hub did not take the nudge"
}
hub_get() { curl -fsS --max-time 5 "$HUB_URL/mock/$1"; }
hub_sees_worker_with() { hub_get "workers/$AGENT_ID" | grep -qF "\"digest\":\"$1\""; }

stop_hub() {
    [ -n "$HUB_PID" ] || return 0
    kill -TERM "$HUB_PID" 2>/dev/null || true
    wait "$HUB_PID" 2>/dev/null || true
    HUB_PID=
}

stop_agent() {
    [ -n "$AGENT_PID" ] || return 0
    if kill -0 "$AGENT_PID" 2>/dev/null; then
        kill -TERM "$AGENT_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$AGENT_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$AGENT_PID" 2>/dev/null; then
            warn "the agent did not stop in 10s: killing it"
            kill -KILL "$AGENT_PID" 2>/dev/null || true
        fi
    fi
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=
}

# shellcheck disable=SC2317 # called through the trap
on_exit() {
    local rc=$?
    stop_agent
    stop_hub
    if [ "${KEEP_STACK:-0}" = 1 ]; then
        section "Stack kept running (KEEP_STACK=1)"
        note "eval \"\$(scripts/stack.sh env)\"; docker ps; scripts/stack.sh down"
    else
        section "Tearing down"
        "$REPO_ROOT/scripts/stack.sh" down || warn "stack.sh down failed"
    fi
    exit "$rc"
}

# --- setup ---------------------------------------------------------------------

section "Prerequisites"
ensure_packages docker.io docker-registry busybox-static curl
[ -n "${GPU_AGENT_BIN:-}" ] || ensure_cargo

section "Private Docker engine and registry (scripts/stack.sh up)"
trap on_exit EXIT
"$REPO_ROOT/scripts/stack.sh" up

section "Test worker images (scripts/build-test-images.sh)"
"$REPO_ROOT/scripts/build-test-images.sh" v1 v2 broken

if [ -n "${GPU_AGENT_BIN:-}" ]; then
    section "Using gpu-agent $AGENT_BIN (GPU_AGENT_BIN)"
else
    section "Building gpu-agent (cargo build --release -p gpu-agent)"
    note "the first build takes a few minutes"
    cargo build --release -p gpu-agent
fi
[ -x "$AGENT_BIN" ] || fail "no gpu-agent binary at $AGENT_BIN"
if [ -z "${MOCK_HUB_BIN:-}" ]; then
    section "Building the mock hub (cargo build --release -p hub-client --features mock --bin mock-hub)"
    cargo build --release -p hub-client --features mock --bin mock-hub
fi
[ -x "$HUB_BIN" ] || fail "no mock-hub binary at $HUB_BIN"

section "Config: $CONFIG"
# A fresh demo: no agent, worker, state or events from an earlier run.
if pid="$(pid_matches "$DEMO/agent.pid" "$CONFIG")"; then
    note "stopping the agent left by an earlier demo (pid $pid)"
    stop_pid "$pid" gpu-agent 10
fi
dk rm -f "$WORKER" >/dev/null 2>&1 || true
rm -rf "$STATE" "$DEMO/events" "$AGENT_LOG" "$DEMO/agent.sock"
mkdir -p "$STATE" "$DEMO/events"
if pid="$(pid_matches "$DEMO/hub.pid" "$HUB_BIN")"; then
    stop_pid "$pid" mock-hub 10
fi
(umask 077 && echo "demo-hub-token-$RANDOM$RANDOM" >"$DEMO/hub-token")
cat >"$CONFIG" <<EOF
[agent]
id = "$AGENT_ID"
state_dir = "$STATE"
control_socket = "$DEMO/agent.sock"

[docker]
host = "$DOCKER_URL"

[image]
repository = "$REPO"
tag = "stable"
poll_interval = "1h"
poll_jitter = "0s"
insecure = true

[worker]
name = "$WORKER"
network = "host"
env = { PORT = "$PORT", INFLIGHT_JOBS = "2", JOB_SECONDS = "1", EVENTS_FILE = "/events/events.log", HUB_URL = "$HUB_URL" }
volumes = ["$DEMO/events:/events"]
gpus = "none"
stop_timeout = "5s"

[worker.health]
http = "$HEALTH_URL"
timeout = "20s"
stable_for = "3s"

[worker.drain]
http = "http://127.0.0.1:$PORT/cgi-bin/drain"
timeout = "30s"
on_timeout = "abort"

[hub]
url = "$HUB_URL"
token_file = "$DEMO/hub-token"
desired_from_hub = true
verify_registration = true
registration_timeout = "20s"
EOF
sed 's/^/    /' "$CONFIG"
"$AGENT_BIN" check-config --config "$CONFIG" || fail "gpu-agent check-config rejected $CONFIG"

# --- 1. v1 -------------------------------------------------------------------------

section "The mock hub on $HUB_URL (log: $DEMO/hub.log)"
"$HUB_BIN" --listen "127.0.0.1:$HUB_PORT" --token-file "$DEMO/hub-token" >"$DEMO/hub.log" 2>&1 &
HUB_PID=$!
echo "$HUB_PID" >"$DEMO/hub.pid"
wait_until 20 "the mock hub answers" hub_get received

section "1. Push worker v1 as $REPO:stable"
D_V1="$(push_stable v1)"
note "v1 = $D_V1"

section "Start the agent: gpu-agent run --config $CONFIG (log: $AGENT_LOG)"
"$AGENT_BIN" run --config "$CONFIG" >"$AGENT_LOG" 2>&1 &
AGENT_PID=$!
echo "$AGENT_PID" >"$DEMO/agent.pid"
note "agent pid $AGENT_PID"
wait_until 90 "the worker answers as v1" health_version_is v1
wait_until 30 "the container is labelled with v1's digest" worker_digest_is "$D_V1"
note "health: $(health)"
show_managed

# --- 2. v2 ---------------------------------------------------------------------------

section "2. Push worker v2 as :stable: pre-pull, drain v1, swap, verify"
T2="$(now_ms)"
D_V2="$(push_stable v2)"
note "v2 = $D_V2"
note "the agent polls once an hour; the hub nudges it now"
TN="$(now_ms)"
hub_nudge
wait_until 120 "the worker answers as v2" health_version_is v2
wait_until 30 "the container is labelled with v2's digest" worker_digest_is "$D_V2"
wait_until 30 "the update is in the history" history_has update "$D_V2" success
note "worker events (seconds from the push):"
show_events "$T2"
events_in_order "$T2" "v1 drain" "v1 idle" "v1 sigterm" "v2 start" ||
    fail "expected the events v1 drain, v1 idle, v1 sigterm, v2 start in this order"
note "seen: v1 drained its 2 jobs, then got SIGTERM; v2 started after"
V2_START="$(awk '$2 == "v2" && $3 == "start" { print $1; exit }' "$EVENTS")"
note "from the nudge to v2's start: $((V2_START - TN)) ms (v1's 2 jobs took about 2 s of it)"
wait_until 30 "the hub sees v2 registered" hub_sees_worker_with "$D_V2"
note "the hub's drain notices: $(hub_get "agents/$AGENT_ID/drains")"
note "health: $(health)"
show_managed

# --- 3. broken ---------------------------------------------------------------------

section "3. Push the broken worker (health 500) as :stable: swap, fail, roll back"
T3="$(now_ms)"
D_BROKEN="$(push_stable broken)"
note "broken = $D_BROKEN"
hub_nudge
wait_until 150 "the broken digest is marked bad in state.json" state_has_bad_digest "$D_BROKEN"
wait_until 60 "the worker answers as v2 again" health_version_is v2
wait_until 30 "the container is labelled with v2's digest" worker_digest_is "$D_V2"
wait_until 30 "the rollback is in the history" history_has '(update|rollback)' "$D_BROKEN" rolled_back
note "worker events (seconds from the push):"
show_events "$T3"
# (Whether the failed worker gets a SIGTERM or is removed outright is the agent's call.)
events_in_order "$T3" "v2 drain" "v2 sigterm" "broken start" "v2 start" ||
    fail "expected the events v2 drain, v2 sigterm, broken start, v2 start in this order"
ID_AFTER="$(worker_id)"
note "another nudge: the bad digest must stay out (watching for 6 s)"
hub_nudge
sleep 6
if [ "$(worker_id)" != "$ID_AFTER" ] || ! health_version_is v2; then
    fail "the worker changed after the rollback (the bad digest was tried again?)"
fi
note "health: $(health)"
show_managed
note "bad_digests in $STATE/state.json:"
if command -v python3 >/dev/null; then
    python3 -c 'import json,sys; print("    " + json.dumps(json.load(open(sys.argv[1])).get("bad_digests")))' "$STATE/state.json"
else
    grep -o '"bad_digests"[^]]*]' "$STATE/state.json" | sed 's/^/    /'
fi

# --- 4. the hub decides -------------------------------------------------------------

section "4. The hub names v1 as this host's digest and nudges: the tag says otherwise, the hub decides"
curl -fsS --max-time 5 -X PUT "$HUB_URL/mock/agents/$AGENT_ID/desired" \
    -d "{\"repository\":\"$REPO\",\"digest\":\"$D_V1\"}" || fail "the mock hub did not take the desired digest"
hub_nudge
wait_until 120 "the worker answers as v1" health_version_is v1
wait_until 30 "the container is labelled with v1's digest" worker_digest_is "$D_V1"
wait_until 30 "the update back to v1 is in the history" history_has_second update "$D_V1" success
wait_until 30 "the hub sees v1 registered" hub_sees_worker_with "$D_V1"
show_managed

# --- 5. history, stop ----------------------------------------------------------------

section "5. History ($STATE/history.jsonl) and what the hub heard"
print_history
if command -v python3 >/dev/null; then
    hub_get "agents/$AGENT_ID/reports" | python3 -c 'import json,sys
r = json.load(sys.stdin)
ev = [x["event"] for x in r if x.get("event")]
print("    the hub got %d reports, %d with a history entry: %s" % (len(r), len(ev), ", ".join("%s/%s" % (e["kind"], e["outcome"]) for e in ev)))'
fi

section "Stop the agent: the worker keeps running"
ID_BEFORE="$(worker_id)"
stop_agent
note "agent stopped"
sleep 1
if [ "$(worker_id)" != "$ID_BEFORE" ] || [ "$(dk inspect -f '{{.State.Running}}' "$WORKER")" != true ]; then
    fail "the worker did not survive the agent's stop"
fi
health_version_is v1 || fail "the worker stopped answering after the agent stopped"
show_managed
note "health: $(health)"

section "DEMO OK: deploy, a nudged update with drain and hub registration, rollback of a bad digest, the hub deciding the digest, agent stop without worker stop"
