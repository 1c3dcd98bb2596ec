"""Run one function on many hosts at once, capped, and report every host's outcome.

A failure on one host never cuts the others short: the phase gets to see what every host did
(so it can put the stage back consistently) before the first error is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

from shipit.errors import ShipitError
from shipit.hosts.base import Host

T = TypeVar("T")


class FanOutError(ShipitError, Generic[T]):
    """One or more hosts failed. `results` holds what the others returned."""

    def __init__(self, results: dict[str, T], errors: dict[str, BaseException]) -> None:
        first = next(iter(errors.values()))
        self.exit_code = getattr(first, "exit_code", 1)
        self.results = results
        self.errors = errors
        lines = [_one_line(name, exc) for name, exc in errors.items()]
        noun = "host" if len(errors) == 1 else "hosts"
        super().__init__(f"{len(errors)} {noun} failed: " + "; ".join(lines))

    @property
    def first(self) -> BaseException:
        return next(iter(self.errors.values()))


def _one_line(name: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # Host errors already say which host they are about.
    return text if text.startswith(f"[{name}]") else f"[{name}] {text}"


def run_parallel(hosts: Sequence[Host], fn: Callable[[Host], T], limit: int) -> dict[str, T]:
    """fn(host) for every host, at most `limit` at a time; results in host order.

    Raises FanOutError after ALL hosts have finished if any raised. On KeyboardInterrupt the
    hosts not yet started are cancelled and the ones running are left to finish their command
    in their threads (a thread cannot be killed), without waiting for them here.
    """
    if not hosts:
        return {}
    if len(hosts) == 1:
        # No thread for the common single-host case; same contract as the parallel path.
        host = hosts[0]
        try:
            return {host.name: fn(host)}
        except Exception as exc:
            raise FanOutError({}, {host.name: exc}) from exc
    pool = ThreadPoolExecutor(max_workers=max(1, min(limit, len(hosts))), thread_name_prefix="host")
    futures: list[tuple[Host, Future[T]]] = []
    try:
        futures = [(host, pool.submit(fn, host)) for host in hosts]
        wait([f for _, f in futures])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    results: dict[str, T] = {}
    errors: dict[str, BaseException] = {}
    for host, future in futures:
        exc = future.exception()
        if exc is None:
            results[host.name] = future.result()
        else:
            errors[host.name] = exc
    if errors:
        raise FanOutError(results, errors) from errors[next(iter(errors))]
    return results
