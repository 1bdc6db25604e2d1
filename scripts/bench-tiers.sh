#!/usr/bin/env bash
# Tier benchmark, in one run on the data set of scripts/bench.sh:
#  - backup to 1 tier (local) against 3 tiers (local, SFTP and S3 servers
#    on 127.0.0.1): reading and chunking happen once, so 3 tiers should
#    cost at most 1.3x the time of 1;
#  - restore through a slow tier (SFTP limited to BENCH_SLOW, default
#    20 MiB/s) listed first, next to a fast local one, against each alone:
#    the fast tier should be chosen without configuration.
#
#   bash scripts/bench-tiers.sh
#   BENCH_SCALE=0.1 bash scripts/bench-tiers.sh   # a tenth, for a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >&2
. scripts/bench-lib.sh
bench_data
TOOLS="${TIERVAULT_TOOLS:-$HOME/.cache/tiervault-tools}"
W="$B/tiers"
rm -rf "$W"; mkdir -p "$W/s3/bucket" /run/sshd
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Servers: sshd with the test keys, s3s-fs.
for k in ssh_host_ed25519_key client_ed25519; do
  [ -f "$TOOLS/$k" ] || ssh-keygen -q -t ed25519 -N '' -C tiervault-test -f "$TOOLS/$k"
done
SSH_PORT=$(port); S3_PORT=$(port)
cp "$TOOLS/client_ed25519.pub" "$W/authorized_keys"
cat > "$W/sshd_config" <<CFG
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $TOOLS/ssh_host_ed25519_key
AuthorizedKeysFile $W/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
PidFile $W/sshd.pid
Subsystem sftp internal-sftp
CFG
/usr/sbin/sshd -D -e -f "$W/sshd_config" 2>"$W/sshd.log" &
SSHD=$!
"$TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key benchsecret "$W/s3" 2>"$W/s3.log" &
S3=$!
trap 'kill $SSHD $S3 2>/dev/null || true' EXIT
sleep 1

export TIERVAULT_PASSWORD=bench AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret
LOCAL="$W/local"
SFTP="sftp://root@127.0.0.1:$SSH_PORT$W/sftp?key=$TOOLS/client_ed25519&known_hosts=add"
S3LOC="s3://bucket/vault?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1"
# Each step runs BENCH_ROUNDS times (default 3), the steps alternating, and
# the table gives the median: this machine's timings vary from run to run.
# Besides the wall time, it gives tiervault's CPU time (user + system)
# and the whole machine's, servers included.
ROUNDS="${BENCH_ROUNDS:-3}"
declare -A SEC CPU BUSY
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
measure() {
  local name=$1; shift
  drop
  local b0 out; b0=$(cpu_ticks)
  out=$(python3 - "$@" 2>"$W/$name.err" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.monotonic() - t
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.2f} {u.ru_utime + u.ru_stime:.2f}")
sys.exit(r.returncode)
PY
  ) || { echo "$name failed:" >&2; tail -5 "$W/$name.err" >&2; exit 1; }
  SEC[$name]+="${out% *} "; CPU[$name]+="${out#* } "
  BUSY[$name]+="$(python3 -c "print(($(cpu_ticks) - $b0) / $(getconf CLK_TCK))") "
  echo "$name: wall ${out% *} s, tiervault CPU ${out#* } s" >&2
}
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" $1; }

# Backup: 1 tier, then 3 tiers, each into a new repository and cache.
for _ in $(seq "$ROUNDS"); do
  rm -rf "$LOCAL-1" "$W/c1" "$LOCAL" "$W/sftp" "$W/s3/bucket/vault" "$W/c3"
  TIERVAULT_CACHE_DIR="$W/c1" "$TV" -q -r "$LOCAL-1" init
  measure one env TIERVAULT_CACHE_DIR="$W/c1" "$TV" -q -r "$LOCAL-1" backup "$DATA"
  TIERVAULT_CACHE_DIR="$W/c3" "$TV" -q -r "$LOCAL" -r "$SFTP" -r "$S3LOC" init
  measure three env TIERVAULT_CACHE_DIR="$W/c3" "$TV" -q -r "$LOCAL" -r "$SFTP" -r "$S3LOC" backup "$DATA"
done

# Restore: the slow tier (bandwidth-limited SFTP) listed first, on a new
# cache each time, so nothing is known about the tiers.
SLOW="${BENCH_SLOW:-20MiB}"
SLOWLOC="$SFTP&bandwidth=$SLOW"
restore() { local name=$1; shift; rm -rf "$W/r" "$W/c-$name"; measure "$name" env TIERVAULT_CACHE_DIR="$W/c-$name" "$TV" -q "$@" restore "latest:$DATA" --target "$W/r"; }
for _ in $(seq "$ROUNDS"); do
  restore fast -r "$LOCAL"
  restore both -r "$SLOWLOC" -r "$LOCAL"
done
restore slow -r "$SLOWLOC"
diff -rq "$DATA" "$W/r" >/dev/null || { echo "the restore differs from the source" >&2; exit 1; }
rm -rf "$W/r"
for k in "${!SEC[@]}"; do SEC[$k]=$(median "${SEC[$k]}"); CPU[$k]=$(median "${CPU[$k]}"); BUSY[$k]=$(median "${BUSY[$k]}"); done

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
cat <<TXT

Tiers on 127.0.0.1 ($(find "$DATA" -type f | wc -l) files, $(du -sh --exclude=.complete "$DATA" | cut -f1)), page cache dropped before each step.

| step | time | ratio | tiervault CPU | machine CPU |
|---|---|---|---|---|
| backup to 1 tier (local) | ${SEC[one]} s | 1.00x | ${CPU[one]} s | ${BUSY[one]} s |
| backup to 3 tiers (local, SFTP, S3) | ${SEC[three]} s | $(ratio "${SEC[three]}" "${SEC[one]}") (target: at most 1.30x) | ${CPU[three]} s ($(ratio "${CPU[three]}" "${CPU[one]}")) | ${BUSY[three]} s |
| restore from the fast tier alone (local) | ${SEC[fast]} s | 1.00x | ${CPU[fast]} s | ${BUSY[fast]} s |
| restore with the slow tier ($SLOW/s SFTP) listed first, and the fast one | ${SEC[both]} s | $(ratio "${SEC[both]}" "${SEC[fast]}") (target: close to 1x) | ${CPU[both]} s | ${BUSY[both]} s |
| restore from the slow tier alone (one run) | ${SEC[slow]} s | $(ratio "${SEC[slow]}" "${SEC[fast]}") | ${CPU[slow]} s | ${BUSY[slow]} s |

Times are medians of $ROUNDS runs. Machine CPU counts both cores, the SFTP
and S3 servers included; at most twice the wall time here.
TXT
