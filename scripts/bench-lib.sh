# Shared by the benchmark scripts (sourced from the repository root): the
# release build, and the data set of scripts/gen-bench-data.py.
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tiervault-target}"
cargo build --release --locked -q
TV="$CARGO_TARGET_DIR/release/tiervault"
B="${BENCH_DIR:-/var/tmp/tiervault-bench}"
SCALE="${BENCH_SCALE:-1}"
DATA="$B/data-v2-$SCALE"

# Generates the data set once; later runs reuse it.
bench_data() {
  if [ ! -f "$DATA/.complete" ]; then
    rm -rf "$DATA"
    mkdir -p "$B"
    echo "generating the data set in $DATA (scale $SCALE)" >&2
    python3 scripts/gen-bench-data.py "$DATA" "$SCALE"
    touch "$DATA/.complete"
  fi
}
