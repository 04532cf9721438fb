#!/usr/bin/env bash
# The install test: the real .deb in a real systemd, driving the private engine.
#
#   scripts/test-install.sh
#
# Builds the package twice (version V1, then V2 > V1, from the same binaries),
# starts Debian 12 with systemd as PID 1 in a container of the private engine
# (its socket mounted in as /run/docker.sock, --network host so that the agent
# inside reaches the loopback registry and the worker), and checks, as an
# operator would:
#
#   1. dpkg -i installs it: the unit enabled, not started (no config yet)
#   2. systemctl start returns once the agent sent READY=1 (Type=notify): the
#      unit active, its status text the agent's own STATUS=
#   3. the agent deployed the worker on the engine outside (labels, digest, health)
#   4. agentctl status answers on the default socket /run/gpu-agent/agent.sock
#   5. systemctl reload (ExecReload: check-config, then SIGHUP) reloads the config
#      in place; a config that does not load fails the reload, the agent runs on
#   6. dpkg -i of V2 restarts the agent (a new main pid, active again)
#   7. ... and leaves the worker container alone (same id, same StartedAt)
#   8. systemd-analyze verify prints nothing
#   9. systemd-analyze security: exposure <= 3.0
#  10. dpkg --purge removes /var/lib/gpu-agent and leaves the worker running
#
# Prints PASS/FAIL per check, ends with `install: N passed, M failed`, and
# exits 1 when anything failed.
#
# Needs the private stack up (scripts/stack.sh up; scripts/test.sh does it) and
# cargo-deb (scripts/build-deb.sh installs it). The Debian root file system
# (debootstrap, about two minutes, from the Debian mirror apt uses here) is made
# once, kept as a tar file in the cache folder (for other checkouts and a
# purged stack) and as the image local/debian-systemd:bookworm in the private
# engine, so later runs start in seconds. The worker is the test worker (v1)
# pushed as <registry>/install-test/worker:stable, on port 18990, network host.
#
# Environment:
#   PROFILE=dev|release   whose binaries go in the package (default: release)
#   NO_BUILD=1            package the binaries already built (scripts/test.sh)
#   INSTALL_TEST_PORT     the worker's port (default: 18990)
#   DEBIAN_MIRROR         for debootstrap (default: the first one apt uses)
#   INSTALL_TEST_CACHE    where the root file system's tar is kept
#                         (default: ${XDG_CACHE_HOME:-~/.cache}/gpu-agent; about 250 MB)
#   KEEP=1                leave the systemd container and the worker running
#   STACK_DIR, REGISTRY_PORT   see scripts/stack.sh
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

PORT="${INSTALL_TEST_PORT:-18990}"
WORK="$STACK_DIR/install-test"
SYSTEMD_IMAGE=local/debian-systemd:bookworm
# adduser and procps: the package's dependencies beyond what minbase has
# (dpkg -i resolves none, and the test stays on loopback).
DEBOOTSTRAP_INCLUDE=systemd,systemd-sysv,dbus,ca-certificates,adduser,procps
CT=gpu-agent-install-test          # the systemd container
WORKER=gpu-agent-install-test-worker
AGENT_ID=install-test
REPO="$REGISTRY_ADDR/install-test/worker"

passed=0 failed=0

pass() {
    passed=$((passed + 1))
    printf 'PASS  %s\n' "$*"
}

fail() {
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$*"
}

# detail TEXT: an indented line under a check's result.
detail() {
    printf '        %s\n' "$@"
}

# in_ct CMD...: runs CMD in the systemd container.
in_ct() {
    dk exec "$CT" "$@"
}

# inspect CONTAINER FORMAT: docker inspect, empty when the container is gone.
inspect() {
    dk inspect -f "$2" "$1" 2>/dev/null || true
}

# shellcheck disable=SC2317 # called through the trap
cleanup() {
    local rc=$?
    if [ "${KEEP:-0}" = 1 ]; then
        note "kept: container $CT (docker exec -it $CT bash) and worker $WORKER"
    else
        dk rm -f "$CT" "$WORKER" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}

# --- prerequisites -----------------------------------------------------------

