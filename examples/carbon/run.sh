#!/usr/bin/env bash
# The README's main command: set up a fresh machine and run the carbon example.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash .ci/install.sh
export AIIDA_PATH="${AIIDA_PATH:-$root/.aiida}"
venv="${TRAINSPOT_VENV:-$root/.venv}"
if ! "$venv/bin/verdi" profile show >/dev/null 2>&1; then
    "$venv/bin/verdi" presto --use-zeromq
fi
exec "$venv/bin/aiida-trainspot" example carbon
