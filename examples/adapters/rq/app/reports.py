"""RQ jobs for the example. A stopped RQ job is killed outright (no checkpoint signal), so a
job that may be requeued by a deploy keeps its progress somewhere durable and starts from it:
here a small file per report, written after every step."""

from __future__ import annotations

import json
import time
from pathlib import Path

STATE_DIR = Path("/tmp/shipit-rq-demo-state")


def build_report(name: str, steps: int = 30) -> str:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    state = STATE_DIR / f"{name}.json"
    done = json.loads(state.read_text())["done"] if state.exists() else 0
    for step in range(done, steps):
        time.sleep(1)  # the real work of one step
        state.write_text(json.dumps({"done": step + 1}))
    return f"{name}: {steps} steps"
