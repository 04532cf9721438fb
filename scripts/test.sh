#!/usr/bin/env bash
# The test command (README, CI): everything the integration tests need, then the
# whole test suite against a real Docker engine and registry on loopback.
#
#   scripts/test.sh [CARGO TEST ARGS...] [-- TEST BINARY ARGS...]
#
#   scripts/test.sh                   all tests
#   scripts/test.sh registry          only tests whose name contains "registry"
#   scripts/test.sh --test swap -- --nocapture
#
# Steps: install missing Debian packages (docker.io docker-registry busybox-static gcc libc6-dev
# apache2-utils curl debootstrap jq prometheus: promtool and a Prometheus for
# tests/monitoring.rs), start the private stack (scripts/stack.sh up), build the
# test worker images, export the stack's variables (scripts/stack.sh env:
# DOCKER_HOST, GPU_AGENT_TEST_DOCKER_HOST, GPU_AGENT_TEST_REGISTRY,
# GPU_AGENT_TEST_REGISTRY_BIN), build all targets once with the failpoints
# feature, run `cargo test`, then the install test (scripts/test-install.sh:
# the .deb, packed from the binaries just built, installed into Debian 12 with
# systemd in a container), and stop the stack on exit.
#
# Environment:
#   TEST_THREADS   test threads per test binary (default: 4)
#   KEEP_STACK=1   leave the stack running afterwards (then: eval "$(scripts/stack.sh env)")
#   INSTALL_TEST=0|1  skip / run the install test (default: run it unless
#                  cargo test arguments were given, e.g. a test name filter)
#   STACK_DIR, REGISTRY_PORT   see scripts/stack.sh
#
# Exit status: cargo's (the build's when it fails, else the tests'), else the
# install test's.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

# Cargo's own arguments come before a `--`, the test binaries' after it.
cargo_args=() bin_args=()
seen_dashes=0
for a in "$@"; do
    if [ "$seen_dashes" = 0 ] && [ "$a" = "--" ]; then
        seen_dashes=1
    elif [ "$seen_dashes" = 0 ]; then
        cargo_args+=("$a")
    else
        bin_args+=("$a")
    fi
done

# shellcheck disable=SC2317 # called through the trap
# On exit, whatever happened: stop the stack (unless asked to keep it) and keep
# the exit status.
on_exit() {
    local rc=$?
    if [ "${KEEP_STACK:-0}" = 1 ]; then
        section "Stack kept running (KEEP_STACK=1)"
        note "use it with: eval \"\$(scripts/stack.sh env)\"; stop it with: scripts/stack.sh down"
    else
        section "Stopping the stack"
        "$REPO_ROOT/scripts/stack.sh" down || warn "stack.sh down failed"
    fi
    exit "$rc"
}

section "Prerequisites"
ensure_packages docker.io docker-registry busybox-static apache2-utils curl gcc libc6-dev debootstrap jq prometheus etcd-server etcd-client protobuf-compiler libprotobuf-dev
ensure_cargo
note "$(cargo --version)"

section "Private Docker engine and registry"
trap on_exit EXIT
"$REPO_ROOT/scripts/stack.sh" up

section "Test worker images"
"$REPO_ROOT/scripts/build-test-images.sh"

eval "$("$REPO_ROOT/scripts/stack.sh" env)"
export DOCKER_HOST GPU_AGENT_TEST_DOCKER_HOST GPU_AGENT_TEST_REGISTRY GPU_AGENT_TEST_REGISTRY_BIN
note "DOCKER_HOST=$DOCKER_HOST"
note "GPU_AGENT_TEST_REGISTRY=$GPU_AGENT_TEST_REGISTRY"

section "Build (all targets, features gpu-agent/failpoints)"
cargo build --workspace --all-targets --features gpu-agent/failpoints

section "Tests (--test-threads=${TEST_THREADS:-4})"
rc=0
cargo test --workspace --no-fail-fast --features gpu-agent/failpoints "${cargo_args[@]}" \
    -- --test-threads="${TEST_THREADS:-4}" "${bin_args[@]}" || rc=$?

install_result=skipped
if [ "${INSTALL_TEST:-}" = 1 ] || { [ "${INSTALL_TEST:-}" != 0 ] && [ "${#cargo_args[@]}" -eq 0 ]; }; then
    # The .deb is packed from the debug binaries just built (no second build).
    install_rc=0
    PROFILE=dev NO_BUILD=1 "$REPO_ROOT/scripts/test-install.sh" || install_rc=$?
    if [ "$install_rc" -eq 0 ]; then install_result=passed; else install_result="FAILED (exit status $install_rc)"; fi
    [ "$rc" -ne 0 ] || rc="$install_rc"
fi

if [ "$rc" -eq 0 ]; then
    section "Tests passed (install test: $install_result)"
else
    section "Tests FAILED (exit status $rc; install test: $install_result)"
fi
exit "$rc"
