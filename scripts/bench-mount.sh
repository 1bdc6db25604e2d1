#!/usr/bin/env bash
# Benchmarks `tiervault mount` against `restic mount` and `borg mount` on the
# repositories that scripts/bench.sh leaves behind (run that first), in one
# run, and prints a Markdown table.
#
# Each step starts with a dropped page cache (when permitted): time from
# starting the mount to the first listing of the backed-up tree, `cat` of
# the 1 GiB file, `ls -lR` and `tar cf - | cat` of the tree, and the mount
# process's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
W="$B/work"
for r in tv restic borg; do
  [ -d "$W/$r" ] || { echo "no $W/$r: run scripts/bench.sh first" >&2; exit 1; }
done
M="$B/mnt"
mkdir -p "$M"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
declare -A R
# run_tool NAME INSIDE START-COMMAND...: INSIDE is the data set's path in the mount.
run_tool() {
  local name=$1 inside=$2; shift 2
  fusermount3 -u -z "$M" 2>/dev/null || true
  drop
  local t0; t0=$(now)
  /usr/bin/time -f "%M" -o "$B/$name.rss" "$@" >"$B/$name.mount.log" 2>&1 &
  local pid=$!
  local deadline=$((SECONDS + 300))
  until ls "$inside" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || { echo "$name: mount did not come up" >&2; cat "$B/$name.mount.log" >&2; exit 1; }
    sleep 0.01
  done
  R[$name.first]=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
  step() { local key=$1; shift; drop; local s; s=$(now); timeout 600 "$@" >/dev/null 2>&1; R[$name.$key]=$(python3 -c "print(f'{$(now) - $s:.2f}')"); }
  step cat cat "$inside/big-1GiB.bin"
  step ls ls -lR "$inside"
  step tar sh -c "tar cf - -C '$inside' . | cat >/dev/null"
  fusermount3 -u "$M" || fusermount3 -u -z "$M"
  wait "$pid" || true
  R[$name.rss]=$(( $(tail -n 1 "$B/$name.rss") / 1024 ))
  echo "$name: first ${R[$name.first]} s, cat ${R[$name.cat]} s, ls -lR ${R[$name.ls]} s, tar ${R[$name.tar]} s, RSS ${R[$name.rss]} MiB" >&2
}

rel=${DATA#/}
TIERVAULT_PASSWORD=bench TIERVAULT_CACHE_DIR="$W/tv-cache" run_tool tiervault "$M/latest/$rel" "$TV" -r "$W/tv" mount "$M"
RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$W/restic-cache" run_tool restic "$M/snapshots/latest/$rel" restic -r "$W/restic" mount "$M"
archive=$(BORG_PASSPHRASE=bench BORG_BASE_DIR="$W/borg-base" borg list --short "$W/borg" | tail -n 1)
BORG_PASSPHRASE=bench BORG_BASE_DIR="$W/borg-base" run_tool borg "$M/$rel" borg mount -f "$W/borg::$archive" "$M"

ratio() { python3 -c "print(f'{$1/$2:.1f}x')"; }
cat <<TXT

Mounts of the same data set ($(find "$DATA" -type f | wc -l) files), one run, page cache dropped before each step.

| | first listing | cat 1 GiB | ls -lR | tar \\| cat | peak RSS |
|---|---|---|---|---|---|
| tiervault mount | ${R[tiervault.first]} s | ${R[tiervault.cat]} s | ${R[tiervault.ls]} s | ${R[tiervault.tar]} s | ${R[tiervault.rss]} MiB |
| restic mount | ${R[restic.first]} s | ${R[restic.cat]} s | ${R[restic.ls]} s | ${R[restic.tar]} s | ${R[restic.rss]} MiB |
| borg mount | ${R[borg.first]} s | ${R[borg.cat]} s | ${R[borg.ls]} s | ${R[borg.tar]} s | ${R[borg.rss]} MiB |

| ratio (other / tiervault) | target | restic | borg |
|---|---|---|---|
| first listing | at least 5x both | $(ratio "${R[restic.first]}" "${R[tiervault.first]}") | $(ratio "${R[borg.first]}" "${R[tiervault.first]}") |
| cat 1 GiB | 5x restic, 2x borg | $(ratio "${R[restic.cat]}" "${R[tiervault.cat]}") | $(ratio "${R[borg.cat]}" "${R[tiervault.cat]}") |
| ls -lR | 5x restic | $(ratio "${R[restic.ls]}" "${R[tiervault.ls]}") | $(ratio "${R[borg.ls]}" "${R[tiervault.ls]}") |
| tar | 3x restic | $(ratio "${R[restic.tar]}" "${R[tiervault.tar]}") | $(ratio "${R[borg.tar]}" "${R[tiervault.tar]}") |
TXT
