#!/bin/sh
cd "$TOYQ" && rm -f paused && echo resume >> events.log
