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
#      the agent and shows that the worker keeps running;
#   6. a fleet (docs/fleet.md): a 3-member etcd on loopback (scripts/etcd.sh) and
#      three agents in one group, each with its own worker; `gpu-fleet policy
#      set` (one slot, one canary, a 5 s bake);
#   7. `gpu-fleet rollout start` of v2: the canary goes alone, bakes, then the
#      other two go one at a time; `rollout status --wait` exits 0;
#   8. a rollout of the broken worker: the canary alone tries it and rolls back,
#      the group halts, the other two never drain; `rollout status --wait`
#      exits 1; `gpu-fleet rollout abort`.
#   `gpu-fleet rollout status`, `gpu-fleet hosts` and what a waiting agent's
#   status says are shown along the way.
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
#   MOCK_HUB_BIN   likewise for the mock hub (default: target/release/mock-hub);
#                  agentctl and gpu-fleet are taken from beside GPU_AGENT_BIN
#   DEMO_DIR       the demo's files (default: $STACK_DIR/demo)
#   DEMO_FLEET_PORT  the fleet's workers listen on this + 1, 2, 3 (default: 18090)
#   DEMO_ETCD_BASE   the etcd members' ports (scripts/etcd.sh; default: 24890)
#
# Files: $DEMO_DIR/{agent.toml,agent.log,state/,events/events.log}; the fleet's
# under $DEMO_DIR/fleet/ (etcd/, hN/{agent.toml,agent.log,state/,events/}).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DEMO="${DEMO_DIR:-$STACK_DIR/demo}"
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
BIN_DIR="$(dirname "$AGENT_BIN")"
FLEET_BIN="$BIN_DIR/gpu-fleet"
AGENTCTL_BIN="$BIN_DIR/agentctl"
FLEET_DIR="$DEMO/fleet"
FLEET_REPO="$REGISTRY_ADDR/demo/fleet-worker"
FLEET_GROUP=demo-fleet
FLEET_PORT="${DEMO_FLEET_PORT:-18090}"
ETCD_DIR="$FLEET_DIR/etcd"
ETCD_BASE="${DEMO_ETCD_BASE:-24890}"
ETCD_ENDPOINTS=
FLEET_PIDS=()

# --- helpers -------------------------------------------------------------------

