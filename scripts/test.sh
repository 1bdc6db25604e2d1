#!/usr/bin/env bash
# Installs what is needed and runs the whole test suite (as root: the tests
# create device nodes, foreign owners and a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tiervault-target}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked --no-fail-fast 2>&1 | tee "$log"
# One closing line for the whole suite.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
