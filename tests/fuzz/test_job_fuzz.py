"""Job names, commands, env, keys and cwds are data, whatever they contain.

In-process, in bulk: what `shipit job run` records (its plan, claimed in a real file / SQLite
store) reads back exactly, and the plan a restart builds from the record (`--continues`) is the
same job: command, env, key and cwd unchanged. `shipit job run`'s argument parsing never ends in
a traceback. Through real processes, for a sample: the job receives its arguments verbatim
(argv, no shell), and payloads that would create a marker file if a shell ever saw them do not.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shipit.gate.base import Run, Store
from shipit.gate.file import FileStore
from shipit.gate.sqlite import SQLiteStore
from shipit.jobs.cli import main as job_main
from shipit.jobs.supervisor import RunOptions, _plan
from tests.fuzz.profiles import count, fuzz

pytestmark = pytest.mark.timeout(300)

# What can reach an argv or an environment value: any text without NUL or lone surrogates.
arg_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24
)
PAYLOADS = ["$(touch {m})", "`touch {m}`", "; touch {m}", "&& touch {m}", "| touch {m}",
            "\ntouch {m}\n", "' ; touch {m} ; '", '" ; touch {m} ; "', "$((1+1))", "*", "~root",
            "${{IFS}}touch${{IFS}}{m}", "é ∂ 🚀", "-rf", "--", "--name", "%s%n", "\\", "a b"]
hostile = st.one_of(arg_text, st.sampled_from(PAYLOADS))
env_names = st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,8}\Z", fullmatch=True).filter(
    lambda n: not n.startswith("SHIPIT")
)


@contextmanager
def store_at(kind: str) -> Iterator[tuple[Store, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store: Store = FileStore(str(root / "s")) if kind == "file" else SQLiteStore(str(root / "j.db"))
        try:
            yield store, root
        finally:
            store.close()


@fuzz(700)
@given(
    kind=st.sampled_from(["file", "sqlite"]),
    name=st.one_of(st.none(), hostile),
    key=st.one_of(st.none(), hostile),
    command=st.lists(hostile, min_size=1, max_size=5).filter(lambda c: c[0] != ""),
    env=st.dictionaries(env_names, hostile, max_size=3),
    cwd=hostile,
)
@example(kind="file", name="$(touch x)", key="; rm -rf /", command=["sh", "-c", "touch x"],
         env={"A": "`id`"}, cwd="dir with spaces/$(x)")
def test_what_a_job_records_is_what_its_restart_gets_back(
    kind: str, name: str | None, key: str | None, command: list[str], env: dict[str, str], cwd: str
) -> None:
    environ = {**env, "PATH": "/usr/bin", "OTHER_SECRET": "not recorded"}
    with store_at(kind) as (store, root):
        opts = RunOptions(command=command, store_url="unused", host="h", name=name, key=key,
                          cwd=str(root / "w") + "/" + cwd.replace("\n", " "),
                          env_names=list(env))
        plan = _plan(opts, store, environ)
        run = store.claim(plan.spec)
        assert isinstance(run, Run)
        back = store.get_run(run.id)
        assert back.command == tuple(command)
        assert back.env == env  # exactly the allow-listed names, values byte for byte
        assert back.key == key
        assert back.job == (name or os.path.basename(command[0]) or command[0])
        assert back.cwd == plan.spec.cwd
        store.save_checkpoint(run.id, {"at": cwd, "args": command})
        store.finish(run.id, "checkpointed", 0, "stopped")
        # What `shipit agent restart` runs: `shipit job run --continues ID`, nothing else given.
        again = _plan(RunOptions(command=[], store_url="unused", host="h", continues=run.id),
                      store, {"PATH": "/usr/bin"})
        assert again.spec.command == back.command and again.spec.env == back.env
        assert again.spec.key == back.key and again.spec.job == back.job
        assert again.spec.cwd == back.cwd and again.spec.continues == run.id
        assert again.resume_state == {"at": cwd, "args": command}
    count("job record/restart")


run_options = st.lists(
    st.one_of(
        st.sampled_from(["--name", "--key", "--max-wait", "--cwd", "--host", "--grace",
                         "--heartbeat", "--env", "--continues", "--store", "-h", "--bogus", "-",
                         "nan", "-1", "1e999", "0", "inf", "file:", "sqlite:rel.db", "postgres"]),
        hostile,
    ),
    max_size=6,
)


@fuzz(2000)
@given(head=st.sampled_from(["run", "checkpoint", "progress", "nope", "--help"]), options=run_options,
       tail=st.lists(hostile, max_size=3))
@example(head="run", options=["--max-wait", "nan"], tail=["true"])
@example(head="run", options=["--cwd", "a\nb"], tail=["true"])
@example(head="checkpoint", options=["{not json"], tail=[])
@example(head="progress", options=["x"], tail=[])
def test_job_cli_arguments_end_in_an_exit_code_without_traceback(
    head: str, options: list[str], tail: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No store anywhere (and a --continues run that cannot exist): the job can never start here,
    # so every input exercises parsing and validation in this process without forking.
    for var in ("SHIPIT_STORE", "SHIPIT_RUN_ID", "SHIPIT_DSN", "SHIPIT_GRACE"):
        monkeypatch.delenv(var, raising=False)
    argv = [head, *[o for o in options if not o.startswith(("file:", "sqlite:/"))], "--", *tail]
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            code = job_main(argv)
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code if isinstance(exc.code, int) else 0
    text = err.getvalue()
    assert code in (0, 2, 5, 75), (argv, code, text)
    assert "Traceback" not in text, (argv, text)
    if code:
        lines = text.strip().split("\n")  # a terminal breaks lines at \n only
        assert len(lines) == 1 and lines[0].startswith("shipit: error:"), (argv, text)
    count("job cli argv")


ECHO = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': os.environ.get('FUZZ_V'),"
        " 'cwd': os.getcwd()}, open(os.environ['FUZZ_OUT'], 'w'))")


@fuzz(12)
@given(args=st.lists(hostile, max_size=4), value=hostile, name=hostile, key=hostile)
@example(args=["$(touch {m})", "`touch {m}`"], value="; touch {m}", name="$(touch {m})",
         key="' && touch {m} '")
def test_real_job_run_passes_hostile_words_verbatim(
    args: list[str], value: str, name: str, key: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        marker = root / "marker"
        fill = [a.replace("{m}", str(marker)) for a in args]
        value, name, key = (x.replace("{m}", str(marker)) for x in (value, name, key))
        work = root / "dir with $(touch x) and 'quotes'"
        work.mkdir()
        out = root / "out.json"
        env = {**os.environ, "FUZZ_V": value, "FUZZ_OUT": str(out)}
        env.pop("SHIPIT_STORE", None)
        FileStore(str(root / "store")).close()  # as a first deploy leaves it: job run creates none
        proc = subprocess.run(
            [sys.executable, "-m", "shipit", "job", "run", "--store", f"file:{root / 'store'}",
             f"--name={name}", f"--key={key}", "--env", "FUZZ_V", f"--cwd={work}", "--host", "h",
             "--", sys.executable, "-c", ECHO, *fill],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )
        if "--" in (name, key):
            # argparse cannot carry a lone '--' as a value: refused in one line, nothing ran.
            assert proc.returncode == 2 and len(proc.stderr.strip().split("\n")) == 1
            assert not out.exists() and not marker.exists()
            count("job run process")
            return
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(out.read_text())
        assert seen == {"argv": fill, "env": value, "cwd": str(work)}
        assert not marker.exists()
        store = FileStore(str(root / "store"))
        try:
            (run,) = store.list_runs()
            assert (run.job, run.key, run.env, run.state) == (name or os.path.basename(sys.executable), key,
                                                              {"FUZZ_V": value}, "finished")
            assert list(run.command[3:]) == fill
        finally:
            store.close()
    count("job run process")
