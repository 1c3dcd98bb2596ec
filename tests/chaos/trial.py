"""One chaos trial: jobs in bursts, a few racing deploys, faults at random moments, then the
invariants checked from the store's records and the hosts' files (tests/chaos/invariants.py).

Everything random comes from one `random.Random(seed)`: the plan (which jobs, which deploys,
which faults at which moments) is a function of the seed. What the processes do with it still
depends on timing, so a failing seed is a strong hint to replay, not a recording.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shipit.gate.base import ACTIVE_STATES, Store
from shipit.gate.url import open_store
from tests.chaos import invariants
from tests.chaos.world import MOUNT, SHIPIT_COMMAND, ChaosHost, World, ensure_up
from tests.chaos.zygote import Child
from tests.harness.sshd import _descendants, ssh_section

TTL = 3.0
SHIPIT = [sys.executable, "-m", "shipit"]
HOOK_POINTS = ("after_drain_jobs", "after_release", "before_restart_jobs")
# Moments of a deploy, as seen in its --json event stream: (kind, phase or None).
def _released_unfinished(events: list[dict[str, Any]]) -> bool:
    """The deploy had started its release and never said it finished."""
    kinds = {(e.get("kind"), e.get("phase")) for e in events}
    return ("phase.started", "release") in kinds and not any(k == "deploy.finished" for k, _ in kinds)


MOMENTS = {
    "close": ("gate.closed", None),
    "drain": ("job.stop_requested", None),
    "release": ("phase.started", "release"),
    "switch": ("release.switched", None),
    "restart": ("phase.started", "restart_jobs"),
    "restarted": ("job.restarted", None),
}
DEPLOY_TIMEOUT = 120.0
# Clock skew: the share of trials that put one host's clock off, and by how much (seconds).
SKEW_RATE = 0.3
SKEWS = (-5, -4, -3, -2, 2, 3, 4, 5)


@dataclass
class TrialResult:
    seed: int
    backend: str
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    observed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds spent in it
    error: str = ""  # the harness itself failed (not an invariant): the trial proved nothing

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "backend": self.backend, "faults": dict(self.faults),
                "observed": dict(self.observed), "violations": self.violations, "notes": self.notes,
                "seconds": self.seconds, "timings": self.timings, **({"error": self.error} if self.error else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialResult:
        return cls(seed=int(d["seed"]), backend=str(d["backend"]), faults=Counter(d.get("faults", {})),
                   violations=list(d.get("violations", [])), notes=list(d.get("notes", [])),
                   observed=Counter(d.get("observed", {})), seconds=float(d.get("seconds", 0.0)),
                   timings=dict(d.get("timings", {})), error=str(d.get("error", "")))


def _tail(res: subprocess.CompletedProcess[str]) -> str:
    """The end of what a failed shipit command said (plain output goes to stdout, errors to stderr),
    and the first host failure in full (the failed command's own output follows its FAILED line,
    and the summary at the end only repeats that line's first words)."""
    tail = " | ".join(x for x in (res.stderr.strip()[-400:], res.stdout.strip()[-600:]) if x)
    lines = res.stdout.splitlines()
    first = next((i for i, line in enumerate(lines) if "FAILED: " in line), None)
    if first is not None:
        tail += "\nfirst failure: " + "\n".join(lines[first:first + 14])[-1500:]
    return tail


@dataclass
class App:
    """One deployed application (its source, its trees on the hosts, its database). A trial that
    ends healthy (no violation, the final deploy succeeded, every host on one release) leaves it
    for the next trial of its backend, which starts from that state with an empty job store
    instead of paying a first deploy."""

    name: str
    dir: Path
    dsn: str | None = None
    healthy: bool = False


@dataclass
class Deploy:
    index: int
    fail_hook: str | None
    kill: tuple[str, int, float] | None  # (moment, signal, delay after it)
    proc: subprocess.Popen[str] | Child | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    killed_with: int | None = None
    killed_at_moment: str | None = None
    exit_code: int | None = None
    ended_at: float = 0.0
    started_at: float = 0.0  # time.monotonic()
    gone_at: float = 0.0  # time.time() when it was SIGKILLed, or its stdout ended
    killed_mono: float = 0.0  # time.monotonic() when the signal was sent


class Trial:
    def __init__(self, world: World, backend: str, seed: int, workdir: Path, *, reuse: bool = True) -> None:
        self.world, self.backend, self.seed = world, backend, seed
        self.rng = random.Random(seed)
        # The skew plan has its own generator, so the other draws of a seed stay what they were.
        self.skew_rng = random.Random(f"skew-{seed}")
        self.workdir, self.reuse = workdir, reuse
        self.app = f"chaos-{world.tag}-{backend[:2]}-{seed}"
        self.app_state: App | None = None
        self.dir = workdir / self.app  # the app's source and shipit.yaml
        self.tdir = workdir / f"trial-{seed}"  # this trial's ledgers and logs
        self.result = TrialResult(seed=seed, backend=backend)
        self.env = world.env()
        self.dsn: str | None = None
        self.skew: dict[str, int] = {}  # host name -> seconds off, for this trial
        self.cli: list[subprocess.Popen[str] | Child] = []
        self.triggers: list[tuple[int, str, Any]] = []  # (deploy index, moment, action)
        self.lock = threading.Lock()
        # A fault hit a release mid-way (at time.monotonic() `dirty_at`): hosts may differ until a
        # deploy that started after it succeeds.
        self.dirty = False
        self.dirty_at = 0.0
        self.finished: list[Deploy] = []  # in the order they were waited for
        # This machine's wall clock minus its monotonic clock at the start: the skew check
        # compares job lines with it too, in case the wall clock steps during the trial.
        self.clock_base = time.time() - time.monotonic()
        self.threads: list[threading.Thread] = []
        self.job_procs: list[subprocess.Popen[bytes]] = []
        self.n_jobs = 0

    @contextlib.contextmanager
    def step(self, name: str) -> Any:
        t = time.monotonic()
        try:
            yield
        finally:
            self.result.timings[name] = round(self.result.timings.get(name, 0.0) + time.monotonic() - t, 3)

    # -- setup ----------------------------------------------------------------------------------
    def _setup(self) -> bool:
        """Prepare the app; True when it still needs its first deploy (a fresh app)."""
        for k in ("ledgers", "logs"):
            shutil.rmtree(self.tdir / k, ignore_errors=True)
            (self.tdir / k).mkdir(parents=True)
        drain_timeout = round(self.rng.uniform(0.1, 1.0), 2)
        self._plan_skew()
        old = self.world.apps.get(self.backend)
        assert old is None or isinstance(old, App)
        fresh = not (self.reuse and old is not None and old.healthy and self._reset(old))
        if fresh:
            if old is not None:
                self._drop_app(old)
            self.app_state = self._new_app()
        assert self.app_state is not None
        app = self.app_state
        app.healthy = False
        self.world.apps[self.backend] = app
        self.app, self.dir, self.dsn = app.name, app.dir, app.dsn
        if self.dsn:
            self.env["SHIPIT_DSN"] = self.dsn
        hooks = {p: [{"local": f'test "$CHAOS_FAIL" != {p}'}] for p in HOOK_POINTS}
        cfg = {
            "application": self.app,
            "source": {"dir": str(self.dir / "src")},
            "deploy_to": f"{MOUNT}/{self.app}",
            "shipit_command": SHIPIT_COMMAND,
            "ssh": ssh_section(self.world.hosts),
            "jobs": {
                "store": self.backend, "lease_ttl": TTL, "grace": 1.0, "max_restarts": 100,
                "drain_timeout": drain_timeout, "drain_policy": "terminate",
                "heartbeat": 0.5,
            },
            "hooks": hooks,
            "stages": {"test": {"hosts": [h.name for h in self.world.hosts], "parallelism": 3}},
        }
        (self.dir / "shipit.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        for h in self.world.hosts:
            self.world.set_skew(h, self.skew.get(h.name, 0))
        if self.skew:
            self.result.faults["clock_skew"] += 1
            self.result.notes += [f"clock of {name} {off:+d}s off" for name, off in self.skew.items()]
        return fresh

    def _plan_skew(self) -> None:
        if self.skew_rng.random() < SKEW_RATE:
            host = self.skew_rng.choice(self.world.hosts)
            self.skew[host.name] = self.skew_rng.choice(SKEWS)

    def _new_app(self) -> App:
        app = App(name=self.app, dir=self.workdir / self.app)
        shutil.rmtree(app.dir, ignore_errors=True)
        for h in self.world.hosts:
            shutil.rmtree(self.world.tree(h, app.name), ignore_errors=True)
        src = app.dir / "src"
        src.mkdir(parents=True)
        shutil.copy(Path(__file__).with_name("ledger_job.py"), src / "ledger_job.py")
        (src / "app.py").write_text("VERSION = 1\n")
        if self.backend == "postgres":
            assert self.world.pg is not None
            import psycopg

            with psycopg.connect(self.world.pg.dsn(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{app.name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{app.name}"')
            app.dsn = self.world.pg.dsn(app.name)
        return app

    def _reset(self, app: App) -> bool:
        """Empty the job stores of a healthy app (the releases stay); False if that failed."""
        try:
            if app.dsn:
                import psycopg

                with psycopg.connect(app.dsn, autocommit=True, connect_timeout=10) as conn:
                    conn.execute("SET lock_timeout = '10s'")
                    names = [r[0] for r in conn.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'shipit%'")]
                    if names:
                        conn.execute("DROP TABLE " + ", ".join(f'"{n}"' for n in names) + " CASCADE")
                from shipit.gate.postgres import PostgresStore

                fresh = PostgresStore(app.dsn)
                fresh.gate()
                fresh.close()
            else:
                from shipit.gate.url import open_store

                for h in self.world.hosts:
                    store_dir = self.world.tree(h, app.name) / "shared" / "shipit"
                    if store_dir.exists():
                        shutil.rmtree(store_dir)
                    # An empty store, as the app's deploys made it: `shipit job run` refuses a
                    # store that does not exist, so the first burst would test nothing.
                    url = f"file:{store_dir}" if self.backend == "file" else f"sqlite:{store_dir}/jobs.db"
                    fresh = open_store(url)
                    fresh.gate()
                    fresh.close()
        except Exception as e:  # noqa: BLE001 - fall back to a fresh app
            self.result.notes.append(f"could not reuse {app.name}: {e}")
            return False
        self.app_state = app
        return True

    def _drop_app(self, app: App) -> None:
        for h in self.world.hosts:
            shutil.rmtree(self.world.tree(h, app.name), ignore_errors=True)
        shutil.rmtree(app.dir, ignore_errors=True)
        if app.dsn and self.world.pg is not None:
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect(self.world.pg.dsn(), autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{app.name}" WITH (FORCE)')

    def _cli_argv(self, *args: str) -> list[str]:
        return ["--config", str(self.dir / "shipit.yaml"), *args]

    def shipit(self, *args: str, timeout: float = DEPLOY_TIMEOUT) -> subprocess.CompletedProcess[str]:
        if self.world.zygote is not None:
            return self.world.zygote.run(self._cli_argv(*args), env=self.env, timeout=timeout)
        return subprocess.run(
            [*SHIPIT, *self._cli_argv(*args)], capture_output=True,
            text=True, timeout=timeout, env=self.env, check=False, stdin=subprocess.DEVNULL,
        )

    def store_url(self, host: ChaosHost, *, outside: bool) -> str:
        base = str(self.world.tree(host, self.app)) if outside else f"{MOUNT}/{self.app}"
        if self.backend == "file":
            return f"file:{base}/shared/shipit"
        if self.backend == "sqlite":
            return f"sqlite:{base}/shared/shipit/jobs.db"
        return "postgres"

    def stores(self) -> list[tuple[str, Store]]:
        """(label, store) for every store of the stage, opened from this side."""
        if self.backend == "postgres":
            assert self.dsn is not None
            return [("postgres", open_store(self.dsn))]
        return [(h.name, open_store(self.store_url(h, outside=True))) for h in self.world.hosts]

    # -- jobs -----------------------------------------------------------------------------------
    def start_job(self, host: ChaosHost) -> None:
        if not host.running:
            return
        with self.lock:
            self.n_jobs += 1
            n = self.n_jobs
        long = self.rng.random() < 0.5
        stateful = self.rng.random() < 0.7
        total = self.rng.randint(60, 200) if long else self.rng.randint(3, 12)
        delay = round(self.rng.uniform(0.02, 0.06), 3)
        ledger = self.tdir / "ledgers" / f"j{n}.txt"
        argv = [
            *self.world.nsenter(host), *SHIPIT, "job", "run", "--store", self.store_url(host, outside=False),
            "--host", host.name, "--name", f"j{n}", "--cwd", f"{MOUNT}/{self.app}/current",
            "--grace", "1", "--heartbeat", "0.3", "--max-wait", "60",
            "--", sys.executable, "ledger_job.py", str(ledger), str(total), str(delay), "1" if stateful else "0",
        ]
        with open(self.tdir / "logs" / f"j{n}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env={**self.env, **self.world.host_env(host)}, start_new_session=True)
        self.job_procs.append(proc)
        self.result.faults["job_started"] += 1

    def burst(self) -> None:
        n = self.rng.randint(4, 8) if self.rng.random() < 0.8 else self.rng.randint(9, 14)
        for _ in range(n):
            self.start_job(self.rng.choice(self.world.hosts))

    def kill_a_job(self, supervisor: bool) -> None:
        """SIGKILL a live job's supervisor (its run is left 'running' with no owner) or the job
        under it (the supervisor records a failure)."""
        for _label, store in self.stores():
            try:
                runs = [r for r in store.list_runs(states=ACTIVE_STATES) if r.pid]
            except Exception:  # noqa: BLE001 - the store may be mid-restart: try the next moment
                runs = []
            finally:
                store.close()
            if not runs:
                continue
            run = self.rng.choice(runs)
            assert run.pid is not None
            pids = [run.pid] if supervisor else _descendants(run.pid)
            if not pids:
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.result.faults["supervisor_sigkill" if supervisor else "job_sigkill"] += 1
            return

    # -- faults ---------------------------------------------------------------------------------
    def kill_sshd(self, moment: str) -> None:
        host = self.rng.choice(self.world.hosts)
        if not host.running:
            return
        down = self.rng.uniform(0.2, 2.0)
        host.kill()
        self.result.faults["sshd_kill"] += 1
        self.result.notes.append(f"sshd {host.name} killed at {moment}, back after {down:.1f}s")
        if moment in ("release", "switch", "restart", "restarted"):
            # A host lost after the switch cannot be rolled back with the others: the stage stays
            # on two releases until the next deploy (checked after it; counted in `observed`).
            self._mark_dirty()

        def back() -> None:
            time.sleep(down)
            with contextlib.suppress(Exception):
                host.start()

        self._thread(back)

    def restart_pg(self) -> None:
        if self.world.pg is None:
            return
        with contextlib.suppress(Exception):
            self.world.pg.restart()
            self.result.faults["pg_restart"] += 1

    def _thread(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    # -- deploys --------------------------------------------------------------------------------
    def plan_deploy(self, index: int) -> Deploy:
        fail = self.rng.choice(HOOK_POINTS) if self.rng.random() < 0.2 else None
        kill = None
        if self.rng.random() < 0.45:
            moment = self.rng.choice(list(MOMENTS))
            sig = signal.SIGKILL if self.rng.random() < 0.6 else signal.SIGTERM
            kill = (moment, int(sig), round(self.rng.uniform(0.0, 0.3), 3))
        d = Deploy(index=index, fail_hook=fail, kill=kill)
        if self.rng.random() < 0.25:
            moment = self.rng.choice(list(MOMENTS))
            self.triggers.append((index, moment, lambda m=moment: self.kill_sshd(m)))
        if self.backend == "postgres" and self.rng.random() < 0.3:
            self.triggers.append((index, self.rng.choice(list(MOMENTS)), lambda: self._thread(self.restart_pg)))
        return d

    def start_deploy(self, d: Deploy) -> None:
        env = dict(self.env)
        if d.fail_hook:
            env["CHAOS_FAIL"] = d.fail_hook
            self.result.faults["failing_hook"] += 1
        argv = self._cli_argv("deploy", "test", "--yes", "--json")
        d.started_at = time.monotonic()
        with open(self.tdir / "logs" / f"deploy{d.index}.err", "ab") as err:
            if self.world.zygote is not None:
                d.proc = self.world.zygote.popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
            else:
                d.proc = subprocess.Popen(
                    [*SHIPIT, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                    text=True, env=env, start_new_session=True,
                )
        self.cli.append(d.proc)
        self._thread(self._read_events, d)

    def _read_events(self, d: Deploy) -> None:
        # Every event line is kept with the trial's logs, for triage.
        with open(self.tdir / "logs" / f"deploy{d.index}.jsonl", "a") as kept:
            self._follow(d, kept)

    def _follow(self, d: Deploy, kept: Any) -> None:
        assert d.proc is not None and d.proc.stdout is not None
        for line in d.proc.stdout:
            kept.write(line)
            kept.flush()
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            d.events.append(ev)
            moment = next((m for m, (k, p) in MOMENTS.items()
                           if ev.get("kind") == k and (p is None or ev.get("phase") == p)), None)
            if moment is None:
                continue
            if d.kill and d.kill[0] == moment and d.killed_with is None:
                time.sleep(d.kill[2])
                with contextlib.suppress(ProcessLookupError):
                    d.proc.send_signal(d.kill[1])
                    d.killed_with, d.killed_at_moment = d.kill[1], moment
                    d.killed_mono = time.monotonic()
                    if d.kill[1] == signal.SIGKILL:
                        d.gone_at = time.time()
                    name = "deploy_sigkill" if d.kill[1] == signal.SIGKILL else "deploy_sigterm"
                    self.result.faults[f"{name}@{moment}"] += 1
                    if d.kill[1] == signal.SIGKILL and moment in ("release", "switch"):
                        self._mark_dirty()
            for i, (index, m, action) in enumerate(list(self.triggers)):
                if index == d.index and m == moment:
                    self.triggers[i] = (index, "", action)
                    action()
        d.gone_at = d.gone_at or time.time()
        if d.killed_with == signal.SIGKILL and _released_unfinished(d.events):
            # Everything it said before it died is read now. The signal is aimed at a moment but
            # lands later when this reader lags (seed 133: aimed at the drain, it landed in the
            # switch): if the deploy had begun its release, hosts may differ whatever the aim.
            self._mark_dirty(since=d.killed_mono)

    def wait_deploy(self, d: Deploy) -> None:
        assert d.proc is not None
        try:
            d.exit_code = d.proc.wait(timeout=DEPLOY_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.result.violations.append(f"deploy {d.index} hung for {DEPLOY_TIMEOUT:.0f}s (killed)")
            d.proc.kill()
            d.exit_code = d.proc.wait()
        d.ended_at = time.time()
        summary = next((e["summary"] for e in reversed(d.events) if "summary" in e), {})
        killed = f", {signal.Signals(d.killed_with).name}@{d.killed_at_moment}" if d.killed_with else ""
        hook = f", hook {d.fail_hook} fails" if d.fail_hook else ""
        self.result.notes.append(f"deploy {d.index}: exit {d.exit_code}{killed}{hook}, "
                                 f"outcome {summary.get('outcome')}: {summary.get('error')}")
        self.finished.append(d)
        if d.exit_code == 0 and d.started_at > self.dirty_at:
            # Only a deploy that started after the fault switched every host after it: one that
            # started earlier (it overlapped the faulty one) may have switched before it (seed 75).
            self.dirty = False

    def _mark_dirty(self, since: float | None = None) -> None:
        """Hosts may differ from `since` (time.monotonic(); default now) until a deploy that
        started after it succeeds. Marked late (after the killed deploy's last event was read),
        it stays clear if such a deploy has succeeded already."""
        since = time.monotonic() if since is None else since
        with self.lock:
            if any(d.exit_code == 0 and d.started_at > since for d in self.finished):
                return
            self.dirty, self.dirty_at = True, max(self.dirty_at, since)

    # -- the trial ------------------------------------------------------------------------------
    def run(self) -> TrialResult:
        start = time.monotonic()
        healthy = False
        try:
            healthy = self._run()
        except Exception as e:  # noqa: BLE001 - the harness failed, not shipit: say so, go on
            frames = traceback.extract_tb(e.__traceback__)
            where = [f for f in frames if "/tests/" in f.filename][-3:] + frames[-1:]
            self.result.error = (f"{type(e).__name__}: {e} (at "
                                 + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(where)) + ")")[:2000]
        finally:
            with self.step("cleanup"):
                self.cleanup(keep=healthy and not self.result.violations)
            self.result.seconds = round(time.monotonic() - start, 1)
        return self.result

    def _run(self) -> bool:
        """The trial; True when it leaves the app healthy for the next one."""
        with self.step("setup"):
            fresh = self._setup()
        if fresh:
            with self.step("first_deploy"):
                first = self.shipit("deploy", "test", "--yes")
            if first.returncode != 0:
                self.result.violations.append(f"setup: first deploy failed: {_tail(first)}")
                return False
        with self.step("burst_and_pause"):
            self.burst()
            time.sleep(self.rng.uniform(0.3, 1.2))
        deploys = [self.plan_deploy(i) for i in range(self.rng.randint(1, 3))]
        overlap = [False] + [self.rng.random() < 0.5 for _ in deploys[1:]]
        job_faults = [(self.rng.uniform(0.0, 3.0), self.rng.random() < 0.5 and self.backend != "postgres")
                      for _ in range(self.rng.randint(0, 3))]
        second_burst = self.rng.uniform(0.0, 2.5) if self.rng.random() < 0.7 else None
        t0 = time.monotonic()

        def background() -> None:
            events: list[tuple[float, Any]] = [(at, lambda s=sup: self.kill_a_job(s)) for at, sup in job_faults]
            if second_burst is not None:
                events.append((second_burst, self.burst))
            for at, fn in sorted(events, key=lambda e: e[0]):
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                with contextlib.suppress(Exception):
                    fn()

        self._thread(background)
        with self.step("deploys"):
            for i, d in enumerate(deploys):
                if i and not overlap[i]:
                    self.wait_deploy(deploys[i - 1])
                elif i:
                    time.sleep(self.rng.uniform(0.0, 1.0))
                self.start_deploy(d)
            for d in deploys:
                if d.exit_code is None:
                    self.wait_deploy(d)
        with self.step("join_threads"):
            for t in self.threads:
                t.join(timeout=30)
        with self.step("ensure_up"):
            ensure_up(self.world)
        return self.check(deploys)

    def check(self, deploys: list[Deploy]) -> bool:
        ended = max(d.ended_at for d in deploys)
        v = self.result.violations
        with self.step("check_e_lease"):
            v += invariants.lease_expires(self.stores, ended + TTL + TTL / 3 + 1.5,
                                          offsets=self.clock_offsets(), probe=self.probe_on_host)
        with self.step("reconcile"):
            reconciled = self.shipit("jobs", "reconcile", "test")
        if reconciled.returncode != 0:
            v.append(f"(b) jobs reconcile exited {reconciled.returncode}: {_tail(reconciled)}")
        with self.step("check_b_after_reconcile"):
            v += invariants.restarted_once(self.stores, when="after reconcile")
        with self.step("check_a_d"):
            v += invariants.no_run_in_closed_gate(self.stores, TTL)
            v += invariants.releases_complete(self.world, self.app, same=not self.dirty)
            if self.dirty and invariants.releases_complete(self.world, self.app, same=True):
                self.result.observed["mixed_stage_until_next_deploy"] += 1
        with self.step("final_deploy"):
            final = self.shipit("deploy", "test", "--yes")
        if final.returncode != 0:
            v.append(f"(f) plain deploy after the trial exited {final.returncode}: {_tail(final)}")
        else:
            v += invariants.releases_complete(self.world, self.app, same=True)
        healthy = final.returncode == 0 and not v
        with self.step("check_b_after_final"):
            v += invariants.restarted_once(self.stores, when="after the final deploy")
        with self.step("kill_everything"):
            self.kill_everything()
        with self.step("check_a_c"):
            self.observe()
            v += invariants.no_run_in_closed_gate(self.stores, TTL)
            v += invariants.no_close_after_exit(self.stores, self.exits(deploys), offsets=self.clock_offsets())
            step = (time.time() - time.monotonic()) - self.clock_base
            if abs(step) > invariants.SKEW_TOL:
                self.result.notes.append(f"this machine's wall clock stepped {step:+.2f}s during the trial")
            v += invariants.ledgers(self.stores, self.tdir / "ledgers", skew=self.run_skew(),
                                    seen=self.result.observed, bases=(self.clock_base,))
        return healthy

    @staticmethod
    def exits(deploys: list[Deploy]) -> dict[str, float]:
        """Deploy id -> when the trial saw that deploy's process gone (time.time())."""
        out = {}
        for d in deploys:
            started = next((e for e in d.events if e.get("kind") == "deploy.started"), None)
            deploy_id = (started or {}).get("data", {}).get("deploy_id")
            if deploy_id and d.ended_at:
                out[str(deploy_id)] = min(d.gone_at or d.ended_at, d.ended_at)
        return out

    # -- clocks ---------------------------------------------------------------------------------
    def clock_offsets(self) -> dict[str, float]:
        """Store label -> how far that store's clock is off: a per-host store is written with
        its host's clock (agent and supervisors run there); PostgreSQL uses its own."""
        if self.backend == "postgres":
            return {}
        return {h.name: float(h.skew) for h in self.world.hosts if h.skew}

    def run_skew(self) -> dict[str, float]:
        """Host name -> the skew the jobs there must show in their ledger lines."""
        return {h.name: float(h.skew) for h in self.world.hosts}

    def probe_on_host(self, label: str) -> str | None:
        """(e)'s claim on a host whose clock is off, made there the way a job makes it (`shipit job
        run` on the host's clock), so it judges the lease in the host's time. None: it got in."""
        host = next(h for h in self.world.hosts if h.name == label)
        argv = [*self.world.nsenter(host), *SHIPIT, "job", "run", "--store", self.store_url(host, outside=False),
                "--host", host.name, "--name", invariants.PROBE, "--max-wait", "1", "--", "true"]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                             env={**self.env, **self.world.host_env(host)}, stdin=subprocess.DEVNULL)
        return None if res.returncode == 0 else f"exit {res.returncode}: {res.stderr.strip()[-300:]}"

    def observe(self) -> None:
        """What the trial exercised, from the records: so a run of trials that never stopped or
        restarted anything shows as such instead of passing quietly."""
        seen = self.result.observed
        for _label, store in self.stores():
            try:
                for r in store.list_runs():
                    if r.job == invariants.PROBE:
                        continue
                    seen[f"runs_{r.state}"] += 1
                    if r.continues:
                        seen["restarts"] += 1
            finally:
                store.close()

    def kill_everything(self) -> None:
        """End every process of this trial: the supervisors I started, the ones deploys started
        (found by the trial's name in their command line or environment) and their jobs."""
        self._kill_cli()
        token = self.app.encode()
        killed: set[int] = set()
        for _ in range(5):
            found = False
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == os.getpid() or int(entry) in killed:
                    continue
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    blob = cmdline + Path(f"/proc/{entry}/environ").read_bytes()
                except OSError:
                    continue
                # Not the servers: sshd, and PostgreSQL's backends, whose title names the database
                # (SIGKILL to one makes the server crash-restart: a fault nobody planned).
                if token in blob and b"sshd" not in cmdline[:40] and not cmdline.startswith(b"postgres:"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(entry), signal.SIGKILL)
                        killed.add(int(entry))
                        found = True
            if not found:
                break
            time.sleep(0.1)  # then look again: a process killed mid-spawn may have left a child
        for p in self.job_procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=5)

    def _kill_cli(self) -> None:
        """The shipit commands of this trial (forked by the zygote, their argv and environment in
        /proc are the zygote's, so the token scan does not find them)."""
        for c in self.cli:
            if c.poll() is None:
                c.kill()
        for c in self.cli:
            with contextlib.suppress(Exception):
                c.wait(timeout=10)

    def cleanup(self, *, keep: bool = False) -> None:
        """End the trial's processes; keep the app for the next trial, or drop it."""
        with contextlib.suppress(Exception):
            self._kill_cli()
        with contextlib.suppress(Exception):
            self.kill_everything()
        with contextlib.suppress(Exception):
            ensure_up(self.world)
        if self.app_state is not None:
            self.app_state.healthy = keep
            if not keep:
                self.world.apps.pop(self.backend, None)
                # The deploys' own logs go with the app: keep a copy with the trial's for triage.
                with contextlib.suppress(OSError):
                    shutil.copytree(self.app_state.dir / ".shipit" / "logs", self.tdir / "logs" / "shipit",
                                    dirs_exist_ok=True)
                self._drop_app(self.app_state)
