"""What `shipit job run` costs a job: start-up overhead, spawn cost, checkpoint cost.

    python bench/job_run_bench.py [--runs 30] [--json PATH] [--quick]
    SHIPIT_BENCH_DSN=postgresql://... python bench/job_run_bench.py   # an existing PostgreSQL

Prints medians (ms) of `shipit job run -- true` through the console script and through
`python -m shipit`, against bare `true` and a bare interpreter start (`python -c pass`, the
floor any Python entry point pays), per backend (file, sqlite, postgres) with the gate open; then
the cost of the child spawn with and without PR_SET_PDEATHSIG, of one checkpoint() / progress()
call, and of a stop (request + SIGUSR1 until the outcome is recorded) per backend. Without
SHIPIT_BENCH_DSN a throwaway PostgreSQL cluster is started when PostgreSQL is installed.
Figures only, no pass/fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common

HERE = Path(__file__).resolve().parent


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm the page cache / store files
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def _run(argv: list[str], env: dict[str, str]) -> Callable[[], object]:
    def go() -> object:
        return subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)

    return go


def _create_store(env: dict[str, str]) -> None:
    """What a first deploy does (`shipit job run` never creates a store), with the shipit that
    the env's PYTHONPATH names: stores of two trees may differ in schema."""
    code = "import os; from shipit.gate.url import open_store; open_store(os.environ['SHIPIT_STORE']).close()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def _console_script() -> str | None:
    # The real script next to the interpreter, not a version manager's shim in front of it.
    candidate = Path(sys.executable).with_name("shipit")
    return str(candidate) if candidate.exists() else shutil.which("shipit")


def startup(runs: int, stores: dict[str, tuple[str, dict[str, str]]]) -> dict[str, Any]:
    """Variants are run round-robin, so that load from other processes on the machine (this
    is a shared 2-core box) spreads over all of them instead of skewing one."""
    true = shutil.which("true") or "/bin/true"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    heads = [("python -m shipit", [sys.executable, "-m", "shipit"])]
    script = _console_script()
    if script:
        heads.insert(0, ("shipit", [script]))
    variants: list[tuple[str, Callable[[], object]]] = [
        ("true", _run([true], base_env)),
        ("python -c pass", _run([sys.executable, "-c", "pass"], base_env)),
    ]
    for kind, (url, extra) in stores.items():
        env = {**base_env, **extra, "SHIPIT_STORE": url}
        for label, head in heads:
            variants.append(
                (f"[{kind}] {label} job run -- true", _run([*head, "job", "run", "--", true], env))
            )
    samples: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _kind, (url, extra) in stores.items():
        _create_store({**base_env, **extra, "SHIPIT_STORE": url})
    for _, fn in variants:
        fn()  # warm the page cache
    for _ in range(runs):
        for name, fn in variants:
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1000)
    med = {name: statistics.median(v) for name, v in samples.items()}
    bare, py = med["true"], med["python -c pass"]
    print(f"startup, median of {runs} runs each, round-robin, gate open (ms)")
    print(f"  {'what':<48}{'median':>9}{'+ over true':>13}{'+ over python':>15}")
    for name, value in med.items():
        over_py = f"{value - py:>15.1f}" if name not in ("true", "python -c pass") else ""
        over_true = f"{value - bare:>13.1f}" if name != "true" else " " * 13
        print(f"  {name:<48}{value:>9.1f}{over_true}{over_py}")
    backends: dict[str, Any] = {}
    for kind in stores:
        entry = {}
        for label, _ in heads:
            key = "console" if label == "shipit" else "python_m"
            value = med[f"[{kind}] {label} job run -- true"]
            entry[f"{key}_ms"] = value
            entry[f"{key}_over_true_ms"] = value - bare
            entry[f"{key}_over_python_ms"] = value - py
        backends[kind] = entry
    return {"true_ms": bare, "python_ms": py, "backends": backends,
            "entry": heads[0][0], "runs": runs}


def spawn_cost(runs: int) -> dict[str, float]:
    from shipit.jobs import supervisor

    true = shutil.which("true") or "/bin/true"
    env = dict(os.environ)

    def once() -> None:
        pid = supervisor.spawn([true], "/", env, ())
        os.waitpid(pid, 0)

    with_pdeathsig = _median_ms(once, runs)
    real = supervisor._pdeathsig_setter
    supervisor._pdeathsig_setter = lambda: (lambda: None)  # type: ignore[assignment]
    try:
        without = _median_ms(once, runs)
    finally:
        supervisor._pdeathsig_setter = real  # type: ignore[assignment]
    print(f"\nspawn of `true` (fork+exec+wait, median of {runs}, ms)")
    print(f"  with PR_SET_PDEATHSIG {with_pdeathsig:.2f}   without {without:.2f}"
          f"   difference {with_pdeathsig - without:+.2f}")
    return {"with_pdeathsig_ms": with_pdeathsig, "without_ms": without}


