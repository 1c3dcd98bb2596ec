"""What `shipit job run` costs a job: start-up overhead, spawn cost, checkpoint cost.

    python bench/job_run_bench.py [--runs 30] [--json PATH] [--quick] [--compare DIR]
    SHIPIT_BENCH_DSN=postgresql://... python bench/job_run_bench.py   # an existing PostgreSQL

Prints medians (ms) of `shipit job run -- true` through the console script and through
`python -m shipit`, against bare `true` and a bare interpreter start (`python -c pass`, the
floor any Python entry point pays), per backend (file, sqlite, postgres) with the gate open; then
the cost of the child spawn with and without PR_SET_PDEATHSIG, of one checkpoint() / progress()
call, and of a stop (request + SIGUSR1 until the outcome is recorded) per backend. Without
SHIPIT_BENCH_DSN a throwaway PostgreSQL cluster is started when PostgreSQL is installed.
`--compare DIR` also runs `python -m shipit job run` from another shipit tree (a checkout or an
export of another commit, e.g. `git archive`), in the same rounds, each tree with its own
stores: before/after figures side by side. Figures only, no pass/fail.
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


def _run(argv: list[str], env: dict[str, str]) -> Callable[[], float]:
    """Runs the command; returns the CPU time (user + system, ms) it used, from its rusage: on
    a loaded machine a much steadier figure than its wall time."""

    def go() -> float:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, argv)
        return (usage.ru_utime + usage.ru_stime) * 1000

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


def startup(runs: int, stores: dict[str, tuple[str, dict[str, str]]],
            compare: tuple[str, dict[str, tuple[str, dict[str, str]]]] | None = None) -> dict[str, Any]:
    """Variants are run round-robin, so that load from other processes on the machine (this
    is a shared 2-core box) spreads over all of them instead of skewing one. `compare`: another
    shipit tree and its own stores, run as `python -m shipit` with that tree on PYTHONPATH."""
    true = shutil.which("true") or "/bin/true"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    heads = [("python -m shipit", [sys.executable, "-m", "shipit"])]
    script = _console_script()
    if script:
        heads.insert(0, ("shipit", [script]))
    variants: list[tuple[str, Callable[[], float]]] = [
        ("true", _run([true], base_env)),
        ("python -c pass", _run([sys.executable, "-c", "pass"], base_env)),
    ]
    for kind, (url, extra) in stores.items():
        env = {**base_env, **extra, "SHIPIT_STORE": url}
        for label, head in heads:
            variants.append(
                (f"[{kind}] {label} job run -- true", _run([*head, "job", "run", "--", true], env))
            )
        if compare is not None:
            tree, other = compare
            url2, extra2 = other[kind]
            env2 = {**base_env, **extra2, "SHIPIT_STORE": url2, "PYTHONPATH": tree}
            variants.append((f"[{kind}] {COMPARED} job run -- true",
                             _run([sys.executable, "-m", "shipit", "job", "run", "--", true], env2)))
    samples: dict[str, list[float]] = {name: [] for name, _ in variants}
    cpu_samples: dict[str, list[float]] = {name: [] for name, _ in variants}
    for kind, (url, extra) in stores.items():
        _create_store({**base_env, **extra, "SHIPIT_STORE": url})
        if compare is not None:
            url2, extra2 = compare[1][kind]
            _create_store({**base_env, **extra2, "SHIPIT_STORE": url2, "PYTHONPATH": compare[0]})
    for _, fn in variants:
        fn()  # warm the page cache
    for _ in range(runs):
        for name, fn in variants:
            t0 = time.perf_counter()
            cpu = fn()
            samples[name].append((time.perf_counter() - t0) * 1000)
            cpu_samples[name].append(cpu)
    med = {name: statistics.median(v) for name, v in samples.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpu_samples.items()}
    bare, py, py_cpu = med["true"], med["python -c pass"], cpu_med["python -c pass"]
    print(f"startup, median of {runs} runs each, round-robin, gate open (ms; cpu: user+system)")
    print(f"  {'what':<52}{'median':>9}{'+ over true':>13}{'+ over python':>15}"
          f"{'cpu':>8}{'+ over python':>15}")
    for name, value in med.items():
        base = name in ("true", "python -c pass")
        over_py = f"{value - py:>15.1f}" if not base else " " * 15
        over_true = f"{value - bare:>13.1f}" if name != "true" else " " * 13
        cpu_over = f"{cpu_med[name] - py_cpu:>15.1f}" if not base else ""
        print(f"  {name:<52}{value:>9.1f}{over_true}{over_py}{cpu_med[name]:>8.1f}{cpu_over}")
    backends: dict[str, Any] = {}
    for kind in stores:
        entry = {}
        labels = [label for label, _ in heads] + ([COMPARED] if compare is not None else [])
        for label in labels:
            key = {"shipit": "console", COMPARED: "compared"}.get(label, "python_m")
            value = med[f"[{kind}] {label} job run -- true"]
            entry[f"{key}_ms"] = value
            entry[f"{key}_over_true_ms"] = value - bare
            entry[f"{key}_over_python_ms"] = value - py
            entry[f"{key}_cpu_over_python_ms"] = cpu_med[f"[{kind}] {label} job run -- true"] - py_cpu
        backends[kind] = entry
    out = {"true_ms": bare, "python_ms": py, "python_cpu_ms": py_cpu, "backends": backends,
           "entry": heads[0][0], "runs": runs}
    if compare is not None:
        out["compared_tree"] = compare[0]
    return out


COMPARED = "python -m shipit (--compare)"


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


def precompile(tree: Path = HERE.parent) -> None:
    """Byte-compile shipit first, as `pip install` does: with PYTHONDONTWRITEBYTECODE set (as in
    some CI images) every run would otherwise compile each module from source (~25 ms here)."""
    import compileall

    compileall.compile_dir(str(tree / "shipit"), quiet=1)


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
    parser.add_argument("--compare", metavar="DIR",
                        help="another shipit tree (holding shipit/) to measure side by side "
                             "in the startup rounds, e.g. an export of the previous commit")
    args = parser.parse_args()
    runs = args.runs or (8 if args.quick else 30)
    calls = args.calls or (100 if args.quick else 500)
    compare_tree = str(Path(args.compare).resolve()) if args.compare else None
    if compare_tree and not (Path(compare_tree) / "shipit" / "__main__.py").exists():
        raise SystemExit(f"--compare {args.compare}: no shipit/ package there")
    if not args.no_precompile:
        precompile()
        if compare_tree:
            precompile(Path(compare_tree))
    with tempfile.TemporaryDirectory(prefix="shipit-bench-") as tmp, contextlib.ExitStack() as stack:
        stores: dict[str, tuple[str, dict[str, str]]] = {
            "file": (f"file:{tmp}/file", {}),
            "sqlite": (f"sqlite:{tmp}/sqlite/jobs.db", {}),
        }
        dsn = os.environ.get("SHIPIT_BENCH_DSN")
        new_db = None
        if not dsn:
            new_db = stack.enter_context(_common.postgres())
            dsn = new_db() if new_db else None
        if dsn:
            stores["postgres"] = ("postgres", {"SHIPIT_DSN": dsn})
        compare = None
        if compare_tree:
            # Its own stores: the two trees may not share a store schema.
            other: dict[str, tuple[str, dict[str, str]]] = {
                "file": (f"file:{tmp}/compare-file", {}),
                "sqlite": (f"sqlite:{tmp}/compare-sqlite/jobs.db", {}),
            }
            if new_db:
                other["postgres"] = ("postgres", {"SHIPIT_DSN": new_db()})
            else:
                stores.pop("postgres", None)  # one existing database: not for two schemas
            compare = (compare_tree, other)
        figures: dict[str, Any] = {"startup": startup(runs, stores, compare)}
        figures["spawn"] = spawn_cost(runs)
        figures["api"] = api_cost(stores, calls)
        figures["stop_ms"] = stop_latency(stores, max(5, runs // 3))
    _common.write_json(args.json, "job_run", figures, {"runs": runs, "calls": calls,
                                                       "precompiled": not args.no_precompile})


if __name__ == "__main__":
    main()
