"""What buffer channels share: reading an endpoint's messages as records, one reader at a
time, and counting the peer's faults.

A channel has no thread of its own (the waiting thread does the work): whoever waits for
something (a received buffer, a returned one, free pool space) reads the endpoint's next
message and dispatches its records, while other waiters of the same channel sleep on a
condition until it is done; then each checks whether what it waits for is there. Nothing
user-supplied runs under the channel's lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..errors import ReceiveTimeout, SendTimeout
from ..link.endpoint import DEFAULT_SEND_TIMEOUT, Endpoint
from ..memory.errors import IommuFault, PeerBufferError
from ..rpmsg.wire import RPMSG_ADDR_ANY
from . import wire
from .wire import HandoverFault, Record

log = logging.getLogger(__name__)


class RecordPump:
    """Reads ``endpoint`` (whose queue it consumes: no callback) and hands each record
    to :meth:`_record`. Subclasses implement the record types they accept."""

    def __init__(self, endpoint: Endpoint, name: str) -> None:
        if endpoint.callback is not None:
            raise ValueError("a buffer channel reads its endpoint's queue: create the endpoint "
                             "without a callback")
        self.endpoint = endpoint
        self.name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pumping = False
        self._alock: asyncio.Lock | None = None
        self._dst = endpoint.dst
        self._faults: Counter[str] = Counter()

    # -- sending ---------------------------------------------------------------------------
    def _send(self, data: bytes, timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        dst = self.endpoint.dst if self.endpoint.dst != RPMSG_ADDR_ANY else self._dst
        if dst == RPMSG_ADDR_ANY:  # the peer has not spoken yet: wait for it (its hello)
            if self._wait(lambda: self._dst != RPMSG_ADDR_ANY, timeout) is None:
                raise SendTimeout(f"{self.name!r}: the peer did not speak within {timeout} s "
                                  f"(nothing can be sent before its address is known)")
            dst = self._dst
        self.endpoint.sendto(data, dst, timeout)

    async def _asend(self, data: bytes, timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        dst = self.endpoint.dst if self.endpoint.dst != RPMSG_ADDR_ANY else self._dst
        await self.endpoint.asendto(data, dst, timeout)

    # -- receiving -------------------------------------------------------------------------
    def _wait(self, ready: Callable[[], Any], timeout: float | None) -> Any:
        """Pump until ``ready()`` (called with the lock held) returns something true;
        returns it, or None after ``timeout`` s. Errors of the endpoint propagate."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while True:
                    got = ready()
                    if got:
                        return got
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return None
                    if not self._pumping:
                        self._pumping = True
                        break
                    self._cond.wait(left)
            try:
                item = self._read(left)
            finally:
                with self._cond:
                    self._pumping = False
                    self._cond.notify_all()
            if item is not None:
                self._dispatch(*item)

    def _pump_now(self) -> None:
        """Handle what has arrived, without waiting (nothing if another thread pumps)."""
        with self._cond:
            if self._pumping:
                return
            self._pumping = True
        items = []
        try:
            while (item := self.endpoint.try_recvfrom()) is not None:
                items.append(item)
        finally:
            with self._cond:
                self._pumping = False
                self._cond.notify_all()
        for item in items:
            self._dispatch(*item)

    def _read(self, timeout: float | None) -> tuple[bytes, int] | None:
        """The next message, or None if none came within ``timeout``."""
        ep = self.endpoint
        got = ep.try_recvfrom()
        if got is not None:
            return got
        try:
            return ep.recvfrom(timeout)
        except ReceiveTimeout:
            return None

    async def _await(self, ready: Callable[[], Any], timeout: float | None) -> Any:
        """:meth:`_wait` in asyncio (coroutines of one loop; not mixed with threads)."""
        if self._alock is None:
            self._alock = asyncio.Lock()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                got = ready()
            if got:
                return got
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            async with self._alock:
                with self._lock:
                    got = ready()
                if got:
                    return got
                try:
                    item = await self.endpoint.arecvfrom(left)
                except ReceiveTimeout:
                    continue
            self._dispatch(*item)

    def _dispatch(self, message: bytes, src: int) -> None:
        """Handle one message: refused whole (counted) if it does not decode."""
        if self._dst == RPMSG_ADDR_ANY:
            self._dst = src
        try:
            records = wire.unpack(message)
        except PeerBufferError as exc:
            self._count(exc)
            return
        for record, payload in records:
            try:
                self._record(record, payload)
            except (PeerBufferError, IommuFault) as exc:
                self._count(exc)

    def _record(self, record: Record, payload: memoryview | None) -> None:
        raise self._unexpected(record.type)

    def _unexpected(self, kind: int) -> PeerBufferError:
        return PeerBufferError(HandoverFault.UNEXPECTED,
                               f"record type {kind} on channel {self.name!r}")

    def _count(self, exc: PeerBufferError | IommuFault) -> None:
        """Count (and log) one fault of the peer, by reason."""
        reason = exc.fault.reason if isinstance(exc, IommuFault) else exc.reason
        with self._lock:
            self._faults[getattr(reason, "name", str(reason))] += 1
        if log.isEnabledFor(logging.WARNING):
            log.warning("buffer channel %r: peer fault: %s", self.name, exc)

    def faults(self) -> dict[str, int]:
        """The peer's faults on this channel so far, by reason."""
        with self._lock:
            return dict(self._faults)
