#!/bin/sh
# A short stateless job, the kind cron starts every few minutes:
#   shipit job run --name report --cwd /srv/app/current -- sh jobs/report.sh
set -eu
seconds=${REPORT_SECONDS:-2}
echo "report: starting on release $(basename "$(pwd -P)")"
sleep "$seconds"
mkdir -p data
date -u +"%Y-%m-%dT%H:%M:%SZ report done on $(basename "$(pwd -P)")" >> data/report.log
echo "report: done"
