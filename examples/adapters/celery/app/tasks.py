"""The Celery app of the example. Tasks a deploy may terminate keep their progress somewhere
durable and start from it when they run again (shipit sends the same name, args and kwargs)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import Celery

app = Celery("tasks", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6390/0"))
app.conf.update(
    worker_prefetch_multiplier=1,  # prefetched tasks would still start on the old code
    task_acks_late=True,           # a worker that dies mid-task gives the message back...
    task_reject_on_worker_lost=True,  # ...and shipit then does not send a copy
)
STATE_DIR = Path("/tmp/shipit-celery-demo-state")


@app.task(name="reports.build")
def build_report(name: str, steps: int = 30) -> str:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    state = STATE_DIR / f"{name}.json"
    done = json.loads(state.read_text())["done"] if state.exists() else 0
    for step in range(done, steps):
        time.sleep(1)
        state.write_text(json.dumps({"done": step + 1}))
    return f"{name}: {steps} steps"