agent_log_tail() {
    local log logs=("$AGENT_LOG")
    # In the fleet part: the fleet agents' logs.
    [ "${#FLEET_PIDS[@]}" -gt 0 ] && logs=("$FLEET_DIR"/h*/agent.log)
    for log in "${logs[@]}"; do
        printf -- '--- last lines of %s ---\n' "$log" >&2
        tail -n 40 "$log" >&2 2>/dev/null || echo "(no log)" >&2
    done
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

# push_tag VARIANT REPO TAG: tags a worker image as REPO:TAG, pushes it, prints its digest.
push_tag() {
    local out digest
    dk tag "gpu-agent-test/worker:$1" "$2:$3"
    out="$(dk push "$2:$3" 2>&1)" || {
        echo "$out" >&2
        fail "docker push $2:$3 failed"
    }
    digest="$(sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' <<<"$out" | tail -n 1)"
    [ -n "$digest" ] || fail "no digest in the push output: $out"
    echo "$digest"
}

# push_stable VARIANT: tags a worker image as $REPO:stable, pushes it, prints its digest.
push_stable() { push_tag "$1" "$REPO" stable; }

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

# --- the fleet (sections 6 to 8) ---

# fleet ARGS...: gpu-fleet against the demo's etcd and group.
fleet() { "$FLEET_BIN" --etcd "$ETCD_ENDPOINTS" --group "$FLEET_GROUP" "$@"; }
# fleet_hosts_on N DIGEST: gpu-fleet hosts lists N hosts that run DIGEST.
fleet_hosts_on() { [ "$(fleet hosts --json | grep -oE "\"digest\": *\"$2\"" | wc -l)" = "$1" ]; }

fleet_health() { curl -fsS --max-time 2 "http://127.0.0.1:$((FLEET_PORT + $1))/cgi-bin/health"; }
fleet_version_is() { fleet_health "$1" | grep -qF "\"version\":\"$2\""; }
all_fleet_on() {
    local n
    for n in 1 2 3; do fleet_version_is "$n" "$1" || return 1; done
}

# fleet_events SINCE_MS: the three workers' events in one timeline, seconds from SINCE_MS.
fleet_events() {
    local n
    for n in 1 2 3; do
        awk -v h="fleet-$n" -v since="$1" '$1 >= since { print $1, h, $2, $3 }' \
            "$FLEET_DIR/h$n/events/events.log" 2>/dev/null
    done | sort -n | awk -v since="$1" '{
        printf "    %s  %+8.3fs  %-8s %-7s %s\n", strftime("%H:%M:%S", int($1 / 1000)), ($1 - since) / 1000, $2, $3, $4
    }'
}

# first_event N SINCE_MS "VERSION EVENT": the time of host N's first such event (empty if none).
first_event() {
    awk -v since="$2" -v want="$3" '$1 >= since && ($2 " " $3) == want { print $1; exit }' \
        "$FLEET_DIR/h$1/events/events.log" 2>/dev/null
}

# fleet_waiting N: why agent N waits, as `agentctl status --json` says (fleet.waiting).
fleet_waiting() {
    "$AGENTCTL_BIN" --socket "$FLEET_DIR/h$1/agent.sock" status --json 2>/dev/null |
        sed -n 's/.*"waiting": *"\([^"]*\)".*/\1/p'
}
# fleet_status_line N: the fleet line of agent N's `agentctl status`.
fleet_status_line() {
    "$AGENTCTL_BIN" --socket "$FLEET_DIR/h$1/agent.sock" status 2>/dev/null | grep -E '^ *fleet' | sed 's/^ *//'
}
some_fleet_host_waits() {
    local n
    for n in 1 2 3; do [ -n "$(fleet_waiting "$n")" ] && return 0; done
    return 1
}
no_fleet_host_waits() { ! some_fleet_host_waits; }
fleet_host_waits_for() { fleet_waiting "$1" | grep -qF "$2"; }

stop_fleet() {
    local pid
    for pid in "${FLEET_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && stop_pid "$pid" gpu-agent 10
        wait "$pid" 2>/dev/null || true
    done
    FLEET_PIDS=()
    if [ -n "$ETCD_ENDPOINTS" ]; then
        "$REPO_ROOT/scripts/etcd.sh" down "$ETCD_DIR" >/dev/null 2>&1 || true
    fi
    ETCD_ENDPOINTS=
}

# shellcheck disable=SC2317 # called through the trap
on_exit() {
    local rc=$?
    stop_agent
    stop_fleet
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
ensure_packages docker.io docker-registry busybox-static curl etcd-server etcd-client
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
[ -x "$FLEET_BIN" ] || fail "no gpu-fleet binary at $FLEET_BIN (built with gpu-agent)"
[ -x "$AGENTCTL_BIN" ] || fail "no agentctl binary at $AGENTCTL_BIN (built with gpu-agent)"
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

# --- 6. a fleet ------------------------------------------------------------------

section "6. A fleet: a 3-member etcd and three agents in group $FLEET_GROUP (docs/fleet.md)"
for n in 1 2 3; do
    if pid="$(pid_matches "$FLEET_DIR/h$n/agent.pid" "$FLEET_DIR/h$n/agent.toml")"; then
        note "stopping fleet agent $n left by an earlier demo (pid $pid)"
        stop_pid "$pid" gpu-agent 10
    fi
    dk rm -f "demo-fleet-worker-$n" >/dev/null 2>&1 || true
done
"$REPO_ROOT/scripts/etcd.sh" down "$ETCD_DIR" >/dev/null 2>&1 || true
rm -rf "$FLEET_DIR"
mkdir -p "$FLEET_DIR"
note "scripts/etcd.sh up $ETCD_DIR $ETCD_BASE (logs: $ETCD_DIR/e*.log)"
ETCD_ENDPOINTS="$("$REPO_ROOT/scripts/etcd.sh" up "$ETCD_DIR" "$ETCD_BASE" | tail -n 1)" ||
    fail "etcd did not start (see $ETCD_DIR/e*.log)"
note "etcd: $ETCD_ENDPOINTS"

D_F1="$(push_tag v1 "$FLEET_REPO" stable)"
D_F2="$(push_tag v2 "$FLEET_REPO" v2)"
D_FBAD="$(push_tag broken "$FLEET_REPO" broken)"
note "pushed $FLEET_REPO :stable (v1 = $D_F1), :v2 (v2 = $D_F2), :broken (broken = $D_FBAD)"

note "\$ gpu-fleet --etcd $ETCD_ENDPOINTS --group $FLEET_GROUP policy set --max-unavailable 1 --canary 1 --bake 5s"
fleet policy set --max-unavailable 1 --canary 1 --bake 5s | sed 's/^/    /' || fail "gpu-fleet policy set failed"

for n in 1 2 3; do
    h="$FLEET_DIR/h$n"
    mkdir -p "$h/state" "$h/events"
    cat >"$h/agent.toml" <<EOF
[agent]
id = "fleet-$n"
state_dir = "$h/state"
control_socket = "$h/agent.sock"

[docker]
host = "$DOCKER_URL"

[image]
repository = "$FLEET_REPO"
tag = "stable"
poll_interval = "1h"
poll_jitter = "0s"
insecure = true

[worker]
name = "demo-fleet-worker-$n"
network = "host"
env = { PORT = "$((FLEET_PORT + n))", EVENTS_FILE = "/events/events.log" }
volumes = ["$h/events:/events"]
gpus = "none"
stop_timeout = "5s"

[worker.health]
http = "http://127.0.0.1:$((FLEET_PORT + n))/cgi-bin/health"
timeout = "10s"
stable_for = "2s"

[worker.drain]
http = "http://127.0.0.1:$((FLEET_PORT + n))/cgi-bin/drain"
timeout = "30s"

[fleet]
etcd = [$(sed 's/[^,]*/"&"/g; s/,/, /g' <<<"$ETCD_ENDPOINTS")]
group = "$FLEET_GROUP"
EOF
    "$AGENT_BIN" check-config --config "$h/agent.toml" >/dev/null || fail "gpu-agent check-config rejected $h/agent.toml"
    "$AGENT_BIN" run --config "$h/agent.toml" >"$h/agent.log" 2>&1 &
    FLEET_PIDS+=($!)
    echo "$!" >"$h/agent.pid"
done
note "the [fleet] table of each agent (the rest as above, with its own worker, port and state):"
sed -n '/^\[fleet\]/,$p' "$FLEET_DIR/h1/agent.toml" | sed 's/^/        /'
note "the agents poll the registry once an hour: the group's changes reach them through etcd's watches"
wait_until 90 "the three workers answer as v1" all_fleet_on v1
note "\$ gpu-fleet hosts"
wait_until 60 "gpu-fleet hosts lists the three on v1" fleet_hosts_on 3 "$D_F1"
fleet hosts | sed 's/^/    /'

# --- 7. a rollout ----------------------------------------------------------------

section "7. gpu-fleet rollout start $FLEET_REPO:v2: one canary, a 5 s bake, then one host at a time"
T7="$(now_ms)"
fleet rollout start "$FLEET_REPO:v2" | sed 's/^/    /' || fail "gpu-fleet rollout start failed"
fleet rollout status --json | grep -qF "\"digest\":\"$D_F2\"" ||
    fail "the rollout does not name v2's digest $D_F2"
note "(the tag was resolved once, by gpu-fleet: every host gets $D_F2)"
wait_until 60 "an agent says why it waits" some_fleet_host_waits
for n in 1 2 3; do
    if [ -n "$(fleet_waiting "$n")" ]; then
        note "fleet-$n \$ agentctl status   ->   $(fleet_status_line "$n")"
    fi
done
note "\$ gpu-fleet rollout status --wait --timeout 5m   (a line each time it changes)"
fleet rollout status --wait --timeout 5m | sed 's/^/    /' ||
    fail "gpu-fleet rollout status --wait did not end complete"
wait_until 30 "the three workers answer as v2" all_fleet_on v2
note "worker events (seconds from the rollout's start):"
fleet_events "$T7"
# The canary: the first host to drain. Nobody else drained before its v2 started.
canary=
for n in 1 2 3; do
    d="$(first_event "$n" "$T7" "v1 drain")"
    [ -n "$d" ] || fail "fleet-$n never drained v1"
    if [ -z "$canary" ] || [ "$d" -lt "$(first_event "$canary" "$T7" "v1 drain")" ]; then canary="$n"; fi
done
c_start="$(first_event "$canary" "$T7" "v2 start")"
for n in 1 2 3; do
    [ "$n" = "$canary" ] && continue
    [ "$(first_event "$n" "$T7" "v1 drain")" -gt "$c_start" ] ||
        fail "fleet-$n drained before the canary fleet-$canary ran v2"
done
note "seen: fleet-$canary went alone (the canary); the others drained only after it ran v2 and baked, one at a time"
note "\$ gpu-fleet hosts"
fleet hosts | sed 's/^/    /'

# --- 8. a bad digest halts at the canary -------------------------------------------

section "8. gpu-fleet rollout start $FLEET_REPO:broken: the canary alone tries it, the group halts"
T8="$(now_ms)"
fleet rollout start "$FLEET_REPO:broken" | sed 's/^/    /' || fail "gpu-fleet rollout start failed"
note "\$ gpu-fleet rollout status --wait --timeout 5m   (exits 1 when the rollout halts)"
fleet rollout status --wait --timeout 5m | sed 's/^/    /' && rc=0 || rc=$?
[ "$rc" = 1 ] || fail "gpu-fleet rollout status --wait exited $rc, not 1, for the halted rollout"
note "gpu-fleet rollout status --wait exited 1: halted"
wait_until 60 "the three workers answer as v2" all_fleet_on v2
note "worker events (seconds from the rollout's start):"
fleet_events "$T8"
tried=0
for n in 1 2 3; do
    if [ -n "$(first_event "$n" "$T8" "broken start")" ]; then
        tried=$((tried + 1))
        bad_canary="$n"
    elif [ -n "$(first_event "$n" "$T8" "v2 drain")" ]; then
        fail "fleet-$n drained although the rollout halted at the canary"
    fi
done
[ "$tried" = 1 ] || fail "$tried hosts tried the broken digest (expected the canary alone)"
note "seen: fleet-$bad_canary (the canary) tried it and rolled back to v2; the other two never drained"
for n in 1 2 3; do
    [ "$n" = "$bad_canary" ] && continue
    wait_until 30 "fleet-$n says it waits on the halt" fleet_host_waits_for "$n" halted
    note "fleet-$n \$ agentctl status   ->   $(fleet_status_line "$n")"
done
note "\$ gpu-fleet rollout status"
fleet rollout status | sed 's/^/    /' || true
note "\$ gpu-fleet hosts"
fleet hosts | sed 's/^/    /'
note "\$ gpu-fleet rollout abort   (every host that moved goes back to v2; none is left on broken)"
fleet rollout abort | sed 's/^/    /' || fail "gpu-fleet rollout abort failed"
wait_until 30 "no agent waits any more" no_fleet_host_waits
all_fleet_on v2 || fail "a fleet worker left v2 after the abort"
stop_fleet
note "fleet agents and etcd stopped"

section "DEMO OK: deploy, a nudged update with drain and hub registration, rollback of a bad digest, the hub deciding the digest, agent stop without worker stop, a fleet rollout through a canary, a bad digest halted at the canary"
