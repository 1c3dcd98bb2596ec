"""`shipit job run`: claim a run through the gate, run the job, answer stop requests, record the end.

Single-threaded on purpose: the child is spawned with fork+exec (no subprocess module, no thread),
signals reach the main loop through `signal.set_wakeup_fd`, and the loop sleeps in `poll()` until
a signal, the next heartbeat or the kill deadline. That keeps `shipit job run -- true` cheap.

Which pid the store holds: the SUPERVISOR's. The deploy sends SIGUSR1 to `run.pid` ("check for a
stop request now"); sending that to the job itself would kill most jobs (SIGUSR1's default action
is to terminate). The supervisor is also what holds the run lock, so its pid is what "alive" means.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shipit.errors import ShipitError, StoreUnavailable, UsageError
from shipit.gate._common import AlreadyContinued
from shipit.gate.base import (
    CHECKPOINTED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    ClaimSpec,
    Lease,
    Run,
    Store,
)
from shipit.jobs.gatewait import claim_when_open, describe_lease

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any, TextIO

DEFAULT_MAX_WAIT = 3600.0
DEFAULT_GRACE = 10.0
DEFAULT_HEARTBEAT = 1.0
# How long a restart spawned by a deploy (`--continues`) keeps trying an unreachable store while
# it waits at the gate (a PostgreSQL restart or failover), rather than exiting 5.
RESTART_RIDE_OUT = 60.0
# How long a supervisor keeps trying to record its run's end in an outage before it gives up.
FINISH_RIDE_OUT = 30.0

# Signals sent to the supervisor that it passes on to the job's process group.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Forwarded signals after which the job gets --grace seconds before SIGKILL, as on a stop request.
_STOPPING = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


@dataclass
class RunOptions:
    """Everything `shipit job run` was asked to do (already validated by the CLI)."""

    command: list[str]
    store_url: str
    host: str
    name: str | None = None
    key: str | None = None
    max_wait: float = DEFAULT_MAX_WAIT
    cwd: str | None = None
    # Seconds between TERM and KILL when nothing better is known: a deploy's stop request carries
    # its own (jobs.grace), which wins; `$SHIPIT_GRACE` or DEFAULT_GRACE otherwise.
    grace: float = DEFAULT_GRACE
    # An explicit `--grace`: the job's own choice, recorded on the run (so the drain waits for
    # it) and used on every stop, a deploy's included. A continuation inherits the run's.
    own_grace: float | None = None
    heartbeat: float = DEFAULT_HEARTBEAT
    env_names: list[str] = field(default_factory=list)
    continues: str | None = None


def _open_per_host_store(url: str, create: bool) -> Store | None:
    """file:/sqlite: stores opened without importing shipit.gate.url.

    WORKAROUND: shipit.gate.url imports shipit.config.model (pydantic, ~140 ms) at module level,
    which would triple the cost of every `shipit job run`. Same path rules as url.py; anything
    unusual (relative paths, other schemes) goes through open_store for its error messages.
    Delete once url.py imports StageConfig only under TYPE_CHECKING.
    """
    for scheme in ("sqlite:", "file:"):
        if url.startswith(scheme):
            path = url[len(scheme) :]
            if path.startswith("//"):
                path = path[2:]
            if not os.path.isabs(path):
                return None
            path = os.path.normpath(path)
            if scheme == "sqlite:":
                from shipit.gate.sqlite import SQLiteStore

                return SQLiteStore(path, create=create)
            from shipit.gate.file import FileStore

            return FileStore(path, create=create)
    return None


def open_store_or_fail(url: str, *, create: bool = False) -> Store:
    """Open the store; anything short of a working store is StoreUnavailable (fail closed).

    The job side never creates a store (`create=False`): one that does not exist yet is
    StoreMissing (exit 5), since a job let through a store nobody else uses would bypass the
    gate every deploy closes. The deploy's agent creates it."""
    try:
        store = _open_per_host_store(url.strip(), create)
        if store is not None:
            return store
        from shipit.gate.url import open_store

        return open_store(url, create=create)
    except ShipitError:
        raise
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(f"cannot open the job store: {exc}") from None


