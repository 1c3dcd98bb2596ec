"""A fixed-seed sample of the chaos trials (one per backend), plus proof that the checkers see a
broken record when there is one. The full run is `python -m tests.chaos.run` (docs/chaos.md)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipit.gate.base import CHECKPOINTED, FINISHED, ClaimSpec, Run
from shipit.gate.url import open_store
from tests.chaos import invariants
from tests.chaos import run as chaos_run
from tests.chaos.run import replay_command
from tests.chaos.trial import Trial, TrialResult
from tests.chaos.world import World, WorldUnavailable

pytestmark = pytest.mark.e2e

# Seeds whose plans cover deploys SIGKILLed and SIGTERMed mid-way, failing hooks, a killed sshd,
# killed jobs and supervisors, a PostgreSQL restart, and a host clock off (1000: file, 5001:
# sqlite); see docs/chaos.md.
SAMPLE = [("file", 1000), ("sqlite", 5001), ("postgres", 11), ("file", 5003)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        w = World.start(tmp_path_factory.mktemp("chaos-world"))
    except WorldUnavailable as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(e))
        pytest.skip(str(e))
    yield w
    w.stop()


@pytest.mark.parametrize(("backend", "seed"), SAMPLE)
def test_chaos_trial_keeps_every_guarantee(world: World, tmp_path: Path, backend: str, seed: int) -> None:
    result = Trial(world, backend, seed, tmp_path).run()
    assert not result.error, f"harness error: {result.error}"
    assert result.faults["job_started"] >= 4
    assert not result.violations, "\n".join([*result.violations, *result.notes, "replay: " + replay_command(seed, backend)])
    if result.faults["clock_skew"]:
        assert result.observed["skewed_job_items"] > 0, "no job ran on the host whose clock was off"


def _run(store_dir: Path, job: str, ledger: Path, attempt: int, continues: str | None, state: str,
         checkpoint: dict[str, int] | None) -> Run:
    store = open_store(f"file:{store_dir}")
    try:
        got = store.claim(ClaimSpec(job=job, host="h", attempt=attempt, continues=continues,
                                    command=("py", "ledger_job.py", str(ledger), "4", "0", "1")))
        assert isinstance(got, Run)
        if checkpoint is not None:
            store.save_checkpoint(got.id, checkpoint)
        return store.finish(got.id, state, 0)
    finally:
        store.close()


def test_the_checkers_catch_lost_work_and_a_missing_restart(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    ledger = tmp_path / "j1.txt"
    first = _run(store_dir, "j1", ledger, 1, None, CHECKPOINTED, {"next": 3})
    stores = lambda: [("h", open_store(f"file:{store_dir}"))]  # noqa: E731
    assert any("never restarted" in v for v in invariants.restarted_once(stores, when="now", wait=0))
    _run(store_dir, "j1", ledger, 2, first.id, FINISHED, {"next": 5})
    assert invariants.restarted_once(stores, when="now", wait=0) == []
    # Attempt 2 re-did item 1 although attempt 1 had checkpointed past it, and never wrote 4.
    ledger.write_text("1 1 r1\n2 1 r1\n1 2 r2\n3 2 r2\n")
    found = invariants.ledgers(stores, tmp_path)
    assert any("item 1 re-done after attempt 1" in v for v in found)
    assert any("chain finished but items [4] missing" in v for v in found)
    ledger.write_text("1 1 r1\n2 1 r1\n3 2 r2\n4 2 r2\n")
    assert invariants.ledgers(stores, tmp_path) == []


def test_the_clock_check_tells_a_skew_fault_from_a_step_of_the_real_clock(tmp_path: Path) -> None:
    """Seeds 92 and 94 of the full run: every job on every host "ran 1.14 s off" because this
    machine's wall clock stepped mid-trial. Lines on time against the trial's start are on time;
    a host meant to be 3 s off whose jobs ran on the real clock is still caught."""
    import time

    store_dir = tmp_path / "store"
    ledger = tmp_path / "j1.txt"
    _run(store_dir, "j1", ledger, 1, None, FINISHED, None)
    stores = lambda: [("h", open_store(f"file:{store_dir}"))]  # noqa: E731
    start = time.time() - time.monotonic() - 1.14  # the clock stepped +1.14 s since the start
    mono = time.monotonic() - 5
    ledger.write_text("".join(f"{i} 1 r1 {mono + i * 0.1 + start:.3f} {mono + i * 0.1:.3f}\n"
                              for i in (1, 2, 3, 4)))
    stepped = invariants.ledgers(stores, tmp_path, skew={"h": 0.0})
    assert stepped and "ran -1.14s off" in stepped[0]
    assert invariants.ledgers(stores, tmp_path, skew={"h": 0.0}, bases=(start,)) == []
    missed = invariants.ledgers(stores, tmp_path, skew={"h": 3.0}, bases=(start,))
    assert len(missed) == 1 and "its host's clock is +3s off: the fault was not in effect" in missed[0]


def test_a_sigkill_landing_after_the_release_began_excuses_a_mixed_stage() -> None:
    """Seed 133: the SIGKILL aimed at the drain landed in the switch (the event reader lagged);
    what the deploy said before it died decides, not the moment aimed at."""
    from tests.chaos.trial import _released_unfinished

    drained = [{"kind": "phase.started", "phase": "drain_jobs"}, {"kind": "job.stop_requested"}]
    assert not _released_unfinished(drained)
    released = [*drained, {"kind": "phase.started", "phase": "release"}]
    assert _released_unfinished(released)
    assert not _released_unfinished([*released, {"kind": "deploy.finished"}])


def test_the_checkers_catch_a_gate_closed_for_a_deploy_already_gone(tmp_path: Path) -> None:
    import time

    store_dir = tmp_path / "store"
    stores = lambda: [("h", open_store(f"file:{store_dir}"))]  # noqa: E731
    exited = time.time() - 5
    [(_, store)] = stores()
    try:
        lease = store.close_gate(holder="ci", deploy_id="D1", reason="deploy test (D1) by ci", ttl=3)
        assert invariants.no_close_after_exit(stores, {"D1": time.time() + 5}) == []  # alive then
        found = invariants.no_close_after_exit(stores, {"D1": exited})
        assert len(found) == 1 and "for deploy D1" in found[0]
        # Handed back at once (the agent found its requester gone on its next write): held nothing.
        store.open_gate(lease.epoch, actor="ci")
        assert invariants.no_close_after_exit(stores, {"D1": exited}) == []
    finally:
        store.close()


def test_a_results_file_resumes_its_plan_and_sums_up_every_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[tuple[int, str]] = []

    class FakeTrial:
        def __init__(self, _world: object, backend: str, seed: int, _workdir: Path) -> None:
            self.backend, self.seed = backend, seed

        def run(self) -> TrialResult:
            ran.append((self.seed, self.backend))
            r = TrialResult(seed=self.seed, backend=self.backend, seconds=1.0)
            r.faults.update({"job_started": 5, "deploy_sigkill@close": 1})
            r.observed["restarts"] = 2
            if self.seed == 12:
                r.violations.append("(b) h: run x never restarted")
            return r

    monkeypatch.setattr(chaos_run, "Trial", FakeTrial)
    results = tmp_path / "r.jsonl"
    key = {"seed": 10, "backend": "all"}
    backends = list(chaos_run.BACKENDS)
    chaos_run.run_trials(None, backends, 6, 10, tmp_path, log=False, results=results, plan_key=key, chunk=4)  # type: ignore[arg-type]
    assert ran == [(10, "file"), (11, "sqlite"), (12, "postgres"), (13, "file")]
    done = {(d["seed"], d["backend"]) for d in chaos_run.read_results(results)}
    chaos_run.run_trials(None, backends, 6, 10, tmp_path, log=False, results=results, plan_key=key, skip=done)  # type: ignore[arg-type]
    assert ran[4:] == [(14, "sqlite"), (15, "postgres")]
    lines = chaos_run.read_results(results)
    assert len(lines) == 6 and all(d["plan"] == key for d in lines)
    # Every trial of the plan is in the file: the command only sums up (no servers started).
    assert chaos_run.main(["--trials", "6", "--seed", "10", "--results", str(results)]) == 1
    table = capsys.readouterr().out
    assert "| trials | 6 (file 2, postgres 2, sqlite 2) |" in table
    assert "| deploys SIGKILLed | 6 (close 6) |" in table
    assert "| violations | 1 in 1 trial(s) |" in table
    assert replay_command(12, "postgres") in table
    assert chaos_run.main(["--summarize", str(results)]) == 1
    # Another plan is refused rather than mixed into the file.
    assert chaos_run.main(["--trials", "6", "--seed", "11", "--results", str(results)]) == 2