def api_cost(stores: dict[str, tuple[str, dict[str, str]]], calls: int) -> dict[str, Any]:
    from shipit.jobs.api import job

    print(f"\nPython API, standalone run, mean of {calls} calls (ms per call)")
    print(f"  {'backend':<10}{'checkpoint()':>14}{'every=50':>10}{'progress()':>12}")
    out: dict[str, Any] = {}
    for kind, (url, extra) in stores.items():
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            with job(f"bench-{kind}", store=url) as run:
                t0 = time.perf_counter()
                for i in range(calls):
                    run.checkpoint({"next": i, "cursor": "x" * 40})
                each = (time.perf_counter() - t0) * 1000 / calls
                t0 = time.perf_counter()
                for i in range(calls):
                    run.checkpoint({"next": i}, every=50)
                coalesced = (time.perf_counter() - t0) * 1000 / calls
                t0 = time.perf_counter()
                for i in range(calls):
                    run.progress(i, calls)
                prog = (time.perf_counter() - t0) * 1000 / calls
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        print(f"  {kind:<10}{each:>14.3f}{coalesced:>10.3f}{prog:>12.4f}")
        out[kind] = {"checkpoint_ms": each, "checkpoint_every50_ms": coalesced, "progress_ms": prog}
    return out


def precompile() -> None:
    """Byte-compile shipit first, as `pip install` does: with PYTHONDONTWRITEBYTECODE set (as in
    some CI images) every run would otherwise compile each module from source (~25 ms here)."""
    import compileall

    compileall.compile_dir(str(HERE.parent / "shipit"), quiet=1)


def stop_latency(stores: dict[str, tuple[str, dict[str, str]]], runs: int) -> dict[str, float]:
    """From a deploy's request_stop() + SIGUSR1 to the supervisor having recorded the outcome,
    for a job that exits on SIGTERM at once (heartbeat 1 s: SIGUSR1 is what makes it quick)."""
    import signal

    from shipit.gate.base import FINAL_STATES
    from shipit.gate.url import open_store

    print(f"\nstop latency: request_stop + SIGUSR1 -> outcome recorded (median of {runs}, ms)")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    out: dict[str, float] = {}
    for kind, (url, extra) in stores.items():
        env = {**base_env, **extra}
        samples = []
        with open_store(url, environ=env) as store:
            for i in range(runs):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "shipit", "job", "run", "--store", url, "--name",
                     f"stop-{i}", "--", "sh", "-c", "echo up; exec sleep 60"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                )
                assert proc.stdout is not None
                proc.stdout.readline()
                run = next(r for r in store.list_runs(limit=5) if r.job == f"stop-{i}")
                lease = store.close_gate(holder="bench", deploy_id=f"b{i}", reason="bench", ttl=60)
                t0 = time.perf_counter()
                store.request_stop(run.id, lease.epoch)
                os.kill(proc.pid, signal.SIGUSR1)
                proc.wait()
                while store.get_run(run.id).state not in FINAL_STATES:
                    time.sleep(0.001)
                samples.append((time.perf_counter() - t0) * 1000)
                store.open_gate(lease.epoch, actor="bench")
        print(f"  {kind:<10}{statistics.median(samples):>9.1f}")
        out[kind] = statistics.median(samples)
    return out


def main() -> None:
    parser = _common.parser(__doc__)
    parser.add_argument("--runs", type=int, default=None, help="(30, quick 8)")
    parser.add_argument("--calls", type=int, default=None, help="(500, quick 100)")
    parser.add_argument("--no-precompile", action="store_true",
                        help="measure as the environment is (no .pyc written beforehand)")
    args = parser.parse_args()
    runs = args.runs or (8 if args.quick else 30)
    calls = args.calls or (100 if args.quick else 500)
    if not args.no_precompile:
        precompile()
    with tempfile.TemporaryDirectory(prefix="shipit-bench-") as tmp, contextlib.ExitStack() as stack:
        stores: dict[str, tuple[str, dict[str, str]]] = {
            "file": (f"file:{tmp}/file", {}),
            "sqlite": (f"sqlite:{tmp}/sqlite/jobs.db", {}),
        }
        dsn = os.environ.get("SHIPIT_BENCH_DSN")
        if not dsn:
            new_db = stack.enter_context(_common.postgres())
            dsn = new_db() if new_db else None
        if dsn:
            stores["postgres"] = ("postgres", {"SHIPIT_DSN": dsn})
        figures: dict[str, Any] = {"startup": startup(runs, stores)}
        figures["spawn"] = spawn_cost(runs)
        figures["api"] = api_cost(stores, calls)
        figures["stop_ms"] = stop_latency(stores, max(5, runs // 3))
    _common.write_json(args.json, "job_run", figures, {"runs": runs, "calls": calls,
                                                       "precompiled": not args.no_precompile})


if __name__ == "__main__":
    main()
