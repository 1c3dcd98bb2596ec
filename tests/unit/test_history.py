"""Deploy records: which record of a deploy wins, the final record the agent writes, the
`shipit history` table at 80 columns and wide, and paging."""

from __future__ import annotations

import io
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

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


# -- the table ---------------------------------------------------------------------------------

RECORDS = [
    {"deploy_id": "20261201T090000000000Z-aaaaaa", "kind": "rollback", "actor": "ann@ci",
     "finished": 1796115605.0, "started": 1796115600.0, "revision": "3" * 40,
     "release": "20261201085000000000", "hosts": ["web1", "web2", "jobs1"], "outcome": "success",
     "durations": {"pre_deploy": 0.12, "drain_jobs": 2.3, "release": 0.41, "restart_jobs": 0.2}},
    {"deploy_id": "20261201T085000000000Z-bbbbbb", "kind": "deploy",
     "actor": "a-very-long-user-name@build-agent-17.ci.example.com", "finished": 1796115075.0,
     "started": 1796115000.0, "revision": "c" * 40 + "-dirty", "release": "20261201085000000000",
     "hosts": ["web1", "web2", "jobs1"], "outcome": "rolled_back",
     "durations": {"pre_deploy": 0.5, "drain_jobs": 65.0, "release": 1.0, "restart_jobs": 0.4,
                   "rollback": 2.0}},
    {"deploy_id": "20261201T080000000000Z-cccccc", "kind": "deploy", "actor": "bob@laptop",
     "finished": None, "started": 1796112000.0, "revision": "content-0123456789abcdef",
     "release": None, "hosts": ["web1"], "outcome": "failed", "durations": {"pre_deploy": 0.2}},
]


def render(width: int, records: list[dict[str, Any]] = RECORDS) -> list[str]:
    from shipit.cli.deploy import history_table

    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(history_table(records, width))
    return [line.rstrip() for line in out.getvalue().splitlines()]


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


TYPICAL = [
    {"deploy_id": "d3", "kind": "deploy", "actor": "ann@ci", "finished": 1796115605.0,
     "revision": "3" * 40, "hosts": ["web1", "web2", "jobs1"], "outcome": "success",
     "durations": {"pre_deploy": 0.12, "drain_jobs": 2.3, "release": 0.41, "restart_jobs": 0.2}},
    {"deploy_id": "d2", "kind": "deploy", "actor": "bob@laptop", "finished": 1796115075.0,
     "revision": "c" * 40, "hosts": ["web1", "web2", "jobs1"], "outcome": "rolled_back",
     "durations": {"pre_deploy": 0.5, "drain_jobs": 65.0, "release": 1.0, "restart_jobs": 0.4,
                   "rollback": 2.0}},
    {"deploy_id": "d1", "kind": "deploy", "actor": "ann@ci", "finished": None,
     "started": 1796112000.0, "revision": None, "hosts": ["web1"], "outcome": "failed"},
]


def test_the_table_fits_80_columns_with_who_when_what_hosts_outcome_and_time() -> None:
    assert render(80, TYPICAL) == [
        "when              who         revision  hosts  outcome      took",
        "2026-12-01 09:00  ann@ci      33333333  3      success      3.0s (drain 2.3s)",
        "2026-12-01 08:51  bob@laptop  cccccccc  3      rolled_back  1m08s (drain 1m05s)",
        "2026-12-01 08:00  ann@ci      -         1      failed       -",
    ]


def test_a_row_whose_longest_phase_does_not_fit_keeps_its_total_only() -> None:
    records = [
        {**TYPICAL[0], "kind": "rollback", "durations": {"release": 0.3, "restart_jobs": 0.2}},
        {**TYPICAL[1], "actor": "ann@ci"},
    ]
    assert render(80, records) == [
        "when              who     revision  hosts  outcome             took",
        "2026-12-01 09:00  ann@ci  33333333  3      success (rollback)  0.5s (rel 0.3s)",
        "2026-12-01 08:51  ann@ci  cccccccc  3      rolled_back         1m08s",
    ]


def test_a_crowded_table_gives_way_without_passing_80_columns() -> None:
    # A long actor is cut, and the time column keeps the totals when the phases cannot fit.
    lines = render(80)
    assert lines == [
        "when              who         revision          hosts  outcome             took",
        "2026-12-01 09:00  ann@ci      33333333          3      success (rollback)  3.0s",
        "2026-12-01 08:51  a-very-lo…  cccccccc-dirty    3      rolled_back         1m08s",
        "2026-12-01 08:00  bob@laptop  content-01234567  1      failed              0.2s",
    ]
    assert max(map(len, lines)) <= 80


def test_a_wide_terminal_or_a_pipe_also_gets_ids_releases_host_names_and_every_phase() -> None:
    assert render(200) == [
        "when                 deploy                         who                revision          "
        "release               hosts            outcome             durations",
        "2026-12-01 09:00:05  20261201T090000000000Z-aaaaaa  ann@ci             33333333          "
        "20261201085000000000  web1,web2,jobs1  success (rollback)  pre 0.1s drain 2.3s rel 0.4s rst 0.2s",
        "2026-12-01 08:51:15  20261201T085000000000Z-bbbbbb  a-very-long-user…  cccccccc-dirty    "
        "20261201085000000000  web1,web2,jobs1  rolled_back         "
        "pre 0.5s drain 1m05s rel 1.0s rst 0.4s rollback 2.0s",
        "2026-12-01 08:00:00  20261201T080000000000Z-cccccc  bob@laptop         content-01234567  "
        "-                     web1             failed              pre 0.2s",
    ]


# -- the command -------------------------------------------------------------------------------


def _history_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, records: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    from shipit import runner

    calls: list[tuple[int, int]] = []

    def fake(stage: Any, bus: Any, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        calls.append((limit, offset))
        return records[offset:offset + limit]

    monkeypatch.setattr(runner, "read_history", fake)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHIPIT_CONFIG", raising=False)
    (tmp_path / "src").mkdir()
    (tmp_path / "shipit.yaml").write_text(
        "application: app\nsource: {dir: src}\ndeploy_to: /tmp/never-used\n"
        "stages:\n  demo:\n    hosts: [local]\n"
    )
    return calls


def test_history_pages_with_offset_and_prints_the_wide_table_to_a_pipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipit.cli import run

    calls = _history_cli(monkeypatch, tmp_path, RECORDS)
    assert run(["history", "demo", "-n", "2", "--offset", "1"]) == 0
    out = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    assert calls == [(2, 1)]
    assert out == render(200, RECORDS[1:3])
    assert run(["history", "demo", "--offset", "3"]) == 0
    assert capsys.readouterr().out == "no deploys on demo older than the newest 3\n"
    assert run(["history", "demo", "--json", "-n", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == RECORDS[:1]


def test_history_goes_through_the_pager_unless_no_pager(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import click

    from shipit.cli import run
    from shipit.output import pager

    _history_cli(monkeypatch, tmp_path, RECORDS)
    paged: list[str] = []
    monkeypatch.setattr(pager, "wants_pager", lambda text: True)
    monkeypatch.setattr(click, "echo_via_pager", lambda text, **kw: paged.append(text))
    assert run(["history", "demo"]) == 0
    assert capsys.readouterr().out == ""
    assert [line.rstrip() for line in paged[0].splitlines()] == render(200)
    assert run(["history", "demo", "--no-pager"]) == 0
    assert [line.rstrip() for line in capsys.readouterr().out.splitlines()] == render(200)
    assert run(["history", "demo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == RECORDS
    assert len(paged) == 1
