"""Memory benchmark: peak RSS of a real `shipit deploy`, and RSS of an idle `shipit job run`.

- deploy: the CLI a user runs (`python -m shipit --config ... deploy test -y`), redeploying
  examples/app to N real sshd hosts on this machine (N = 1, 4, 16; per-host file stores, no job
  running). Peak RSS is the process's ru_maxrss as os.wait4() reports it when it exits (the
  kernel's high-water mark, exact, not sampled; the CLI runs no local child for a `dir:`
  source). The wall time of the whole command is recorded too (interpreter start included).
- supervisor: `python -m shipit job run --store URL -- sleep 60` per backend (file, sqlite,
  postgres); once the job runs and the supervisor has sent a few heartbeats (--heartbeat 0.5,
  read 2 s after the start), VmRSS and VmHWM of the supervisor process itself from
  /proc/PID/status (the `sleep` child is not counted).
- baseline: the same for `python -c 'import time; time.sleep(60)'`, the bare interpreter.

Medians over --runs runs (5, quick 2); variants take turns. `--compare DIR` also runs the
deploy CLI from another shipit tree (an export of another commit, say), taking turns with this
one on the same hosts (whose agent stays this checkout's): the CLI's own before/after. Figures
only, no pass/fail.

    python bench/memory_bench.py [--runs 5] [--sizes 1,4,16] [--backends file,sqlite,postgres]
                                 [--json PATH] [--quick] [--compare DIR]
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import ROOT, SHIPIT, SHIPIT_COMMAND, median, proc_status_kb, start_hosts, store_urls

from shipit.gate.base import ACTIVE_STATES
from shipit.gate.url import open_store
from tests.e2e.deploy_harness import MOUNT
from tests.harness.sshd import new_pool, write_shipit_yaml

SETTLE = 2.0


def deploy_once(cfg: Path, tree: str | None = None) -> tuple[float, float, float]:
    """(peak RSS in MiB, wall seconds, CPU seconds) of one `shipit deploy` CLI run (from `tree`
    if given)."""
    env = None if tree is None else {**os.environ, "PYTHONPATH": tree}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*SHIPIT, "--config", str(cfg), "deploy", "test", "-y"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"shipit deploy failed ({proc.returncode}): {err[-2000:]}")
    return usage.ru_maxrss / 1024, wall, usage.ru_utime + usage.ru_stime


def _idle_rss(argv: list[str], env: dict[str, str], ready: Any) -> dict[str, float]:
    """Start argv, wait until ready(proc) and SETTLE seconds after the start, read its memory."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = t0 + 60
        while not ready(proc):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv} never became ready (exit {proc.poll()})")
            time.sleep(0.02)
        time.sleep(max(0.0, t0 + SETTLE - time.monotonic()))
        kb = proc_status_kb(proc.pid, "VmRSS", "VmHWM")
        return {"rss_mb": kb["VmRSS"] / 1024, "hwm_mb": kb["VmHWM"] / 1024}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def supervisor_once(url: str, env: dict[str, str], store: Any, i: int) -> dict[str, float]:
    name = f"idle{i}"
    store_arg = "postgres" if url.startswith("postgres") else url

    def ready(proc: subprocess.Popen[bytes]) -> bool:
        return any(r.job == name for r in store.list_runs(states=ACTIVE_STATES))

    argv = [*SHIPIT, "job", "run", "--store", store_arg, "--host", "bench", "--name", name,
            "--heartbeat", "0.5", "--", "sleep", "60"]
    return _idle_rss(argv, env, ready)


def baseline_once() -> dict[str, float]:
    argv = [SHIPIT[0], "-c", "import time; print(flush=True); time.sleep(60)"]
    return _idle_rss(argv, dict(os.environ), lambda proc: True)


