#!/bin/sh
# Running work as the JSON list shipit expects: [{"id": ..., "name": ...}, ...]
cd "$TOYQ" || exit 1
printf '['; sep=''
for f in running/*; do
  [ -e "$f" ] || continue
  id=${f#running/}
  printf '%s{"id": "%s", "name": "toy %s"}' "$sep" "$id" "$id"; sep=','
done
printf ']\n'
