#!/usr/bin/env bash
# Builds the Debian package: target/debian/gpu-agent_<version>-1_<arch>.deb.
#
#   scripts/build-deb.sh [CARGO DEB ARGS...]     e.g. --deb-revision 2
#
# Installs cargo-deb (cargo install --locked) when it is missing, then runs
# `cargo deb -p gpu-agent`, which makes a release build of gpu-agent and
# agentctl, writes their man pages and agentctl's bash/zsh/fish completions
# into target/assets/, and packs them with the unit (systemd/gpu-agent.service), the
# commented config (packaging/agent.toml, a conffile) and the maintainer
# scripts (packaging/debian/). The metadata is in agent/Cargo.toml,
# [package.metadata.deb]. Install with: apt install ./target/debian/gpu-agent_*.deb
#
# Environment: CARGO_TARGET_DIR as for cargo (the .deb lands in its debian/).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "==> installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install cargo-deb --locked
fi

echo "==> release build"
cargo build --release -p gpu-agent
target="${CARGO_TARGET_DIR:-target}"

# Man pages and completions come from the binaries' own clap definitions.
echo "==> man pages and shell completions"
assets=target/assets # where agent/Cargo.toml's assets expect them, whatever CARGO_TARGET_DIR says
rm -rf "$assets" && mkdir -p "$assets/man" "$assets/completions"
"$target/release/gpu-agent" man --out "$assets/man" >/dev/null
"$target/release/agentctl" man --out "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.1
"$target/release/agentctl" completions bash >"$assets/completions/agentctl.bash"
"$target/release/agentctl" completions zsh >"$assets/completions/_agentctl"
"$target/release/agentctl" completions fish >"$assets/completions/agentctl.fish"

echo "==> cargo deb -p gpu-agent --no-build"
cargo deb -p gpu-agent --no-build "$@"

deb="$(ls -t "$target"/debian/gpu-agent_*.deb | head -n 1)"
echo "==> $deb"
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"
