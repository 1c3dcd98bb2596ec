"""The Store contract, run against every backend (file, SQLite, PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import replace

import pytest

from shipit.errors import CorruptState, FencingError, GateHeld
from shipit.gate._common import RunBusy, StoreMissing
from shipit.gate.base import (
    ACTIVE_STATES,
    CHECKPOINTED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    SCHEMA_VERSION,
    STOP_REQUESTED,
    WAITING,
    ClaimSpec,
    Lease,
    Run,
)
from shipit.gate.url import open_store
from tests.gate.conftest import StoreFactory
from tests.gate.helpers import start_job, start_waiter


def spec(job: str = "report", **kw: object) -> ClaimSpec:
    return ClaimSpec(job=job, host=kw.pop("host", "h1"), command=("python", "report.py"), **kw)  # type: ignore[arg-type]


def claimed(result: Run | Lease) -> Run:
    assert isinstance(result, Run), f"claim refused: {result}"
    return result


def test_claim_runs_when_open_and_is_refused_while_closed(store_factory: StoreFactory) -> None:
    store, other = store_factory(), store_factory()
    assert store.gate().state == "open" and store.gate().epoch == 0
    run = claimed(other.claim(spec()))
    assert run.state == RUNNING and run.epoch == 0
    lease = store.close_gate(holder="alice", deploy_id="d1", reason="deploy v2", ttl=30)
    assert (lease.state, lease.epoch, lease.holder, lease.deploy_id) == ("closed", 1, "alice", "d1")
    refused = other.claim(spec())
    assert isinstance(refused, Lease) and refused.epoch == 1 and refused.holder == "alice"
    assert [r.id for r in store.list_runs()] == [run.id]
    store.open_gate(1, actor="alice")
    again = claimed(other.claim(spec()))
    assert again.epoch == 1
    assert [r.id for r in store.list_runs()] == [again.id, run.id]  # newest first


def test_fencing_only_the_holders_epoch_may_act(store_factory: StoreFactory) -> None:
    store = store_factory()
    run = claimed(store.claim(spec()))
    lease = store.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=30)
    # The same deploy closing again is idempotent: same epoch, no second close in the trail.
    assert store.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=30).epoch == lease.epoch
    with pytest.raises(FencingError):
        store.renew(lease.epoch - 1, 30)
    with pytest.raises(FencingError):
        store.open_gate(lease.epoch + 1, actor="alice")
    with pytest.raises(FencingError):
        store.request_stop(run.id, lease.epoch + 1)
    with pytest.raises(FencingError):
        store.claim_restart(run.id, lease.epoch + 1)
    renewed = store.renew(lease.epoch, 60)
    assert renewed.expires_at > lease.expires_at and renewed.epoch == lease.epoch
    store.open_gate(lease.epoch, actor="alice")
    assert store.open_gate(lease.epoch, actor="alice").state == "open"  # idempotent
    with pytest.raises(FencingError):
        store.renew(lease.epoch, 30)  # open now: nothing to renew
    assert store.close_gate(holder="bob", deploy_id="d2", reason="r", ttl=30).epoch == lease.epoch + 1
    actions = [a.action for a in store.audit_log()]
    assert actions.count("close") == 2 and actions.count("reopen") == 1


def test_gate_held_names_holder_since_expiry_and_reason(store_factory: StoreFactory) -> None:
    store, other = store_factory(), store_factory()
    lease = store.close_gate(holder="alice@ci", deploy_id="d1", reason="deploy v2", ttl=30)
    with pytest.raises(GateHeld) as info:
        other.close_gate(holder="bob", deploy_id="d2", reason="hotfix", ttl=30)
    msg = str(info.value)
    assert "alice@ci" in msg and "d1" in msg and "deploy v2" in msg
    assert time.strftime("%Y-%m-%d", time.gmtime(lease.created_at)) in msg
    assert "since" in msg and "expires" in msg and "\n" not in msg
    assert info.value.exit_code == 3
    assert other.gate().epoch == lease.epoch  # the refused close changed nothing


def test_expired_lease_counts_as_open(store_factory: StoreFactory) -> None:
    store, job = store_factory(), store_factory()
    lease = store.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=0.3)
    assert isinstance(job.claim(spec()), Lease)
    # A waiting job is woken by the expiry itself, not only by a write.
    deadline = time.monotonic() + 30
    while store.gate().is_closed(time.time()) and time.monotonic() < deadline:
        job.wait_gate_change(30)
    run = claimed(job.claim(spec()))
    assert run.epoch == lease.epoch
    # The lapsed holder cannot renew (jobs were admitted meanwhile), and that is audited.
    with pytest.raises(FencingError):
        store.renew(lease.epoch, 30)
    assert store.audit_log()[0].action == "renew-lost"
    # Another deploy may close over the expired lease without force.
    assert job.close_gate(holder="bob", deploy_id="d2", reason="r", ttl=30).epoch == lease.epoch + 1


def test_force_close_and_force_open_are_audited(store_factory: StoreFactory) -> None:
    store = store_factory()
    lease = store.close_gate(holder="alice", deploy_id="d1", reason="deploy", ttl=30)
    forced = store.close_gate(holder="bob", deploy_id="d2", reason="alice left", ttl=30, force=True)
    assert forced.epoch == lease.epoch + 1 and forced.holder == "bob"
    with pytest.raises(FencingError):
        store.renew(lease.epoch, 30)  # alice's epoch is fenced off
    opened = store.open_gate(None, actor="carol", force=True)
    assert opened.state == "open"
    log = store.audit_log()
    assert (log[0].action, log[0].actor, log[0].forced) == ("force-open", "carol", True)
    assert any(a.action == "force-close" and a.forced and a.actor == "bob" for a in log)


def test_run_round_trips_every_field(store_factory: StoreFactory) -> None:
    job, deploy = store_factory(), store_factory()
    s = ClaimSpec(
        job="import", host="web-1", command=("python", "-c", "print('héllo wörld')", "--x=$HOME"),
        cwd="/app/current", env={"LANG": "C.UTF-8", "GREETING": "grüß dich ☃"},
        key="import:daily", pid=4242, continues="r-old", attempt=3, restarts=2,
    )
    run = claimed(job.claim(s))
    state = {"cursor": [1, 2.5, None, True], "nested": {"ключ": "値", "deep": [{"a": []}]}, "n": 10**15}
    job.save_checkpoint(run.id, state)
    assert job.heartbeat(run.id, pid=777, progress=(3, 10)) is False
    lease = deploy.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=30)
    deploy.request_stop(run.id, lease.epoch)
    assert deploy.get_run(run.id).state == STOP_REQUESTED
    assert job.heartbeat(run.id) is True  # the job learns it should stop
    job.finish(run.id, CHECKPOINTED, 0, "saved at 3/10")
    got = deploy.get_run(run.id)
    assert got.command == s.command and isinstance(got.command, tuple)
    assert got.env == s.env and got.cwd == s.cwd and got.key == s.key
    assert (got.continues, got.attempt, got.restarts, got.pid) == ("r-old", 3, 2, 777)
    assert got.checkpoint == state and got.checkpoint_at is not None
    assert (got.progress_done, got.progress_total) == (3, 10)
    assert (got.state, got.exit_code, got.message) == (CHECKPOINTED, 0, "saved at 3/10")
    assert got.stop_requested_at is not None and got.finished_at is not None
    assert got.epoch == 0 and got.created_at <= got.finished_at
    assert [r.id for r in deploy.list_runs(states=[CHECKPOINTED], host="web-1")] == [run.id]
    assert deploy.list_runs(states=[RUNNING]) == [] and deploy.list_runs(host="web-2") == []
    with pytest.raises(KeyError):
        deploy.get_run("no-such-run")


def test_job_key_allows_one_live_run(store_factory: StoreFactory) -> None:
    store = store_factory()
    first = claimed(store.claim(spec(key="nightly")))
    with pytest.raises(RunBusy):
        store.claim(spec(key="nightly"))
    store.finish(first.id, FINISHED, 0)
    claimed(store.claim(spec(key="nightly")))


def test_is_alive_follows_the_claiming_process(store_factory: StoreFactory) -> None:
    store = store_factory(heartbeat_stale=0.5)
    proc, run_id = start_job(store_factory.url)
    try:
        run = store.get_run(run_id)
        assert store.is_alive(run)
        killer = threading.Timer(0.3, proc.kill)  # SIGKILL: no chance to record anything
        killer.start()
        store.wait_runs_change([run_id], timeout=60)
        # Had the wait returned early, the process would still be alive here.
        assert proc.poll() is not None or proc.wait(5) is not None
        assert not store.is_alive(store.get_run(run_id))
        assert store.get_run(run_id).state == RUNNING  # nobody recorded an outcome...
        marked = store.mark_interrupted(run_id, "process gone")
        assert marked.state == INTERRUPTED  # ...until the deploy confirms the death
    finally:
        proc.kill()
        proc.wait()


def test_wait_runs_change_wakes_when_the_job_finishes(store_factory: StoreFactory) -> None:
    store = store_factory(heartbeat_stale=30)
    proc, run_id = start_job(store_factory.url)
    try:
        assert proc.stdin is not None
        finisher = threading.Timer(0.3, lambda: (proc.stdin.write("go\n"), proc.stdin.flush()))  # type: ignore[union-attr]
        finisher.start()
        store.wait_runs_change([run_id], timeout=60)
        proc.wait(30)
        assert store.get_run(run_id).state == FINISHED
        assert not store.is_alive(store.get_run(run_id))
        # A recorded outcome is never overwritten by a later "interrupted".
        assert store.mark_interrupted(run_id, "late").state == FINISHED
    finally:
        proc.kill()
        proc.wait()


def test_mark_interrupted_refuses_a_live_run(store_factory: StoreFactory) -> None:
    store = store_factory(heartbeat_stale=30)
    run = claimed(store_factory().claim(spec()))
    with pytest.raises(FencingError):
        store.mark_interrupted(run.id, "I think it died")
    assert store.get_run(run.id).state == RUNNING


def _restart_worker(url: str, run_id: str, epoch: int, start: object, out: object) -> None:
    store = open_store(url)
    start.wait()  # type: ignore[attr-defined]
    out.put(store.claim_restart(run_id, epoch))  # type: ignore[attr-defined]
    store.close()


def test_claim_restart_exactly_once_among_20_processes(store_factory: StoreFactory) -> None:
    store = store_factory()
    run = claimed(store.claim(spec()))
    lease = store.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=60)
    store.finish(run.id, INTERRUPTED)
    store.open_gate(lease.epoch, actor="alice")
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_restart_worker, args=(store_factory.url, run.id, lease.epoch, start, out))
        for _ in range(20)
    ]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(results) == [False] * 19 + [True]
    assert store.claim_restart(run.id, lease.epoch) is False
    restarts = [a for a in store.audit_log(limit=1000) if a.action == "restart"]
    assert len(restarts) == 1 and run.id in restarts[0].reason


def test_corrupt_gate_refuses_claims_and_says_where(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=60)
    store_factory.corrupt_gate()
    with pytest.raises(CorruptState) as info:
        store.claim(spec())  # never a silently open gate
    assert "gate" in str(info.value)
    with pytest.raises(CorruptState):
        store.gate()
    assert store.list_runs() == []
    # A forced open repairs it, above every epoch seen, and is audited.
    opened = store.open_gate(None, actor="ops", force=True)
    assert opened.state == "open" and opened.epoch >= 1
    claimed(store.claim(spec()))


def test_corrupt_run_is_reported_not_lost(store_factory: StoreFactory) -> None:
    store = store_factory()
    run = claimed(store.claim(spec()))
    store_factory.corrupt_run(run.id)
    with pytest.raises(CorruptState) as info:
        store.list_runs()
    assert run.id in str(info.value) or "runs" in str(info.value)
    with pytest.raises(CorruptState):
        store.get_run(run.id)


def test_newer_schema_is_refused(store_factory: StoreFactory) -> None:
    store_factory().close()
    store_factory.bump_schema(SCHEMA_VERSION + 1)
    with pytest.raises(CorruptState) as info:
        store_factory()
    assert "newer" in str(info.value) and str(SCHEMA_VERSION + 1) in str(info.value)


def test_wait_gate_change_wakes_on_reopen(store_factory: StoreFactory) -> None:
    deploy, job = store_factory(), store_factory()
    lease = deploy.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=60)
    opener = threading.Timer(0.3, lambda: deploy.open_gate(lease.epoch, actor="alice"))
    opener.start()
    job.wait_gate_change(60)
    # Had the wait returned before the reopen, the gate would still read closed here.
    assert job.gate().state == "open"
    claimed(job.claim(spec()))
    opener.join()


def _close_worker(url: str, n: int, start: object, out: object) -> None:
    store = open_store(url)
    start.wait()  # type: ignore[attr-defined]
    try:
        lease = store.close_gate(holder=f"deployer-{n}", deploy_id=f"d{n}", reason="r", ttl=60)
        out.put(("won", lease.epoch))  # type: ignore[attr-defined]
    except GateHeld:
        out.put(("held", 0))  # type: ignore[attr-defined]
    finally:
        store.close()


def test_two_deploys_cannot_both_close(store_factory: StoreFactory) -> None:
    store = store_factory()
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_close_worker, args=(store_factory.url, n, start, out)) for n in range(10)]
    for p in procs:
        p.start()
    start.set()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert results == [("held", 0)] * 9 + [("won", 1)]
    assert [a.action for a in store.audit_log()] == ["close"]


# -- waiting entries, continuations, stop grace, the job side's missing store ---------------------


def test_a_waiting_entry_is_apart_from_the_runs_and_turns_into_the_run(
    store_factory: StoreFactory,
) -> None:
    deploy, job = store_factory(), store_factory()
    lease = deploy.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=60)
    waiting = job.enter_waiting(spec(pid=4242, key="k"), lease)
    assert (waiting.state, waiting.job, waiting.host, waiting.pid) == (WAITING, "report", "h1", 4242)
    assert waiting.epoch == lease.epoch and waiting.created_at > 0 and waiting.env == {}
    [shown] = deploy.list_waiting()
    assert shown.id == waiting.id and shown.state == WAITING and shown.pid == 4242
    assert deploy.list_waiting(host="h2") == []
    # Not a run: the drain's list (and the history) never holds it, whatever the states asked.
    assert deploy.list_runs() == [] and deploy.list_runs(states=[WAITING, *ACTIVE_STATES]) == []
    with pytest.raises(KeyError):
        deploy.get_run(waiting.id)
    # The close's barrier is not held up by it, and it does not take the key.
    assert deploy.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=60).epoch == lease.epoch
    deploy.open_gate(lease.epoch, actor="alice")
    other = claimed(deploy.claim(spec(key="k")))
    deploy.finish(other.id, FINISHED)
    run = claimed(job.claim(replace(spec(key="k"), run_id=waiting.id)))
    assert run.id == waiting.id and run.state == RUNNING
    assert deploy.list_waiting() == [] and deploy.get_run(waiting.id).state == RUNNING


def test_a_waiting_entry_is_gone_once_left_or_once_its_process_died(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    lease = store.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=60)
    left = store.enter_waiting(spec(), lease)
    store.leave_waiting(left.id)
    store.leave_waiting(left.id)  # idempotent
    assert store.list_waiting() == []
    proc, entry = start_waiter(store_factory.url)
    try:
        assert [w.id for w in store.list_waiting()] == [entry]  # alive while its process is
        proc.kill()
        proc.wait(timeout=30)
        # File/SQLite: its lock went with it. PostgreSQL: its heartbeat goes stale.
        strict = store_factory(heartbeat_stale=0.5)
        deadline = time.monotonic() + 30
        while strict.list_waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert strict.list_waiting() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_continuations_name_the_run_that_continues(store_factory: StoreFactory) -> None:
    store = store_factory()
    first, alone = claimed(store.claim(spec())), claimed(store.claim(spec()))
    store.finish(first.id, INTERRUPTED)
    store.finish(alone.id, INTERRUPTED)
    second = claimed(store.claim(spec(continues=first.id, attempt=2)))
    assert store.continuations([first.id, alone.id, "nope"]) == {first.id: second.id}
    assert store.continuations([]) == {}


def test_a_stop_request_carries_the_deploys_grace_and_a_run_keeps_its_own(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    own = claimed(store.claim(spec(grace=7.5)))
    plain = claimed(store.claim(spec()))
    lease = store.close_gate(holder="alice", deploy_id="d1", reason="r", ttl=60)
    store.request_stop(own.id, lease.epoch, 2.0)
    store.request_stop(plain.id, lease.epoch)
    got, other = store.get_run(own.id), store.get_run(plain.id)
    assert (got.state, got.grace, got.stop_grace) == (STOP_REQUESTED, 7.5, 2.0)
    assert (other.state, other.grace, other.stop_grace) == (STOP_REQUESTED, None, None)


def test_the_job_side_never_creates_a_store(store_factory: StoreFactory) -> None:
    with pytest.raises(StoreMissing) as info:
        store_factory(create=False)
    assert info.value.exit_code == 5
    assert str(info.value).startswith("no job store at ") and str(info.value).endswith(
        ": deploy the stage first (it creates the store) or fix --store/SHIPIT_STORE"
    )
    if store_factory.root is not None:
        assert not store_factory.root.exists()  # nothing left behind either
    store_factory().close()  # what the deploy's agent does
    claimed(store_factory(create=False).claim(spec()))
