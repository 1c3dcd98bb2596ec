"""Gate and job store benchmark: prints figures, asserts nothing.

    python bench/gate_bench.py [--backends file,sqlite,postgres] [--pg-dsn DSN] [--iterations 500]
                               [--rounds 3] [--json PATH] [--quick]

Per backend: claim+finish latency (one client; p50/p99 over all rounds' samples), claims/s with
100 claimer processes (median over rounds), and close_gate latency with 100 running runs. The
backends take turns round after round, so load from elsewhere on a shared machine falls on all
of them alike. Without --pg-dsn a throwaway PostgreSQL cluster is started
(tests/harness/postgres.py); without PostgreSQL installed that backend is skipped.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import median, pct, store_urls

from shipit.gate.base import ClaimSpec, Run
from shipit.gate.url import open_store

SPEC = ClaimSpec(job="bench", host="h1", command=("python", "job.py"), env={"LANG": "C.UTF-8"})


def claim_finish_times(url: str, n: int) -> list[float]:
    store = open_store(url)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run = store.claim(SPEC)
        assert isinstance(run, Run)
        store.finish(run.id, "finished", 0)
        times.append(time.perf_counter() - t)
    store.close()
    return times


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


def close_times(url: str, running: int, reps: int) -> list[float]:
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
    return times


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--backends", default="file,sqlite,postgres")
    ap.add_argument("--pg-dsn")
    ap.add_argument("--iterations", type=int, default=None, help="claims per round (500, quick 150)")
    ap.add_argument("--claimers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=None, help="per claims/s round (3, quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="(3, quick 1)")
    args = ap.parse_args()
    iterations = args.iterations or (150 if args.quick else 500)
    seconds = args.seconds or (2.0 if args.quick else 3.0)
    rounds = args.rounds or (1 if args.quick else 3)
    kinds = args.backends.split(",")

    tmp = Path(tempfile.mkdtemp(prefix="shipit-bench-"))
    with contextlib.ExitStack() as stack:
        new_db = None
        if "postgres" in kinds:
            new_db = (lambda: args.pg_dsn) if args.pg_dsn else stack.enter_context(_common.postgres())
        urls: dict[str, list[str]] = {}
        for kind in kinds:
            found = store_urls(kind, tmp, 3, new_db)
            if found is not None:
                urls[kind] = found
        lat: dict[str, list[float]] = {k: [] for k in urls}
        rate: dict[str, list[float]] = {k: [] for k in urls}
        close: dict[str, list[float]] = {k: [] for k in urls}
        for _ in range(rounds):
            for kind, (u_claim, u_rate, u_close) in urls.items():
                lat[kind] += claim_finish_times(u_claim, iterations)
                rate[kind].append(concurrent_claims(u_rate, args.claimers, seconds))
                close[kind] += close_times(u_close, 100, 10)
    shutil.rmtree(tmp, ignore_errors=True)

    figures: dict[str, Any] = {"backends": {}}
    for kind in urls:
        figures["backends"][kind] = {
            "claim_p50_ms": pct(lat[kind], 50) * 1000,
            "claim_p99_ms": pct(lat[kind], 99) * 1000,
            "claims_per_s": median(rate[kind]),
            "claims_per_s_rounds": rate[kind],
            "close_p50_ms": pct(close[kind], 50) * 1000,
            "close_p99_ms": pct(close[kind], 99) * 1000,
        }

    print(f"\nshipit gate benchmark ({os.cpu_count()} CPUs, {rounds} round(s), "
          f"store dir on {tmp.parent})")
    head = (
        f"{'backend':<9} {'claim+finish p50':>17} {'p99':>9} "
        f"{'claims/s (' + str(args.claimers) + ' procs)':>22} {'close+list p50':>15} {'p99':>9}"
    )
    print(head)
    print("-" * len(head))
    for kind, f in figures["backends"].items():
        print(
            f"{kind:<9} {f['claim_p50_ms']:>14.2f} ms {f['claim_p99_ms']:>6.2f} ms "
            f"{f['claims_per_s']:>22.0f} {f['close_p50_ms']:>12.2f} ms {f['close_p99_ms']:>6.2f} ms"
        )
    print("(close+list: close_gate() incl. its barrier, then list_runs(), with 100 running runs)")
    _common.write_json(args.json, "gate", figures, {
        "iterations": iterations, "rounds": rounds, "claimers": args.claimers, "seconds": seconds,
    })


if __name__ == "__main__":
    main()
