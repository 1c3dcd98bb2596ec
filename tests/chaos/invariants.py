"""The guarantees, checked from what the stores recorded and what the hosts hold (never from log
text). Each check returns a list of violations, one line each, prefixed with its letter:

(a) no run admitted inside a closed-gate interval   no_run_in_closed_gate
(b) every stopped run restarted exactly once        restarted_once
(c) no work lost beyond the last checkpoint         ledgers
(d) current is a complete release, same everywhere  releases_complete
(e) a dead deploy's lease expires within its TTL    lease_expires, no_close_after_exit
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

from shipit.gate.base import FINISHED, RESTARTABLE_STATES, ClaimSpec, Lease, Run, Store
from tests.chaos.world import MOUNT, World

Stores = Callable[[], list[tuple[str, Store]]]
PROBE = "chaos-probe"
# Clock slack between a claim's timestamp and the close's audit entry: PostgreSQL stamps both
# with its transaction start time, and a close waits for in-flight claims after it started.
TOL = 0.25
RESTART_WAIT = 10.0
# How far a job's clock may be from the one its host should have (a ledger line's two clocks are
# read a few microseconds apart; NTP slewing during a trial is far below this).
SKEW_TOL = 0.5


def _all_runs(stores: Stores) -> list[tuple[str, list[Run]]]:
    out = []
    for label, store in stores():
        try:
            out.append((label, [r for r in store.list_runs() if r.job != PROBE]))
        finally:
            store.close()
    return out


def lease_expires(stores: Stores, deadline: float, *, offsets: Mapping[str, float] | None = None,
                  probe: Callable[[str], str | None] | None = None) -> list[str]:
    """(e) Once every deploy is gone, the gate opens by `deadline` and a claim gets in.

    A store whose clock is off (`offsets`: label -> seconds, a per-host store on a skewed host)
    is judged in its own time: `deadline` and now shifted by the offset, and the claim made on
    that host by `probe(label)` (None: it got in) instead of from here."""
    out = []
    for label, store in stores():
        off = (offsets or {}).get(label, 0.0)
        try:
            while store.gate().is_closed(time.time() + off) and time.time() < deadline:
                store.wait_gate_change(max(0.05, min(0.5, deadline - time.time())))
            lease = store.gate()
            if lease.is_closed(time.time() + off):
                out.append(f"(e) {label}: gate still held by {lease.holder} (deploy {lease.deploy_id}, "
                           f"epoch {lease.epoch}) {time.time() - deadline:.1f}s past the dead deploy's TTL")
                continue
            if off and probe is not None:
                refused = probe(label)
                if refused is not None:
                    out.append(f"(e) {label}: a claim on the host ({off:+g}s clock) after the TTL failed: {refused}")
                continue
            got = store.claim(ClaimSpec(job=PROBE, host=label, command=("true",)))
            if isinstance(got, Lease):
                out.append(f"(e) {label}: a claim after the TTL was refused: gate {got.to_dict()}")
            else:
                store.finish(got.id, FINISHED, 0)
        finally:
            store.close()
    return out


def no_close_after_exit(stores: Stores, exits: Mapping[str, float], *,
                        offsets: Mapping[str, float] | None = None, slack: float = 1.0) -> list[str]:
    """(e) No gate is closed on behalf of a deploy once it has exited (`exits`: deploy id -> when
    its process was seen gone): such a close holds the gate a whole TTL past the deploy's last act,
    for nobody (a host agent that outlived its deploy, seed 11), whenever the (e) wait happened
    to look. From the audit trail's closes, which name the deploy in their reason; a per-host
    store on a skewed host stamps in that host's time (`offsets`). `slack`: how long a host's
    sshd may take to notice its client died."""
    out = []
    for label, store in stores():
        off = (offsets or {}).get(label, 0.0)
        try:
            audit = store.audit_log(limit=10**6)
        finally:
            store.close()
        reopened: dict[int, float] = {}
        for a in audit:
            if a.action in ("reopen", "force-open"):
                reopened[a.epoch] = min(a.ts, reopened.get(a.epoch, a.ts))
        for a in audit:
            if a.action not in ("close", "force-close"):
                continue
            # A close in the instant the deploy died, handed back at once when the agent found its
            # requester gone on its next write, held nothing.
            if reopened.get(a.epoch, float("inf")) <= a.ts + slack:
                continue
            for deploy_id, exited in exits.items():
                if deploy_id in a.reason and a.ts - off > exited + slack:
                    out.append(f"(e) {label}: gate closed (epoch {a.epoch}) for deploy {deploy_id} "
                               f"{a.ts - off - exited:.1f}s after it exited, and held")
    return out


def restarted_once(stores: Stores, *, when: str, wait: float = RESTART_WAIT) -> list[str]:
    """(b) Every checkpointed/interrupted run has exactly one successor (or was given up, which
    is its own state); no run ever has two. Restarts are spawned detached, so wait for them."""
    deadline = time.monotonic() + wait
    while True:
        out = []
        pending = False
        for label, runs in _all_runs(stores):
            successors: dict[str, list[str]] = defaultdict(list)
            for r in runs:
                if r.continues:
                    successors[r.continues].append(r.id)
            for r in runs:
                n = len(successors.get(r.id, []))
                if n > 1:
                    out.append(f"(b) {label}: run {r.id} ({r.job}) restarted {n} times: {successors[r.id]}")
                elif n == 0 and r.state in RESTARTABLE_STATES:
                    pending = True
                    out.append(f"(b) {label}: run {r.id} ({r.job}, {r.state}: {r.message}) never "
                               f"restarted nor given up ({when})")
        if not pending or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def no_run_in_closed_gate(stores: Stores, ttl: float) -> list[str]:
    """(a) From the audit trail's closes/reopens and each run's (epoch, created_at): no run of an
    epoch was created after the next close (it slipped past the barrier), and none was created
    while its epoch's lease was certainly live (between the close and min(reopen, close+ttl))."""
    out = []
    for label, store in stores():
        try:
            audit = store.audit_log(limit=10**6)
            runs = store.list_runs()
        finally:
            store.close()
        closes: dict[int, float] = {}
        reopens: dict[int, float] = {}
        for a in sorted(audit, key=lambda a: a.ts):
            if a.action in ("close", "force-close"):
                closes.setdefault(a.epoch, a.ts)
            elif a.action in ("reopen", "force-open"):
                reopens.setdefault(a.epoch, a.ts)
        for r in runs:
            nxt = closes.get(r.epoch + 1)
            if nxt is not None and r.created_at > nxt + TOL:
                out.append(f"(a) {label}: run {r.id} ({r.job}) admitted at epoch {r.epoch} "
                           f"{r.created_at - nxt:.3f}s after the gate closed at epoch {r.epoch + 1}")
            lo = closes.get(r.epoch)
            if lo is not None:
                hi = min(reopens.get(r.epoch, float("inf")), lo + ttl)
                if lo + TOL < r.created_at < hi - TOL:
                    out.append(f"(a) {label}: run {r.id} ({r.job}) admitted {r.created_at - lo:.3f}s after "
                               f"the close of epoch {r.epoch}, while its lease was live")
    return out


