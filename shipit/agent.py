"""`shipit agent OP`: the host agent the deploy runs over SSH for per-host stores.

Protocol (docs/ARCHITECTURE.md "The host agent"): one JSON object on stdin (options and secrets,
such as a DSN, which never go on a command line), JSON lines on stdout: `{"event": kind, ...}`
as things happen, then `{"result": ...}` and exit 0; on a user-facing error
`{"error": msg, "exit_code": n}` and that exit code.

Lean on purpose (run once per host per phase): no click, rich, fabric or paramiko here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable

from shipit.errors import CorruptState, RequesterGone, ShipitError, UsageError
from shipit.gate.base import (
    ACTIVE_STATES,
    ALL_STATES,
    GIVEN_UP,
    RESTARTABLE_STATES,
    WAITING,
    Run,
    Sealed,
    Store,
)

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Any

OPS = ("drain", "renew", "restart", "reconcile", "close", "open", "status", "list", "show", "forget",
       "audit")


class Out:
    """JSON lines on stdout, one writer at a time, flushed per line so the deploy sees progress."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.gone = False

    def line(self, obj: dict[str, Any]) -> None:
        text = json.dumps(obj, default=str, separators=(",", ":")) + "\n"
        with self.lock:
            if self.gone:
                raise RequesterGone()
            try:
                self.stream.write(text)
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.gone = True
                raise RequesterGone() from None

    def event(self, kind: str, *, host: str | None = None, message: str = "", **data: Any) -> None:
        obj: dict[str, Any] = {"event": kind, **data}
        if host is not None:
            obj["host"] = host
        if message:
            obj["message"] = message
        self.line(obj)


def read_options(stream: IO[str]) -> dict[str, Any]:
    """The first line is the JSON object; tolerate a pretty-printed object sent without a newline
    by reading on until it parses (or EOF)."""
    text = stream.readline()
    while True:
        if not text.strip():
            return {}
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            more = stream.readline()
            if not more:
                raise UsageError("agent: stdin is not one JSON object") from None
            text += more
            continue
        if not isinstance(obj, dict):
            raise UsageError("agent: stdin must be a JSON object")
        return obj


def _store(opts: dict[str, Any]) -> Store | None:
    """The store, or None for a read-only op on a host where no store exists yet (a dry run or
    `shipit status` must not create one)."""
    from shipit.gate.url import open_store

    url = opts.get("store") or os.environ.get("SHIPIT_STORE") or ""
    if not url:
        raise UsageError("agent: no store given (option 'store' or SHIPIT_STORE)")
    local_path = url.split(":", 1)[1] if url.startswith(("file:", "sqlite:")) else None
    if opts.get("readonly") and local_path is not None and not os.path.exists(local_path):
        return None
    dsn = opts.get("dsn")
    if dsn and url in ("postgres", "postgresql"):
        url = dsn
    try:
        return open_store(url)
    except ShipitError:
        raise
    except (OSError, ValueError) as exc:
        from shipit.errors import StoreUnavailable

        raise StoreUnavailable(f"cannot open the job store: {exc}") from None


def _log_dir(opts: dict[str, Any]) -> str:
    if opts.get("log_dir"):
        return str(opts["log_dir"])
    url = str(opts.get("store") or "")
    if url.startswith("file:"):
        return os.path.join(url[len("file:"):], "logs")
    if url.startswith("sqlite:"):
        return os.path.join(os.path.dirname(url[len("sqlite:"):]), "logs")
    deploy_to = opts.get("deploy_to") or "/tmp"
    return os.path.join(str(deploy_to), "shared", "shipit", "logs")


