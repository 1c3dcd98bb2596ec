"""The Notifier: an EventBus listener that announces deploy and job events to targets.

Delivery must never slow down or fail a deploy, so the listener only formats and enqueues; one
daemon thread per target sends (a dead Slack does not hold up the webhook), with the target's
timeout and retries. Failures become `notify.failed` events, never exceptions. `close()` gives
the queues a bounded time to drain at the end of a deploy, then walks away.

Never call `close()` from inside another bus listener: workers report failures through the bus,
and the bus serialises listeners, so they would wait for close() until its deadline.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shipit.config.model import NotifyTarget
from shipit.events import Event, EventBus
from shipit.notify import message
from shipit.notify.redact import Masker, scrub
from shipit.notify.senders import Sender, SendError, make_sender
from shipit.notify.targets import label, wants

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class _Item:
    kind: str
    payload: dict[str, Any]
    title: str
    body: str


class _Worker:
    def __init__(
        self, notifier: Notifier, target: NotifyTarget, sender: Sender, index: int
    ) -> None:
        self.notifier = notifier
        self.target = target
        self.sender = sender
        self.label = label(target)
        self._url = target.webhook or target.apprise or ""
        self._keep_host = bool(target.webhook)
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._in_flight = 0
        self.dropped = 0
        self._thread = threading.Thread(
            target=self._run, name=f"shipit-notify-{index}", daemon=True
        )
        self._started = False

    # -- producer side (the emitting thread, under the bus lock: must not block) -------------
    def put(self, item: _Item, limit: int) -> None:
        with self._cond:
            if self._closing:
                return
            if len(self._items) >= limit:
                self.dropped += 1
                return
            self._items.append(item)
            if not self._started:
                self._started = True
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, timeout: float) -> bool:
        if self._started:
            self._thread.join(max(0.0, timeout))
            return not self._thread.is_alive()
        return True

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._items) + self._in_flight

    # -- consumer side -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                if self.notifier._abandon.is_set():
                    continue  # close() already counted it as not sent
                self._in_flight = 1
            try:
                self._deliver(item)
            except Exception as exc:  # keep the thread alive whatever a sender does
                self.notifier._report(self, item.kind, f"internal error: {type(exc).__name__}", 1)
            finally:
                with self._cond:
                    self._in_flight = 0

    def _deliver(self, item: _Item) -> None:
        attempts = self.target.retries + 1
        error = "not sent"
        for attempt in range(1, attempts + 1):
            timeout = self.notifier._time_left(self.target.timeout)
            if timeout <= 0:
                error = "abandoned at the close deadline"
                self.notifier._report(self, item.kind, error, attempt - 1)
                return
            try:
                self.sender.send(item.payload, item.title, item.body, timeout)
            except SendError as exc:
                error = str(exc)
                if not exc.retryable:
                    self.notifier._report(self, item.kind, error, attempt)
                    return
            else:
                self.notifier._delivered(self)
                return
            if attempt < attempts:
                delay = self.notifier._time_left(
                    min(_BACKOFF_FIRST * 2 ** (attempt - 1), _BACKOFF_MAX)
                )
                self.notifier._abandon.wait(delay)
        self.notifier._report(self, item.kind, error, attempts)

    def scrub(self, text: str) -> str:
        return scrub(text, self._url, self.notifier._masker, keep_host=self._keep_host)


class Notifier:
    """Subscribe it to the deploy's bus (`notifier.attach(bus)` or `bus.subscribe(notifier)`),
    and call `close(timeout)` when the deploy ends.

    targets: from `targets_for(config, stage)`. secrets: secret VALUES, masked everywhere in
    what is sent. source: facts every payload carries (stage, application, deploy_id, actor;
    dry_run=True silences the notifier). Invalid targets raise ConfigError here, before the
    deploy starts, rather than failing silently later; `origin` (see `origin_for`) says where
    the targets are written so those errors name the key.
    """

    def __init__(
        self,
        targets: Sequence[NotifyTarget],
        *,
        secrets: list[str],
        source: dict[str, Any],
        bus: EventBus | None = None,
        queue_size: int = 200,
        origin: str = "notify",
    ) -> None:
        self._masker = Masker(secrets)
        self._source = dict(source)
        self._bus = bus
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._closed = False
        self._deadline: float | None = None
        self._abandon = threading.Event()
        # After close() the deploy's renderers may be gone: late worker reports stay in memory.
        self._silenced = False
        self._muted = bool(self._source.get("dry_run"))
        self.failures: list[dict[str, Any]] = []
        self.delivered = 0
        self._workers = [
            _Worker(self, t, make_sender(t, f"{origin}[{i}] ({label(t)})"), i)
            for i, t in enumerate(targets)
        ]

    def attach(self, bus: EventBus) -> Notifier:
        self._bus = bus
        bus.subscribe(self)
        return self

    # -- listener ------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        # Our own reports come back through the bus; announcing them could loop forever.
        if event.kind.startswith("notify.") or self._closed or not self._workers:
            return
        try:
            self._enqueue(event)
        except Exception as exc:  # a listener that raises would break the deploy's emit()
            self._remember({"target": "*", "event": event.kind, "error": type(exc).__name__})

    def _enqueue(self, event: Event) -> None:
        if event.kind == "deploy.started":
            if event.data.get("dry_run"):
                self._muted = True
            for key in ("stage", "deploy_id", "mode"):
                if not self._source.get(key) and event.data.get(key):
                    self._source[key] = event.data[key]
        if self._muted:
            return
        chosen = [w for w in self._workers if wants(w.target, event)]
        if not chosen:
            return
        payload = self._masker.data(message.payload(event, self._source))
        item = _Item(event.kind, payload, self._title(payload), self._body(payload))
        for worker in chosen:
            worker.put(item, self._queue_size)

    def _title(self, payload: dict[str, Any]) -> str:
        where = " · ".join(str(p) for p in (payload.get("application"), payload.get("stage")) if p)
        return f"shipit · {where}" if where else "shipit"

    def _body(self, payload: dict[str, Any]) -> str:
        extra = [f"host {payload['host']}"] if payload.get("host") else []
        if payload.get("deploy_id"):
            extra.append(f"deploy {payload['deploy_id']}")
        return str(payload["text"]) + (f"\n{' · '.join(extra)}" if extra else "")

    # -- shutdown ------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> bool:
        """Deliver what is queued, waiting at most `timeout` seconds overall. Returns True when
        every queued notification was dealt with (sent, or given up after its retries)."""
        with self._lock:
            if self._closed:
                return not self._abandon.is_set()
            self._closed = True
            self._deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.stop()
        for worker in self._workers:
            worker.join(self._deadline - time.monotonic())
        self._abandon.set()
        done = True
        for worker in self._workers:
            left = worker.pending
            if left:
                done = False
                self._report(worker, "*", f"{left} notification(s) not sent within {timeout:g}s", 0)
            if worker.dropped:
                self._report(
                    worker, "*", f"{worker.dropped} notification(s) dropped: queue full", 0
                )
        self._silenced = True
        if done:
            self._abandon.clear()
        return done

    def _time_left(self, wanted: float) -> float:
        deadline = self._deadline
        if deadline is None:
            return wanted
        return min(wanted, deadline - time.monotonic())

    # -- reporting -----------------------------------------------------------------------------
    def _delivered(self, worker: _Worker) -> None:
        with self._lock:
            self.delivered += 1

    def _remember(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.failures.append(record)

    def _report(self, worker: _Worker, kind: str, error: str, attempts: int) -> None:
        error = worker.scrub(error)
        record = {"target": worker.label, "event": kind, "error": error, "attempts": attempts}
        self._remember(record)
        bus = self._bus
        if bus is None or self._silenced:
            return
        about = "" if kind == "*" else f" about {kind}"
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        # A broken renderer must not kill the delivery thread.
        with contextlib.suppress(Exception):
            bus.emit(
                "notify.failed",
                message=f"notification{about} to {worker.label} failed{tries}: {error}",
                level="warning",
                **record,
            )