section "Install test: prerequisites"
ensure_packages debootstrap jq curl
dk version >/dev/null 2>&1 ||
    die "the private engine does not answer on $DOCKER_URL: run scripts/stack.sh up (REGISTRY_PORT=$REGISTRY_PORT)"
curl -fs -o /dev/null --max-time 5 "http://$REGISTRY_ADDR/v2/" ||
    die "no registry on $REGISTRY_ADDR: run scripts/stack.sh up (REGISTRY_PORT=$REGISTRY_PORT)"
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is in use: set INSTALL_TEST_PORT"
fi
mkdir -p "$WORK"
trap cleanup EXIT
# What an earlier run may have left (only ours, by name).
dk rm -f "$CT" "$WORKER" >/dev/null 2>&1 || true

# --- the packages ------------------------------------------------------------

section "Install test: two packages from the same binaries"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' agent/Cargo.toml | head -n 1)"
[ -n "$version" ] || die "no version in agent/Cargo.toml"
V1="$version-1"
V2="$version-1+installtest2" # sorts after V1
rm -rf "$WORK/debs" && mkdir -p "$WORK/debs"
for v in "$V1" "$V2"; do
    QUIET=1 scripts/build-deb.sh --fast --deb-version "$v" -o "$WORK/debs/" >"$WORK/build-deb.log" 2>&1 || {
        tail -n 30 "$WORK/build-deb.log" >&2
        die "scripts/build-deb.sh failed (log: $WORK/build-deb.log)"
    }
    # The next run packs the same binaries again.
    export NO_BUILD=1
done
DEB1="gpu-agent_${V1}_$(dpkg --print-architecture).deb"
DEB2="gpu-agent_${V2}_$(dpkg --print-architecture).deb"
for d in "$DEB1" "$DEB2"; do
    [ -f "$WORK/debs/$d" ] || die "expected $WORK/debs/$d (have: $(ls "$WORK/debs"))"
done
note "$DEB1, $DEB2"

# --- Debian 12 with systemd --------------------------------------------------

section "Install test: Debian 12 with systemd as PID 1"
rootfs_key="bookworm minbase $DEBOOTSTRAP_INCLUDE"
cache="${INSTALL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-agent}"
tarball="$cache/debian-systemd-bookworm-$(sha256sum <<<"$rootfs_key" | cut -c1-12).tar"
if [ "$(dk image inspect -f '{{ index .Config.Labels "gpu-agent-test.rootfs" }}' "$SYSTEMD_IMAGE" 2>/dev/null)" = "$rootfs_key" ]; then
    note "$SYSTEMD_IMAGE is there (made by an earlier run)"
elif [ -s "$tarball" ]; then
    note "importing $SYSTEMD_IMAGE from $tarball"
    dk import -c 'CMD ["/sbin/init"]' -c "LABEL gpu-agent-test.rootfs=\"$rootfs_key\"" "$tarball" "$SYSTEMD_IMAGE" >/dev/null
else
    mirror="${DEBIAN_MIRROR:-}"
    if [ -z "$mirror" ]; then
        mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
            awk '$1 == "URIs:" && $2 ~ /\/debian\/?$/ { print $2; exit }')"
    fi
    if [ -z "$mirror" ]; then
        mirror="$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)"
    fi
    mirror="${mirror:-http://deb.debian.org/debian}"
    note "debootstrap bookworm from $mirror (once; log: $WORK/debootstrap.log)"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include="$DEBOOTSTRAP_INCLUDE" bookworm "$WORK/rootfs" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 20 "$WORK/debootstrap.log" >&2
        die "debootstrap failed (log: $WORK/debootstrap.log)"
    }
    mkdir -p "$cache"
    tar -C "$WORK/rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$WORK/rootfs"
    dk import -c 'CMD ["/sbin/init"]' -c "LABEL gpu-agent-test.rootfs=\"$rootfs_key\"" "$tarball" "$SYSTEMD_IMAGE" >/dev/null
fi

# cgroup v1 (these machines): the recipe of shared/TESTING.md. cgroup v2 (for
# example GitHub's runners): systemd must write its own cgroups, so the usual
# recipe for systemd in Docker there; not tried on a v2 host yet.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    cgroup_args=(--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw)
else
    cgroup_args=(-v /sys/fs/cgroup:/sys/fs/cgroup:ro)
