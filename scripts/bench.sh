#!/usr/bin/env bash
# Benchmarks tiervault against restic and borg (Debian's packages) and plain
# `cp -a` on one data set, in one run, and prints a Markdown table.
#
#   bash scripts/bench.sh            # full data set (about 2 GiB, 54,000 files)
#   BENCH_SCALE=0.1 bash scripts/bench.sh   # a tenth, for a quick look
#
# Each step runs with a cold page cache when the kernel lets us drop it
# (root, /proc/sys/vm/drop_caches writable), otherwise warm; the table says
# which. Times are wall-clock seconds; RSS is the peak of the process.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
bash scripts/install-deps.sh
for p in restic borgbackup time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || { apt-get update -qq; apt-get install -y -qq "$p" >/dev/null; }
done
. scripts/bench-lib.sh
bench_data
W="$B/work"
rm -rf "$W"
mkdir -p "$W"

cache_mode="warm"
drop() {
  sync
  if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then cache_mode="cold"; fi
}

# measure NAME CMD...: runs CMD, records seconds and peak RSS (KiB).
declare -A SEC RSS
measure() {
  local name=$1; shift
  drop
  local out
  out=$( { /usr/bin/time -f "%e %M" "$@" >/dev/null 2>"$W/$name.err"; } 2>&1 ) || true
  # /usr/bin/time appends its line to the command's stderr file.
  out=$(tail -n 1 "$W/$name.err")
  if ! [[ "$out" =~ ^[0-9.]+\ [0-9]+$ ]]; then
    echo "$name failed:" >&2; tail -n 5 "$W/$name.err" >&2; exit 1
  fi
  SEC[$name]=${out% *}
  RSS[$name]=${out#* }
  echo "$name: ${SEC[$name]} s, $((${RSS[$name]} / 1024)) MiB" >&2
}
size_of() { du -sb "$1" | cut -f1; }

files=$(find "$DATA" -type f | wc -l)
bytes=$(du -sb --exclude=.complete "$DATA" | cut -f1)

# cp -a: the physical limit of the disk.
measure cp cp -a "$DATA" "$W/cp-copy"
rm -rf "$W/cp-copy"

# tiervault
export TIERVAULT_PASSWORD=bench TIERVAULT_CACHE_DIR="$W/tv-cache"
"$TV" -r "$W/tv" init -q
measure tv_backup "$TV" -r "$W/tv" -q backup "$DATA"
measure tv_rebackup "$TV" -r "$W/tv" -q backup "$DATA"
measure tv_restore "$TV" -r "$W/tv" -q restore "latest:$DATA" --target "$W/tv-restore"
diff -r "$DATA" "$W/tv-restore" >/dev/null || { echo "tiervault restore differs from the source" >&2; exit 1; }
tv_size=$(size_of "$W/tv")
rm -rf "$W/tv-restore"

# restic
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$W/restic-cache"
restic -r "$W/restic" init -q
measure restic_backup restic -r "$W/restic" -q backup "$DATA"
measure restic_rebackup restic -r "$W/restic" -q backup "$DATA"
measure restic_restore restic -r "$W/restic" -q restore latest --target "$W/restic-restore"
restic_size=$(size_of "$W/restic")
rm -rf "$W/restic-restore"

# borg (repokey encryption, default lz4 compression)
export BORG_PASSPHRASE=bench BORG_BASE_DIR="$W/borg-base" BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
borg init -e repokey "$W/borg"
measure borg_backup borg create "$W/borg::one" "$DATA"
measure borg_rebackup borg create "$W/borg::two" "$DATA"
mkdir -p "$W/borg-restore"
measure borg_restore sh -c "cd '$W/borg-restore' && borg extract '$W/borg::two'"
borg_size=$(size_of "$W/borg")
rm -rf "$W/borg-restore"

mib() { echo "$(( $1 / 1048576 )) MiB"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
cat <<TXT

Data set: $files files, $(mib "$bytes") (scale $SCALE); page cache: $cache_mode; $(nproc) cores.
tiervault $("$TV" --version | cut -d' ' -f2), $(restic version | cut -d' ' -f1-2), $(borg --version).

| | first backup | unchanged re-backup | restore | repository size | peak RSS (backup) |
|---|---|---|---|---|---|
| tiervault | ${SEC[tv_backup]} s | ${SEC[tv_rebackup]} s | ${SEC[tv_restore]} s | $(mib "$tv_size") | $((${RSS[tv_backup]} / 1024)) MiB |
| restic | ${SEC[restic_backup]} s | ${SEC[restic_rebackup]} s | ${SEC[restic_restore]} s | $(mib "$restic_size") | $((${RSS[restic_backup]} / 1024)) MiB |
| borg | ${SEC[borg_backup]} s | ${SEC[borg_rebackup]} s | ${SEC[borg_restore]} s | $(mib "$borg_size") | $((${RSS[borg_backup]} / 1024)) MiB |
| cp -a | ${SEC[cp]} s | | | | |

| ratio | target | measured |
|---|---|---|
| restic first backup / tiervault | at least 2x | $(ratio "${SEC[restic_backup]}" "${SEC[tv_backup]}") |
| restic re-backup / tiervault | at least 2x | $(ratio "${SEC[restic_rebackup]}" "${SEC[tv_rebackup]}") |
| tiervault restore / cp -a | at most 1.15x | $(ratio "${SEC[tv_restore]}" "${SEC[cp]}") |
TXT
