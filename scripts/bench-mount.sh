#!/usr/bin/env bash
# Benchmarks `tiervault mount` against `restic mount` and `borg mount` on the
# repositories that scripts/bench.sh leaves behind (run that first), in one
# run, and prints a Markdown table.
#
# Each step starts with a dropped page cache (when permitted). The time from
# starting a mount to the first listing of the backed-up tree is measured
# BENCH_FIRST_ROUNDS times (5), the tools taking turns, and `cat` of the
# 1 GiB file BENCH_CAT_ROUNDS times (3); the table gives medians, and the
# samples follow it. `ls -lR` and `tar cf - | cat` of the tree run once,
# and the mount process's peak RSS is that of the mount they ran in.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
W="$B/work"
for r in tv restic borg; do
  [ -d "$W/$r" ] || { echo "no $W/$r: run scripts/bench.sh first" >&2; exit 1; }
done
M="$B/mnt"
mkdir -p "$M"
FIRST_ROUNDS=${BENCH_FIRST_ROUNDS:-5}
CAT_ROUNDS=${BENCH_CAT_ROUNDS:-3}
TOOLS=(tiervault restic borg)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
median() { python3 -c "import statistics, sys; print(f'{statistics.median(float(a) for a in sys.argv[1:]):.2f}')" "$@"; }
declare -A R S

rel=${DATA#/}
archive=$(BORG_PASSPHRASE=bench BORG_BASE_DIR="$W/borg-base" borg list --short "$W/borg" | tail -n 1)
# inside NAME: the data set's path in NAME's mount.
inside() {
  case $1 in
    tiervault) echo "$M/latest/$rel" ;;
    restic) echo "$M/snapshots/latest/$rel" ;;
    borg) echo "$M/$rel" ;;
  esac
}
# start NAME: starts NAME's mount on a dropped page cache and returns once
# the data set lists; sets FIRST (seconds) and PID.
start() {
  local name=$1 vars cmd
  case $name in
    tiervault) vars=(TIERVAULT_PASSWORD=bench TIERVAULT_CACHE_DIR="$W/tv-cache"); cmd=("$TV" -r "$W/tv" mount "$M") ;;
    restic) vars=(RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$W/restic-cache"); cmd=(restic -r "$W/restic" mount "$M") ;;
    borg) vars=(BORG_PASSPHRASE=bench BORG_BASE_DIR="$W/borg-base"); cmd=(borg mount -f "$W/borg::$archive" "$M") ;;
  esac
  fusermount3 -u -z "$M" 2>/dev/null || true
  drop
  local t0 deadline=$((SECONDS + 300)) in; in=$(inside "$name")
  t0=$(now)
  (export "${vars[@]}"; exec /usr/bin/time -f "%M" -o "$B/$name.rss" "${cmd[@]}") >"$B/$name.mount.log" 2>&1 &
  PID=$!
  until ls "$in" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || { echo "$name: mount did not come up" >&2; cat "$B/$name.mount.log" >&2; exit 1; }
    sleep 0.01
  done
  FIRST=$(since "$t0")
}
stop() { fusermount3 -u "$M" || fusermount3 -u -z "$M"; wait "$PID" || true; }
# timed KEY COMMAND...: runs COMMAND on a dropped page cache and appends its
# time to the samples S[KEY].
timed() { local key=$1 s; shift; drop; s=$(now); timeout 600 "$@" >/dev/null 2>&1; S[$key]+="$(since "$s") "; }

for ((round = 1; round <= FIRST_ROUNDS; round++)); do
  for t in "${TOOLS[@]}"; do
    start "$t"; S[$t.first]+="$FIRST "; stop
  done
done
for t in "${TOOLS[@]}"; do
  start "$t"
  in=$(inside "$t")
  for ((round = 1; round <= CAT_ROUNDS; round++)); do timed "$t.cat" cat "$in/big-1GiB.bin"; done
  timed "$t.ls" ls -lR "$in"
  timed "$t.tar" sh -c "tar cf - -C '$in' . | cat >/dev/null"
  stop
  for k in first cat ls tar; do R[$t.$k]=$(median ${S[$t.$k]}); done
  R[$t.rss]=$(( $(tail -n 1 "$B/$t.rss") / 1024 ))
  echo "$t: first ${R[$t.first]} s (${S[$t.first]% }), cat ${R[$t.cat]} s (${S[$t.cat]% }), ls -lR ${R[$t.ls]} s, tar ${R[$t.tar]} s, RSS ${R[$t.rss]} MiB" >&2
done

ratio() { python3 -c "print(f'{$1/$2:.1f}x')"; }
cat <<TXT

Mounts of the same data set ($(find "$DATA" -type f | wc -l) files), one run, page cache dropped before each step; first listing the median of $FIRST_ROUNDS and \`cat\` of $CAT_ROUNDS, the tools taking turns.

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

Samples (s): $(for t in "${TOOLS[@]}"; do printf '%s first %s, cat %s; ' "$t" "${S[$t.first]% }" "${S[$t.cat]% }"; done)
TXT