fi
dk run -d --name "$CT" \
    --cap-add SYS_ADMIN "${cgroup_args[@]}" \
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
    --network host \
    -v "$DOCKER_SOCK:/run/docker.sock" \
    -v "$WORK/debs:/debs:ro" \
    "$SYSTEMD_IMAGE" /sbin/init >/dev/null
booted() {
    local s
    s="$(in_ct systemctl is-system-running 2>/dev/null || true)"
    [ "$s" = running ] || [ "$s" = degraded ]
}
wait_for 60 "systemd in $CT" booted || {
    dk logs "$CT" 2>&1 | tail -n 20 >&2
    die "systemd did not come up in $CT"
}
state="$(in_ct systemctl is-system-running 2>/dev/null || true)"
note "systemd $(in_ct systemctl --version | head -n 1 | cut -d' ' -f2): $state"
[ "$state" = running ] || in_ct systemctl --failed --no-pager || true

# --- the worker image ----------------------------------------------------------

section "Install test: the worker image"
scripts/build-test-images.sh v1
dk tag gpu-agent-test/worker:v1 "$REPO:stable"
dk push "$REPO:stable" >"$WORK/push.log" 2>&1 || {
    cat "$WORK/push.log" >&2
    die "push to $REPO failed"
}
DIGEST="$(curl -fsI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY_ADDR/v2/install-test/worker/manifests/stable" |
    tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" { print $2 }')"
[ -n "$DIGEST" ] || die "no digest for $REPO:stable"
note "$REPO:stable = $DIGEST"

# The test's config, as a drop-in (the package's conffile stays as shipped, so
# the upgrade asks nothing).
cat >"$WORK/10-install-test.toml" <<EOF
# Written by scripts/test-install.sh.
[agent]
id = "$AGENT_ID"

[image]
repository = "$REPO"
tag = "stable"
insecure = true
poll_interval = "1h"

[worker]
name = "$WORKER"
network = "host"
gpus = "none"
stop_timeout = "5s"
env = { PORT = "$PORT" }

[worker.health]
http = "http://127.0.0.1:$PORT/cgi-bin/health"
timeout = "60s"
stable_for = "2s"

[worker.drain]
http = "http://127.0.0.1:$PORT/cgi-bin/drain"
timeout = "30s"
EOF

# --- 1. install ------------------------------------------------------------------

section "Install test: checks"
if out="$(in_ct dpkg -i "/debs/$DEB1" 2>&1)"; then
    enabled="$(in_ct systemctl is-enabled gpu-agent.service 2>&1 || true)"
    active="$(in_ct systemctl is-active gpu-agent.service 2>&1 || true)"
    group="$(in_ct getent group gpu-agent || true)"
    # The files an operator looks for: monitoring, man pages, completions.
    missing=""
    for f in /usr/share/gpu-agent/prometheus/gpu-agent.rules.yml \
        /usr/share/gpu-agent/grafana/gpu-agent.json \
        /usr/share/man/man1/agentctl-drain.1.gz /usr/share/man/man1/gpu-agent.1.gz \
        /usr/share/bash-completion/completions/agentctl; do
        in_ct test -s "$f" || missing="$missing $f"
    done
    # The config may hold secrets: root's alone to read and write, group read.
    conf="$(in_ct stat -c '%a %U:%G' /etc/gpu-agent/agent.toml 2>&1 || true)"
    dropins="$(in_ct stat -c '%F %a' /etc/gpu-agent/agent.d 2>&1 || true)"
    if [ "$enabled" = enabled ] && [ "$active" = inactive ] && [ -n "$group" ] && [ -z "$missing" ] &&
        [ "$conf" = "640 root:root" ] && [ "$dropins" = "directory 755" ]; then
        pass "dpkg -i $DEB1: unit enabled, not started; group gpu-agent exists; rules, dashboard, man pages, completions installed; agent.toml $conf; agent.d/ $dropins"
    else
        fail "dpkg -i $DEB1: is-enabled=$enabled is-active=$active group='$group' missing:${missing:- none} agent.toml='$conf' agent.d='$dropins'"
    fi
