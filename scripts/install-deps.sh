#!/usr/bin/env bash
# Installs what building and testing tiervault needs on Debian (run as root).
# Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(
  librocksdb-dev   # RocksDB, linked instead of a 40-minute bundled C++ build
  libclang-dev     # bindgen for librocksdb-sys
  pkg-config
  fuse3            # fusermount3 and /dev/fuse for `tiervault mount`
  attr acl         # setfattr/setfacl for the metadata tests
  rsync            # copies in tests and the benchmark
  util-linux       # mount, for the full-disk test
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "installing the Rust toolchain with rustup"
    apt-get install -y -qq curl ca-certificates >/dev/null
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  }
fi
