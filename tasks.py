"""Developer tasks for the shipit repository (Invoke): `invoke --list`.

invoke test [-- ARGS]   the whole suite through scripts/test.sh (installs what is missing)
invoke lint             ruff over shipit, tests and bench
invoke bench            every bench/*.py, then one combined table (bench/RESULTS.md)
invoke demo             scripts/demo.sh: a deploy of examples/app with jobs running
invoke chaos            the chaos tests (tests/chaos), when present
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from invoke import Context, Exit, Result, task

ROOT = Path(__file__).resolve().parent


def _run(c: Context, command: str, **kwargs: Any) -> Result | None:
    # in_stream=False: never mirror our stdin (hangs under CI); pty off for clean CI logs.
    with c.cd(str(ROOT)):
        return c.run(command, in_stream=False, pty=False, **kwargs)


@task(help={"args": "extra pytest arguments, e.g. '-k gate -x'"})
def test(c: Context, args: str = "") -> None:
    """Run the test suite the way CI does."""
    _run(c, f"scripts/test.sh {args}")


@task
def lint(c: Context) -> None:
    """ruff check over the code, the tests and the benchmarks."""
    paths = [p for p in ("shipit", "tests", "bench") if (ROOT / p).exists()]
    _run(c, f"ruff check {' '.join(paths)}")


@task(help={
    "only": "run only bench scripts whose name contains this",
    "quick": "fewer repetitions (to try it out; figures are rougher)",
    "results": "write the combined table as markdown here (default: bench/RESULTS.md, on a full "
               "run only: not with --only or --quick)",
})
def bench(c: Context, only: str = "", quick: bool = False, results: str = "") -> None:
    """Run every bench/*.py (each prints its own figures), then one combined table."""
    import json
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    import _report

    scripts = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
    scripts = [p for p in scripts if only in p.name]
    if not scripts:
        print("no benchmarks in bench/")
        return
    started = _report.machine()
    statuses: list[str] = []
    collected: dict[str, dict[str, Any]] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="shipit-bench-json-") as out:
        for script in scripts:
            print(f"== {script.name}", flush=True)
            target = Path(out) / f"{script.stem}.json"
            command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --json {shlex.quote(str(target))}"
            start = time.monotonic()
            result = _run(c, command + (" --quick" if quick else ""), warn=True)
            ok = result is not None and result.ok and target.exists()
            if ok:
                doc = json.loads(target.read_text())
                collected[doc["bench"]] = doc
            failed = failed or not ok
            statuses.append(f"{script.name} {'ok' if ok else 'FAILED'} {time.monotonic() - start:.0f} s")
    load_end = os.getloadavg()[0]
    print()
    print(_report.machine_line(started, load_end))
    print(_report.render(_report.rows(collected)))
    print("scripts: " + "; ".join(statuses))
    path = Path(results) if results else (ROOT / "bench" / "RESULTS.md" if not (only or quick) else None)
    if path is not None:
        invocation = "invoke bench" + (" --quick" if quick else "") + (f" --only {only}" if only else "")
        path.write_text(_report.markdown(collected, started, load_end, statuses, invocation))
        print(f"(table written to {path})")
    if failed:
        raise Exit("some benchmarks failed", code=1)


@task
def demo(c: Context) -> None:
    """Deploy examples/app locally while its jobs run (scripts/demo.sh)."""
    if not (ROOT / "scripts" / "demo.sh").exists():
        raise Exit("scripts/demo.sh does not exist yet", code=1)
    _run(c, "scripts/demo.sh")


@task(help={
    "trials": "number of randomized trials (0: run the fixed-seed CI sample, tests/chaos)",
    "seed": "seed of the first trial (trial k uses seed+k)",
    "backend": "file, sqlite, postgres or all (round-robin)",
    "args": "extra pytest arguments for the sample",
    "results": "append each trial to this JSON-lines file and skip trials it already holds",
    "budget": "stop starting trials after this many seconds (run again to continue)",
})
def chaos(c: Context, trials: int = 0, seed: int = 1, backend: str = "all", args: str = "",
          results: str = "", budget: float = 0) -> None:
    """Kill deploys, jobs, sshd and PostgreSQL at random moments and check the guarantees."""
    if not (ROOT / "tests" / "chaos").is_dir():
        print("no chaos tests yet (tests/chaos)")
        return
    if trials <= 0:
        _run(c, f"scripts/test.sh tests/chaos {args}")
        return
    extra = f" --results {shlex.quote(results)}" if results else ""
    extra += f" --budget {float(budget):g}" if budget > 0 else ""
    _run(c, f"{shlex.quote(sys.executable)} -m tests.chaos.run --trials {int(trials)} "
            f"--seed {int(seed)} --backend {shlex.quote(backend)}{extra}")
