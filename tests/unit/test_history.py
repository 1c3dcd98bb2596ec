"""Deploy records: which record of a deploy wins, and the final record the agent writes."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from shipit.history import SEQ_FAILURE, SEQ_FINAL, SEQ_SWITCH, append_final, merge, record_json


def rec(deploy_id: str, seq: int | None, outcome: str, finished: float, **more: Any) -> str:
    r: dict[str, Any] = {"deploy_id": deploy_id, "outcome": outcome, "finished": finished,
                         "started": float(deploy_id[-1]), **more}
    if seq is not None:
        r["seq"] = seq
    return record_json(r)


def test_the_latest_step_wins_whatever_the_clocks_say() -> None:
    host_a = "\n".join([
        rec("d1", SEQ_SWITCH, "success", 10.0),
        rec("d1", SEQ_FINAL, "success", 12.0, durations={"restart_jobs": 1.0}),
    ])
    # Host b's final record ends later than the rollback record (skew, or a slow host): the
    # rollback still wins, because it is the later step.
    host_b = "\n".join([
        rec("d1", SEQ_SWITCH, "success", 10.0),
        rec("d1", SEQ_FINAL, "success", 99.0),
        rec("d1", SEQ_FAILURE, "rolled_back", 13.0),
    ])
    [merged] = merge([host_a, host_b], 10)
    assert merged["outcome"] == "rolled_back"
    # Between final records, the host that ended last: the deploy's real end.
    [final] = merge([host_a, "\n".join([rec("d1", SEQ_FINAL, "success", 12.5)])], 10)
    assert final["finished"] == 12.5


def test_records_without_seq_rank_by_outcome_as_before() -> None:
    text = "\n".join([rec("d1", None, "failed", 13.0), rec("d1", None, "success", 14.0)])
    assert merge([text], 10)[0]["outcome"] == "failed"


def test_offset_pages_through_older_deploys_newest_first() -> None:
    text = "\n".join(rec(f"d{i}", SEQ_FINAL, "success", float(i)) for i in range(1, 8))
    assert [r["deploy_id"] for r in merge([text], 3)] == ["d7", "d6", "d5"]
    assert [r["deploy_id"] for r in merge([text], 3, offset=3)] == ["d4", "d3", "d2"]
    assert [r["deploy_id"] for r in merge([text], 3, offset=6)] == ["d1"]
    assert merge([text], 3, offset=7) == []


def test_the_agent_completes_the_final_record_and_writes_it_private(tmp_path: Path) -> None:
    (tmp_path / ".shipit").mkdir()
    handed = {"deploy_id": "d1", "seq": SEQ_FINAL, "outcome": "success", "started": 100.0,
              "finished": 103.0, "durations": {"pre_deploy": 1.0, "drain_jobs": 1.5,
                                              "release": 0.5, "restart_jobs": 0.1}}
    path = append_final(handed, str(tmp_path), time.monotonic())
    assert path == str(tmp_path / ".shipit" / "history.jsonl")
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    append_final(handed, str(tmp_path), time.monotonic())
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(lines) == 2
    written = lines[0]
    took = written["durations"]["restart_jobs"] - 0.1
    # This process's age (it started before the test) was added to the phase and to the end.
    assert took > 0
    assert written["finished"] == pytest.approx(103.0 + took, abs=0.002)
    assert {k: written["durations"][k] for k in ("pre_deploy", "drain_jobs", "release")} == {
        "pre_deploy": 1.0, "drain_jobs": 1.5, "release": 0.5}
    assert handed["durations"]["restart_jobs"] == 0.1  # the caller's dict is left alone