def releases_complete(world: World, app: str, *, same: bool) -> list[str]:
    """(d) Every host's `current` is a release with REVISION; with `same`, one release on all."""
    out = []
    names = {}
    for h in world.hosts:
        tree = world.tree(h, app)
        link = tree / "current"
        if not link.is_symlink():
            out.append(f"(d) {h.name}: no current")
            continue
        target = os.readlink(link)
        if target.startswith(MOUNT + "/"):
            target = str(h.home / target[len(MOUNT) + 1:])
        path = Path(target) if os.path.isabs(target) else tree / target
        if not (path / "REVISION").is_file():
            out.append(f"(d) {h.name}: current -> {os.readlink(link)} has no REVISION")
        names[h.name] = path.name
    if same and len(set(names.values())) > 1:
        out.append(f"(d) hosts on different releases: {names}")
    return out


def _ledger_path(run: Run) -> str | None:
    cmd = list(run.command)
    if "ledger_job.py" not in cmd:
        return None
    i = cmd.index("ledger_job.py")
    return cmd[i + 1] if len(cmd) > i + 4 else None


def ledgers(stores: Stores, ledger_dir: Path, *, skew: Mapping[str, float] | None = None,
            seen: Counter[str] | None = None, bases: tuple[float, ...] = ()) -> list[str]:
    """(c) Per job chain (runs linked by `continues`), from its ledger of "item attempt release
    [wall mono]": no attempt writes an item twice; a stateful chain's items are 1..max without a
    gap, and an item is re-done only by a later attempt when the earlier one had not checkpointed
    past it; every attempt in the ledger has its run; a finished chain holds every item 1..total.

    With `skew` (host -> seconds its clock is off), also that every job ran on its host's clock:
    the fault was in effect where it was meant to be and nowhere else. `seen` counts the lines
    written on a skewed clock (observed.skewed_job_items). `bases` are earlier readings of this
    machine's wall-minus-monotonic clock (the trial's start): a line is on time against any of
    them or now's, so a step of the real clock mid-trial (an NTP or VM correction, seeds 92 and
    94) does not pass for a fault in effect where none was."""
    out = []
    for label, runs in _all_runs(stores):
        by_id = {r.id: r for r in runs}
        chains: dict[str, list[Run]] = defaultdict(list)
        for r in sorted(runs, key=lambda r: r.attempt):
            path = _ledger_path(r)
            if path is not None:
                chains[path].append(r)
        for path, chain in chains.items():
            out += _check_chain(label, Path(path), chain, by_id)
            if skew is not None:
                out += _check_clocks(label, Path(path), chain, skew, seen, bases)
    return out


