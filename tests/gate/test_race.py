"""The gate's promise under fire: 100 claimer processes hammer claim+finish while the test
process closes and reopens the gate, several times, on every backend.

The invariant, checked from the store's own records once everything has stopped:

  A run records the epoch of the open gate it passed. A close at epoch E is preceded by the gate
  being open at some epoch < E, and after it claims are admitted again only at epoch >= E (after
  the reopen). So for every close, with S = the ids listed right after close_gate() returned:

    {runs in the store with epoch < E} == S

  - a run with epoch < E missing from S is a claim that saw the gate open but committed after the
    barrier (the barrier leaked, or the gate check and the insert were not one atomic step);
  - S never holds a run with epoch >= E: nothing got in while the gate was closed (the list
    taken just before the reopen is also compared with S).

And no run is lost: every Run a claimer was handed is in the store, with the epoch it was given.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from shipit.gate.base import ClaimSpec, Run
from shipit.gate.url import open_store
from tests.gate.conftest import StoreFactory

CLAIMERS = 100
ROUNDS = 3


def _claimer(
    url: str, index: int, start: Any, stop: Any, claimed: Any, refused: Any, out: Any
) -> None:
    store = open_store(url)
    got: list[tuple[str, int]] = []
    spec = ClaimSpec(job=f"hammer-{index}", host="h1", command=("true",))
    start.wait()
    try:
        while not stop.is_set():
            result = store.claim(spec)
            if isinstance(result, Run):
                got.append((result.id, result.epoch))
                claimed[index] += 1
                store.finish(result.id, "finished", 0)
            else:
                refused[index] += 1
                time.sleep(0.005)  # a job at a closed gate waits; do not spin the CPU
    finally:
        out.put(got)
        store.close()


def _wait_for(counter: Any, more_than: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sum(counter) <= more_than and time.monotonic() < deadline:
        time.sleep(0.01)


def test_no_claim_slips_past_the_close(store_factory: StoreFactory) -> None:
    store_factory().close()  # create the store before the claimers race to do it
    ctx = multiprocessing.get_context("fork")
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    claimed, refused = ctx.Array("l", CLAIMERS, lock=False), ctx.Array("l", CLAIMERS, lock=False)
    procs = [
        ctx.Process(
            target=_claimer,
            args=(store_factory.url, i, start, stop, claimed, refused, out),
            daemon=True,
        )
        for i in range(CLAIMERS)
    ]
    for p in procs:
        p.start()
    deployer = store_factory()
    rounds: list[tuple[int, set[str]]] = []
    try:
        start.set()
        for n in range(ROUNDS):
            _wait_for(claimed, sum(claimed) + CLAIMERS // 2)  # the gate is being hammered
            lease = deployer.close_gate(holder="race", deploy_id=f"d{n}", reason="race", ttl=60)
            snapshot = {r.id for r in deployer.list_runs()}
            _wait_for(refused, sum(refused) + CLAIMERS)  # claimers keep knocking while closed
            assert {r.id for r in deployer.list_runs()} == snapshot, "a run got in while closed"
            rounds.append((lease.epoch, snapshot))
            deployer.open_gate(lease.epoch, actor="race")
        _wait_for(claimed, sum(claimed) + CLAIMERS // 2)
    finally:
        stop.set()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)

    handed = {run_id: epoch for got in results for run_id, epoch in got}
    stored = {r.id: r.epoch for r in deployer.list_runs()}
    assert len(handed) == sum(claimed) and len(handed) > (ROUNDS + 1) * (CLAIMERS // 2)
    missing = set(handed) - set(stored)
    assert not missing, f"{len(missing)} claimed runs are missing from the store"
    assert all(stored[i] == e for i, e in handed.items())
    for epoch, snapshot in rounds:
        before = {i for i, e in stored.items() if e < epoch}
        assert before - snapshot == set(), f"close at epoch {epoch}: claims committed after the barrier"
        assert snapshot - before == set(), f"close at epoch {epoch}: listed runs from a later epoch"
    print(
        f"\n{store_factory.kind}: {len(handed)} runs claimed, {sum(refused)} refusals, "
        f"{ROUNDS} closes"
    )
