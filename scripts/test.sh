#!/usr/bin/env bash
# The test command: set up what is missing, then run the whole suite (or what "$@" selects).
#   scripts/test.sh                      everything
#   scripts/test.sh tests/unit -x        pytest arguments pass through
# The exit code is pytest's. Under CI=true a missing server fails its tests instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

# The PostgreSQL harness defaults to version 15; elsewhere use the newest one installed.
if [ -z "${SHIPIT_PG_BIN:-}" ] && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    newest="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$newest" ] && export SHIPIT_PG_BIN="$newest"
fi

# install-test-deps.sh makes a .venv where the system Python is externally managed.
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
