#!/usr/bin/env bash
# The private test stack: a Docker engine and an OCI registry that only this
# repository's tests, demo and benchmark use, all state under $STACK_DIR.
#
#   scripts/stack.sh up      start containerd + dockerd + registry (no-op when up)
#   scripts/stack.sh down    stop them (removing the engine's containers first);
#                            images and registry data stay for the next `up`
#   scripts/stack.sh env     print `export` lines for the tests (eval them)
#   scripts/stack.sh status  say what is running
#   scripts/stack.sh purge   `down`, then delete $STACK_DIR entirely
#
# Environment:
#   STACK_DIR       where everything lives (default: <repo>/.stack)
#   REGISTRY_PORT   loopback registry port (default: 5055)
#   STACK_TIMEOUT   seconds to wait for each daemon to answer (default: 60)
#   STACK_KEEP_CONTAINERS=1   `down` (and a fresh `up`) leave containers alone
#
# Nothing here touches a system Docker engine: the engine listens on
# $STACK_DIR/docker.sock, keeps its data in $STACK_DIR, uses its own containerd,
# reads no /etc/docker/daemon.json, creates no bridge and no iptables rules
# (test workers use network "host" on ports of their own), and the registry
# listens on 127.0.0.1 only.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

D="$STACK_DIR"
STACK_TIMEOUT="${STACK_TIMEOUT:-60}"
CTRD_DIR="$D/containerd"
CTRD_SOCK="$CTRD_DIR/containerd.sock"

# Unix socket paths are limited to 107 bytes.
[ "${#CTRD_SOCK}" -lt 100 ] || die "STACK_DIR path too long for unix sockets: $D"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
}

# --- liveness checks -----------------------------------------------------------

containerd_pid() { pid_matches "$CTRD_DIR/containerd.pid" "$CTRD_DIR/config.toml"; }
dockerd_pid() { pid_matches "$D/dockerd.pid" "$DOCKER_SOCK"; }
registry_pid() { pid_matches "$D/registry.pid" "$D/registry.yml"; }

engine_answers() { dk version >/dev/null 2>&1; }
registry_answers() { curl -fs -o /dev/null --max-time 2 "http://$REGISTRY_ADDR/v2/"; }

# show_log FILE: the tail of a daemon's log, for failures.
show_log() {
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n 40 "$1" >&2 || true
    printf -- '---\n' >&2
}

# --- up ----------------------------------------------------------------------

# The stub NVIDIA hook: dockerd registers its "nvidia" device driver when this
# name is on its PATH at start, so `--gpus` device requests work with no GPU.
# runc calls it as a prestart hook with the container state on stdin.
write_hook() {
    mkdir -p "$D/bin"
    cat >"$D/bin/nvidia-container-runtime-hook" <<'EOF'
#!/bin/sh
# Stub for tests: accept the prestart call and do nothing.
cat >/dev/null
exit 0
EOF
    chmod 755 "$D/bin/nvidia-container-runtime-hook"
}

# A containerd of our own, so that dockerd never attaches to a system one
# (dockerd 20.10 uses /run/containerd/containerd.sock when that answers).
start_containerd() {
    if containerd_pid >/dev/null; then
        note "containerd already running"
        return 0
    fi
    mkdir -p "$CTRD_DIR"
    cat >"$CTRD_DIR/config.toml" <<EOF
version = 2
root = "$CTRD_DIR/root"
state = "$CTRD_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_DIR/opt"
EOF
    rm -f "$CTRD_SOCK" "$CTRD_SOCK.ttrpc"
    note "starting containerd (log: $CTRD_DIR/containerd.log)"
    PATH="$D/bin:$PATH" setsid containerd --config "$CTRD_DIR/config.toml" \
        </dev/null >>"$CTRD_DIR/containerd.log" 2>&1 &
    echo $! >"$CTRD_DIR/containerd.pid"
    if ! wait_for "$STACK_TIMEOUT" "containerd" ctr --address "$CTRD_SOCK" version; then
        show_log "$CTRD_DIR/containerd.log"
        die "containerd did not start"
    fi
}

