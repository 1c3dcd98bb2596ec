"""Chaos suite: randomized trials of deploys, jobs and faults against real hosts and stores.

`python -m tests.chaos.run --trials N --seed S` (see docs/chaos.md).
"""
