"""Application endpoints (0x20 and up) of an RTKit co-processor, and the syslog it keeps.

An application endpoint carries 64-bit messages both ways. The runtime's dispatcher
thread hands each received message to the endpoint's callback (in that thread, with no
lock held) or queues it for :meth:`RtkitEndpoint.recv` (a bounded queue: a flood is
dropped and counted, never grows memory).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..._args import FOREVER, timeout_arg
from ...errors import EndpointClosed, ReceiveTimeout
from ...rtkit import messages as m
from ...rtkit.errors import DropReason
from ...transports.mailbox import SEND_TIMEOUT

log = logging.getLogger(__name__)

#: messages an endpoint without a callback keeps for recv(); more are dropped
DEFAULT_QUEUE_LIMIT = 1024

EndpointCallback = Callable[["RtkitEndpoint", int], object]


class AppReceiver(Protocol):
    """Who gets the messages of one application endpoint: an :class:`RtkitEndpoint`, or a
    link's route (:mod:`.backend`). The runtime's dispatcher calls both methods with no
    lock held; neither may block."""

    def _deliver(self, msg: int) -> DropReason | None:
        """Take one message; why it was dropped, if it was."""

    def _down(self, error: BaseException) -> None:
        """The run is over (crash, stop): blocked and later calls raise ``error``."""


class _Sender(Protocol):
    def send(self, ep: int, msg: int, timeout: float | None = SEND_TIMEOUT) -> None: ...
    def try_send(self, ep: int, msg: int) -> bool: ...
    def detach(self, ep: int, receiver: AppReceiver) -> None: ...


class RtkitEndpoint:
    """One application endpoint on 64-bit integers; made by ``RtkitRemoteProc.open_endpoint``
    (the common endpoint API over the same endpoints is ``RtkitRemoteProc.link``)."""

    def __init__(self, host: _Sender, ep: int, callback: EndpointCallback | None = None,
                 *, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self.ep = ep
        self._host = host
        self._callback = callback
        self._queue: collections.deque[int] = collections.deque()
        self._limit = queue_limit
        self._cond = threading.Condition()
        self._in_callback = 0
        self._callback_thread: int | None = None
        self._error: BaseException | None = None  # the link went down or the endpoint closed
        self.received = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<RtkitEndpoint {m.endpoint_name(self.ep)}>"

    # -- sending -------------------------------------------------------------------------------
    def send(self, msg: int, timeout: float | None = SEND_TIMEOUT) -> None:
        """Send a 64-bit message, waiting up to ``timeout`` s for room in the mailbox
        (``MailboxSendTimeout``, a ``TimeoutError`` with ETIMEDOUT)."""
        self._check_open()
        self._host.send(self.ep, msg, timeout)

    def try_send(self, msg: int) -> bool:
        """Send if the mailbox has room now; False if it is full."""
        self._check_open()
        return self._host.try_send(self.ep, msg)

    def _check_open(self) -> None:
        error = self._error
        if error is not None:
            raise error

    # -- receiving -----------------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> int:
        """The next message (:class:`~amplink.errors.ReceiveTimeout` after ``timeout`` s)."""
        limit = timeout_arg(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        with self._cond:
            while not self._queue:
                if self._error is not None:
                    raise self._error
                remaining = FOREVER if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise ReceiveTimeout(f"endpoint {m.endpoint_name(self.ep)}: no message "
                                         f"within {timeout} s")
                self._cond.wait(remaining)
            return self._queue.popleft()

    def try_recv(self) -> int | None:
        """The next message, or None if none is queued."""
        with self._cond:
            if self._queue:
                return self._queue.popleft()
            if self._error is not None:
                raise self._error
            return None

    def _deliver(self, msg: int) -> DropReason | None:
        """Called by the dispatcher (no lock held); why the message was dropped, if it was."""
        with self._cond:
            if self._error is not None:
                return DropReason.NO_LISTENER  # closed (or down) since it was looked up
            callback = self._callback
            if callback is None:
                if len(self._queue) >= self._limit:
                    self.dropped += 1
                    return DropReason.QUEUE_FULL
                self._queue.append(msg)
                self.received += 1
                self._cond.notify()
                return None
            self.received += 1
            self._in_callback += 1
            self._callback_thread = threading.get_ident()
        try:
            callback(self, msg)
        except Exception:  # noqa: BLE001 - a callback's bug must not stop the dispatcher
            log.exception("endpoint %s: callback %r failed", m.endpoint_name(self.ep), callback)
        finally:
            with self._cond:
                self._in_callback -= 1
                self._cond.notify_all()
        return None

    # -- lifetime ------------------------------------------------------------------------------
    def _down(self, error: BaseException) -> None:
        """The link is gone (crash, stop): blocked and later calls raise ``error``."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._error is not None

    def close(self) -> None:
        """Stop receiving; no callback runs after this returns (unless called from one)."""
        self._host.detach(self.ep, self)
        self._down(EndpointClosed(f"endpoint {m.endpoint_name(self.ep)} was closed"))
        with self._cond:
            if self._callback_thread != threading.get_ident():
                self._cond.wait_for(lambda: self._in_callback == 0)

    def __enter__(self) -> RtkitEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyslogRing:
    """The co-processor's syslog lines, the newest ``max_bytes`` of them. Thread-safe."""

    def __init__(self, max_bytes: int = 64 << 10) -> None:
        self.max_bytes = max_bytes
        self._lines: collections.deque[str] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.count = 0

    def append(self, line: str) -> None:
        line = line[:self.max_bytes - 1] + "\n"
        with self._lock:
            self._lines.append(line)
            self._bytes += len(line)
            self.count += 1
            while self._bytes > self.max_bytes:
                self._bytes -= len(self._lines.popleft())

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)
