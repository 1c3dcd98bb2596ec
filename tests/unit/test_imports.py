"""The lean entry points stay lean: what `shipit job run`, `shipit agent OP` and the CLI's
`--version` / `deploy --help` import, checked in a fresh interpreter (sys.modules at exit).

`shipit job run` starts every supervised job and the deploy runs two `shipit agent` processes
per host, so their imports are most of what they cost (docs/performance.md). A module listed
here coming back is a behaviour change to catch in review, not a timing: make that import local
to where it is needed (with a comment saying why).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]

# Never on the host-side paths (job run, agent) with a file or SQLite store.
HEAVY = ("pydantic", "rich", "paramiko", "fabric", "invoke", "click", "psycopg", "yaml",
         "cryptography")
# Standard library modules those paths used to import for nothing, and must not again:
# typing (annotations only), secrets (hmac, hashlib, OpenSSL; os.urandom makes the ids),
# subprocess (only to spawn a restart), the rest through pathlib / importlib.resources.
STDLIB = ("typing", "secrets", "hashlib", "subprocess", "pathlib", "tempfile", "zipfile",
          "importlib.resources", "asyncio", "email")
# Not imported by `shipit --version` and `shipit deploy --help` (a config or a host needs them).
CLI_HEAVY = ("pydantic", "rich", "paramiko", "fabric", "invoke", "psycopg", "yaml",
             "cryptography")

_PROBE = """
import atexit, json, sys
def _dump():
    with open(sys.argv[1], "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(_dump)
if sys.argv[2:]:
    from shipit.main import main
    main(sys.argv[2:])
"""


def _probe(argv: list[str], cwd: Path) -> set[str]:
    out = cwd / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *argv], capture_output=True, text=True,
        env=env, cwd=cwd, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert proc.returncode == 0, f"shipit {' '.join(argv)}: {proc.stdout}{proc.stderr}"
    return set(json.loads(out.read_text()))


@functools.cache
def _interpreter(cwd: str) -> frozenset[str]:
    # What the interpreter imports on its own here: site-packages .pth hooks (an editable
    # install, certifi...) import typing, pathlib and more before shipit runs.
    return frozenset(_probe([], Path(cwd)))


def imported(argv: list[str], tmp_path: Path) -> set[str]:
    """The modules a fresh `python -m shipit ARGV` imports beyond the interpreter's start."""
    return _probe(argv, tmp_path) - _interpreter(str(tmp_path.parent))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of `names` (packages count with their submodules) are in `modules`."""
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_job_run_and_agent_import_nothing_heavy(tmp_path: Path, kind: str) -> None:
    url = f"file:{tmp_path}/store" if kind == "file" else f"sqlite:{tmp_path}/store/jobs.db"
    opts = {"store": url, "holder": "t", "deploy_id": "d1", "ttl": 30, "timeout": 5}
    # As a deploy runs them: drain (creates the store, closes the gate), restart (reopens it),
    # then a job starts, then `shipit status` asks.
    drain = imported(["agent", "drain", "--opts", json.dumps(opts)], tmp_path)
    # restart_jobs hands the agent the deploy's record to finish (shipit.history).
    (tmp_path / "app" / ".shipit").mkdir(parents=True)
    final = {"store": url, "epoch": 1, "run_ids": [], "deploy_to": str(tmp_path / "app"),
             "history": {"deploy_id": "d1", "outcome": "success", "durations": {}}}
    restart = imported(["agent", "restart", "--opts", json.dumps(final)], tmp_path)
    assert (tmp_path / "app" / ".shipit" / "history.jsonl").exists()
    job = imported(["job", "run", "--store", url, "--name", "t", "--", "true"], tmp_path)
    status = imported(["agent", "status", "--opts", json.dumps({"store": url})], tmp_path)
    for what, modules in (("agent drain", drain), ("agent restart", restart),
                          ("job run", job), ("agent status", status)):
        assert "shipit.gate.file" in modules or "shipit.gate.sqlite" in modules, what
        assert what != "agent restart" or "shipit.history" in modules
        assert loaded(modules, HEAVY) == [], f"`shipit {what}` ({kind} store) imports them"
        assert loaded(modules, STDLIB) == [], f"`shipit {what}` ({kind} store) imports them"


@pytest.mark.parametrize("argv", [["--version"], ["deploy", "--help"]])
def test_cli_version_and_command_help_load_no_config_or_ssh_stack(
    tmp_path: Path, argv: list[str]
) -> None:
    modules = imported(argv, tmp_path)
    assert "click" in modules
    assert loaded(modules, CLI_HEAVY) == [], f"`shipit {' '.join(argv)}` imports them"


def test_lazy_commands_are_the_commands_of_their_modules() -> None:
    """shipit.cli.LAZY_COMMANDS names every command once, under the name it has."""
    import importlib

    from shipit.cli import LAZY_COMMANDS, cli
    from shipit.cli.deploy import COMMANDS

    for name, (module, attribute) in LAZY_COMMANDS.items():
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command) and command.name == name, name
    assert {c.name for c in COMMANDS} <= set(LAZY_COMMANDS)
    names = cli.list_commands(click.Context(cli))
    assert {"job", "agent", *LAZY_COMMANDS} == set(names)
    assert all(cli.get_command(click.Context(cli), n) is not None for n in names)