else
    fail "dpkg -i $DEB1"
    detail "$out"
fi

# --- 2. start: Type=notify -----------------------------------------------------

dk cp "$WORK/10-install-test.toml" "$CT:/etc/gpu-agent/agent.d/10-install-test.toml" 2>/dev/null || {
    in_ct mkdir -p /etc/gpu-agent/agent.d
    dk cp "$WORK/10-install-test.toml" "$CT:/etc/gpu-agent/agent.d/10-install-test.toml"
}
t0="$(now_ms)"
if out="$(in_ct timeout 120 systemctl start gpu-agent.service 2>&1)"; then
    start_ms=$(($(now_ms) - t0))
    props="$(in_ct systemctl show -p Type -p NotifyAccess -p ActiveState -p SubState -p StatusText \
        -p WatchdogUSec -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic gpu-agent.service)"
    prop() { sed -n "s/^$1=//p" <<<"$props"; }
    # systemd logs "Started ..." for a notify unit when READY=1 arrives.
    ready_line="$(in_ct journalctl -u gpu-agent.service -o cat --no-pager 2>/dev/null | grep -m1 '^Started ' || true)"
    if [ "$(prop Type)" = notify ] && [ "$(prop ActiveState)" = active ] && [ "$(prop SubState)" = running ] &&
        [ -n "$(prop StatusText)" ] && [ "$(prop WatchdogUSec)" != 0 ] &&
        [ "$(prop ActiveEnterTimestampMonotonic)" -gt "$(prop ExecMainStartTimestampMonotonic)" ]; then
        pass "systemctl start returned after READY=1 (${start_ms} ms): Type=notify, active (running), StatusText=\"$(prop StatusText)\", WatchdogUSec=$(prop WatchdogUSec)"
        detail "main process started at +$(prop ExecMainStartTimestampMonotonic) us, unit active at +$(prop ActiveEnterTimestampMonotonic) us (monotonic)"
        [ -z "$ready_line" ] || detail "journal: $ready_line"
    else
        fail "systemctl start: the unit is not an active notify service with the agent's status"
        detail "${props//$'\n'/ }"
    fi
else
    fail "systemctl start gpu-agent"
    detail "$out"
    in_ct journalctl -u gpu-agent.service -n 30 --no-pager || true
fi

# --- 3. the worker on the engine outside -------------------------------------------

worker_ok() {
    [ "$(inspect "$WORKER" '{{ .State.Running }}')" = true ] &&
        [ "$(inspect "$WORKER" '{{ index .Config.Labels "gpu-agent.digest" }}')" = "$DIGEST" ] &&
        curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/cgi-bin/health"
}
if wait_for 90 "the worker $WORKER" worker_ok; then
    managed="$(dk ps -q --filter label=gpu-agent.managed=true --filter "label=gpu-agent.agent=$AGENT_ID")"
    WORKER_ID="$(inspect "$WORKER" '{{ .Id }}')"
    WORKER_STARTED="$(inspect "$WORKER" '{{ .State.StartedAt }}')"
    if [ "$(wc -l <<<"$managed")" = 1 ] && [ "${WORKER_ID:0:12}" = "$managed" ]; then
        pass "worker deployed on the outside engine: $WORKER ${WORKER_ID:0:12}, gpu-agent.managed=true, gpu-agent.digest=$DIGEST, health 200"
    else
        fail "expected one managed container of agent $AGENT_ID, the worker; got: $managed"
    fi
else
    WORKER_ID="" WORKER_STARTED=""
    fail "no running worker $WORKER with digest $DIGEST and a healthy endpoint within 90 s"
    detail "$(dk ps -a --format '{{.Names}} {{.Status}} {{.Labels}}' 2>&1)"
    in_ct journalctl -u gpu-agent.service -n 30 --no-pager || true
fi

# --- 4. agentctl status on the default socket ------------------------------------