def _spawner(opts: dict[str, Any]) -> Callable[[Run], dict[str, Any]]:
    from shipit.jobs.restart import local_spawner

    command = opts.get("shipit_command") or [sys.executable, "-m", "shipit"]
    env: dict[str, str] = {}
    if opts.get("dsn"):
        # The spawned supervisor finds the DSN the way every shipit process does: in the env var
        # SHIPIT_DSN_ENV names. Never on its command line.
        var = str(opts.get("dsn_env") or "SHIPIT_DSN")
        env = {var: str(opts["dsn"]), "SHIPIT_DSN_ENV": var}
    grace = opts.get("grace")  # jobs.grace: the restarted supervisors' default grace
    return local_spawner(command, str(opts.get("store")), log_dir=_log_dir(opts), env=env,
                         grace=None if grace is None else float(grace))


def _runs_from(store: Store, opts: dict[str, Any], out: Out) -> list[Run]:
    """The runs to restart: by id from this store (`run_ids`), or given whole (`runs`)."""
    from shipit.gate.base import Run as RunType

    fields = set(RunType.__dataclass_fields__)
    runs = []
    for run_id in opts.get("run_ids") or []:
        try:
            runs.append(store.get_run(str(run_id)))
        except KeyError:
            out.event("log", message=f"run {run_id} is not in this store", level="warning")
    from shipit.crypto import is_encrypted

    for d in opts.get("runs") or []:
        kw = {k: v for k, v in d.items() if k in fields}
        kw["command"] = tuple(kw.get("command") or ())
        # Encrypted values travel as their stored token (Run.to_dict) and stay sealed here.
        kw["env"] = Sealed(kw["env"]) if is_encrypted(kw.get("env")) else dict(kw.get("env") or {})
        if is_encrypted(kw.get("checkpoint")):
            kw["checkpoint"] = Sealed(kw["checkpoint"])
        runs.append(RunType(**kw))
    return runs


def public_run(run: Run, *, checkpoint: bool = False) -> dict[str, Any]:
    """A run as shown to users: env values masked (they may be secrets), checkpoint on request
    (pass the run `opened()` then). An env still encrypted shows as '<encrypted>': its names
    are hidden too, and listing never needs the key."""
    d = run.to_dict()
    d["env"] = "<encrypted>" if isinstance(run.env, Sealed) else sorted(run.env)
    if not checkpoint:
        d["checkpoint"] = None if run.checkpoint is None else "<saved>"
    return d


def _current(opts: dict[str, Any]) -> str | None:
    deploy_to = opts.get("deploy_to")
    if not deploy_to:
        return None
    try:
        return os.path.basename(os.readlink(os.path.join(str(deploy_to), "current")))
    except OSError:
        return None


# -- ops ------------------------------------------------------------------------------------------


