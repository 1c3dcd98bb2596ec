#!/bin/sh
# Start each interrupted item again, detached from shipit's command.
cd "$TOYQ" || exit 1
for id in $SHIPIT_ITEMS; do
  echo "requeue $id" >> events.log
  setsid sh "$TOYQ_BIN/work.sh" "$id" 30 </dev/null >/dev/null 2>&1 &
done