status_idle() {
    local s
    s="$(in_ct agentctl status --json)" &&
        [ "$(jq -r .current_digest <<<"$s")" = "$DIGEST" ] &&
        [ "$(jq -r .phase <<<"$s")" = idle ]
}
if wait_for 30 "agentctl status: idle on $DIGEST" status_idle; then
    st="$(in_ct agentctl status --json)"
    sock="$(in_ct stat -c '%a %U:%G' /run/gpu-agent/agent.sock)"
    if [ "$(jq -r .agent_id <<<"$st")" = "$AGENT_ID" ] && [ "$(jq -r .last_good_digest <<<"$st")" = "$DIGEST" ] &&
        [ "$sock" = "660 root:gpu-agent" ]; then
        pass "agentctl status on /run/gpu-agent/agent.sock ($sock): agent $AGENT_ID, phase idle, current = last good = ${DIGEST:0:19}…"
        in_ct agentctl status | sed 's/^/        /'
    else
        fail "agentctl status: $(jq -c . <<<"$st"); socket: $sock"
    fi
else
    fail "agentctl status did not answer idle on $DIGEST"
    detail "$(in_ct agentctl status 2>&1 || true)"
fi

# --- 5. reload ------------------------------------------------------------------

pid0="$(in_ct systemctl show -p MainPID --value gpu-agent.service)"
reloaded() {
    in_ct journalctl -u gpu-agent.service -o cat --no-pager | grep -q 'config reloaded'
}
if out="$(in_ct timeout 30 systemctl reload gpu-agent.service 2>&1)" &&
    wait_for 15 "the agent's 'config reloaded'" reloaded &&
    [ "$(in_ct systemctl show -p MainPID --value gpu-agent.service)" = "$pid0" ] &&
    in_ct systemctl is-active --quiet gpu-agent.service; then
    pass "systemctl reload: SIGHUP through ExecReload, 'config reloaded', same main pid $pid0, active"
else
    fail "systemctl reload gpu-agent"
    detail "$out"
    in_ct journalctl -u gpu-agent.service -n 10 --no-pager || true
fi
# A config that does not load: the reload fails (ExecReload runs check-config
# first), the agent is not signalled and runs on, untouched.
sighups() {
    in_ct journalctl -u gpu-agent.service -o cat --no-pager | grep -c 'SIGHUP: reloading the config' || true
}
names_broken() {
    in_ct journalctl -u gpu-agent.service -o cat --no-pager | grep -q 'zz-broken.toml'
}
hups0="$(sighups)"
in_ct sh -c 'printf "[image]\npoll_interval = \"soon\"\n" >/etc/gpu-agent/agent.d/zz-broken.toml'
if out="$(in_ct timeout 30 systemctl reload gpu-agent.service 2>&1)"; then
    fail "systemctl reload of a broken config exited 0"
elif wait_for 15 "check-config's error naming zz-broken.toml in the journal" names_broken &&
    [ "$(sighups)" = "$hups0" ] &&
    [ "$(in_ct systemctl show -p MainPID --value gpu-agent.service)" = "$pid0" ] &&
    in_ct systemctl is-active --quiet gpu-agent.service; then
    pass "systemctl reload of a broken config fails, check-config's error in the journal naming the file; the agent not signalled, same main pid $pid0, active"
else
    fail "systemctl reload of a broken config: the agent was signalled or did not run on, or the journal does not name the file (SIGHUPs $hups0 -> $(sighups))"
    detail "$out"
    in_ct journalctl -u gpu-agent.service -n 10 --no-pager || true
fi
in_ct rm -f /etc/gpu-agent/agent.d/zz-broken.toml

# --- 6, 7. upgrade ---------------------------------------------------------------

pid1="$(in_ct systemctl show -p MainPID --value gpu-agent.service)"
inv1="$(in_ct systemctl show -p InvocationID --value gpu-agent.service)"
if out="$(in_ct dpkg -i "/debs/$DEB2" 2>&1)"; then
    # shellcheck disable=SC2016 # dpkg-query's own ${Version}
    installed="$(in_ct dpkg-query -W -f '${Version}' gpu-agent)"
    wait_for 30 "gpu-agent active after the upgrade" in_ct systemctl is-active --quiet gpu-agent.service || true
    pid2="$(in_ct systemctl show -p MainPID --value gpu-agent.service)"
    inv2="$(in_ct systemctl show -p InvocationID --value gpu-agent.service)"
    active="$(in_ct systemctl is-active gpu-agent.service 2>&1 || true)"
    if [ "$installed" = "$V2" ] && [ "$active" = active ] && [ "$pid2" != "$pid1" ] && [ "$pid2" != 0 ] &&
        [ "$inv2" != "$inv1" ] && wait_for 30 "agentctl status after the upgrade" status_idle; then
        pass "upgrade $V1 -> $V2 restarted the agent (main pid $pid1 -> $pid2), active, agentctl status idle on the same digest"
    else
        fail "upgrade to $V2: installed=$installed active=$active main pid $pid1 -> $pid2"
        detail "$out"
    fi
