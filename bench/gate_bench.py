"""Gate and job store benchmark: prints figures, asserts nothing.

    python bench/gate_bench.py [--backends file,sqlite,postgres] [--pg-dsn DSN] [--iterations 500]

Per backend: claim+finish latency (one client), claims/s with 100 claimer processes, and
close_gate latency with 100 running runs. Without --pg-dsn a throwaway PostgreSQL cluster is
started (tests/harness/postgres.py), which needs the PostgreSQL 15 binaries.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shipit.gate.base import ClaimSpec, Run  # noqa: E402
from shipit.gate.url import open_store  # noqa: E402

SPEC = ClaimSpec(job="bench", host="h1", command=("python", "job.py"), env={"LANG": "C.UTF-8"})


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def claim_finish_latency(url: str, n: int) -> tuple[float, float]:
    store = open_store(url)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run = store.claim(SPEC)
        assert isinstance(run, Run)
        store.finish(run.id, "finished", 0)
        times.append(time.perf_counter() - t)
    store.close()
    return pct(times, 50) * 1000, pct(times, 99) * 1000


def _claimer(url: str, start: Any, stop: Any, counts: Any, i: int) -> None:
    store = open_store(url)
    start.wait()
    while not stop.is_set():
        run = store.claim(SPEC)
        if isinstance(run, Run):
            store.finish(run.id, "finished", 0)
            counts[i] += 1
    store.close()


def concurrent_claims(url: str, procs: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("fork")
    start, stop = ctx.Event(), ctx.Event()
    counts = ctx.Array("l", procs, lock=False)
    ps = [ctx.Process(target=_claimer, args=(url, start, stop, counts, i)) for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.5)  # let every claimer open its store
    start.set()
    t0 = time.perf_counter()
    time.sleep(seconds)
    done = sum(counts)
    elapsed = time.perf_counter() - t0
    stop.set()
    for p in ps:
        p.join(60)
    return done / elapsed


def close_latency(url: str, running: int, reps: int) -> tuple[float, float]:
    store = open_store(url)
    runs = [store.claim(SPEC) for _ in range(running)]
    assert all(isinstance(r, Run) for r in runs)
    times = []
    for i in range(reps):
        t = time.perf_counter()
        lease = store.close_gate(holder="bench", deploy_id=f"b{i}", reason="bench", ttl=60)
        listed = store.list_runs(states=["running"])
        times.append(time.perf_counter() - t)
        assert len(listed) >= running
        store.open_gate(lease.epoch, actor="bench")
    for r in runs:
        store.finish(r.id, "finished", 0)  # type: ignore[union-attr]
    store.close()
    return pct(times, 50) * 1000, pct(times, 99) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="file,sqlite,postgres")
    ap.add_argument("--pg-dsn")
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--claimers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="shipit-bench-")
    cluster = None
    rows = []
    try:
        for kind in args.backends.split(","):
            if kind == "file":
                urls = [f"file:{tmp}/file{i}" for i in range(3)]
            elif kind == "sqlite":
                urls = [f"sqlite:{tmp}/sqlite{i}/jobs.db" for i in range(3)]
            else:
                if args.pg_dsn:
                    urls = [args.pg_dsn] * 3
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
                    urls = [cluster.create_database() for _ in range(3)]
            p50, p99 = claim_finish_latency(urls[0], args.iterations)
            rate = concurrent_claims(urls[1], args.claimers, args.seconds)
            c50, c99 = close_latency(urls[2], 100, 30)
            rows.append((kind, p50, p99, rate, c50, c99))
    finally:
        if cluster is not None:
            cluster.stop("immediate")
            shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nshipit gate benchmark ({os.cpu_count()} CPUs, store dir on {tmp.rsplit('/', 1)[0]})")
    head = (
        f"{'backend':<9} {'claim+finish p50':>17} {'p99':>9} "
        f"{'claims/s (' + str(args.claimers) + ' procs)':>22} {'close+list p50':>15} {'p99':>9}"
    )
    print(head)
    print("-" * len(head))
    for kind, p50, p99, rate, c50, c99 in rows:
        print(
            f"{kind:<9} {p50:>14.2f} ms {p99:>6.2f} ms {rate:>22.0f} {c50:>12.2f} ms {c99:>6.2f} ms"
        )
    print("(close+list: close_gate() incl. its barrier, then list_runs(), with 100 running runs)")


if __name__ == "__main__":
    main()
