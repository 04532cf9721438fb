#!/usr/bin/env bash
# Writes the man pages (packaging/man/*.1) and agentctl's and gpu-fleet's shell completions
# (packaging/completions/) from the binaries' own clap definitions. They are
# committed, so that `cargo deb -p gpu-agent` alone packs them (cargo-deb
# gzips the man pages); tests/operator.rs fails when they no longer match the
# binaries, and scripts/build-deb.sh runs this before packing.
#
#   scripts/gen-docs.sh [BIN_DIR]     BIN_DIR: where gpu-agent, agentctl and gpu-fleet are
#                                     (default: build them, target/debug)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bins="${1:-}"
if [ -z "$bins" ]; then
    cargo build -p gpu-agent --bins
    bins="${CARGO_TARGET_DIR:-target}/debug"
fi
for b in gpu-agent agentctl gpu-fleet; do
    [ -x "$bins/$b" ] || { echo "error: $bins/$b is not built" >&2; exit 1; }
done

rm -rf packaging/man packaging/completions
mkdir -p packaging/man packaging/completions
"$bins/gpu-agent" man --out packaging/man >/dev/null
"$bins/agentctl" man --out packaging/man >/dev/null
"$bins/agentctl" completions bash >packaging/completions/agentctl.bash
"$bins/agentctl" completions zsh >packaging/completions/_agentctl
"$bins/agentctl" completions fish >packaging/completions/agentctl.fish
"$bins/gpu-fleet" man --out packaging/man >/dev/null
"$bins/gpu-fleet" completions bash >packaging/completions/gpu-fleet.bash
"$bins/gpu-fleet" completions zsh >packaging/completions/_gpu-fleet
"$bins/gpu-fleet" completions fish >packaging/completions/gpu-fleet.fish
echo "wrote packaging/man/ ($(ls packaging/man | wc -l) pages) and packaging/completions/"
