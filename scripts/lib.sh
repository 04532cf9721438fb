# shellcheck shell=bash
# shellcheck disable=SC2034 # variables used by the scripts that source this file
# Shared helpers for the scripts in this folder. Source it; do not run it.
#
# Sets (unless already set by the caller):
#   REPO_ROOT      the repository root (absolute)
#   STACK_DIR      the private stack's folder (default: $REPO_ROOT/.stack), made absolute
#   REGISTRY_PORT  the loopback registry's port (default: 5055)
# and derives DOCKER_SOCK, DOCKER_URL and REGISTRY_ADDR from them.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$REPO_ROOT/.stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
REGISTRY_PORT="${REGISTRY_PORT:-5055}"

DOCKER_SOCK="$STACK_DIR/docker.sock"
DOCKER_URL="unix://$DOCKER_SOCK"
REGISTRY_ADDR="127.0.0.1:$REGISTRY_PORT"

# The docker CLI, always pointed at the private engine (never at a system one).
# A user's context or DOCKER_HOST must not redirect it.
unset DOCKER_CONTEXT
dk() {
    DOCKER_HOST="$DOCKER_URL" docker "$@"
}

# --- output ------------------------------------------------------------------

# section TITLE: a visible header between the steps of a script.
section() {
    printf '\n\033[1m==> %s\033[0m\n' "$*"
}

# note TEXT: an indented line under a section.
note() {
    printf '    %s\n' "$*"
}

warn() {
    printf 'warning: %s\n' "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# --- packages ----------------------------------------------------------------

# pkg_present PKG: whether a Debian package (or what it provides) is already here.
# Checks dpkg first, then the commands the package provides, so that a machine
# with the tools installed some other way is not touched.
pkg_present() {
    local pkg="$1"
    if command -v dpkg-query >/dev/null 2>&1 &&
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        return 0
    fi
    case "$pkg" in
    docker.io) command -v dockerd >/dev/null && command -v docker >/dev/null &&
        command -v containerd >/dev/null && command -v runc >/dev/null ;;
    docker-registry) command -v docker-registry >/dev/null ;;
    apache2-utils) command -v htpasswd >/dev/null ;;
    curl) command -v curl >/dev/null ;;
    debootstrap) command -v debootstrap >/dev/null ;;
    jq) command -v jq >/dev/null ;;
    busybox-static) [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ;;
    *) return 1 ;;
    esac
}

# ensure_packages PKG...: installs the Debian packages that are missing, and only
# those (apt-get, non-interactive). Needs root when something is missing.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_present "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing[*]} and no apt-get here: install them by hand"
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root, or install them first"
    note "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_cargo: cargo is assumed present; say how to get it when it is not.
# The build's own needs come with it: etcd-client's build script runs protoc,
# which needs Google's .proto files (Debian: protobuf-compiler, libprotobuf-dev).
ensure_cargo() {
    ensure_packages protobuf-compiler libprotobuf-dev
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 && return 0
    cat >&2 <<'EOF'
error: cargo is not installed.
  Install Rust (1.85 or newer), for example with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"
  or from Debian: apt-get install -y cargo (check that its version is new enough).
EOF
    exit 1
}

# --- processes ---------------------------------------------------------------

# pid_matches PIDFILE NEEDLE: prints the pid in PIDFILE when that process is alive
# and its command line contains NEEDLE (guards against a recycled pid).
pid_matches() {
    local pidfile="$1" needle="$2" pid
    [ -s "$pidfile" ] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$needle" || return 1
    printf '%s\n' "$pid"
}

# alive PID: the process exists and is not a zombie (a daemon whose parent
# exited is reaped by PID 1, which can take a while).
alive() {
    kill -0 "$1" 2>/dev/null && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# stop_pid PID NAME [GRACE_S]: SIGTERM, wait up to GRACE_S (default 20), then SIGKILL.
stop_pid() {
    local pid="$1" name="$2" grace="${3:-20}" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < grace * 20; i++)); do
        alive "$pid" || return 0
        sleep 0.05
    done
    warn "$name (pid $pid) did not stop in ${grace}s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

# wait_for SECONDS DESCRIPTION CMD...: retries CMD every 0.2 s until it succeeds;
# returns 1 after SECONDS.
wait_for() {
    local timeout="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            warn "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# now_ms: wall clock in milliseconds.
now_ms() {
    date +%s%3N
}
