"""The deploy side of restarting: reopen the gate, start every recorded run again exactly once.

Exactly-once is at enqueue: `store.claim_restart(run.id, epoch)` is a unique claim per run, and
only its winner spawns. The spawned supervisor holds that claim until its own run is claimed; a
claim nothing holds and no run continues, past SPAWN_GRACE, was lost with its supervisor (host
crash, SIGKILL, store unreachable, gave up at the gate) and is re-taken by one caller
(`store.retake_restart`) and spawned again. A duplicate spawn is harmless anyway: claiming a
continuation is unique per run. Lean imports: this runs inside the host agent.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable, Mapping

from shipit.errors import FencingError
from shipit.gate._common import respawn_reason
from shipit.gate.base import GIVEN_UP, Lease, Run, Store
from shipit.jobs.drain import Emit, run_info

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any

# spawn(run) -> facts about the started process (pid, log, ...), raising on failure.
Spawn = Callable[[Run], "dict[str, Any]"]  # quoted: typing is not imported at run time
# How long a definition's restart_command may take (it starts a unit / enqueues, it does not run
# the job).
RESTART_COMMAND_TIMEOUT = 120.0
# How long a spawned supervisor has to start and hold its restart claim before a claim nothing
# holds counts as lost. Starting takes well under a second; too short costs only a duplicate
# spawn, which finds the continuation taken and exits 0.
SPAWN_GRACE = 5.0


def definition(definitions: Mapping[str, Any] | None, job: str) -> dict[str, Any]:
    """A job definition as a plain dict, whether it came as a pydantic model or as JSON."""
    d = (definitions or {}).get(job)
    if d is None:
        return {}
    if isinstance(d, Mapping):
        return dict(d)
    dump = getattr(d, "model_dump", None)
    return dict(dump()) if dump else dict(vars(d))


def dependency_order(runs: Iterable[Run], definitions: Mapping[str, Any] | None) -> list[Run]:
    """Runs ordered so that a job starts after the jobs it lists in `after:` (among these runs).
    Stable otherwise; a cycle falls back to the given order for the jobs caught in it."""
    pending = list(runs)
    present = {r.job for r in pending}
    done: set[str] = set()
    ordered: list[Run] = []
    while pending:
        ready = [
            r for r in pending
            if all(dep in done or dep not in present or dep == r.job
                   for dep in definition(definitions, r.job).get("after") or ())
        ]
        if not ready:
            ready = pending[:1]
        for r in ready:
            pending.remove(r)
            ordered.append(r)
        # A job counts as started only when every run of it has been taken.
        left = {r.job for r in pending}
        done |= {r.job for r in ready if r.job not in left}
    return ordered


def reopen(store: Store, epoch: int | None, *, actor: str, emit: Emit, host: str | None) -> Lease:
    """Reopen at our epoch. Idempotent: reopening an already reopened gate is a no-op."""
    lease = store.open_gate(epoch, actor=actor)
    emit("gate.reopened", host=host, epoch=lease.epoch, holder=actor)
    return lease


def restart(
    store: Store,
    *,
    epoch: int,
    actor: str,
    recorded: Iterable[Run],
    spawn: Spawn,
    definitions: Mapping[str, Any] | None,
    max_restarts: int,
    emit: Emit,
    host: str | None = None,
    reopen_gate: bool = True,
    spawn_grace: float = SPAWN_GRACE,
) -> list[dict[str, Any]]:
    """Reopen the gate (epoch-checked), then start each recorded run again, once.

    Returns one outcome per run: {"run_id", "job", "outcome": restarted|given_up|already|failed}
    ("respawned": true when a lost restart was spawned again). A failing spawn is reported
    (event `job.restart_failed`) and does not stop the others; nothing holds its claim, so a
    later reconcile spawns it again after `spawn_grace`. A failing `restart_command` is not
    retried: shipit cannot see whether the job system started the job anyway.
    """
    if reopen_gate:
        try:
            reopen(store, epoch, actor=actor, emit=emit, host=host)
        except FencingError:
            # Someone forced the gate or our lease expired and another deploy took it: their
            # epoch, not ours. Restarting is still right (claims are per run, jobs queue at the
            # gate), so carry on and say so.
            emit("log", host=host, message="gate no longer ours; restarting without reopening",
                 level="warning")
    outcomes: list[dict[str, Any]] = []
    for run in dependency_order(recorded, definitions):
        outcomes.append(_restart_one(store, run, epoch=epoch, spawn=spawn, definitions=definitions,
                                     max_restarts=max_restarts, emit=emit, host=host,
                                     spawn_grace=spawn_grace))
    return outcomes


def _restart_one(
    store: Store,
    run: Run,
    *,
    epoch: int,
    spawn: Spawn,
    definitions: Mapping[str, Any] | None,
    max_restarts: int,
    emit: Emit,
    host: str | None,
    spawn_grace: float,
) -> dict[str, Any]:
    where = host or run.host
    base = {"run_id": run.id, "job": run.job}
    defn = definition(definitions, run.job)
    respawned = False
    if run.state == GIVEN_UP:
        return {**base, "outcome": "given_up"}  # given up meanwhile (`shipit jobs forget`)
    if not store.claim_restart(run.id, epoch):
        if not _retake(store, run, defn, epoch=epoch, grace=spawn_grace, emit=emit, where=where):
            return {**base, "outcome": "already"}
        respawned = True
    limit = defn.get("max_restarts")
    limit = max_restarts if limit is None else limit
    if run.restarts >= limit:
        store.finish(run.id, GIVEN_UP, message=f"max_restarts ({limit}) reached")
        emit("job.given_up", host=where, run=run_info(run), max_restarts=limit)
        return {**base, "outcome": "given_up"}
    try:
        check_state_readable(run)
        command = defn.get("restart_command")
        facts = run_restart_command(command, run) if command else spawn(run)
    except Exception as exc:  # noqa: BLE001 - one job's failure is reported, the rest go on
        emit("job.restart_failed", host=where, run=run_info(run), message=str(exc))
        return {**base, "outcome": "failed", "error": str(exc)}
    extra = {"respawned": True} if respawned else {}
    emit("job.restarted", host=where, job=run.job, run_id=run.id, attempt=run.attempt + 1,
         **extra, **facts)
    return {**base, "outcome": "restarted", **extra, **facts}


class StateUnreadable(Exception):
    """A stopped run's saved state (checkpoint, recorded env) cannot be decrypted here."""


