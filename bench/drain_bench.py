"""Deploy-side jobs benchmark: prints figures, asserts nothing.

    python bench/drain_bench.py [--backends sqlite,file,postgres] [--pg-dsn DSN] [--runs 20]

Per backend:
- drain wake-up: a supervised job (`shipit job run -- sh -c 'sleep; date'`) is the last one
  running; drain() waits for it. Latency = drain() returning minus the job writing its last
  timestamp just before it exits (so it includes the supervisor recording the outcome).
- killed deploy: `shipit agent drain` holds the gate (ttl 3 s, renewing every 1 s) for a job
  that never ends; it is SIGKILLed and we measure until a job's claim succeeds again.
Then remote commands per host for a whole redeploy with no job running (local host, sqlite).
Without --pg-dsn a throwaway PostgreSQL cluster is started (tests/harness/postgres.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shipit.gate.base import ACTIVE_STATES, ClaimSpec, Run  # noqa: E402
from shipit.gate.url import open_store  # noqa: E402
from shipit.jobs.drain import drain  # noqa: E402

SHIPIT = [sys.executable, "-m", "shipit"]


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


def wakeup_latency(url: str, runs: int, tmp: Path) -> list[float]:
    store = open_store(url)
    out: list[float] = []
    try:
        for i in range(runs):
            stamp = tmp / f"exit-{i}"
            proc = _job(url, f"short{i}", ["sh", "-c", f"sleep 0.4; date +%s.%N > {stamp}"])
            _wait_running(store, f"short{i}")
            result = drain(store, holder="bench", deploy_id=f"d{i}", reason="", ttl=30,
                           timeout=60, policy="wait", grace=5, emit=lambda *a, **k: None)
            returned = time.time()
            proc.wait()
            out.append(returned - float(stamp.read_text()))
            store.open_gate(result.lease.epoch, actor="bench")
    finally:
        store.close()
    return out


def killed_deploy_reopen(url: str, runs: int) -> list[float]:
    store = open_store(url)
    out: list[float] = []
    spec = ClaimSpec(job="probe", host="bench", command=("true",))
    try:
        for i in range(runs):
            job = _job(url, f"forever{i}", ["sleep", "300"])
            _wait_running(store, f"forever{i}")
            opts = {"store": url, "dsn": url if url.startswith("postgres") else None,
                    "deploy_id": f"k{i}", "ttl": 3, "timeout": 600, "policy": "wait",
                    "reconcile": False}
            agent = subprocess.Popen([*SHIPIT, "agent", "drain"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
            assert agent.stdin and agent.stdout
            agent.stdin.write(json.dumps(opts) + "\n")
            agent.stdin.close()
            agent.stdout.readline()  # gate.closed
            time.sleep(1.5)  # let it renew at least once
            agent.send_signal(signal.SIGKILL)
            killed = time.time()
            agent.wait()
            while True:
                claimed = store.claim(spec)
                if isinstance(claimed, Run):
                    out.append(time.time() - killed)
                    store.finish(claimed.id, "finished", 0)
                    break
                store.wait_gate_change(0.05)
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    finally:
        store.close()
    return out


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
        f"shipit_command: {sys.executable} -m shipit\njobs: {{store: sqlite}}\n"
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
    counts["(outcome " + result.outcome + ")"] = 0
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="sqlite,file,postgres")
    ap.add_argument("--pg-dsn")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--kill-runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shipit-drain-bench-"))
    cluster = None
    rows = []
    try:
        for kind in args.backends.split(","):
            if kind == "sqlite":
                urls = [f"sqlite:{tmp}/s{i}/jobs.db" for i in range(2)]
            elif kind == "file":
                urls = [f"file:{tmp}/f{i}" for i in range(2)]
            else:
                if args.pg_dsn:
                    urls = [args.pg_dsn] * 2
                else:
                    from tests.harness.postgres import PgCluster, _ensure_user, _free_port

                    root = tempfile.mkdtemp(prefix="shipit-bench-pg-")
                    os.chmod(root, 0o755)
                    user = _ensure_user()
                    if user:
                        shutil.chown(root, user, user)
                    cluster = PgCluster(root, _free_port(), user)
                    cluster.init()
                    cluster.start()
                    urls = [cluster.create_database() for _ in range(2)]
            wake = wakeup_latency(urls[0], args.runs, tmp)
            reopen = killed_deploy_reopen(urls[1], args.kill_runs)
            rows.append((kind, wake, reopen))
        commands = remote_commands_per_redeploy(tmp / "deploy")
    finally:
        if cluster is not None:
            cluster.stop("immediate")
            shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nshipit drain benchmark ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    head = (f"{'backend':<9} {'wake-up median':>15} {'p90':>9} {'max':>9}   "
            f"{'killed deploy -> claim ok (ttl 3s)':>36}")
    print(head)
    print("-" * len(head))
    for kind, wake, reopen in rows:
        w = sorted(wake)
        p90 = w[min(len(w) - 1, int(0.9 * (len(w) - 1) + 0.5))]
        print(f"{kind:<9} {statistics.median(w) * 1000:>12.1f} ms {p90 * 1000:>6.1f} ms "
              f"{w[-1] * 1000:>6.1f} ms   "
              f"{', '.join(f'{r:.2f}s' for r in reopen):>36}")
    print("(wake-up: the last job writes a timestamp and exits -> drain() returns; "
          f"{args.runs} runs each)")
    print("remote commands per host for a redeploy with no job running:",
          ", ".join(f"{k}: {v}" for k, v in commands.items()))


if __name__ == "__main__":
    main()
