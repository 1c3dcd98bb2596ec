#!/bin/sh
# SIGTERM each item shipit names (it waits for them to leave the list, then checks again).
cd "$TOYQ" || exit 1
for id in $SHIPIT_ITEMS; do
  [ -e "running/$id" ] && kill -TERM "$(cat "running/$id")"
done
exit 0