def check_state_readable(run: Run) -> None:
    """Before a restart is started: the new run must be handed the old run's state, so it must
    decrypt with this host's keys (the supervisor spawned here has the same ones). Otherwise the
    restart is reported failed, with what to do, and the run keeps its state: nothing is lost,
    and once the key is there a reconcile starts it (its claim is held by nobody)."""
    from shipit.errors import CorruptState

    try:
        run.opened()
    except CorruptState as exc:
        raise StateUnreadable(
            f"run {run.id} ({run.job}) not restarted, its saved state cannot be decrypted: {exc}. "
            "The state is kept: give this host the key (SHIPIT_STATE_KEYS or jobs.key_file) and "
            "run `shipit jobs reconcile STAGE`, or, if the key is lost, give the run up with "
            f"`shipit jobs forget STAGE {run.id}` and start the job afresh"
        ) from None


def _retake(
    store: Store, run: Run, defn: Mapping[str, Any], *, epoch: int, grace: float, emit: Emit,
    where: str,
) -> bool:
    """The restart was claimed before: re-take it if it was lost (see the module docstring)."""
    if defn.get("restart_command"):
        # Started by its own job system, which shipit cannot watch: its claim is never held,
        # and re-running the command could start the job twice.
        return False
    lost = store.retake_restart(run.id, epoch, grace=grace)
    if lost is None:
        return False
    emit("job.restart_respawned", host=where, run=run_info(run), respawns=lost.respawns + 1,
         message=respawn_reason(lost))
    return True


def run_restart_command(command: str, run: Run) -> dict[str, Any]:
    """A job started by systemd or a queue is started again by its own command (shell text from
    shipit.yaml, run as written)."""
    import subprocess  # not at the top: most agent calls start nothing

    cwd = run.cwd if run.cwd and os.path.isdir(run.cwd) else None
    env = {**os.environ, "SHIPIT_CONTINUES": run.id, "SHIPIT_JOB": run.job}
    proc = subprocess.run(
        ["/bin/sh", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=RESTART_COMMAND_TIMEOUT, check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"restart_command exited {proc.returncode}: {tail[0]}")
    return {"restart_command": command}


def local_spawner(
    shipit_command: str | list[str],
    store_url: str,
    *,
    log_dir: str,
    host: str | None = None,
    env: Mapping[str, str] | None = None,
    grace: float | None = None,
) -> Spawn:
    """Spawn `<shipit> job run --continues RUN --store URL --host HOST` detached on this machine:
    own session (a dying agent or SSH channel does not take it down), stdin /dev/null, output
    appended to `<log_dir>/<old run id>.next.log`. `host` (default: the
    run's own) is the name the new run is recorded under. The supervisor resolves the run's cwd (typically
    .../current) itself once the gate is open, so the job runs the new release.

    `grace` (jobs.grace) reaches the supervisor as `$SHIPIT_GRACE`, its default grace: not as
    `--grace`, which would record it as the job's own choice and pin it past a change of
    jobs.grace. A deploy's stop request carries the grace of its time anyway; a run's own
    `--grace` is inherited by its continuation."""
    argv = shlex.split(shipit_command) if isinstance(shipit_command, str) else list(shipit_command)
    extra = {**(env or {})}
    if grace is not None:
        extra["SHIPIT_GRACE"] = f"{grace:g}"

    def spawn(run: Run) -> dict[str, Any]:
        import subprocess  # not at the top: most agent calls start nothing

        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        log_path = os.path.join(log_dir, f"{run.id}.next.log")
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        cwd = run.cwd if run.cwd and os.path.isdir(run.cwd) else log_dir
        try:
            proc = subprocess.Popen(
                [*argv, "job", "run", "--continues", run.id, "--store", store_url,
                 "--host", host or run.host],
                cwd=cwd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                start_new_session=True, close_fds=True, env={**os.environ, **extra},
            )
        finally:
            os.close(fd)
        return {"pid": proc.pid, "log": log_path}

    return spawn
