#!/usr/bin/env bash
# Installs what is needed and runs the whole test suite (as root: the tests
# create device nodes, foreign owners and a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tiervault-target}"
cargo test --locked
