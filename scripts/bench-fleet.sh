#!/usr/bin/env bash
# Benchmark (not a test): 1,000 simulated hosts rolling out through a real
# 3-member etcd on loopback (issue 14's "Scale"). agent/examples/fleet_sim.rs
# (feature `sim`) runs every host's real update core (check, pull, the fleet
# slot, drain, swap, verify, commit or rollback, its journal on disk) and real
# fleet gate (lease, watches, slot queue, canaries, halts) on a fake engine,
# whose new worker must stay up BENCH_SWAP before it is verified, and prints, for each
# max_unavailable: the time to roll the whole fleet, the most hosts ever
# unavailable at once (it fails if that passes the cap), etcd requests per host
# per minute idle and while rolling, the time from `rollout start` to the first
# drain, and how many hosts a bad digest reached before the halt (1 canary; none).
#
#   scripts/bench-fleet.sh
#
# Environment:
#   BENCH_HOSTS=1000            simulated hosts
#   BENCH_MAX_UNAVAILABLE=1%,5%,10%
#   BENCH_SWAP=2s               drain + swap + verify of one host
#   BENCH_BAKE=5s               the canary's bake in the good rollout
#   BENCH_IDLE=60s              how long the idle fleet is measured
#   BENCH_STALL=120s            a rollout with no host finishing this long fails
#   ETCD_BASE=24790             etcd ports: clients BASE+1..3, peers BASE+11..13
#   BENCH_DIR=target/bench-fleet   etcd data and logs (removed first)
#
# Exit status: 0 when every setting was measured and never passed its cap.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${BENCH_DIR:-target/bench-fleet}"
rm -rf "$dir" && mkdir -p "$dir"
# 1,000 hosts hold a few thousand sockets and watch streams.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "==> building the simulation (release)"
cargo build --release -p gpu-agent --features sim --example fleet_sim
bin="${CARGO_TARGET_DIR:-target}/release/examples/fleet_sim"

echo "==> a 3-member etcd on loopback"
endpoints="$(scripts/etcd.sh up "$dir/etcd" "${ETCD_BASE:-24790}")"
trap 'scripts/etcd.sh down "$dir/etcd"' EXIT
echo "$endpoints"

echo "==> $(nproc) CPUs, etcd $(etcd --version | head -n 1)"
"$bin" --etcd "$endpoints" \
    --hosts "${BENCH_HOSTS:-1000}" \
    --max-unavailable "${BENCH_MAX_UNAVAILABLE:-1%,5%,10%}" \
    --swap "${BENCH_SWAP:-2s}" \
    --bake "${BENCH_BAKE:-5s}" \
    --idle "${BENCH_IDLE:-60s}" \
    --stall "${BENCH_STALL:-120s}" \
    --state "$dir/hosts"
