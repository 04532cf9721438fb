#!/usr/bin/env bash
# Builds the test worker images (docker/test-worker) in the private engine,
# with no internet: the base image is imported from the host's busybox-static.
#
#   scripts/build-test-images.sh [VARIANT...]     default: all test variants
#
# Variants (image gpu-agent-test/worker:<variant>):
#   v1 v2 v3 broken crash hc-good hc-bad slowstop
# (The benchmark's :fat1/:fat2 images are built by scripts/bench-swap.sh.)
#
# An image is rebuilt only when missing or when its label gpu-agent-test.src-hash
# differs from the hash of docker/test-worker/ (except *.md), this script and
# /bin/busybox.
#
# Environment:
#   FORCE=1     rebuild even when up to date
#   STACK_DIR   the private stack (default: <repo>/.stack); it must be up
#               (scripts/stack.sh up)
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="$REPO_ROOT/docker/test-worker"
IMAGE=gpu-agent-test/worker
BASE_IMAGE=local/busybox:base
BUSYBOX=/bin/busybox
ALL_VARIANTS=(v1 v2 v3 broken crash hc-good hc-bad slowstop)

# variant_behaviour NAME: the VARIANT baked into the image (what it does).
variant_behaviour() {
    case "$1" in
    v1 | v2 | v3 | hc-good | hc-bad) echo good ;;
    broken | crash | slowstop) echo "$1" ;;
    *) die "unknown variant '$1' (known: ${ALL_VARIANTS[*]})" ;;
    esac
}

dk version >/dev/null 2>&1 || die "the private engine does not answer on $DOCKER_URL: run scripts/stack.sh up"
if [ ! -x "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is not a static busybox: apt-get install busybox-static"
fi

# label IMAGE KEY: an image's label, empty when the image or label is missing.
label() {
    dk image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# The hash that decides whether images are up to date.
BUSYBOX_SHA="$(sha256sum "$BUSYBOX" | cut -d' ' -f1)"
SRC_HASH="$(
    cd "$SRC"
    {
        find . -type f ! -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        # File modes matter too (the entrypoint must be executable).
        find . -type f ! -name '*.md' -printf '%m %p\n' | LC_ALL=C sort
        sha256sum <"$REPO_ROOT/scripts/build-test-images.sh"
        echo "$BUSYBOX_SHA"
    } | sha256sum | cut -c1-16
)"

LOG="$STACK_DIR/build-images.log"
: >"$LOG"

# build ARGS...: legacy builder (no BuildKit, no internet); output to the log.
build() {
    if ! DOCKER_BUILDKIT=0 dk build "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "docker build $* failed (full log: $LOG)"
    fi
}

# --- the base image: busybox-static as a root filesystem ----------------------------
if [ "$(label "$BASE_IMAGE" gpu-agent-test.busybox-sha256)" != "$BUSYBOX_SHA" ]; then
    note "importing $BASE_IMAGE from $BUSYBOX"
    tmp="$(mktemp -d "$STACK_DIR/busybox-root.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/root/bin"
    cp "$BUSYBOX" "$tmp/root/bin/busybox"
    # One link per applet; busybox itself stays a file.
    for a in $("$BUSYBOX" --list | grep -vx busybox); do
        ln -s busybox "$tmp/root/bin/$a"
    done
    tar -C "$tmp/root" -c . |
        dk import -c "LABEL gpu-agent-test.busybox-sha256=$BUSYBOX_SHA" - "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
fi

# --- the variants ------------------------------------------------------------------
variants=("$@")
[ "${#variants[@]}" -gt 0 ] || variants=("${ALL_VARIANTS[@]}")

built=() fresh=()
for v in "${variants[@]}"; do
    behaviour="$(variant_behaviour "$v")"
    if [ "${FORCE:-0}" != 1 ] && [ "$(label "$IMAGE:$v" gpu-agent-test.src-hash)" = "$SRC_HASH" ]; then
        fresh+=("$v")
        continue
    fi
    args=(--build-arg "VERSION=$v" --build-arg "VARIANT=$behaviour" --build-arg "SRC_HASH=$SRC_HASH")
    case "$v" in
    hc-good | hc-bad)
        # The worker first, then a layer with the HEALTHCHECK on top of it.
        build "${args[@]}" -t "$IMAGE:$v-nohc" "$SRC"
        build --build-arg "BASE=$IMAGE:$v-nohc" -t "$IMAGE:$v" -f "$SRC/$v.Dockerfile" "$SRC"
        dk rmi "$IMAGE:$v-nohc" >/dev/null
        ;;
    *)
        build "${args[@]}" -t "$IMAGE:$v" "$SRC"
        ;;
    esac
    built+=("$v")
done

# Earlier builds of the variants, now untagged, only take space.
if [ "${#built[@]}" -gt 0 ]; then
    dk image prune -f --filter "label=gpu-agent-test.variant" >/dev/null
fi

[ "${#built[@]}" -eq 0 ] || note "built: ${built[*]} (source hash $SRC_HASH)"
[ "${#fresh[@]}" -eq 0 ] || note "up to date: ${fresh[*]}"
