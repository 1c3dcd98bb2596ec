"""Run chaos trials: `python -m tests.chaos.run --trials N --seed S [--backend file|sqlite|postgres|all]`.

Trial k of a run uses seed S+k; a failing trial prints its seed and the command that replays it.
Exit 0 when no invariant was violated, 1 otherwise, 2 when a server is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.chaos.trial import Trial, TrialResult
from tests.chaos.world import World, WorldUnavailable

BACKENDS = ("file", "sqlite", "postgres")


def replay_command(seed: int, backend: str) -> str:
    return f"python -m tests.chaos.run --trials 1 --seed {seed} --backend {backend}"


def run_trials(world: World, backends: list[str], trials: int, seed: int, workdir: Path,
               log: bool = True) -> list[TrialResult]:
    results = []
    for k in range(trials):
        backend = backends[k % len(backends)]
        result = Trial(world, backend, seed + k, workdir).run()
        results.append(result)
        if log:
            faults = {f: n for f, n in result.faults.items() if f != "job_started"}
            status = "ok" if not result.violations else "VIOLATED"
            print(f"trial {k + 1}/{trials} seed={result.seed} {backend}: {status} in {result.seconds}s "
                  f"jobs={result.faults['job_started']} faults={faults} restarts={result.observed['restarts']}", flush=True)
            for v in result.violations:
                print(f"  {v}", flush=True)
            if result.violations:
                for n in result.notes:
                    print(f"  note: {n}", flush=True)
                print(f"  replay: {replay_command(result.seed, backend)}", flush=True)
    return results


def summary(results: list[TrialResult]) -> dict[str, object]:
    faults: Counter[str] = Counter()
    observed: Counter[str] = Counter()
    for r in results:
        faults.update(r.faults)
        observed.update(r.observed)
    return {
        "trials": len(results),
        "by_backend": dict(Counter(r.backend for r in results)),
        "faults": dict(sorted(faults.items())),
        "observed": dict(sorted(observed.items())),
        "violations": sum(len(r.violations) for r in results),
        "failed_seeds": [(r.seed, r.backend) for r in results if r.violations],
        "seconds": round(sum(r.seconds for r in results), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    p.add_argument("--json", metavar="PATH", help="also write the summary as JSON here")
    args = p.parse_args(argv)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    root = Path(tempfile.mkdtemp(prefix="shipit-chaos-"))
    try:
        world = World.start(root / "world", postgres="postgres" in backends)
    except WorldUnavailable as e:
        print(f"chaos: error: {e}", file=sys.stderr)
        return 2
    try:
        results = run_trials(world, backends, args.trials, args.seed, root / "trials")
    finally:
        world.stop()
        shutil.rmtree(root, ignore_errors=True)
    s = summary(results)
    print(json.dumps(s, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2) + "\n")
    return 1 if s["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
