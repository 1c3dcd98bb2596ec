"""The click CLI in-process: help, exit codes, one-line errors, init/config round trip."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click
import pytest
import yaml

from shipit.cli import cli, run
from shipit.cli.common import sigterm_as_interrupt

SECRET = "pw-Zq81-not-for-eyes"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHIPIT_CONFIG", raising=False)
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    return tmp_path


def shipit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


CONFIG = """\
application: app
source:
  dir: src
deploy_to: /tmp/never-used
vars:
  db_password: {secret}
secrets: [db_password]
stages:
  demo:
    hosts: [local]
"""


def write_config(path: Path, text: str = CONFIG) -> Path:
    (path.parent / "src").mkdir(exist_ok=True)
    path.write_text(text.format(secret=SECRET))
    return path


# `agent` is internal: it speaks JSON on stdin/stdout, and its usage error is a JSON line.
@pytest.mark.parametrize(
    "command", [None, *sorted(set(cli.list_commands(click.Context(cli))) - {"agent"})]
)
def test_help_on_every_command(capsys: pytest.CaptureFixture[str], command: str | None) -> None:
    code, out, err = shipit(capsys, *([command] if command else []), "--help")
    assert code == 0, err
    assert out.lower().startswith("usage: shipit")


def test_top_level_help_lists_every_command_and_completion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = shipit(capsys, "--help")
    assert code == 0
    for name in (
        "init",
        "check",
        "deploy",
        "rollback",
        "releases",
        "history",
        "config",
        "job",
        "agent",
    ):
        assert f"\n  {name} " in out
    assert "_SHIPIT_COMPLETE=bash_source shipit" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from shipit import __version__

    assert shipit(capsys, "--version")[:2] == (0, f"shipit {__version__}\n")


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = shipit(capsys, "deplyo", "prod")
    assert code == 2
    assert "No such command 'deplyo'" in err
    assert "Traceback" not in out + err


def test_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = shipit(capsys, "deploy", "demo", "--lock-wait", "soon")
    assert code == 2
    assert "'soon' is not a valid float" in err


def test_bad_config_is_one_line_naming_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_config(tmp_path / "shipit.yaml", CONFIG + "    parallelsim: 3\n")
    code, out, err = shipit(capsys, "config", "demo")
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("shipit: error: shipit.yaml:11: stages.demo.parallelsim")
    assert "did you mean 'parallelism'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        (
            "    - type: sidekiq\n",
            "shipit.yaml:13: jobs.adapters[0].type: unknown adapter 'sidekiq'"
            " (use one of cron, systemd, command, rq, celery)",
        ),
        (
            "    - type: rq\n      queus: [default]\n",
            "shipit.yaml:14: jobs.adapters[0].queus: unknown key (did you mean 'queues'?)",
        ),
    ],
    ids=["type", "key"],
)
def test_bad_adapter_is_one_line_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, adapter: str, message: str
) -> None:
    write_config(tmp_path / "shipit.yaml", CONFIG + "jobs:\n  adapters:\n" + adapter)
    code, out, err = shipit(capsys, "config", "demo")
    assert (code, out, err) == (2, "", f"shipit: error: {message}\n")


def test_hook_role_no_host_has_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hook = "hooks:\n  after_release:\n    - task: migrate\n      roles: [db]\n"
    write_config(tmp_path / "shipit.yaml", CONFIG + hook)
    code, out, err = shipit(capsys, "config", "demo")
    assert (code, out) == (2, "")
    assert err == (
        "shipit: error: shipit.yaml:14: hooks.after_release[0].roles[0]: no host has role 'db'"
        " (roles: none defined)\n"
    )


def test_bad_webhook_is_one_line_with_its_line_and_unmasked_host(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_config(tmp_path / "shipit.yaml", CONFIG + 'notify:\n  - webhook: "ftp://x"\n')
    code, out, err = shipit(capsys, "deploy", "demo", "--yes")
    assert (code, out) == (2, "")
    assert err == (
        "shipit: error: shipit.yaml:12: notify[0].webhook: must be an http:// or https:// URL,"
        " got 'ftp://x'\n"
    )


def test_postgres_store_without_its_dsn_fails_before_any_deploy_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHIPIT_DSN", raising=False)
    write_config(tmp_path / "shipit.yaml", CONFIG + "jobs:\n  store: postgres\n")
    for argv in (("deploy", "demo", "--yes"), ("deploy", "demo", "--json"), ("rollback", "demo", "--yes")):
        code, out, err = shipit(capsys, *argv)
        assert (code, out) == (2, ""), argv
        assert err == (
            "shipit: error: shipit.yaml:12: jobs.store: the postgres job store needs its DSN in"
            " the environment variable SHIPIT_DSN (jobs.dsn_env), which is not set\n"
        )


def test_yaml_syntax_error_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "shipit.yaml").write_text("application: [unclosed\nstages: {}\n")
    code, _, err = shipit(capsys, "check", "demo")
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("shipit: error: shipit.yaml:")


def test_unknown_stage_names_the_stages(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_config(tmp_path / "shipit.yaml")
    code, _, err = shipit(capsys, "deploy", "prod", "--yes")
    assert code == 2
    assert err == "shipit: error: shipit.yaml: no stage 'prod' (stages: demo)\n"


def test_unknown_host_filter(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_config(tmp_path / "shipit.yaml")
    code, _, err = shipit(capsys, "check", "demo", "--hosts", "web9")
    assert code == 2
    assert err.startswith("shipit: error: stage 'demo' has no host 'web9'")


def test_no_config_anywhere_says_run_init(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = shipit(capsys, "releases", "demo")
    assert code == 2
    assert "no shipit.yaml found" in err and "shipit init" in err


def test_config_option_and_env_pick_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    write_config(elsewhere / "deploy.yaml")
    code, out, err = shipit(capsys, "--config", str(elsewhere / "deploy.yaml"), "config", "demo")
    assert code == 0, err
    assert yaml.safe_load(out)["application"] == "app"
    monkeypatch.setenv("SHIPIT_CONFIG", str(elsewhere / "missing.yaml"))
    code, _, err = shipit(capsys, "config", "demo")
    assert code == 2
    assert "missing.yaml" in err and len(err.splitlines()) == 1


def test_init_then_config_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_PASSWORD", SECRET)
    code, out, _ = shipit(capsys, "init")
    assert code == 0 and "shipit.yaml" in out
    assert (tmp_path / "shipit.yaml").is_file()
    code, out, err = shipit(capsys, "config", "local")
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["name"] == "local"
    assert resolved["hosts"][0]["name"] == "local"
    assert resolved["vars"]["db_password"] == "********"
    assert SECRET not in out
    # A second init keeps the user's file; --force replaces it.
    (tmp_path / "shipit.yaml").write_text("# mine\n")
    code, _, err = shipit(capsys, "init")
    assert code == 2 and "already exists" in err
    assert (tmp_path / "shipit.yaml").read_text() == "# mine\n"
    assert shipit(capsys, "init", "--force")[0] == 0
    assert "stages:" in (tmp_path / "shipit.yaml").read_text()


def test_config_masks_secrets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_config(tmp_path / "shipit.yaml")
    code, out, _ = shipit(capsys, "config", "demo")
    assert code == 0
    assert SECRET not in out
    assert yaml.safe_load(out)["vars"]["db_password"] == "********"


def test_user_errors_are_masked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipit.config import resolve
    from shipit.errors import HostError

    def unreachable(stage: object, hosts: object, roles: object) -> object:
        raise HostError(f"cannot reach db with password {SECRET}")

    monkeypatch.setattr(resolve, "filter_hosts", unreachable)
    write_config(tmp_path / "shipit.yaml")
    code, out, err = shipit(capsys, "check", "demo", "--roles", "db")
    assert code == 4
    assert SECRET not in out + err
    assert err == "shipit: error: cannot reach db with password ********\n"


def test_unexpected_exception_is_one_line_unless_verbose(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shipit.cli.deploy as deploy

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(deploy, "load_stage", boom)
    code, _, err = shipit(capsys, "history", "demo")
    assert code == 1
    assert err == "shipit: internal error: RuntimeError: kaboom (run with -v for the traceback)\n"
    code, _, err = shipit(capsys, "-v", "history", "demo")
    assert code == 1
    assert "Traceback (most recent call last)" in err and "kaboom" in err


def test_job_pass_through_forwards_raw_args(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = shipit(capsys, "job", "--help")
    assert code == 0
    assert out.startswith("usage: shipit job")
    code, _, err = shipit(capsys, "job", "no-such-subcommand")
    assert code == 2 and "invalid choice" in err


def test_sigterm_becomes_keyboard_interrupt_once() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a point where the handler has run
    with sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
        except KeyboardInterrupt:
            # Cleanup running after the first SIGTERM must not be cut short by a second one.
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
            cleanup_finished = True
    assert cleanup_finished
    assert signal.getsignal(signal.SIGTERM) == previous


def test_json_deploy_that_fails_before_the_runner_starts_still_ends_with_a_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from shipit import runner
    from shipit.errors import GateHeld

    def held(*a: object, **k: object) -> None:
        raise GateHeld(f"the gate is held by deploy 42 (token {SECRET})")

    monkeypatch.setattr(runner, "deploy", held)
    write_config(tmp_path / "shipit.yaml")
    code, out, err = shipit(capsys, "deploy", "demo", "--json")
    assert code == 3
    assert err == "shipit: error: the gate is held by deploy 42 (token ********)\n"
    assert [json.loads(line) for line in out.splitlines()] == [
        {
            "summary": {
                "deploy_id": None,
                "outcome": "failed",
                "release": None,
                "revision": None,
                "error": "the gate is held by deploy 42 (token ********)",
                "durations": {},
                "exit_code": 3,
                "hosts": ["local"],
            }
        }
    ]


def test_check_shows_notes_without_making_an_ok_host_a_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "not-yet"
    write_config(tmp_path / "shipit.yaml", CONFIG.replace("/tmp/never-used", str(target)))
    code, out, err = shipit(capsys, "check", "demo")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("local"))
    assert row.split()[1] == "ok" and "PROBLEM" not in out
    assert f"{target} does not exist yet; the first deploy creates it" in " ".join(out.split())
    assert not target.exists()