def logical_cwd() -> str:
    """The working directory as the user sees it: $PWD when it is the real cwd (so a job started
    in /app/current records /app/current, not the release folder it happens to resolve to)."""
    here = os.getcwd()
    pwd = os.environ.get("PWD")
    if pwd and os.path.isabs(pwd):
        try:
            if os.path.samefile(pwd, here):
                return pwd
        except OSError:
            pass
    return here


def allowed_env(names: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment recorded with the run (and restored on restart): only allow-listed names."""
    wanted = [n for n in names if n]
    wanted += [n.strip() for n in environ.get("SHIPIT_ENV_ALLOW", "").split(",") if n.strip()]
    return {n: environ[n] for n in dict.fromkeys(wanted) if n in environ}


@dataclass
class _Plan:
    spec: ClaimSpec
    resume_state: Any = None
    has_resume_state: bool = False


def _plan(opts: RunOptions, store: Store, environ: Mapping[str, str]) -> _Plan:
    env = allowed_env(opts.env_names, environ)
    if opts.continues:
        try:
            # Decrypted here, before anything is claimed: without the key this is exit 5 and
            # the stopped run with its saved state stays as it is for the next attempt.
            prev = store.get_run(opts.continues).opened()
        except KeyError:
            raise UsageError(f"--continues: no run {opts.continues} in the job store") from None
        command = list(opts.command) or list(prev.command)
        cwd = opts.cwd or prev.cwd
        spec = ClaimSpec(
            job=opts.name or prev.job,
            host=opts.host,
            command=tuple(command),
            cwd=os.path.abspath(cwd) if cwd else logical_cwd(),
            # The recorded env is what the job needs; the restarting process's env adds to it.
            env={**prev.env, **env},
            key=opts.key if opts.key is not None else prev.key,
            pid=os.getpid(),
            continues=prev.id,
            attempt=prev.attempt + 1,
            restarts=prev.restarts + 1,
            grace=opts.own_grace if opts.own_grace is not None else prev.grace,
        )
        return _Plan(spec, prev.checkpoint, prev.checkpoint is not None)
    if not opts.command:
        raise UsageError("job run: no command given (shipit job run [options] -- CMD ARGS...)")
    cwd = os.path.abspath(opts.cwd) if opts.cwd else logical_cwd()
    spec = ClaimSpec(
        job=opts.name or os.path.basename(opts.command[0]) or opts.command[0],
        host=opts.host,
        command=tuple(opts.command),
        cwd=cwd,
        env=env,
        key=opts.key,
        pid=os.getpid(),
        grace=opts.own_grace,
    )
    return _Plan(spec)


def _child_env(
    environ: Mapping[str, str], run: Run, store_url: str, plan: _Plan
) -> dict[str, str]:
    env = dict(environ)
    env.update(plan.spec.env)
    env["SHIPIT_RUN_ID"] = run.id
    env["SHIPIT_STORE"] = store_url
    env["SHIPIT_ATTEMPT"] = str(run.attempt)
    env["SHIPIT_JOB"] = run.job
    env["SHIPIT_HOST"] = run.host
    # A job started from inside another job must not pick up its parent's state.
    env.pop("SHIPIT_RESUME_STATE", None)
    if plan.has_resume_state:
        env["SHIPIT_RESUME_STATE"] = json.dumps(plan.resume_state)
    return env


def _pdeathsig_setter() -> Callable[[], None]:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) for the child, so a SIGKILLed supervisor never leaves its
    job running unsupervised. Resolved in the parent: the child only makes the call."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux: the job outlives a killed supervisor
        return lambda: None

    def setter() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return setter


class SpawnError(ShipitError):
    """The job's command could not be started (not found, not executable, cwd gone)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def spawn(command: list[str], cwd: str, env: dict[str, str], handled: tuple[int, ...]) -> int:
    """fork+exec the job in its own process group; returns its pid once exec has succeeded."""
    pdeathsig = _pdeathsig_setter()
    parent = os.getpid()
    err_r, err_w = os.pipe()  # non-inheritable: exec closes it, so EOF means exec succeeded
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child side, observed through its behaviour in the tests
        try:
            os.close(err_r)
            os.setpgid(0, 0)
            pdeathsig()
            if os.getppid() != parent:  # the supervisor died before prctl took effect
                os._exit(128 + signal.SIGKILL)
            signal.set_wakeup_fd(-1)
            for sig in handled:
                signal.signal(sig, signal.SIG_DFL)
            os.chdir(cwd)
            os.execvpe(command[0], command, env)
        except BaseException as exc:  # noqa: BLE001 - report any failure to the parent, then die
            code = getattr(exc, "errno", None) or 0
            where = "cwd" if isinstance(exc, OSError) and exc.filename == cwd else "exec"
            os.write(err_w, f"{where}:{code}:{exc}".encode(errors="replace"))
        finally:
            os._exit(127)
    os.close(err_w)
    # Also in the parent: no window where killpg(pid) misses the child. EACCES (already exec'd)
    # or ESRCH (already gone) mean the child's own setpgid has done the job.
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    chunks = []
    while chunk := os.read(err_r, 4096):
        chunks.append(chunk)
    os.close(err_r)
    if chunks:
        os.waitpid(pid, 0)
        where, code_s, msg = b"".join(chunks).decode(errors="replace").split(":", 2)
        code = int(code_s or 0)
        if where == "cwd":
            raise SpawnError(f"cannot enter {cwd}: {os.strerror(code) if code else msg}", 2)
        reason = os.strerror(code) if code else msg
        exit_code = 127 if code in (0, errno.ENOENT) else 126
        raise SpawnError(f"cannot run {command[0]!r} in {cwd}: {reason}", exit_code)
    return pid


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # The group may hold a setuid process; at least reach the job itself.
        with contextlib.suppress(OSError):
            os.kill(pgid, sig)


class Supervisor:
    """One supervised run. `run()` returns the exit code `shipit job run` exits with."""

    def __init__(
        self,
        opts: RunOptions,
        *,
        stderr: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.opts = opts
        self.stderr = stderr if stderr is not None else sys.stderr
        self.environ = dict(os.environ if environ is None else environ)
        self._store_warned = False

    def say(self, line: str) -> None:
        self.stderr.write(f"shipit: {line}\n")
        self.stderr.flush()

    def run(self) -> int:
        store = open_store_or_fail(self.opts.store_url)
        try:
            return self._run(store)
        finally:
            # Closing must not mask the job's outcome.
            with contextlib.suppress(Exception):
                store.close()

    def _announce_wait(self, name: str) -> Callable[[Lease], None]:
        def announce(lease: Lease) -> None:
            self.say(
                f"job {name} waiting: {describe_lease(lease)}"
                f" (waiting up to {self.opts.max_wait:g}s)"
            )

        return announce

    def _run(self, store: Store) -> int:
        claimed = self._claim(store)
        if claimed is None:
            return 0
        plan, run = claimed
        spec = plan.spec
        wake_r, handled = self._install_signals()
        base_checkpoint_at: float | None = None
        try:
            if plan.has_resume_state:
                # Carry the state forward, so a continuation stopped before its first checkpoint
                # still hands the last good state to the run after it.
                store.save_checkpoint(run.id, plan.resume_state)
                base_checkpoint_at = store.get_run(run.id).checkpoint_at
            # Resolved only now, after the gate let us through: `current` points at the release
            # that is live at this moment, which is the new one if a deploy just happened.
            cwd = os.path.realpath(spec.cwd or ".")
            env = _child_env(self.environ, run, self.opts.store_url, plan)
            pid = spawn(list(spec.command), cwd, env, handled)
        except SpawnError as exc:
            self._finish(store, run.id, FAILED, exc.exit_code, str(exc))
            raise
        except BaseException as exc:
            self._finish(store, run.id, FAILED, None, f"supervisor error before start: {exc}")
            raise
        return self._supervise(store, run, pid, wake_r, base_checkpoint_at)

    def _claim(self, store: Store) -> tuple[_Plan, Run] | None:
        """Plan and claim the run. None: nothing to run, another process continues that run.

        A continuation (`--continues`, what a deploy's restart spawns) holds its restart claim
        from the start until its own claim commits: while held, reconcile knows this restart is
        pending; once we are gone without a run, it knows the restart is lost and re-spawns it.
        """
        plan = _plan(self.opts, store, self.environ)  # first: a bad --continues is exit 2
        spec = plan.spec
        continues = spec.continues
        if continues and not store.hold_restart(continues):
            self.say(f"run {continues}: another shipit process is already starting its "
                     "continuation; not starting a second one")
            return None
        done = False
        try:
            if spec.cwd and not os.path.isdir(spec.cwd):
                raise UsageError(f"--cwd {spec.cwd}: not a directory")
            # While waiting at the gate nothing is recorded yet, so Ctrl-C / SIGTERM keep their
            # default effect (stop waiting, exit). Our handlers go in right after the claim.
            run = claim_when_open(
                store, spec, max_wait=self.opts.max_wait, on_closed=self._announce_wait(spec.job),
                keepalive=self._hold_keepalive(store, continues),
                # A restart a deploy spawned holds its restart claim: given up in an outage, that
                # hold could not be released either and would look alive until it went stale,
                # so no reconcile would restart the job meanwhile. Nobody waits on its exit code:
                # ride the outage out instead. A new job still fails closed at once.
                ride_out=RESTART_RIDE_OUT if continues else 0.0,
                on_outage=lambda exc: self.say(f"warning: {exc}; trying again for up to "
                                               f"{RESTART_RIDE_OUT:g}s"),
            )
            done = True
            return plan, run
        except AlreadyContinued as exc:
            done = True
            self.say(f"{exc}: not starting it again")
            return None
        finally:
            if continues:
                self._release_hold(store, continues, done)

    def _hold_keepalive(self, store: Store, continues: str | None) -> Callable[[], None] | None:
        if not continues:
            return None

        def refresh() -> None:
            try:
                store.refresh_restart_hold(continues)
            except Exception as exc:  # noqa: BLE001 - the claim itself will hit a real outage
                if not self._store_warned:
                    self._store_warned = True
                    self.say(f"warning: could not refresh the restart hold, will retry: {exc}")

        return refresh

    @staticmethod
    def _release_hold(store: Store, continues: str, continued: bool) -> None:
        # Best effort: a hold we fail to release goes stale (or dies with us) all the same.
        with contextlib.suppress(Exception):
            store.release_restart_hold(continues, continued=continued)

    def _install_signals(self) -> tuple[int, tuple[int, ...]]:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        handled = (*_FORWARDED, signal.SIGUSR1, signal.SIGCHLD)
        for sig in handled:
            # A no-op Python handler: the C handler writes the signal number to the wakeup fd,
            # which is all the main loop needs.
            signal.signal(sig, _noop)
        return wake_r, handled

    def _heartbeat(self, store: Store, run_id: str) -> bool:
        try:
            return store.heartbeat(run_id)
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not kill a running job
            if not self._store_warned:
                self._store_warned = True
                self.say(f"warning: heartbeat to the job store failed, will retry: {exc}")
            return False

    def _grace(self, run: Run, store: Store | None = None) -> float:
        """Seconds from TERM to KILL: the run's own grace, else (for a deploy's stop request,
        `store` given) the grace the request carries, else --grace's default."""
        if run.grace is not None:
            return run.grace
        if store is not None:
            try:
                carried = store.get_run(run.id).stop_grace
            except Exception:  # noqa: BLE001 - the store just answered; fall back if not now
                carried = None
            if carried is not None:
                return carried
        return self.opts.grace

    def _supervise(
        self, store: Store, run: Run, pid: int, wake_r: int, base_checkpoint_at: float | None
    ) -> int:
        grace = self._grace(run)
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        interval = max(self.opts.heartbeat, 0.01)
        next_beat = time.monotonic() + interval
        kill_at: float | None = None
        stop_requested = False
        killed = False
        status: int | None = None
        check_now = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            now = time.monotonic()
            if check_now or now >= next_beat:
                check_now = False
                next_beat = now + interval
                if self._heartbeat(store, run.id) and not stop_requested:
                    stop_requested = True
                    grace = self._grace(run, store)
                    self.say(f"job {run.job}: stop requested, sent SIGTERM"
                             f" (SIGKILL in {grace:g}s)")
                    _killpg(pid, signal.SIGTERM)
                    kill_at = now + grace
            if kill_at is not None and now >= kill_at and not killed:
                killed = True
                self.say(f"job {run.job}: still running {grace:g}s after SIGTERM,"
                         " sent SIGKILL")
                _killpg(pid, signal.SIGKILL)
            deadline = next_beat if kill_at is None or killed else min(next_beat, kill_at)
            poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            for signum in _drain(wake_r):
                if signum == signal.SIGUSR1:
                    check_now = True
                elif signum in _FORWARDED:
                    _killpg(pid, signum)
                    if signum in _STOPPING and kill_at is None:
                        kill_at = time.monotonic() + grace
        signal.set_wakeup_fd(-1)
        code = _exit_code(status)
        if stop_requested or killed:
            _killpg(pid, signal.SIGKILL)  # stragglers left in the job's group
        state, message = FINISHED if code == 0 else FAILED, None
        if stop_requested:
            state, message = self._stopped_state(store, run.id, base_checkpoint_at)
            if killed:
                message = f"killed after {grace:g}s grace; {message}"
        self._finish(store, run.id, state, code, message)
        return code

    def _stopped_state(
        self, store: Store, run_id: str, base_checkpoint_at: float | None
    ) -> tuple[str, str]:
        try:
            now = store.get_run(run_id)
        except Exception:  # noqa: BLE001 - unknown means "no checkpoint we can vouch for"
            return INTERRUPTED, "stopped on request; checkpoint unknown (store unreachable)"
        if now.checkpoint_at is not None and now.checkpoint_at != base_checkpoint_at:
            return CHECKPOINTED, "stopped on request after saving a checkpoint"
        return INTERRUPTED, "stopped on request without a checkpoint"

    def _finish(
        self, store: Store, run_id: str, state: str, code: int | None, message: str | None
    ) -> None:
        # An outage (a PostgreSQL restart) is ridden out: a run whose end is never recorded
        # looks alive on PostgreSQL until its heartbeat is stale (30 s), and the next drain
        # waits that long for it. finish() keeps the first final state, so a retry is safe.
        deadline = time.monotonic() + FINISH_RIDE_OUT
        warned = False
        while True:
            try:
                store.finish(run_id, state, exit_code=code, message=message)
                return
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    self.say(f"warning: could not record the end of run {run_id}: {exc}")
                    return
                if not warned:
                    warned = True
                    self.say(f"warning: {exc}; trying again to record the end of run {run_id} "
                             f"for up to {FINISH_RIDE_OUT:g}s")
                time.sleep(1.0)
            except Exception as exc:  # noqa: BLE001 - the deploy will find the run dead and mark it
                self.say(f"warning: could not record the end of run {run_id}: {exc}")
                return


def _noop(signum: int, frame: object) -> None:
    """Signal handler that does nothing: the wakeup fd carries the signal to the main loop."""


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 512)
        except BlockingIOError:
            return data
        except InterruptedError:
            continue
        if not chunk:
            return data
        data += chunk


def run_job(opts: RunOptions, *, stderr: TextIO | None = None) -> int:
    """Run one job under supervision; returns the exit code (the job's, 128+N when killed)."""
    return Supervisor(opts, stderr=stderr).run()
