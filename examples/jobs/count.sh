#!/bin/sh
# A stateful shell job: counts items FIRST..N, appending each to OUT, and saves where it got to
# with `shipit job checkpoint`. When a deploy stops it (SIGTERM), it checkpoints the next item
# and exits; the restarted run finds that number in $SHIPIT_RESUME_STATE and carries on.
#
#   shipit job run --name count -- sh examples/jobs/count.sh N OUT
#
# $SHIPIT_CMD is how to call shipit (default `shipit`, e.g. "python3 -m shipit").
set -u
total=${1:?N}
out=${2:?OUT}
delay=${COUNT_DELAY:-0.05}
shipit=${SHIPIT_CMD:-shipit}
next=${SHIPIT_RESUME_STATE:-1}
stop=0
# The trap only sets a flag: the item in progress completes, then the loop checkpoints and exits.
trap 'stop=1' TERM
echo "count: starting at $next"
while [ "$next" -le "$total" ]; do
    if [ "$stop" = 1 ]; then
        $shipit job checkpoint "$next"
        echo "count: stopped, checkpointed at $next"
        exit 0
    fi
    echo "$next" >> "$out"
    next=$((next + 1))
    $shipit job progress "$((next - 1))" "$total"
    # sleep in the background so the TERM trap runs at once instead of after the sleep
    sleep "$delay" & wait $!
done
echo "count: done"
