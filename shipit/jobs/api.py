"""The Python API for jobs: checkpoints, progress and stop requests.

    from shipit.jobs.api import job

    with job("reindex", key="reindex") as run:
        state = run.resume_state or {"next": 0}
        for i in range(state["next"], n):
            if run.should_stop():
                run.checkpoint({"next": i}); break
            work(i); run.progress(i + 1, n); run.checkpoint({"next": i + 1})

Two modes, chosen by the environment:
- attached: inside `shipit job run` (SHIPIT_RUN_ID is set). The supervisor owns the run: it
  claimed it, heartbeats, turns a stop request into SIGTERM and records the outcome. The API
  saves checkpoints/progress and reports SIGTERM through should_stop().
- standalone: no supervisor. job() claims a run itself (waiting at a closed gate like
  `shipit job run`), heartbeats in a daemon thread, answers stop requests through should_stop()
  and records the outcome when the block ends.

checkpoint() writes to the store on every call by default (SQLite: tens of microseconds, see
bench/job_run_bench.py); `every=N` coalesces to one write per N calls. Whatever the setting, a
checkpoint made once a stop was requested is written at once, and a pending one is written when
the block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from shipit.errors import UsageError
from shipit.gate.base import (
    CHECKPOINTED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    ClaimSpec,
    Lease,
    Store,
)

_PROGRESS_EVERY = 0.5  # seconds between progress writes; the last value is always written
_POLL_EVERY = 1.0  # without a SIGTERM handler, how often should_stop() asks the store

_current: JobRun | None = None
_current_lock = threading.Lock()


class JobRun:
    """One run of a job, as the job's code sees it."""

    def __init__(
        self,
        *,
        run_id: str,
        job: str,
        attempt: int,
        store_url: str,
        resume_state: Any = None,
        attached: bool,
        store: Store | None = None,
    ) -> None:
        self.id = run_id
        self.job = job
        self.attempt = attempt
        self.resume_state = resume_state
        self.attached = attached
        self.store_url = store_url
        self._store = store
        self._store_lock = threading.Lock()
        # A plain flag plus a self-pipe, not a threading.Event: the SIGTERM handler runs in the
        # main thread, possibly while that thread is inside Event.wait() holding the Event's
        # lock, and would deadlock setting it. A pipe write is safe anywhere and wakes sleep().
        self._stopped = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._signalled = False
        self._can_signal = False
        self._last_poll = 0.0
        self._pending: tuple[Any] | None = None  # a checkpoint not yet written (every=N)
        self._calls = 0
        self.checkpointed = False  # a checkpoint was written during this run
        self._progress: tuple[float, float | None] | None = None
        self._progress_at = 0.0
        self._progress_written = True

    # -- store access -------------------------------------------------------------------------
    def _with_store(self) -> Store:
        if self._store is None:
            from shipit.jobs.supervisor import open_store_or_fail

            self._store = open_store_or_fail(self.store_url)
        return self._store

    # -- stop requests ------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """True once the job was asked to stop (SIGTERM, or a stop request in the store)."""
        if self._stopped:
            return True
        if not self._can_signal and time.monotonic() - self._last_poll >= _POLL_EVERY:
            # No SIGTERM handler (job() entered outside the main thread): ask the store.
            self._last_poll = time.monotonic()
            with self._store_lock:
                if self._with_store().heartbeat(self.id):
                    self._on_stop_request()
        return self._stopped

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking as soon as a stop is requested; returns should_stop()."""
        deadline = time.monotonic() + max(0.0, seconds)
        # Woken through the pipe by the SIGTERM handler or the heartbeat thread. Slices of at most
        # _POLL_EVERY: a signal the kernel delivers to another thread (one of the job's own) only
        # runs our Python handler once the main thread wakes up; and without a handler
        # (attached, not the main thread) should_stop() asks the store between slices.
        while not self.should_stop() and (left := deadline - time.monotonic()) > 0:
            select.select([self._wake_r], [], [], min(left, _POLL_EVERY))
        return self.should_stop()

    def _on_stop_request(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):  # full pipe: a wake-up is already pending
            os.write(self._wake_w, b"!")

    # -- checkpoints and progress -------------------------------------------------------------
    def checkpoint(self, state: Any, *, every: int = 1) -> None:
        """Save `state` (JSON-serialisable) for the next run of this job.

        With every=N only every Nth call is written; a call made after a stop was requested is
        always written at once, and the last pending state is written when the run ends.
        """
        try:
            json.dumps(state, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"checkpoint state must be JSON-serialisable (dict/list/str/number/bool/None): {exc}"
            ) from None
        if every < 1:
            raise ValueError("checkpoint(every=N) needs N >= 1")
        self._calls += 1
        if self._calls % every == 0 or self._stopped:
            self._write_checkpoint(state)
        else:
            self._pending = (state,)

    def _write_checkpoint(self, state: Any) -> None:
        with self._store_lock:
            self._with_store().save_checkpoint(self.id, state)
        self._pending = None
        self.checkpointed = True

    def flush(self) -> None:
        """Write the pending checkpoint and progress now."""
        if self._pending is not None:
            self._write_checkpoint(self._pending[0])
        if not self._progress_written:
            self._write_progress()

    def progress(self, done: float, total: float | None = None) -> None:
        """Report how far the job got (shown by `shipit jobs status` and while a deploy drains).
        Writes at most every 0.5 s; the final value is written when the run ends."""
        self._progress = (float(done), None if total is None else float(total))
        self._progress_written = False
        if time.monotonic() - self._progress_at >= _PROGRESS_EVERY:
            self._write_progress()

    def _write_progress(self) -> None:
        if self._progress is None:
            return
        # Stores keep an unknown total as NULL, which the type of heartbeat() does not spell out.
        progress = cast("tuple[float, float]", self._progress)
        with self._store_lock:
            if self._with_store().heartbeat(self.id, progress=progress):
                self._on_stop_request()
        self._progress_at = time.monotonic()
        self._progress_written = True

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def current_run() -> JobRun | None:
    """The run this process belongs to: the innermost job() block, or the surrounding
    `shipit job run` (SHIPIT_RUN_ID) when no block is open; None outside any run."""
    global _current
    with _current_lock:
        if _current is None and os.environ.get("SHIPIT_RUN_ID"):
            _current = _attached_run(os.environ.get("SHIPIT_JOB", ""))
        return _current


def _attached_run(name: str) -> JobRun:
    env = os.environ
    url = env.get("SHIPIT_STORE", "")
    if not url:
        raise UsageError("SHIPIT_RUN_ID is set but SHIPIT_STORE is not: cannot reach the job store")
    raw = env.get("SHIPIT_RESUME_STATE")
    try:
        resume = json.loads(raw) if raw else None
    except ValueError:
        raise UsageError("SHIPIT_RESUME_STATE is not valid JSON") from None
    return JobRun(
        run_id=env["SHIPIT_RUN_ID"],
        job=env.get("SHIPIT_JOB") or name,
        attempt=int(env.get("SHIPIT_ATTEMPT") or 1),
        store_url=url,
        resume_state=resume,
        attached=True,
    )


def _install_handlers(run: JobRun) -> dict[int, Any]:
    """SIGTERM -> should_stop() becomes True (instead of dying); SIGUSR1 (standalone only) ->
    check the store now. Only possible from the main thread; returns what to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved: dict[int, Any] = {}
    prev_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        run._signalled = True
        run._on_stop_request()
        if callable(prev_term):
            prev_term(signum, frame)

    saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)
    run._can_signal = True
    return saved


