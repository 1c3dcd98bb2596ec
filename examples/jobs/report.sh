#!/bin/sh
# A short stateless job (the kind cron starts every few minutes). A deploy waits for it; if it
# is stopped anyway it simply starts again from the top on the new release.
#
#   shipit job run --name report --cwd /srv/app/current -- sh examples/jobs/report.sh [SECONDS]
set -eu
seconds=${1:-1}
echo "report: run ${SHIPIT_RUN_ID:-?} attempt ${SHIPIT_ATTEMPT:-1} in $(pwd -P)"
sleep "$seconds"
echo "report: done"
