#!/usr/bin/env bash
# Run the molecule scenario of the role flashcat.flashduty.change once, under .venv/newest:
# extensions/molecule/default (default driver, localhost, no containers) converges the role
# against the local Flashduty receiver and verifies what it received.
#
# Usage: tests/molecule/run.sh [molecule test options]     (from anywhere; needs .venv/newest)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
bin=$root/.venv/newest/bin
[[ -x $bin/molecule ]] || { echo "tests/molecule/run.sh: $bin/molecule not found: run \`make venv-newest\` first" >&2; exit 1; }

# Only ever talk to the local receiver: drop real Flashduty settings and callbacks from the shell.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep -E '^FLASHDUTY_[A-Za-z0-9_]*=' || true)
unset ANSIBLE_CALLBACKS_ENABLED ANSIBLE_VAULT_PASSWORD_FILE

# The collection under test is this tree, through the same symlink tests/conftest.py makes.
mkdir -p .build/collections/ansible_collections/flashcat
ln -sfn ../../../.. .build/collections/ansible_collections/flashcat/flashduty
export ANSIBLE_COLLECTIONS_PATH=$root/.build/collections
export ANSIBLE_HOME=$root/.build/molecule/ansible_home
export MOLECULE_EPHEMERAL_DIRECTORY=$root/.build/molecule/ephemeral
export PATH=$bin:$PATH
mkdir -p "$ANSIBLE_HOME" "$MOLECULE_EPHEMERAL_DIRECTORY"

start=$(date +%s)
"$bin/molecule" test --scenario-name default "$@"
echo "molecule test (scenario default): passed in $(( $(date +%s) - start ))s"
