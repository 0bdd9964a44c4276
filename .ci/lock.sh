#!/usr/bin/env bash
# Regenerate .ci/constraints.txt from the current .venv (after changing dependency ranges).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
{
    echo "# Exact versions tested together (pip freeze of .venv on Debian 12, Python 3.11)."
    echo "# Used as constraints by .ci/install.sh; regenerate with .ci/lock.sh."
    .venv/bin/python -m pip freeze --exclude-editable 2>/dev/null \
        | grep -v '^aiida-trainspot' | sed 's/^torch==\(.*\)+cpu$/torch==\1/'
} > .ci/constraints.txt
