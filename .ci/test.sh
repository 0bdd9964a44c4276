#!/usr/bin/env bash
# The README's test command: install everything (idempotent), then lint, build the
# docs (warnings are errors) and run the whole test suite, slow tests included.
# Extra arguments go to pytest. Any failure, or pytest collecting no test, exits non-zero.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash .ci/install.sh
venv="${TRAINSPOT_VENV:-$root/.venv}"
if [ "${CI:-}" = "true" ]; then
    # in CI the PostgreSQL/RabbitMQ tests must run, never skip
    export TRAINSPOT_REQUIRE_SERVICES="${TRAINSPOT_REQUIRE_SERVICES:-1}"
    echo "[test] CI=true: full suite, services required"
fi
echo "[test] ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
echo "[test] docs"
"$venv/bin/sphinx-build" -q -W --keep-going -b html docs docs/_build/html
echo "[test] pytest"
# pytest exits 5 when it collects no test: set -e turns that into a failure too
"$venv/bin/pytest" -p no:cacheprovider --durations=15 "$@"
