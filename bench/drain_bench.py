"""Deploy-side jobs benchmark: prints figures, asserts nothing.

    python bench/drain_bench.py [--backends file,sqlite,postgres] [--pg-dsn DSN] [--runs 20]
                                [--kill-runs 3] [--json PATH] [--quick]

Per backend:
- drain wake-up: a supervised job (`shipit job run -- sh -c 'sleep; date'`) is the last one
  running; drain() waits for it. Latency = drain() returning minus the job writing its last
  timestamp just before it exits (so it includes the supervisor recording the outcome).
- killed deploy: `shipit agent drain` holds the gate (ttl 3 s, renewing every 1 s) for a job
  that never ends; it is SIGKILLed and we measure until a job's claim succeeds again.
- gone deploy: the same agent with ttl 60 s, but the deploy goes (its reader closes, as when a
  cancelled or killed deploy's SSH channel closes) and the agent lives: it hands the gate back
  itself; we measure from the close until a job's claim succeeds.
Then remote commands per host for a whole redeploy with no job running (local host, sqlite).
The backends take turns run after run (load from elsewhere falls on all of them alike).
Without --pg-dsn a throwaway PostgreSQL cluster is started (tests/harness/postgres.py); without
PostgreSQL installed that backend is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import SHIPIT, SHIPIT_COMMAND, median, pct, store_urls

from shipit.gate.base import ACTIVE_STATES, ClaimSpec, Run
from shipit.gate.url import open_store
from shipit.jobs.drain import drain

KILL_TTL = 3.0
GONE_TTL = 60.0


def _env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    if url.startswith("postgres"):
        env["SHIPIT_DSN"] = url
    return env


def _job(url: str, name: str, command: list[str]) -> subprocess.Popen[bytes]:
    store_arg = "postgres" if url.startswith("postgres") else url
    return subprocess.Popen(
        [*SHIPIT, "job", "run", "--store", store_arg, "--host", "bench", "--name", name,
         "--heartbeat", "0.5", "--", *command],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(url),
        start_new_session=True,
    )


def _wait_running(store: Any, name: str) -> Run:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for r in store.list_runs(states=ACTIVE_STATES):
            if r.job == name:
                return r
        time.sleep(0.01)
    raise RuntimeError(f"job {name} never started")


def wakeup_once(url: str, store: Any, i: int, tmp: Path) -> float:
    stamp = tmp / f"exit-{abs(hash(url))}-{i}"
    proc = _job(url, f"short{i}", ["sh", "-c", f"sleep 0.4; date +%s.%N > {stamp}"])
    _wait_running(store, f"short{i}")
    result = drain(store, holder="bench", deploy_id=f"d{i}", reason="", ttl=30,
                   timeout=60, policy="wait", grace=5, emit=lambda *a, **k: None)
    returned = time.time()
    proc.wait()
    store.open_gate(result.lease.epoch, actor="bench")
    return returned - float(stamp.read_text())


def _holding_agent(url: str, store: Any, i: int, deploy_id: str, ttl: float
                   ) -> tuple[subprocess.Popen[bytes], subprocess.Popen[str]]:
    """A job that never ends, and `shipit agent drain` (policy wait) holding the gate for it."""
    job = _job(url, f"{deploy_id}-forever{i}", ["sleep", "300"])
    _wait_running(store, f"{deploy_id}-forever{i}")
    opts = {"store": url, "dsn": url if url.startswith("postgres") else None,
            "deploy_id": f"{deploy_id}{i}", "ttl": ttl, "timeout": 600, "policy": "wait",
            "reconcile": False}
    agent = subprocess.Popen([*SHIPIT, "agent", "drain"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert agent.stdin and agent.stdout
    agent.stdin.write(json.dumps(opts) + "\n")
    agent.stdin.close()
    while json.loads(agent.stdout.readline()).get("event") != "gate.closed":
        pass
    return job, agent


def _seconds_until_a_claim(store: Any, since: float) -> float:
    spec = ClaimSpec(job="probe", host="bench", command=("true",))
    while True:
        claimed = store.claim(spec)
        if isinstance(claimed, Run):
            store.finish(claimed.id, "finished", 0)
            return time.time() - since
        store.wait_gate_change(0.05)


def killed_once(url: str, store: Any, i: int) -> float:
    job, agent = _holding_agent(url, store, i, "k", KILL_TTL)
    time.sleep(1.5)  # let it renew at least once
    agent.send_signal(signal.SIGKILL)
    killed = time.time()
    agent.wait()
    try:
        return _seconds_until_a_claim(store, killed)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def gone_once(url: str, store: Any, i: int) -> float:
    job, agent = _holding_agent(url, store, i, "g", GONE_TTL)
    time.sleep(0.5)
    assert agent.stdout is not None
    agent.stdout.close()  # the deploy is gone; the agent lives on
    gone = time.time()
    try:
        return _seconds_until_a_claim(store, gone)
    finally:
        agent.wait(timeout=60)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def remote_commands_per_redeploy(tmp: Path) -> dict[str, int]:
    """host.command events (uploads excluded) of a second deploy with no job running."""
    from shipit.config.loader import load_config
    from shipit.events import EventBus, Recorder
    from shipit.runner import DeployOptions, deploy

    src = tmp / "src"
    src.mkdir(parents=True)
    (src / "app.txt").write_text("hello\n")
    cfg = tmp / "shipit.yaml"
    cfg.write_text(
        f"application: bench\nsource: {{dir: {src}}}\ndeploy_to: {tmp / 'app'}\n"
        f"shipit_command: {SHIPIT_COMMAND}\njobs: {{store: sqlite}}\n"
        "stages:\n  b: {hosts: [local]}\n"
    )
    stage = load_config(cfg).stage("b")
    deploy(stage, DeployOptions(), EventBus())
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    result = deploy(stage, DeployOptions(), bus)
    counts: dict[str, int] = {}
    for e in rec.of("host.command"):
        if not e.data.get("upload"):
            counts[e.host or "?"] = counts.get(e.host or "?", 0) + 1
    assert result.outcome == "success", result.error
    return counts


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--backends", default="file,sqlite,postgres")
    ap.add_argument("--pg-dsn")
    ap.add_argument("--runs", type=int, default=None, help="wake-ups per backend (20, quick 5)")
    ap.add_argument("--kill-runs", type=int, default=None, help="killed deploys per backend (3, quick 1)")
    args = ap.parse_args()
    runs = args.runs or (5 if args.quick else 20)
    kill_runs = args.kill_runs or (1 if args.quick else 3)
    kinds = args.backends.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="shipit-drain-bench-"))
    wake: dict[str, list[float]] = {}
    reopen: dict[str, list[float]] = {}
    handback: dict[str, list[float]] = {}
    try:
        with contextlib.ExitStack() as stack:
            new_db = None
            if "postgres" in kinds:
                new_db = ((lambda: args.pg_dsn) if args.pg_dsn
                          else stack.enter_context(_common.postgres()))
            urls: dict[str, list[str]] = {}
            for kind in kinds:
                found = store_urls(kind, tmp, 2, new_db)
                if found is not None:
                    urls[kind] = found
            stores = {k: (open_store(u[0]), open_store(u[1])) for k, u in urls.items()}
            for s in stores.values():
                stack.callback(s[0].close)
                stack.callback(s[1].close)
            wake = {k: [] for k in urls}
            reopen = {k: [] for k in urls}
            handback = {k: [] for k in urls}
            for i in range(runs):
                for kind, (u_wake, _) in urls.items():
                    wake[kind].append(wakeup_once(u_wake, stores[kind][0], i, tmp))
            for i in range(kill_runs):
                for kind, (_, u_kill) in urls.items():
                    reopen[kind].append(killed_once(u_kill, stores[kind][1], i))
                    handback[kind].append(gone_once(u_kill, stores[kind][1], i))
        commands = remote_commands_per_redeploy(tmp / "deploy")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    figures: dict[str, Any] = {"backends": {}, "kill_ttl_s": KILL_TTL, "gone_ttl_s": GONE_TTL,
                               "local_redeploy_commands_per_host": commands}
    print(f"\nshipit drain benchmark ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    head = (f"{'backend':<9} {'wake-up median':>15} {'p90':>9} {'max':>9}   "
            f"{f'killed deploy -> claim ok (ttl {KILL_TTL:g}s)':>36}")
    print(head)
    print("-" * len(head))
    for kind in wake:
        w = wake[kind]
        figures["backends"][kind] = {
            "wake_median_ms": median(w) * 1000, "wake_p90_ms": pct(w, 90) * 1000,
            "wake_max_ms": max(w) * 1000, "reopen_median_s": median(reopen[kind]),
            "reopen_s": reopen[kind], "handback_median_s": median(handback[kind]),
            "handback_s": handback[kind],
        }
        print(f"{kind:<9} {median(w) * 1000:>12.1f} ms {pct(w, 90) * 1000:>6.1f} ms "
              f"{max(w) * 1000:>6.1f} ms   "
              f"{', '.join(f'{r:.2f}s' for r in reopen[kind]):>36}")
    print(f"deploy gone mid-drain -> claim ok (ttl {GONE_TTL:g}s, the agent hands the gate back): "
          + "; ".join(f"{k} {', '.join(f'{r:.2f}s' for r in v)}" for k, v in handback.items()))
    print("(wake-up: the last job writes a timestamp and exits -> drain() returns; "
          f"{runs} runs each)")
    print("remote commands per host for a redeploy with no job running:",
          ", ".join(f"{k}: {v}" for k, v in commands.items()))
    _common.write_json(args.json, "drain", figures, {"runs": runs, "kill_runs": kill_runs})


if __name__ == "__main__":
    main()
