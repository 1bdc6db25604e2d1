#!/usr/bin/env bash
# The main job on the embedded default: builds tiervault, creates a local
# vault, backs up a sample tree twice, lists the revisions, restores one and
# checks the restore against the source, mounts the vault and reads from it,
# then says where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tiervault-target}"
cargo build --release --locked
tv="$CARGO_TARGET_DIR/release/tiervault"

demo="${TIERVAULT_DEMO_DIR:-/tmp/tiervault-demo}"
rm -rf "$demo"
mkdir -p "$demo"
vault="$demo/vault"
export TIERVAULT_CACHE_DIR="$demo/cache"
export TIERVAULT_PASSWORD_FILE="$demo/password"
head -c 24 /dev/urandom | base64 > "$TIERVAULT_PASSWORD_FILE"
chmod 600 "$TIERVAULT_PASSWORD_FILE"

# The sample: this machine's documentation tree, plus a sparse file.
sample="$demo/sample"
mkdir -p "$sample"
cp -a /usr/share/doc "$sample/doc"
truncate -s 256M "$sample/sparse-disk-image"
echo "first version" > "$sample/notes.txt"

echo "== init"
"$tv" -r "$vault" init
echo "== first backup"
"$tv" -r "$vault" backup "$sample" --tag demo
echo "second version" > "$sample/notes.txt"
echo "== second backup (only the change is read)"
"$tv" -r "$vault" backup "$sample" --tag demo
echo "== revisions"
"$tv" -r "$vault" revisions
first=$("$tv" -r "$vault" --json revisions | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["name"])')
echo "== restore the first revision"
"$tv" -r "$vault" restore "$first:$sample" --target "$demo/restored"
echo "first version" > "$demo/expected-notes"
diff -r --no-dereference -x notes.txt "$sample" "$demo/restored"
cmp "$demo/expected-notes" "$demo/restored/notes.txt"
echo "restored tree matches the source (notes.txt is the first version)"
echo "== check"
"$tv" -r "$vault" check --read-data

echo "== mount: every revision as a directory"
mnt="$demo/mnt"
mkdir -p "$mnt"
"$tv" -r "$vault" mount "$mnt" &
mount_pid=$!
for _ in $(seq 100); do [ -e "$mnt/latest" ] && break; sleep 0.1; done
ls -l "$mnt" "$mnt/revisions"
echo "history of notes.txt:"
for v in "$mnt/history$sample/notes.txt"/*; do echo "  $(basename "$v"): $(cat "$v")"; done
cp -a "$mnt/latest$sample" "$demo/copied-from-mount"
diff -r --no-dereference "$sample" "$demo/copied-from-mount"
echo "cp -a out of the mount matches the source"
fusermount3 -u "$mnt"
wait "$mount_pid"
echo "unmounted"

cat <<TXT

Everything is under $demo:
  vault (the repository)    $vault
  password file             $TIERVAULT_PASSWORD_FILE
  local cache (disposable)  $TIERVAULT_CACHE_DIR
  the sample tree           $sample
  the restored revision     $demo/restored
  a copy made with cp -a out of the mount  $demo/copied-from-mount
  a mount point             $mnt  (mount with: $tv -r $vault mount $mnt)
  the binary                $tv

Try: TIERVAULT_PASSWORD_FILE=$TIERVAULT_PASSWORD_FILE $tv -r $vault ls latest:$sample -l
TXT
