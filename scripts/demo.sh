#!/usr/bin/env bash
# The demo deploy, on a fresh machine: jobs are running when the deploy starts, the gate closes,
# a job that arrives meanwhile waits at it, the short job finishes, the long one checkpoints and
# stops, the release switches, the long job resumes from its checkpoint on the new code and the
# waiting one runs the new release. It checks all that from the jobs' own output files and exits
# non-zero if any of it did not happen. Everything happens under $SHIPIT_DEMO_DIR
# (default /tmp/shipit-demo) through the `local` host: no SSH, no database server (SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${SHIPIT_PYTHON:-python3}
export SHIPIT_PYTHON=$PY
export SHIPIT_DEMO_DIR=${SHIPIT_DEMO_DIR:-/tmp/shipit-demo}
demo=$SHIPIT_DEMO_DIR
shipit() { "$PY" -m shipit "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ! "$PY" -c "import shipit.cli, fabric, psycopg" 2>/dev/null; then
  say "installing shipit (pip install -e .)"
  "$PY" -m pip install -q -e . 2>&1 | grep -v -i "warning" || true
fi

# Leftover jobs from an earlier demo run must not write into the fresh tree; only this demo's
# own supervisors are matched (by the demo folder in their command line), never anyone else's.
demo_re=$(printf '%s' "$demo" | sed 's/[][\\.^$*+?(){}|]/\\&/g')
pkill -f -- "shipit job run .*(--cwd $demo_re/current|--store sqlite:$demo_re/)" 2>/dev/null || true
rm -rf "$demo"
export SHIPIT_STORE="sqlite:$demo/shared/shipit/jobs.db"

say "1. first deploy of examples/app to $demo"
shipit deploy demo --yes

say "2. two jobs start on the live release (a 7 s report, an 80-item stateful crunch)"
REPORT_SECONDS=7 shipit job run --name report --cwd "$demo/current" -- sh jobs/report.sh &
CRUNCH_DELAY=0.25 shipit job run --name crunch --key crunch --cwd "$demo/current" \
  -- "$PY" jobs/crunch.py 80 > "$demo/crunch-first.out" 2>&1 &
sleep 1
shipit jobs list demo --state running

say "3. deploy again while they run: gate closes, report finishes, crunch checkpoints and stops"
shipit deploy demo --yes &
deploy_pid=$!
gate_closed() {
  shipit lock status demo --json | "$PY" -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["local"]["closed"] else 1)'
}
for _ in $(seq 1 50); do gate_closed && break; sleep 0.2; done
# cron fires mid-deploy: this run waits at the closed gate, then runs the NEW release.
REPORT_SECONDS=1 shipit job run --name report --cwd "$demo/current" -- sh jobs/report.sh &
late_pid=$!
wait "$deploy_pid"
wait "$late_pid"

say "4. crunch resumes from its checkpoint on the new release; waiting for it to finish"
for _ in $(seq 1 120); do
  running=$(shipit jobs list demo --state running --json | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))')
  [ "$running" = "0" ] && break
  sleep 0.5
done
shipit jobs list demo

say "5. what the jobs did (data/crunch.log: one line per item, with the release that processed it)"
"$PY" - "$demo" <<'PYEOF'
import collections, pathlib, sys
demo = pathlib.Path(sys.argv[1])
lines = (demo / "shared/data/crunch.log").read_text().split()
items = [int(x) for x in lines[0::2]]
releases = lines[1::2]
by_release = collections.Counter(releases)
print(f"crunch items processed: {len(items)} (distinct {len(set(items))}, expected 80)")
for release, count in by_release.items():
    first = items[releases.index(release)]
    print(f"  release {release}: {count} items, from item {first}")
current = (demo / "current").resolve().name
reports = [line.rsplit(" ", 1)[-1] for line in (demo / "shared/data/report.log").read_text().splitlines()]
print(f"report runs finished on: {', '.join(reports)}")
ok = sorted(items) == list(range(1, 81)) and len(by_release) == 2 and releases[-1] == current
ok = ok and len(reports) == 2 and reports[0] != current and reports[-1] == current
print("every item exactly once, split across the old and the new release; the report that arrived "
      "mid-deploy ran the new release: " + ("yes" if ok else "NO"))
sys.exit(0 if ok else 1)
PYEOF