start_dockerd() {
    if dockerd_pid >/dev/null && engine_answers; then
        note "dockerd already running on $DOCKER_URL"
        return 0
    fi
    if dockerd_pid >/dev/null; then
        # Running but not answering yet (another `up` racing us): just wait.
        wait_for "$STACK_TIMEOUT" "dockerd" engine_answers || {
            show_log "$D/dockerd.log"
            die "dockerd (pid $(dockerd_pid)) does not answer on $DOCKER_URL"
        }
        return 0
    fi
    mkdir -p "$D/data" "$D/exec"
    echo '{}' >"$D/daemon.json"
    # A pid file left by a killed dockerd (its pid may still exist as a zombie,
    # or be reused) would make dockerd refuse to start.
    rm -f "$DOCKER_SOCK" "$D/dockerd.pid"
    note "starting dockerd on $DOCKER_URL (log: $D/dockerd.log)"
    PATH="$D/bin:$PATH" setsid dockerd \
        --config-file "$D/daemon.json" \
        --containerd "$CTRD_SOCK" \
        --bridge=none --iptables=false --ip-masq=false --userland-proxy=false \
        --data-root "$D/data" --exec-root "$D/exec" \
        -H "$DOCKER_URL" --pidfile "$D/dockerd.pid" \
        --shutdown-timeout 5 \
        </dev/null >>"$D/dockerd.log" 2>&1 &
    if ! wait_for "$STACK_TIMEOUT" "dockerd on $DOCKER_URL" engine_answers; then
        show_log "$D/dockerd.log"
        die "dockerd did not start"
    fi
    # Containers left behind by an earlier run that did not call `down`
    # (restart policies bring them back with the engine) would hold ports.
    if [ "${STACK_KEEP_CONTAINERS:-0}" != 1 ]; then
        remove_containers
    fi
}

start_registry() {
    if registry_pid >/dev/null && registry_answers; then
        note "registry already running on $REGISTRY_ADDR"
        return 0
    fi
    if ! registry_pid >/dev/null && registry_answers; then
        die "something else answers on $REGISTRY_ADDR: choose another REGISTRY_PORT"
    fi
    mkdir -p "$D/regdata"
    cat >"$D/registry.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: $D/regdata}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
http:
  addr: $REGISTRY_ADDR
  secret: gpu-agent-test-stack
EOF
    note "starting registry on $REGISTRY_ADDR (log: $D/registry.log)"
    setsid docker-registry serve "$D/registry.yml" </dev/null >>"$D/registry.log" 2>&1 &
    echo $! >"$D/registry.pid"
    if ! wait_for "$STACK_TIMEOUT" "registry on $REGISTRY_ADDR" registry_answers; then
        show_log "$D/registry.log"
        die "registry did not start"
    fi
}

cmd_up() {
    ensure_packages docker.io docker-registry curl
    mkdir -p "$D"
    write_hook
    start_containerd
    start_dockerd
    start_registry
    note "stack is up: DOCKER_HOST=$DOCKER_URL, registry $REGISTRY_ADDR"
}

# --- down --------------------------------------------------------------------

remove_containers() {
    local ids
    ids="$(dk ps -aq 2>/dev/null || true)"
    [ -n "$ids" ] || return 0
    note "removing $(wc -w <<<"$ids") container(s) of the private engine"
    # shellcheck disable=SC2086 # one id per word
    dk rm -f $ids >/dev/null 2>&1 || true
}

cmd_down() {
    local pid
    if [ "${STACK_KEEP_CONTAINERS:-0}" != 1 ] && engine_answers; then
        remove_containers
    fi
    if pid="$(dockerd_pid)"; then
        note "stopping dockerd (pid $pid)"
        stop_pid "$pid" dockerd 30
    fi
    if pid="$(containerd_pid)"; then
        note "stopping containerd (pid $pid)"
        stop_pid "$pid" containerd 20
    fi
    if pid="$(registry_pid)"; then
        note "stopping registry (pid $pid)"
        stop_pid "$pid" registry 10
    fi
    rm -f "$D/dockerd.pid" "$CTRD_DIR/containerd.pid" "$D/registry.pid"
    note "stack is down (state kept in $D)"
}

# purge: down, unmount what a killed engine may have left mounted, delete $D.
cmd_purge() {
    local m
    cmd_down
    # Deepest mount points first.
    awk -v d="$D/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$D"
    note "removed $D"
}

# --- env / status --------------------------------------------------------------

cmd_env() {
    local regbin
    regbin="$(command -v docker-registry || echo docker-registry)"
    cat <<EOF
export DOCKER_HOST=$DOCKER_URL
export GPU_AGENT_TEST_DOCKER_HOST=$DOCKER_URL
export GPU_AGENT_TEST_REGISTRY=$REGISTRY_ADDR
export GPU_AGENT_TEST_REGISTRY_BIN=$regbin
EOF
}

cmd_status() {
    local rc=0 pid
    if pid="$(containerd_pid)"; then echo "containerd: running (pid $pid)"; else
        echo "containerd: stopped"
        rc=1
    fi
    if pid="$(dockerd_pid)" && engine_answers; then echo "dockerd:    running (pid $pid) on $DOCKER_URL"; else
        echo "dockerd:    stopped"
        rc=1
    fi
    if pid="$(registry_pid)" && registry_answers; then echo "registry:   running (pid $pid) on $REGISTRY_ADDR"; else
        echo "registry:   stopped"
        rc=1
    fi
    return "$rc"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
env) cmd_env ;;
status) cmd_status ;;
purge) cmd_purge ;;
*) usage ;;
esac
