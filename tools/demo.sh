#!/usr/bin/env bash
# `make demo`: install the built collection, start the local Flashduty receiver, run
# examples/demo/site.yml with the change_events callback enabled, show what arrived.
#
# Usage: PYTHON=.venv/newest/bin/python tools/demo.sh .build/dist/flashcat-flashduty-X.Y.Z.tar.gz
# (the Makefile builds the tarball and the venv first). Everything it writes is under .build/demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tarball=${1:?usage: tools/demo.sh COLLECTION_TARBALL}
python=${PYTHON:-.venv/newest/bin/python}
bin=$(dirname "$python")
demo=.build/demo
step=0
banner() { step=$((step + 1)); printf '\n===== [%d/6] %s\n' "$step" "$*"; }

# The demo must only ever talk to the local receiver: drop any real Flashduty settings.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep -E '^FLASHDUTY_[A-Za-z0-9_]*=' || true)
unset ANSIBLE_CALLBACKS_ENABLED ANSIBLE_COLLECTIONS_PATH ANSIBLE_VAULT_PASSWORD_FILE

receiver_pid=
stop_receiver() {
    if [[ -n $receiver_pid ]] && kill -0 "$receiver_pid" 2>/dev/null; then
        kill "$receiver_pid" 2>/dev/null || true
        wait "$receiver_pid" 2>/dev/null || true
    fi
}
trap stop_receiver EXIT

banner "Installing $tarball into $demo/collections"
rm -rf "$demo"
mkdir -p "$demo"
ANSIBLE_COLLECTIONS_PATH="$demo/collections" "$bin/ansible-galaxy" collection install --force -p "$demo/collections" "$tarball"

banner "Generating a random integration key and vault password ($demo, mode 0600)"
(
    umask 077
    "$python" -c 'import secrets; print(secrets.token_hex(16))' > "$demo/integration_key"
    "$python" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$demo/vault_password"
)
key=$(<"$demo/integration_key")
echo "integration key: ****, vault password: $demo/vault_password"

banner "Starting the local Flashduty receiver (log: $demo/receiver.log)"
FLASHDUTY_RECEIVER_KEY=$key "$python" tools/flashduty_receiver.py serve \
    --port 0 --port-file "$demo/port" --store "$demo/received.jsonl" \
    > "$demo/receiver.log" 2>&1 &
receiver_pid=$!
for _ in $(seq 100); do
    [[ -s $demo/port ]] && break
    if ! kill -0 "$receiver_pid" 2>/dev/null; then
        echo "the receiver exited; its log:" >&2
        cat "$demo/receiver.log" >&2
        exit 1
    fi
    sleep 0.1
done
port=$(tr -d '[:space:]' < "$demo/port")
[[ $port =~ ^[0-9]+$ ]] || { echo "no port in $demo/port after 10 s" >&2; cat "$demo/receiver.log" >&2; exit 1; }
echo "receiver listening on http://127.0.0.1:$port (pid $receiver_pid)"

banner "Vaulting flashduty_push_url into $demo/inventory/group_vars/all/vault.yml"
cp -R examples/demo/inventory "$demo/inventory"
mkdir -p "$demo/inventory/group_vars/all"
# The URL goes in on stdin so the key never shows in a process listing.
{
    echo '---'
    printf '%s' "http://127.0.0.1:$port/event/push/change/standard?integration_key=$key" |
        "$bin/ansible-vault" encrypt_string --vault-password-file "$demo/vault_password" \
            --stdin-name flashduty_push_url 2>/dev/null
} > "$demo/inventory/group_vars/all/vault.yml"
chmod 0600 "$demo/inventory/group_vars/all/vault.yml"
grep -q 'ANSIBLE_VAULT' "$demo/inventory/group_vars/all/vault.yml" || { echo "ansible-vault encrypt_string failed" >&2; exit 1; }
echo "flashduty_push_url: !vault | ... ($(wc -l < "$demo/inventory/group_vars/all/vault.yml") lines)"

banner "ansible-playbook examples/demo/site.yml with ANSIBLE_CALLBACKS_ENABLED=flashcat.flashduty.change_events"
rc=0
PATH="$bin:$PATH" \
ANSIBLE_COLLECTIONS_PATH="$demo/collections" \
ANSIBLE_CALLBACKS_ENABLED=flashcat.flashduty.change_events \
ANSIBLE_RETRY_FILES_ENABLED=0 \
    "$bin/ansible-playbook" -i "$demo/inventory" examples/demo/site.yml \
    --vault-password-file "$demo/vault_password" \
    -e "demo_output_dir=$PWD/$demo/output" \
    -e "demo_release=$(date -u +%Y%m%d-%H%M%S)" || rc=$?

banner "What the receiver got ($demo/received.jsonl)"
"$python" tools/flashduty_receiver.py table --store "$demo/received.jsonl" || { [[ $rc -ne 0 ]] || rc=1; }

if [[ $rc -ne 0 ]]; then
    echo "demo FAILED (exit $rc); receiver log: $demo/receiver.log" >&2
    exit "$rc"
fi
echo "demo OK"