def _restore_handlers(saved: dict[int, Any]) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class _Heartbeat(threading.Thread):
    """Standalone mode: keeps the run alive in the store and notices stop requests."""

    def __init__(self, run: JobRun, interval: float) -> None:
        super().__init__(name=f"shipit-heartbeat-{run.id}", daemon=True)
        self.run_ = run
        self.interval = interval
        self.wake = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        # Leave SIGTERM/SIGUSR1 to the main thread: delivered here, they would not interrupt the
        # main thread's sleep(), and the job would notice its stop request late.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT})
        while not self.done.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            if self.done.is_set():
                return
            try:
                with self.run_._store_lock:
                    stop = self.run_._with_store().heartbeat(self.run_.id)
            except Exception:  # noqa: BLE001 - a store hiccup must not end the job; retry later
                continue
            if stop:
                self.run_._on_stop_request()

    def stop(self) -> None:
        self.done.set()
        self.wake.set()
        self.join(timeout=5)


@contextmanager
def job(
    name: str,
    key: str | None = None,
    *,
    store: str | None = None,
    max_wait: float = 3600.0,
    heartbeat: float = 1.0,
    host: str | None = None,
    env: list[str] | None = None,
) -> Iterator[JobRun]:
    """Run the block as (part of) a shipit job; see the module docstring."""
    global _current
    with _current_lock:
        if _current is not None and not _current.attached:
            raise UsageError(f"job({name!r}) inside job({_current.job!r}): one run per process")
    if os.environ.get("SHIPIT_RUN_ID"):
        run = _attached_run(name)
        yield from _attached(run)
        return
    yield from _standalone(name, key, store, max_wait, heartbeat, host, env or [])


