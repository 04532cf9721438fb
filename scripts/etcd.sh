#!/usr/bin/env bash
# A 3-member etcd cluster on loopback (Debian's etcd-server), for the fleet
# benchmark, the demo and trying gpu-fleet by hand.
#
#   scripts/etcd.sh up DIR [BASE]   members e1..e3: clients on 127.0.0.1:BASE+1..3,
#                                   peers on BASE+11..13 (BASE default 24790)
#   scripts/etcd.sh endpoints DIR   the client URLs, comma-separated
#   scripts/etcd.sh kill DIR N      SIGKILL member N (1..3)
#   scripts/etcd.sh start DIR N     start member N again on its data
#   scripts/etcd.sh down DIR        stop all members (the data stays in DIR)
set -euo pipefail

cmd="${1:?usage: scripts/etcd.sh up|endpoints|kill|start|down DIR [ARG]}"
dir="${2:?usage: scripts/etcd.sh $cmd DIR}"
mkdir -p "$dir"

base() { cat "$dir/base" 2>/dev/null || echo 24790; }

member() { # member N STATE
    local n="$1" state="$2" b cl
    b="$(base)"
    cl="e1=http://127.0.0.1:$((b + 11)),e2=http://127.0.0.1:$((b + 12)),e3=http://127.0.0.1:$((b + 13))"
    etcd --name "e$n" --data-dir "$dir/e$n" \
        --listen-client-urls "http://127.0.0.1:$((b + n))" --advertise-client-urls "http://127.0.0.1:$((b + n))" \
        --listen-peer-urls "http://127.0.0.1:$((b + 10 + n))" --initial-advertise-peer-urls "http://127.0.0.1:$((b + 10 + n))" \
        --initial-cluster "$cl" --initial-cluster-state "$state" --initial-cluster-token gpu-agent \
        --heartbeat-interval 50 --election-timeout 500 --quota-backend-bytes 2147483648 \
        >>"$dir/e$n.log" 2>&1 &
    echo $! >"$dir/e$n.pid"
}

endpoints() {
    local b
    b="$(base)"
    echo "http://127.0.0.1:$((b + 1)),http://127.0.0.1:$((b + 2)),http://127.0.0.1:$((b + 3))"
}

stop() { # stop N
    local pidf="$dir/e$1.pid"
    [ -f "$pidf" ] || return 0
    kill -9 "$(cat "$pidf")" 2>/dev/null || true
    rm -f "$pidf"
}

case "$cmd" in
up)
    command -v etcd >/dev/null || { echo "error: etcd not found: apt-get install etcd-server etcd-client" >&2; exit 1; }
    echo "${3:-24790}" >"$dir/base"
    state=new
    [ -d "$dir/e1" ] && state=existing
    for n in 1 2 3; do member "$n" "$state"; done
    for _ in $(seq 1 100); do
        if ETCDCTL_API=3 etcdctl --endpoints "$(endpoints)" --command-timeout 2s put /health-probe ok >/dev/null 2>&1; then
            endpoints
            exit 0
        fi
        sleep 0.2
    done
    echo "error: etcd did not become healthy; see $dir/e*.log" >&2
    exit 1
    ;;
endpoints) endpoints ;;
kill) stop "${3:?member number}" ;;
start) member "${3:?member number}" existing ;;
down) for n in 1 2 3; do stop "$n"; done ;;
*) echo "usage: scripts/etcd.sh up|endpoints|kill|start|down DIR [ARG]" >&2; exit 2 ;;
esac
