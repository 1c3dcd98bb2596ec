#!/bin/sh
# One unit of work of the toy queue: registers its pid under $TOYQ/running, works SECONDS,
# unregisters. On SIGTERM it unregisters and exits 143.  Usage: work.sh ID SECONDS
cd "$TOYQ" || exit 1
mkdir -p running
echo $$ > "running/$1"
trap 'rm -f "running/$1"; echo "$1 stopped" >> events.log; exit 143' TERM
sleep "$2" & wait $!
rm -f "running/$1"
echo "$1 done" >> events.log
