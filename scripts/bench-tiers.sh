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
declare -A SEC
measure() {
  local name=$1; shift
  drop
  local s; s=$(date +%s.%N)
  "$@" >/dev/null 2>"$W/$name.err" || { echo "$name failed:" >&2; tail -5 "$W/$name.err" >&2; exit 1; }
  SEC[$name]=$(python3 -c "print(f'{$(date +%s.%N) - $s:.2f}')")
  echo "$name: ${SEC[$name]} s" >&2
}

# Backup: 1 tier, then 3 tiers (separate repositories and caches).
TIERVAULT_CACHE_DIR="$W/c1" "$TV" -q -r "$LOCAL-1" init
measure one env TIERVAULT_CACHE_DIR="$W/c1" "$TV" -q -r "$LOCAL-1" backup "$DATA"
TIERVAULT_CACHE_DIR="$W/c3" "$TV" -q -r "$LOCAL" -r "$SFTP" -r "$S3LOC" init
measure three env TIERVAULT_CACHE_DIR="$W/c3" "$TV" -q -r "$LOCAL" -r "$SFTP" -r "$S3LOC" backup "$DATA"

# Restore: the slow tier (bandwidth-limited SFTP) listed first.
SLOW="${BENCH_SLOW:-20MiB}"
SLOWLOC="$SFTP&bandwidth=$SLOW"
restore() { local name=$1; shift; rm -rf "$W/r"; measure "$name" env TIERVAULT_CACHE_DIR="$W/c-$name" "$TV" -q "$@" restore "latest:$DATA" --target "$W/r"; }
restore fast -r "$LOCAL"
restore both -r "$SLOWLOC" -r "$LOCAL"
restore slow -r "$SLOWLOC"
diff -rq "$DATA" "$W/r" >/dev/null || { echo "the restore differs from the source" >&2; exit 1; }
rm -rf "$W/r"

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
cat <<TXT

Tiers on 127.0.0.1 ($(find "$DATA" -type f | wc -l) files, $(du -sh --exclude=.complete "$DATA" | cut -f1)), one run, page cache dropped before each step.

| step | time | ratio |
|---|---|---|
| backup to 1 tier (local) | ${SEC[one]} s | 1.00x |
| backup to 3 tiers (local, SFTP, S3) | ${SEC[three]} s | $(ratio "${SEC[three]}" "${SEC[one]}") (target: at most 1.30x) |
| restore from the fast tier alone (local) | ${SEC[fast]} s | 1.00x |
| restore with the slow tier ($SLOW/s SFTP) listed first, and the fast one | ${SEC[both]} s | $(ratio "${SEC[both]}" "${SEC[fast]}") (target: close to 1x) |
| restore from the slow tier alone | ${SEC[slow]} s | $(ratio "${SEC[slow]}" "${SEC[fast]}") |
TXT
