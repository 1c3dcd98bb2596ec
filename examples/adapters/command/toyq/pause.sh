#!/bin/sh
# Stop new work: the toy scheduler starts nothing while `paused` holds an unexpired time.
cd "$TOYQ" && echo $(( $(date +%s) + SHIPIT_TTL )) > paused && echo "pause $SHIPIT_DEPLOY_ID" >> events.log