def _set_current(run: JobRun | None) -> None:
    global _current
    with _current_lock:
        _current = run


def _attached(run: JobRun) -> Iterator[JobRun]:
    saved = _install_handlers(run)
    _set_current(run)
    try:
        yield run
    finally:
        try:
            run.flush()
        finally:
            _restore_handlers(saved)
            _set_current(None)
            run.close()


def _standalone(
    name: str,
    key: str | None,
    store_url: str | None,
    max_wait: float,
    interval: float,
    host: str | None,
    env_names: list[str],
) -> Iterator[JobRun]:
    from shipit.jobs.gatewait import claim_when_open, describe_lease
    from shipit.jobs.supervisor import allowed_env, logical_cwd, open_store_or_fail

    url = store_url or os.environ.get("SHIPIT_STORE", "")
    if not url:
        raise UsageError(f"job({name!r}): no job store (pass store=... or set SHIPIT_STORE)")
    store = open_store_or_fail(url)
    spec = ClaimSpec(
        job=name,
        host=host or os.environ.get("SHIPIT_HOST") or os.uname().nodename,
        # What a deploy runs (via `shipit job run --continues`) to start this job again.
        command=(sys.executable, *sys.orig_argv[1:]),
        cwd=logical_cwd(),
        env=allowed_env(env_names, os.environ),
        key=key,
        # The deploy SIGUSR1s run.pid to have a stop request seen at once. Only the main thread
        # can install the handler that makes that harmless; elsewhere record no pid, and the
        # stop request is seen at the next heartbeat instead of killing the process.
        pid=os.getpid() if threading.current_thread() is threading.main_thread() else None,
    )

    def announce(lease: Lease) -> None:
        sys.stderr.write(f"shipit: job {name} waiting: {describe_lease(lease)}\n")
        sys.stderr.flush()

    try:
        claimed = claim_when_open(store, spec, max_wait=max_wait, on_closed=announce)
    except BaseException:
        store.close()
        raise
    run = JobRun(
        run_id=claimed.id, job=name, attempt=claimed.attempt, store_url=url, attached=False,
        store=store,
    )
    saved = _install_handlers(run)
    beat = _Heartbeat(run, max(interval, 0.01))
    if run._can_signal:
        prev_usr1 = signal.getsignal(signal.SIGUSR1)

        def on_usr1(signum: int, frame: Any) -> None:
            beat.wake.set()  # check the store now
            if callable(prev_usr1):
                prev_usr1(signum, frame)

        saved[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_usr1)
    beat.start()
    _set_current(run)
    state, code, message = FINISHED, 0, None
    try:
        yield run
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        state = FINISHED if code == 0 else FAILED
        raise
    except BaseException as exc:
        state, code, message = FAILED, 1, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        # Handlers first: the SIGUSR1 one touches beat.wake, which beat.stop() is about to set.
        _restore_handlers(saved)
        beat.stop()
        _set_current(None)
        try:
            run.flush()
        except Exception as exc:  # noqa: BLE001 - the outcome must still be recorded
            message = f"last checkpoint not saved: {exc}"
        if run._stopped and state != FAILED:
            state = CHECKPOINTED if run.checkpointed else INTERRUPTED
            message = message or ("stopped after saving a checkpoint" if run.checkpointed
                                  else "stopped without a checkpoint")
        try:
            store.finish(run.id, state, exit_code=code, message=message)
        finally:
            run.close()
