#!/usr/bin/env bash
# Everything the test suite needs, on a fresh Debian/Ubuntu machine or CI runner.
# Idempotent and quiet: it only installs what is missing, so scripts/test.sh can call it on
# every run. Needs root (or sudo) only when something has to be installed.
#
#   OS:      openssh-server (sshd test hosts), redis-server (RQ/Celery tests),
#            postgresql (throwaway clusters: initdb + pg_ctl),
#            faketime (libfaketime: the chaos suite's host clock skew) and a C compiler
#            (gcc, libc6-dev: tests/chaos/faketime_fix.c, built at run time)
#   Python:  this checkout with its [test] extras, plus redis, rq, celery, apprise
#   User:    shipit-pg, a non-root OS user: PostgreSQL refuses to run as root
set -euo pipefail
cd "$(dirname "$0")/.."

# A .venv made by an earlier run (see below) wins over the system Python.
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
say() { printf 'install-test-deps: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "need root to run: $*"
        return 1
    fi
}

have_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1
}

# --- OS packages ------------------------------------------------------------------------------
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v crontab >/dev/null 2>&1 || missing+=(cron)  # `shipit cron` tests: real crontab -l / -
# Chaos suite: a host's clock a few seconds off (LD_PRELOAD libfaketime, plus a small fix built with cc).
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(faketime)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v "$PYTHON" >/dev/null 2>&1 || missing+=(python3 python3-venv python3-pip)

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing ${missing[*]} and no apt-get here: install them with your package manager"
        exit 1
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# sshd's privilege separation directory; packages create it at boot, containers often lack it.
[ -d /run/sshd ] || as_root mkdir -p -m 0755 /run/sshd

# --- the non-root PostgreSQL user -------------------------------------------------------------
if [ "$(id -u)" -eq 0 ] && ! id -u shipit-pg >/dev/null 2>&1; then
    say "creating OS user shipit-pg (PostgreSQL will not run as root)"
    useradd --system --no-create-home --shell /usr/sbin/nologin shipit-pg
fi

# --- Python packages --------------------------------------------------------------------------
# Not in pyproject's [test] extra (they are only needed for the job-system adapter tests).
EXTRA_TEST_PACKAGES=(redis rq celery apprise)

# Run from / so that `import shipit` finds the installed package, not this directory.
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd -P)/$(basename "$PYTHON")" ;; esac
installed_from="$(cd / && "$PYTHON" -c 'import os, shipit; print(os.path.dirname(os.path.dirname(os.path.abspath(shipit.__file__))))' 2>/dev/null || true)"
deps_ok=1
(cd / && "$PYTHON" -c 'import fabric, invoke, paramiko, yaml, pydantic, click, rich, psycopg, cryptography, pytest, pytest_timeout, hypothesis, redis, rq, celery, apprise' 2>/dev/null) || deps_ok=0
(cd / && "$PYTHON" -m ruff --version >/dev/null 2>&1) || deps_ok=0

# Debian/Ubuntu's own Python refuses pip installs (PEP 668): use a .venv in the checkout;
# scripts/test.sh picks it up.
externally_managed() {
    "$PYTHON" - <<'PY'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(marker) else 1)
PY
}

if [ -z "$installed_from" ] || [ "$deps_ok" -eq 0 ]; then
    if externally_managed; then
        say "system Python is externally managed: creating .venv"
        if ! "$PYTHON" -m venv .venv >/dev/null 2>&1; then
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv .venv
        fi
        PYTHON=.venv/bin/python
    fi
    say "installing Python packages (pip install -e '.[test]' ${EXTRA_TEST_PACKAGES[*]})"
    "$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]' "${EXTRA_TEST_PACKAGES[@]}"
elif [ "$installed_from" != "$(pwd -P)" ]; then
    # Do not silently re-point someone's editable install; the tests import this checkout
    # anyway (pytest puts it first on sys.path), only `python -m shipit` on hosts may differ.
    say "note: shipit is installed from $installed_from, not $(pwd -P) (pip install -e . to switch)"
fi