else
    fail "dpkg -i $DEB2"
    detail "$out"
fi
id_after="$(inspect "$WORKER" '{{ .Id }}')"
started_after="$(inspect "$WORKER" '{{ .State.StartedAt }}')"
running_after="$(inspect "$WORKER" '{{ .State.Running }}')"
if [ -n "$WORKER_ID" ] && [ "$id_after" = "$WORKER_ID" ] && [ "$started_after" = "$WORKER_STARTED" ] &&
    [ "$running_after" = true ]; then
    pass "the upgrade left the worker alone: same container ${WORKER_ID:0:12}, StartedAt $WORKER_STARTED, running"
else
    fail "the worker changed in the upgrade: id ${WORKER_ID:0:12} -> ${id_after:0:12}, StartedAt $WORKER_STARTED -> $started_after, running=$running_after"
fi

# --- 8. systemd-analyze verify ---------------------------------------------------

vrc=0
vout="$(in_ct systemd-analyze verify /usr/lib/systemd/system/gpu-agent.service 2>&1)" || vrc=$?
if [ "$vrc" = 0 ] && [ -z "$vout" ]; then
    pass "systemd-analyze verify /usr/lib/systemd/system/gpu-agent.service: no output, exit 0"
else
    fail "systemd-analyze verify (exit $vrc) printed:"
    detail "$vout"
fi

# --- 9. systemd-analyze security ---------------------------------------------------

sout="$(in_ct systemd-analyze security --no-pager gpu-agent.service 2>&1 || true)"
score="$(sed -n 's/.*Overall exposure level for gpu-agent.service: \([0-9.]*\).*/\1/p' <<<"$sout")"
if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }'; then
    pass "systemd-analyze security gpu-agent.service: exposure $score (<= 3.0): $(tail -n 1 <<<"$sout" | sed 's/.*: //')"
else
    fail "systemd-analyze security gpu-agent.service: exposure '${score:-none}', goal <= 3.0"
    detail "$(tail -n 5 <<<"$sout")"
fi

# --- 10. purge --------------------------------------------------------------------

if out="$(in_ct dpkg --purge gpu-agent 2>&1)"; then
    left="$(in_ct sh -c 'ls -d /var/lib/gpu-agent /usr/bin/gpu-agent /etc/gpu-agent/agent.toml 2>/dev/null' || true)"
    load="$(in_ct systemctl show -p LoadState --value gpu-agent.service)"
    agent_procs="$(in_ct sh -c 'pgrep -x gpu-agent; [ $? -le 1 ]')" || agent_procs="(pgrep failed)"
    if [ -z "$left" ] && [ "$load" != loaded ] && [ -z "$agent_procs" ] &&
        [ "$(inspect "$WORKER" '{{ .Id }}')" = "$WORKER_ID" ] && [ -n "$WORKER_ID" ] &&
        [ "$(inspect "$WORKER" '{{ .State.StartedAt }}')" = "$WORKER_STARTED" ] &&
        [ "$(inspect "$WORKER" '{{ .State.Running }}')" = true ] &&
        curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/cgi-bin/health"; then
        pass "dpkg --purge: agent stopped, unit $load, /var/lib/gpu-agent and the conffile gone; the worker still running, untouched"
    else
        fail "dpkg --purge: left '$left', unit $load, agent pids '$agent_procs', worker $(inspect "$WORKER" '{{ .State.Status }} {{ .State.StartedAt }}')"
    fi
else
    fail "dpkg --purge gpu-agent"
    detail "$out"
fi

echo
echo "install: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
