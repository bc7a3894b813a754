"""The callbacks a source calls with its events (a processor's events, IOMMU faults)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Event = TypeVar("Event")


class Subscribers(Generic[Event]):
    """Callbacks called with each event in the emitting thread, with no lock held (the
    list's own lock guards only the list). A callback's exception is logged on ``log``
    as ``"<what>: subscriber ... failed"``, never passed on to the emitter: a
    subscriber's bug must not break a boot, a recovery or a device access."""

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self._log = log
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Event], object]] = []

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Add ``callback``; returns a function that removes it (idempotent)."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def __len__(self) -> int:
        with self._lock:
            return len(self._callbacks)

    def emit(self, event: Event) -> None:
        """Call every callback subscribed now with ``event``."""
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - logged: the emitter's work goes on
                self._log.exception("%s: subscriber %r failed", self.what, callback)