def _check_clocks(label: str, ledger: Path, chain: list[Run], skew: Mapping[str, float],
                  seen: Counter[str] | None, bases: tuple[float, ...] = ()) -> list[str]:
    # This side's (real) wall clock minus the shared monotonic one, now and when the trial began.
    now = time.time() - time.monotonic()
    by_attempt = {r.attempt: r for r in chain}
    worst: dict[int, float] = {}
    if not ledger.exists():
        return []
    for raw in ledger.read_text().splitlines():
        parts = raw.split()
        if len(parts) < 5 or int(parts[1]) not in by_attempt:
            continue
        attempt = int(parts[1])
        host = by_attempt[attempt].host
        want = skew.get(host, 0.0)
        line = float(parts[3]) - float(parts[4])
        off = min((line - b for b in (now, *bases)), key=lambda o: abs(o - want))
        if want and seen is not None:
            seen["skewed_job_items"] += 1
        # The worst line of each attempt; none yet is not "0 s off" (that is the line that
        # matters most when the fault was meant but not in effect).
        prev = worst.get(attempt)
        if abs(off - want) > SKEW_TOL and (prev is None or abs(off - want) > abs(prev - want)):
            worst[attempt] = off
    return [f"(skew) {label}: {chain[0].job} attempt {a} on {by_attempt[a].host} ran {off:+.2f}s off, "
            f"its host's clock is {skew.get(by_attempt[a].host, 0.0):+g}s off: the fault was not in effect"
            for a, off in sorted(worst.items())]


def _check_chain(label: str, ledger: Path, chain: list[Run], by_id: dict[str, Run]) -> list[str]:
    name = f"(c) {label}: {chain[0].job}"
    cmd = list(chain[0].command)
    i = cmd.index("ledger_job.py")
    total, stateful = int(cmd[i + 2]), cmd[i + 4] == "1"
    lines = []
    if ledger.exists():
        for raw in ledger.read_text().splitlines():
            item, attempt = raw.split()[:2]
            lines.append((int(item), int(attempt)))
    out = []
    by_attempt = {r.attempt: r for r in chain}
    if len(by_attempt) != len(chain):
        out.append(f"{name}: two runs with the same attempt: {[r.id for r in chain]}")
    seen: dict[tuple[int, int], int] = defaultdict(int)
    for item, attempt in lines:
        seen[(item, attempt)] += 1
        if attempt not in by_attempt:
            out.append(f"{name}: ledger has attempt {attempt} with no run in the store")
            break
    out += [f"{name}: attempt {a} wrote item {it} {n} times" for (it, a), n in seen.items() if n > 1]
    last = chain[-1]
    finished = last.state == FINISHED and last.exit_code == 0
    if stateful:
        items = sorted({it for it, _ in lines})
        if items and items != list(range(1, items[-1] + 1)):
            missing = sorted(set(range(1, items[-1] + 1)) - set(items))
            out.append(f"{name}: items lost (never written): {missing[:10]}")
        attempts_of: dict[int, list[int]] = defaultdict(list)
        for it, a in lines:
            attempts_of[it].append(a)
        for it, attempts in attempts_of.items():
            for a in sorted(set(attempts))[:-1]:
                run = by_attempt.get(a)
                ckpt = (run.checkpoint or {}).get("next", 1) if run and isinstance(run.checkpoint, dict) else 1
                if ckpt > it:
                    out.append(f"{name}: item {it} re-done after attempt {a} had checkpointed next={ckpt}")
        if finished and set(items) != set(range(1, total + 1)):
            out.append(f"{name}: chain finished but items {sorted(set(range(1, total + 1)) - set(items))[:10]} missing")
    elif finished:
        done = {it for it, a in lines if a == last.attempt}
        if done != set(range(1, total + 1)):
            out.append(f"{name}: finished attempt {last.attempt} wrote {len(done)} of {total} items")
    return out
