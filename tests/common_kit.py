"""Helpers shared by several test folders: waiting with a deadline, a call run in a
thread, collecting events.

Importable everywhere under tests/ (tests/conftest.py puts this folder on sys.path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from amplink.remoteproc.api import RprocEvent
from amplink.remoteproc.core import RemoteProc


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Outcome:
    """Runs ``fn`` in a thread; records its result or exception and when it ended."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.ended = time.monotonic()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


class Events:
    """Collects a processor's events; waits for a number of one kind (``timeout``: default)."""

    def __init__(self, rproc: RemoteProc, timeout: float = 10.0) -> None:
        self.items: list[RprocEvent] = []
        self.timeout = timeout
        self._cond = threading.Condition()
        rproc.subscribe(self._add)

    def _add(self, event: RprocEvent) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def kinds(self) -> list[str]:
        with self._cond:
            return [e.kind for e in self.items]

    def of(self, kind: str) -> list[RprocEvent]:
        with self._cond:
            return [e for e in self.items if e.kind == kind]

    def wait(self, kind: str, count: int = 1, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.of(kind)) >= count,
                                       self.timeout if timeout is None else timeout)
