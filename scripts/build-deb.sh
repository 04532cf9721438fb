#!/usr/bin/env bash
# Builds the Debian package: target/debian/gpu-agent_<version>-1_<arch>.deb.
#
#   scripts/build-deb.sh [CARGO DEB ARGS...]     e.g. --deb-revision 2, -o DIR, --fast
#
# Installs cargo-deb (cargo install --locked) when it is missing, then runs
# `cargo deb -p gpu-agent`, which makes a release build of gpu-agent and
# agentctl, refreshes their man pages and agentctl's bash/zsh/fish completions
# in packaging/ (scripts/gen-docs.sh), and packs them with the unit (systemd/gpu-agent.service), the
# commented config (packaging/agent.toml, a conffile) and the maintainer
# scripts (packaging/debian/), the Prometheus alerting rules and the Grafana
# dashboard. `cargo deb -p gpu-agent` alone makes the same package from the
# committed pages. The metadata is in agent/Cargo.toml,
# [package.metadata.deb]. Install with: apt install ./target/debian/gpu-agent_*.deb
#
# Environment:
#   CARGO_TARGET_DIR  as for cargo (the .deb lands in its debian/ unless -o says)
#   PROFILE           the cargo profile whose binaries go in (default: release;
#                     scripts/test-install.sh packs the test build's: dev)
#   NO_BUILD=1        use the binaries already built (no cargo build)
#   QUIET=1           do not list the package's info and contents
#
# Prints the path of the .deb as its last line.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "==> installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install cargo-deb --locked
fi

profile="${PROFILE:-release}"
case "$profile" in
dev | test) profile_dir=debug ;;
bench) profile_dir=release ;;
*) profile_dir="$profile" ;;
esac
target="${CARGO_TARGET_DIR:-target}"
bins="$target/$profile_dir"

if [ "${NO_BUILD:-0}" = 1 ]; then
    for b in gpu-agent agentctl gpu-fleet; do
        [ -x "$bins/$b" ] || { echo "error: $bins/$b is not built (NO_BUILD=1)" >&2; exit 1; }
    done
else
    echo "==> cargo build --profile $profile -p gpu-agent"
    cargo build --profile "$profile" -p gpu-agent
fi

# Man pages and completions come from the binaries' own clap definitions
# (committed under packaging/, so `cargo deb -p gpu-agent` alone packs them too).
echo "==> man pages and shell completions (scripts/gen-docs.sh)"
scripts/gen-docs.sh "$bins"
if [ -n "$(git status --porcelain -- packaging/man packaging/completions 2>/dev/null)" ]; then
    echo "note: packaging/man or packaging/completions changed: commit them" >&2
fi

# cargo-deb maps the assets' target/release/ to the profile's own folder.
echo "==> cargo deb -p gpu-agent --no-build --profile $profile $*"
deb="$(cargo deb -p gpu-agent --no-build --profile "$profile" "$@" | tail -n 1)"
[ -f "$deb" ] || { echo "error: cargo deb printed no package path (got: $deb)" >&2; exit 1; }
if [ "${QUIET:-0}" != 1 ]; then
    dpkg-deb --info "$deb"
    dpkg-deb --contents "$deb"
fi
echo "$deb"
