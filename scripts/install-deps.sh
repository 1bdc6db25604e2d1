#!/usr/bin/env bash
# Installs what building and testing tiervault needs on Debian (run as root).
# Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(
  librocksdb-dev   # RocksDB, linked instead of a 40-minute bundled C++ build
  libclang-dev     # bindgen for librocksdb-sys
  pkg-config
  gcc              # the linker for Rust, and ring's assembly (the AEAD)
  fuse3            # fusermount3 and /dev/fuse for `tiervault mount`
  attr acl         # setfattr/setfacl for the metadata tests
  rsync            # copies in tests and the benchmark
  util-linux       # mount, for the full-disk test
  libssl-dev       # TLS for S3 tiers (system OpenSSL, not a vendored build)
  openssh-client   # SFTP tiers connect through ssh
  openssh-server   # sshd on 127.0.0.1 for the SFTP tier tests
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

# The S3 server for the S3 tier tests, built once into a persistent directory
# (about 3.5 minutes on 2 cores) and reused by every later run.
TOOLS="${TIERVAULT_TOOLS:-$HOME/.cache/tiervault-tools}"
if [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  echo "building the s3s-fs test server into $TOOLS (once)"
  PATH="$HOME/.cargo/bin:$PATH" cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root "$TOOLS" \
    --target-dir "${CARGO_TARGET_DIR:-$HOME/.cache/tiervault-target}/tools"
fi
