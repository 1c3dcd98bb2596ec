"""Whatever argv a user types, `shipit` ends with a documented exit code and no traceback.

Generated argv run in-process through `shipit.cli.run(argv)` inside click's CliRunner isolation
(stdin, stdout, stderr and the environment are the runner's), in a scratch project whose stage
`s` is an SSH host nobody listens on and whose stage `l` is the `local` host. Tokens are built
from shipit's own vocabulary plus hostile text (metacharacters, quotes, newlines, non-ASCII).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from shipit.cli import run
from tests.fuzz.profiles import count, fuzz

pytestmark = pytest.mark.timeout(300)

EXIT_CODES = {0, 1, 2, 3, 4, 5, 75, 130}

COMMANDS = ["init", "check", "deploy", "rollback", "releases", "history", "config", "status",
            "jobs", "lock", "job", "agent"]
SUBCOMMANDS = ["list", "show", "pause", "resume", "reconcile", "status", "acquire", "release",
               "checkpoint", "progress", "run", "drain", "renew", "restart", "open", "close"]
OPTIONS = ["--help", "-h", "--version", "-v", "--json", "--hosts", "--roles", "--revision", "-r",
           "--dry-run", "--yes", "-y", "--to", "--limit", "-n", "--force", "--store", "--name",
           "--key", "--max-wait", "--cwd", "--env", "--reason", "--ttl", "--", "-", "--bogus",
           "--limit=0", "--limit=-1", "--limit=x", "--hosts=", "--roles=,,", "--max-wait=nan",
           "--config", "--config=missing.yaml", "--config=.", "--config=bad.yaml"]
VALUES = ["s", "l", "nope", "", " ", "local", "nobody@127.0.0.1:1", "web,", "1", "0", "-1", "1e999",
          "nan", "inf", "sqlite:relative.db", "bogus:x", "postgresql://u:pw@127.0.0.1:1/x",
          "$(touch pwned)", "`touch pwned`", "; touch pwned", "a && touch pwned", "*", "'", '"',
          "a\nb", "é∂ø", "{\"a\": 1}", "[", "%s", "{deploy_id}", "\\", "HEAD", "20260101000000000000"]
# Free text for positional values: no NUL (a real argv cannot hold one) and no '/' so that a
# random word can never name a file outside the scratch directory (`init --config`).
free = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), max_size=12
)
token = st.one_of(
    st.sampled_from(COMMANDS), st.sampled_from(SUBCOMMANDS), st.sampled_from(OPTIONS),
    st.sampled_from(VALUES), free,
)
argv_strategy = st.one_of(
    st.lists(token, max_size=7),
    st.tuples(st.sampled_from(COMMANDS), st.lists(token, max_size=6)).map(lambda t: [t[0], *t[1]]),
    st.tuples(
        st.sampled_from(["jobs", "lock"]), st.sampled_from(SUBCOMMANDS), st.lists(token, max_size=4)
    ).map(lambda t: [t[0], t[1], *t[2]]),
)

CONFIG = {
    "application": "app",
    "source": {"dir": "src"},
    "deploy_to": "{root}/app",
    "jobs": {"store": "file", "lease_ttl": 3, "drain_timeout": 0.5},
    "shipit_command": f"{sys.executable} -m shipit",
    "stages": {
        "s": {"hosts": ["nobody@127.0.0.1:1"], "ssh": {"connect_timeout": 1}},
        "l": {"hosts": ["local"]},
    },
}


class Scratch:
    """A project directory; every example starts from the same config text."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "src").mkdir()
        (root / "src" / "app.py").write_text("x = 1\n")
        cfg = {**CONFIG, "deploy_to": str(root / "app")}
        self.text = yaml.safe_dump(cfg)
        self.config = root / "shipit.yaml"
        (root / "bad.yaml").write_text("stages: [\n")
        self.restore()

    def restore(self) -> None:
        # `init --force` may overwrite the config: put ours back so the next example sees it.
        if not self.config.is_file() or self.config.read_text() != self.text:
            self.config.unlink(missing_ok=True)
            self.config.write_text(self.text)
        for leftover in self.root.glob("pwned*"):
            leftover.unlink()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    root = tmp_path_factory.mktemp("clifuzz")
    old = os.getcwd()
    os.chdir(root)
    try:
        yield Scratch(root)
    finally:
        os.chdir(old)


def invoke(scratch: Scratch, argv: list[str]) -> tuple[int, str, str]:
    runner = CliRunner()
    env = {"SHIPIT_CONFIG": None, "SHIPIT_STORE": None, "CI": "true", "NO_COLOR": "1",
           "SHIPIT_RUN_ID": None}
    with runner.isolation(input="", env=env) as (out, err, _):
        code = run(list(argv))
        sys.stdout.flush()
        sys.stderr.flush()
        stdout = out.getvalue().decode(errors="replace")
        stderr = err.getvalue().decode(errors="replace")
    return code, stdout, stderr


def check_outcome(argv: list[str], code: int, stdout: str, stderr: str) -> None:
    both = stdout + stderr
    assert code in EXIT_CODES, (argv, code, both)
    assert "Traceback" not in both, (argv, both)
    assert "internal error" not in both, (argv, both)
    if code == 2:
        assert stderr.strip() or stdout.strip(), (argv, "a usage error must say something")


@fuzz(4600)
@given(argv_strategy)
@example(["--config", "bad.yaml", "deploy", "s"])
@example(["deploy", "l", "--dry-run", "--hosts", "$(touch pwned)"])
@example(["jobs", "show", "l", "../../etc/passwd"])
@example(["history", "l", "--limit", "0"])
@example(["config", "nope"])
@example(["job", "run", "--", "true"])
@example(["agent", "nope"])
def test_any_argv_ends_with_a_documented_exit_code_and_no_traceback(
    scratch: Scratch, argv: list[str]
) -> None:
    try:
        code, stdout, stderr = invoke(scratch, argv)
        check_outcome(argv, code, stdout, stderr)
        # Even `deploy "$(touch pwned)"`-style words are data: nothing ran them as shell.
        assert not list(scratch.root.glob("pwned*")), argv
    finally:
        scratch.restore()
    count("cli argv")