def op_drain(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    from shipit.jobs.drain import drain

    host = opts.get("host")
    if opts.get("reconcile", True):
        _reconcile_first(store, opts, out)
    ttl = float(opts.get("ttl", 60.0))
    with _sigterm_as_requester_gone():
        try:
            result = drain(
                store,
                holder=str(opts.get("holder") or "shipit"),
                deploy_id=str(opts.get("deploy_id") or ""),
                reason=str(opts.get("reason") or "deploy"),
                ttl=ttl,
                timeout=float(opts.get("timeout", 300.0)),
                policy=str(opts.get("policy") or "terminate"),
                grace=float(opts.get("grace", 10.0)),
                host=None,
                emit=_host_emit(out, host),
                renew_every=opts.get("renew_every"),
                max_wait=float(opts.get("max_wait", 3600.0)),
                lock_wait=float(opts.get("lock_wait", 0.0)),
                force=bool(opts.get("force", False)),
                keepalive=lambda: out.line({"event": "tick"}),
            )
        except RequesterGone:
            # A cancelled deploy (its SSH channel closed, or SIGTERM to a local agent): drain()
            # has handed the gate back; restart what it stopped, since no deploy will.
            _reconcile(store, opts, lambda *_a, **_k: None)
            raise
    return result.to_dict()


@contextlib.contextmanager
def _sigterm_as_requester_gone() -> Iterator[None]:
    """A local host's agent gets SIGTERM when its deploy is interrupted: treat it as the deploy
    being gone (hand the gate back), not as a reason to die holding it."""
    import signal

    def gone(_signum: int, _frame: object) -> None:
        # Once: a second TERM must not cut the hand-back short. A no-op handler, not SIG_IGN,
        # which the restarted supervisors spawned meanwhile would inherit.
        signal.signal(signal.SIGTERM, lambda *_: None)
        raise RequesterGone()

    previous = signal.signal(signal.SIGTERM, gone)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _host_emit(out: Out, host: str | None) -> Callable[..., None]:
    """Events name the host the deploy knows this machine as (not the run's recorded name)."""

    def emit(kind: str, **data: Any) -> None:
        data.pop("host", None)
        out.event(kind, host=host, **data)

    return emit


def _reconcile_first(store: Store, opts: dict[str, Any], out: Out) -> None:
    """Leftovers of a killed deploy are restarted before we close: if the gate is still held,
    close_gate reports that properly."""
    _reconcile(store, opts, _host_emit(out, opts.get("host")))


def _reconcile(store: Store, opts: dict[str, Any], emit: Callable[..., None]) -> None:
    from shipit.errors import GateHeld
    from shipit.jobs.reconcile import reconcile

    with contextlib.suppress(GateHeld):
        reconcile(
            store, actor=str(opts.get("holder") or "shipit"), spawn=_spawner(opts),
            definitions=opts.get("definitions"), max_restarts=int(opts.get("max_restarts", 5)),
            emit=emit, **_grace(opts),
        )


def op_renew(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    # Only for a deploy still there: an agent that starts late on a loaded host must not extend
    # the lease of a deploy that died meanwhile (a tick fails once sshd closed the session).
    out.line({"event": "tick"})
    lease = store.renew(int(opts["epoch"]), float(opts.get("ttl", 60.0)))
    return {"lease": lease.to_dict()}


def op_restart(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    from shipit.jobs.restart import restart

    started = time.monotonic()
    epoch = opts.get("epoch")
    if epoch is None:
        raise UsageError("agent restart: option 'epoch' is required")
    outcomes = restart(
        store, epoch=int(epoch), actor=str(opts.get("actor") or "shipit"),
        recorded=_runs_from(store, opts, out), spawn=_spawner(opts), definitions=opts.get("definitions"),
        max_restarts=int(opts.get("max_restarts", 5)), emit=_host_emit(out, opts.get("host")),
        reopen_gate=bool(opts.get("reopen", True)), **_grace(opts),
    )
    if isinstance(opts.get("history"), dict):
        _write_record(opts, out, started)
    return {"lease": store.gate().to_dict(), "outcomes": outcomes}


def _write_record(opts: dict[str, Any], out: Out, started: float) -> None:
    """The deploy's final record (restart_jobs is its last phase), once the restarts are done.
    A record that cannot be written is a warning: the deploy itself went well."""
    from shipit.history import append_final

    try:
        append_final(opts["history"], str(opts.get("deploy_to") or "."), started)
    except (OSError, TypeError, ValueError) as exc:
        out.event("log", message=f"could not write the deploy record: {exc}", level="warning")


def op_reconcile(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    from shipit.jobs.reconcile import reconcile

    return reconcile(
        store, actor=str(opts.get("actor") or "shipit"), spawn=_spawner(opts),
        definitions=opts.get("definitions"), max_restarts=int(opts.get("max_restarts", 5)),
        emit=_host_emit(out, opts.get("host")), **_grace(opts),
    )


def _grace(opts: dict[str, Any]) -> dict[str, float]:
    """`spawn_grace` when the caller set one (tests); the default lives in jobs.restart."""
    return {} if opts.get("spawn_grace") is None else {"spawn_grace": float(opts["spawn_grace"])}


def op_close(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    from shipit.jobs.drain import close_gate

    lease = close_gate(
        store, holder=str(opts.get("holder") or "shipit"),
        deploy_id=str(opts.get("deploy_id") or ""), reason=str(opts.get("reason") or ""),
        ttl=float(opts.get("ttl", 60.0)), lock_wait=float(opts.get("lock_wait", 0.0)),
        force=bool(opts.get("force", False)),
    )
    return {"lease": lease.to_dict()}


def op_open(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    epoch = opts.get("epoch")
    lease = store.open_gate(
        None if epoch is None else int(epoch), actor=str(opts.get("actor") or "shipit"),
        force=bool(opts.get("force", False)),
    )
    return {"lease": lease.to_dict()}


def op_status(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    """The gate and the runs that matter now: waiting at the gate, running, and stopped ones
    that still await their restart (a stopped run a newer run continues is history: `jobs
    list` shows it). Never needs the state key."""
    from shipit.jobs.drain import run_info
    from shipit.jobs.reconcile import stopped_by_deploy

    now = time.time()
    lease = store.gate()
    limit = int(opts.get("limit", 200))
    active = store.list_runs(states=ACTIVE_STATES)  # all of them, however old
    stopped = [r for r in store.list_runs(states=RESTARTABLE_STATES, limit=limit)
               if stopped_by_deploy(r)]
    continued = store.continuations(r.id for r in stopped) if stopped else {}
    pending = [r for r in stopped if r.id not in continued]
    shown = []
    for r in [*store.list_waiting(), *active, *pending][:limit]:
        info = run_info(r, now)
        info["host"] = r.host
        if r.state in ACTIVE_STATES:
            info["alive"] = store.is_alive(r)
        shown.append(info)
    return {
        "gate": {**lease.to_dict(), "closed": lease.is_closed(now)},
        "runs": shown,
        "current": _current(opts),
        "now": now,
    }


def op_list(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    """Runs newest first; `waiting`: the jobs waiting at the gate now (entries, not runs), which
    a list of every state includes too."""
    state = opts.get("state")
    if state and state not in ALL_STATES:
        raise UsageError(f"unknown run state {state!r} (use one of {', '.join(ALL_STATES)})")
    limit = int(opts.get("limit", 100))
    waiting = store.list_waiting() if state in (None, "", WAITING) else []
    runs = [] if state == WAITING else store.list_runs(states=[state] if state else None,
                                                       limit=limit)
    both = sorted([*waiting, *runs], key=lambda r: r.created_at, reverse=True)[:limit]
    return {"runs": [public_run(r) for r in both]}


def op_show(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    """One run; its saved state only with `state` (that is when it is decrypted)."""
    run_id = str(opts.get("run") or "")
    with_state = bool(opts.get("state"))
    try:
        run = store.get_run(run_id)
    except KeyError:
        run = next((w for w in store.list_waiting() if w.id == run_id), None)
        if run is None:
            raise UsageError(f"no run {run_id!r} in this store") from None
    return {"run": public_run(run.opened() if with_state else run, checkpoint=with_state)}


def op_forget(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    """Give up a stopped run by hand: it is marked given_up (with who and why, audited), so no
    deploy or reconcile restarts it. Its saved state is left in place, never read: the way out
    when that state cannot be decrypted any more (a lost key). {"run": None} when unknown."""
    run_id = str(opts.get("run") or "")
    actor = str(opts.get("actor") or "shipit")
    reason = str(opts.get("reason") or "").strip() or "no reason given"
    try:
        run = store.get_run(run_id)
    except KeyError:
        return {"run": None}
    if run.state == GIVEN_UP:
        return {"run": public_run(run), "changed": False}
    if run.state not in RESTARTABLE_STATES:
        raise UsageError(
            f"run {run.id} ({run.job}) is {run.state}: only a stopped run (checkpointed or "
            "interrupted) can be forgotten"
        )
    by = store.continuations([run.id]).get(run.id)
    if by is not None:
        raise UsageError(f"run {run.id} ({run.job}) is already continued by run {by}: "
                         "nothing to forget")
    done = store.finish(run.id, GIVEN_UP, message=f"forgotten by {actor}: {reason}")
    store.audit("forget", actor, store.gate().epoch, f"run {run.id} ({run.job}): {reason}")
    return {"run": public_run(done), "changed": done.state == GIVEN_UP}


def op_audit(store: Store, opts: dict[str, Any], out: Out) -> dict[str, Any]:
    """The audit trail, newest first (`limit` entries): who closed, reopened or forced the gate,
    restarts, respawns, forgets. Read-only (callers pass `readonly`); never needs the state key."""
    limit = max(1, int(opts.get("limit", 20)))
    return {"entries": [
        {"ts": a.ts, "action": a.action, "actor": a.actor, "epoch": a.epoch,
         "reason": a.reason, "forced": bool(a.forced)}
        for a in store.audit_log(limit=limit)
    ]}


_OPS: dict[str, Callable[[Store, dict[str, Any], Out], dict[str, Any]]] = {
    "drain": op_drain, "renew": op_renew, "restart": op_restart, "reconcile": op_reconcile,
    "close": op_close, "open": op_open, "status": op_status, "list": op_list, "show": op_show,
    "forget": op_forget, "audit": op_audit,
}


# What read-only ops answer for a host that has no store yet.
_EMPTY: dict[str, dict[str, Any]] = {
    "status": {"gate": {"state": "open", "epoch": 0, "closed": False}, "runs": []},
    "list": {"runs": []},
    "forget": {"run": None},
    "audit": {"entries": []},
}


def parse_args(args: list[str], stdin: IO[str]) -> tuple[str, dict[str, Any]]:
    """`OP [--opts JSON] [--stdin]`: options as an argument (never secrets) and/or on stdin.
    Without --opts everything comes on stdin; --stdin adds stdin to --opts (secrets go there)."""
    if not args or args[0] not in _OPS:
        raise UsageError(f"usage: shipit agent {{{','.join(OPS)}}} [--opts JSON] [--stdin]")
    op, rest = args[0], args[1:]
    opts: dict[str, Any] = {}
    read_stdin = True
    while rest:
        flag = rest.pop(0)
        if flag == "--opts" and rest:
            try:
                loaded = json.loads(rest.pop(0))
            except json.JSONDecodeError:
                raise UsageError("agent: --opts is not JSON") from None
            if not isinstance(loaded, dict):
                raise UsageError("agent: --opts must be a JSON object")
            opts.update(loaded)
            read_stdin = "--stdin" in rest
        elif flag == "--stdin":
            read_stdin = True
        else:
            raise UsageError(f"agent: unexpected argument {flag!r}")
    if read_stdin:
        opts.update(read_options(stdin))
    return op, opts


def main(argv: list[str] | None = None, *, stdin: IO[str] | None = None,
         stdout: IO[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = Out(stdout or sys.stdout)
    try:
        op, opts = parse_args(args, stdin or sys.stdin)
        store = _store(opts)
        if store is None:
            result = _EMPTY.get(op) or {}
            result = {**result, "current": _current(opts)} if op == "status" else result
        else:
            try:
                result = _OPS[op](store, opts, out)
            finally:
                store.close()
        out.line({"result": result})
        return 0
    except RequesterGone:
        # The deploy vanished: we stopped renewing by leaving; the lease expires within its TTL.
        _silence_stdout()
        return 1
    except ShipitError as exc:
        return _fail(out, str(exc), exc.exit_code, exc)
    except KeyboardInterrupt:
        return _fail(out, "interrupted", 130, None)


def _fail(out: Out, message: str, code: int, exc: BaseException | None) -> int:
    obj: dict[str, Any] = {"error": message, "exit_code": code}
    if isinstance(exc, CorruptState):
        # Same exit code as an unreachable store, but the caller may repair this one.
        obj["corrupt"] = True
    lease = getattr(exc, "lease", None)
    if lease is not None and hasattr(lease, "to_dict"):
        obj["lease"] = lease.to_dict()
    recorded = getattr(exc, "recorded", None)
    if recorded:
        obj["recorded"] = [r.to_dict() for r in recorded]
    try:
        out.line(obj)
    except RequesterGone:
        _silence_stdout()
    return code


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; with the reader gone that would print a traceback.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
