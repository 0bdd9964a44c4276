#!/usr/bin/env bash
# The README's main command: set up a fresh machine and run the carbon example end to end
# (Debian packages and the Python environment, an AiiDA profile with its localhost computer,
# codes and pseudopotentials, then the campaign, its plots and exports).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash .ci/install.sh
export AIIDA_PATH="${AIIDA_PATH:-$root/.aiida}"
venv="${TRAINSPOT_VENV:-$root/.venv}"
"$venv/bin/aiida-trainspot" setup -e C
exec "$venv/bin/aiida-trainspot" example carbon "$@"
