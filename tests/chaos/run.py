"""Run chaos trials: `python -m tests.chaos.run --trials N --seed S [--backend file|sqlite|postgres|all]`.

Trial k of a run uses seed S+k; a failing trial prints its seed and the command that replays it.
With `--results PATH.jsonl` every finished trial is appended to PATH as one JSON line, and trials
of the same plan (seed and backend) already in PATH are skipped: run it again, in as many chunks
as it takes (`--chunk N`, `--budget SECONDS`), and the summary covers every line of the file.
`--summarize PATH.jsonl` prints that summary without running anything.
Exit 0 when no invariant was violated, 1 otherwise, 2 when a server is missing (or a usage error).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.chaos.trial import Trial, TrialResult
from tests.chaos.world import REPO, World, WorldUnavailable

BACKENDS = ("file", "sqlite", "postgres")


def replay_command(seed: int, backend: str) -> str:
    return f"python -m tests.chaos.run --trials 1 --seed {seed} --backend {backend}"


def plan(trials: int, seed: int, backends: list[str]) -> list[tuple[int, str]]:
    """(seed, backend) of every trial of a run, in order."""
    return [(seed + k, backends[k % len(backends)]) for k in range(trials)]


def commit() -> str:
    res = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False)
    return (res.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def log_result(result: TrialResult, k: int, trials: int) -> None:
    faults = {f: n for f, n in result.faults.items() if f != "job_started"}
    status = "ok" if not result.violations else "VIOLATED"
    print(f"trial {k + 1}/{trials} seed={result.seed} {result.backend}: {status} in {result.seconds}s "
          f"jobs={result.faults['job_started']} faults={faults} restarts={result.observed['restarts']}", flush=True)
    for v in result.violations:
        print(f"  {v}", flush=True)
    if result.violations:
        for n in result.notes:
            print(f"  note: {n}", flush=True)
        print(f"  replay: {replay_command(result.seed, result.backend)}", flush=True)


def run_trials(world: World, backends: list[str], trials: int, seed: int, workdir: Path,
               log: bool = True, *, skip: Iterable[tuple[int, str]] = (), results: Path | None = None,
               plan_key: dict[str, Any] | None = None, chunk: int | None = None,
               budget: float | None = None, into: list[TrialResult] | None = None,
               keep: Path | None = None) -> list[TrialResult]:
    """Run the trials of the plan not in `skip`; append each to `results` as it ends (and to
    `into`, which keeps them if an interrupt cuts the run short). Stops after `chunk` trials or
    once `budget` seconds have passed (the trial under way finishes)."""
    done = set(skip)
    started = time.monotonic()
    out: list[TrialResult] = [] if into is None else into
    version = commit() if results is not None else ""
    for k, (s, backend) in enumerate(plan(trials, seed, backends)):
        if (s, backend) in done:
            continue
        if chunk is not None and len(out) >= chunk:
            break
        if budget is not None and time.monotonic() - started > budget:
            break
        result = Trial(world, backend, s, workdir).run()
        if result.error:
            print(f"trial {k + 1}/{trials} seed={s} {backend}: HARNESS ERROR {result.error}", flush=True)
        out.append(result)
        if results is not None:
            line = {**result.to_dict(), "plan": plan_key or {}, "commit": version}
            with open(results, "a") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if keep is not None and (result.violations or result.error):
            # The run's temp dir goes when it ends: a failing trial's logs (each deploy's events,
            # the jobs', shipit's own log files) are copied out first.
            with contextlib.suppress(OSError):
                shutil.copytree(workdir / f"trial-{s}", keep / f"{backend}-{s}", dirs_exist_ok=True)
                result.notes.append(f"logs kept in {keep / f'{backend}-{s}'}")
        if log and not result.error:
            log_result(result, k, trials)
    return out


def read_results(path: Path) -> list[dict[str, Any]]:
    lines = []
    if not path.exists():
        return lines
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            lines.append(json.loads(raw))
        except ValueError:
            # A line cut short by a crash mid-write: that trial simply runs again.
            print(f"chaos: {path}:{n}: not JSON, ignored", file=sys.stderr)
    return lines


def summary(results: list[TrialResult]) -> dict[str, object]:
    faults: Counter[str] = Counter()
    observed: Counter[str] = Counter()
    for r in results:
        faults.update(r.faults)
        observed.update(r.observed)
    secs = [r.seconds for r in results]
    return {
        "trials": len(results),
        "by_backend": dict(Counter(r.backend for r in results)),
        "faults": dict(sorted(faults.items())),
        "observed": dict(sorted(observed.items())),
        "violations": sum(len(r.violations) for r in results),
        "failed_seeds": [(r.seed, r.backend) for r in results if r.violations],
        "harness_errors": [(r.seed, r.backend) for r in results if r.error],
        "seconds": round(sum(secs), 1),
        "median_seconds": round(statistics.median(secs), 1) if secs else 0.0,
    }


def _fault_rows(faults: dict[str, int]) -> list[tuple[str, str]]:
    """Faults by kind, deploy kills grouped by signal with their moments."""
    rows: list[tuple[str, str]] = []
    grouped: dict[str, dict[str, int]] = {}
    plain: dict[str, int] = {}
    for name, n in faults.items():
        if "@" in name:
            kind, moment = name.split("@", 1)
            grouped.setdefault(kind, {})[moment] = n
        else:
            plain[name] = n
    if "job_started" in plain:
        rows.append(("jobs started", str(plain.pop("job_started"))))
    for kind, label in (("deploy_sigkill", "deploys SIGKILLed"), ("deploy_sigterm", "deploys SIGTERMed")):
        moments = grouped.pop(kind, {})
        if moments:
            detail = ", ".join(f"{m} {n}" for m, n in sorted(moments.items()))
            rows.append((label, f"{sum(moments.values())} ({detail})"))
    for kind, moments in sorted(grouped.items()):
        rows.append((kind, f"{sum(moments.values())} ({', '.join(f'{m} {n}' for m, n in sorted(moments.items()))})"))
    labels = {"failing_hook": "failing hooks", "supervisor_sigkill": "supervisors SIGKILLed",
              "job_sigkill": "jobs SIGKILLed", "sshd_kill": "sshd hosts killed mid-deploy",
              "pg_restart": "PostgreSQL restarts", "clock_skew": "trials with a host clock off"}
    for name, n in sorted(plain.items()):
        rows.append((labels.get(name, name), str(n)))
    return rows


def summary_table(lines: list[dict[str, Any]]) -> str:
    results = [TrialResult.from_dict(d) for d in lines]
    s = summary(results)
    by_backend = s["by_backend"]
    assert isinstance(by_backend, dict)
    out = ["| | |", "|---|---|"]
    out.append(f"| trials | {s['trials']} ({', '.join(f'{b} {n}' for b, n in sorted(by_backend.items()))}) |")
    if results:
        per = {b: statistics.median([r.seconds for r in results if r.backend == b]) for b in by_backend}
        out.append(f"| seconds per trial (median) | {s['median_seconds']} "
                   f"({', '.join(f'{b} {v:.1f}' for b, v in sorted(per.items()))}); {s['seconds']} s in all |")
    faults = s["faults"]
    assert isinstance(faults, dict)
    out += [f"| {label} | {value} |" for label, value in _fault_rows(faults)]
    observed = s["observed"]
    assert isinstance(observed, dict)
    if observed:
        out.append("| observed in the stores | " + ", ".join(f"{k} {v}" for k, v in observed.items()) + " |")
    steps = sum(1 for r in results if any("wall clock stepped" in n for n in r.notes))
    if steps:
        out.append(f"| trials in which this machine's own wall clock stepped | {steps} |")
    failed = [r for r in results if r.violations]
    out.append(f"| violations | {s['violations']} in {len(failed)} trial(s) |")
    commits = Counter(str(d.get("commit", "?")) for d in lines)
    if commits:
        failing = Counter(str(d.get("commit", "?")) for d in lines if d.get("violations"))
        out.append("| code | " + ", ".join(
            f"{c} ({n} trials, {failing[c]} failing)" if len(commits) > 1 else f"{c} ({n} trials)"
            for c, n in commits.most_common()) + " |")
    errors = [r for r in results if r.error]
    if errors:
        out.append(f"| harness errors (not shipit's) | {len(errors)}: seeds {', '.join(str(r.seed) for r in errors)} |")
    text = "\n".join(out)
    if failed:
        text += "\n\nFailing trials:\n"
        for r in failed:
            text += f"\nseed {r.seed} ({r.backend}): {replay_command(r.seed, r.backend)}\n"
            text += "".join(f"  {v}\n" for v in r.violations)
            text += "".join(f"  note: {n}\n" for n in r.notes)
    for r in errors:
        text += f"\nseed {r.seed} ({r.backend}) harness error: {r.error}\n"
    return text


def failed(s: dict[str, object]) -> bool:
    return bool(s["violations"] or s["harness_errors"])


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=None, help="first trial's seed (default: from the clock)")
    p.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    p.add_argument("--json", metavar="PATH", help="also write the summary as JSON here")
    p.add_argument("--results", metavar="PATH.jsonl", type=Path,
                   help="append each finished trial here; skip the trials of this plan already in it")
    p.add_argument("--chunk", type=int, metavar="N", help="run at most N trials this time")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="start no trial after SECONDS (the one under way finishes)")
    p.add_argument("--keep", metavar="DIR", type=Path,
                   help="copy each failing trial's logs (deploy events, job and shipit logs) into DIR")
    p.add_argument("--summarize", metavar="PATH.jsonl", type=Path,
                   help="print the summary of a results file and exit")
    args = p.parse_args(argv)
    if args.summarize is not None:
        lines = read_results(args.summarize)
        if not lines:
            print(f"chaos: error: no trials in {args.summarize}", file=sys.stderr)
            return 2
        print(summary_table(lines))
        s = summary([TrialResult.from_dict(d) for d in lines])
        if args.json:
            Path(args.json).write_text(json.dumps(s, indent=2) + "\n")
        return 1 if failed(s) else 0
    if args.seed is None:
        args.seed = int(time.time()) % 100000
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    plan_key = {"seed": args.seed, "backend": args.backend}
    skip: set[tuple[int, str]] = set()
    if args.results is not None:
        previous = read_results(args.results)
        other = {json.dumps(d.get("plan"), sort_keys=True) for d in previous} - {json.dumps(plan_key, sort_keys=True)}
        if other:
            print(f"chaos: error: {args.results} holds trials of another plan ({', '.join(sorted(other))}); "
                  f"this one is {json.dumps(plan_key)}: use another file", file=sys.stderr)
            return 2
        skip = {(int(d["seed"]), str(d["backend"])) for d in previous}
        todo = [t for t in plan(args.trials, args.seed, backends) if t not in skip]
        print(f"chaos: {len(skip)} trial(s) of this plan already in {args.results}, {len(todo)} to go", flush=True)
        if not todo:
            print(summary_table(previous))
            return 1 if failed(summary([TrialResult.from_dict(d) for d in previous])) else 0
    # SIGTERM / SIGHUP (a session or CI job ending) stop the run like Ctrl-C: the trial under way
    # is dropped (no line), and the servers are stopped instead of left running.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="shipit-chaos-"))
    try:
        world = World.start(root / "world", postgres="postgres" in backends)
    except WorldUnavailable as e:
        shutil.rmtree(root, ignore_errors=True)
        print(f"chaos: error: {e}", file=sys.stderr)
        return 2
    results: list[TrialResult] = []
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run_trials(world, backends, args.trials, args.seed, root / "trials", skip=skip, into=results,
                       results=args.results, plan_key=plan_key, chunk=args.chunk, budget=args.budget,
                       keep=args.keep)
    finally:
        world.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.results is not None:
        lines = read_results(args.results)
        s = summary([TrialResult.from_dict(d) for d in lines])
        print(summary_table(lines))
        left = len([t for t in plan(args.trials, args.seed, backends)
                    if t not in {(int(d["seed"]), str(d["backend"])) for d in lines}])
        if left:
            print(f"\n{left} trial(s) of the plan still to run: run the same command again to continue.")
    else:
        s = summary(results)
        print(json.dumps(s, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2) + "\n")
    return 1 if failed(s) else 0


if __name__ == "__main__":
    sys.exit(main())