def _med(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([s[k] for s in samples]) for k in samples[0]}


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--runs", type=int, default=None, help="(5, quick 2)")
    ap.add_argument("--sizes", default=None, help="hosts per deploy (1,4,16; quick 1,16)")
    ap.add_argument("--backends", default="file,sqlite,postgres")
    ap.add_argument("--compare", metavar="DIR",
                    help="also run the deploy CLI from this shipit tree (holding shipit/)")
    args = ap.parse_args()
    tree = str(Path(args.compare).resolve()) if args.compare else None
    if tree and not (Path(tree) / "shipit" / "__main__.py").exists():
        raise SystemExit(f"--compare {args.compare}: no shipit/ package there")
    runs = args.runs or (2 if args.quick else 5)
    sizes = [int(x) for x in (args.sizes or ("1,16" if args.quick else "1,4,16")).split(",")]
    kinds = args.backends.split(",")
    figures: dict[str, Any] = {"deploy": {}, "supervisor": {}}

    with tempfile.TemporaryDirectory(prefix="shipit-bench-mem-") as tmp:
        root = Path(tmp)
        (root / "pool").mkdir()
        pool = new_pool(root / "pool")
        hosts: list[Any] = []
        try:
            configs: dict[int, Path] = {}
            for n in sizes:
                (root / f"hosts-{n}").mkdir()
                mine = start_hosts(pool, n, root / f"hosts-{n}")
                hosts += mine
                configs[n] = write_shipit_yaml(
                    root / f"shipit-{n}.yaml", mine, deploy_to=f"{MOUNT}/mem-{n}",
                    source={"dir": str(ROOT / "examples" / "app")}, parallelism=max(n, 1),
                    jobs={"store": "file"}, shipit_command=SHIPIT_COMMAND,
                )
                deploy_once(configs[n])  # the first deploy lays out the hosts
            deploys = [(str(n), lambda c=configs[n]: deploy_once(c)) for n in sizes]
            if tree:
                deploys += [(f"{n} --compare", lambda c=configs[n]: deploy_once(c, tree))
                            for n in sizes]
            samples = _common.round_robin(runs, deploys)
            for n, got in samples.items():
                entry = {
                    "peak_rss_mb": median([m for m, _, _ in got]),
                    "peak_rss_mb_runs": [m for m, _, _ in got],
                    "cli_wall_s": median([w for _, w, _ in got]),
                    "cli_cpu_s": median([c for _, _, c in got]),
                }
                size, _, compared = n.partition(" ")
                if compared:
                    figures["deploy"][size]["compare"] = entry
                else:
                    figures["deploy"][n] = entry
                print(f"shipit deploy, {int(size):2d} host(s){' (--compare)' if compared else ''}: "
                      f"peak RSS {entry['peak_rss_mb']:6.1f} MiB   (CLI wall {entry['cli_wall_s']:.2f} s, "
                      f"CPU {entry['cli_cpu_s']:.2f} s, median of {runs})", flush=True)
        finally:
            for h in hosts:
                h.kill()

        with contextlib.ExitStack() as stack:
            new_db = stack.enter_context(_common.postgres()) if "postgres" in kinds else None
            variants: list[tuple[str, Any]] = [("python (bare interpreter)", baseline_once)]
            for kind in kinds:
                urls = store_urls(kind, root, 1, new_db)
                if urls is None:
                    continue
                env = dict(os.environ)
                if kind == "postgres":
                    env["SHIPIT_DSN"] = urls[0]
                store = stack.enter_context(contextlib.closing(open_store(urls[0])))
                counter = iter(range(10**6))
                variants.append((kind, lambda u=urls[0], e=env, s=store, c=counter:
                                 supervisor_once(u, e, s, next(c))))
            got = _common.round_robin(runs, variants)
    for name, s in got.items():
        m = _med(s)
        if name.startswith("python"):
            figures["baseline"] = m
        else:
            figures["supervisor"][name] = m
        print(f"idle {'`shipit job run`, ' + name if not name.startswith('python') else name:<34}"
              f" VmRSS {m['rss_mb']:6.1f} MiB   VmHWM {m['hwm_mb']:6.1f} MiB", flush=True)
    _common.write_json(args.json, "memory", figures, {"runs": runs, "sizes": sizes,
                                                      "settle_s": SETTLE, "compare": tree})


if __name__ == "__main__":
    main()
