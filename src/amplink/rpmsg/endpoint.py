"""Endpoints: the user-facing end of an rpmsg address."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Self

from .._args import timeout_arg
from ..errors import AddressError, AmplinkError, EndpointClosed, LinkDown, ReceiveTimeout
from .stats import EndpointStatistics
from .wire import RPMSG_ADDR_ANY

if TYPE_CHECKING:
    from .bus import RpmsgBus

#: Linux's and OpenAMP's default wait for a free transmit buffer, in seconds
DEFAULT_SEND_TIMEOUT = 15.0
#: messages an endpoint queues for recv() before it drops (and counts) new ones
DEFAULT_MAX_QUEUED = 65536

Callback = Callable[["Endpoint", bytes, int], None]


class Endpoint:
    """A local rpmsg address: send from it, receive what is sent to it.

    Messages arrive in a queue read by :meth:`recv` (or iteration), or, when a
    ``callback(endpoint, payload, src)`` is set, are handed to it by whichever thread
    is draining the link. After :meth:`close` returns, no callback runs for it.
    """

    def __init__(
        self,
        bus: RpmsgBus,
        addr: int,
        *,
        name: str | None,
        dst: int,
        callback: Callback | None,
        announced: bool,
        priv: Any = None,
    ) -> None:
        self._bus = bus
        self.addr = addr
        self.name = name
        self.dst = dst
        self.callback = callback
        self.announced = announced
        self.priv = priv
        self._queue: deque[tuple[bytes, int]] = deque()
        self._closed_reason: str | None = None
        self._link_lost = False
        self.messages_sent = 0
        self.messages_received = 0
        self.callback_errors = 0
        self.dropped_overflow = 0
        #: messages kept for recv(); beyond, new ones are dropped and counted
        self.max_queued = DEFAULT_MAX_QUEUED

    # -- state --
    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def mtu(self) -> int:
        return self._bus.mtu

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise self._closed_error()

    def _closed_error(self) -> AmplinkError:
        """Why this closed endpoint cannot be used: the peer went away (LinkDown), or this
        side closed it (EndpointClosed)."""
        what = f"endpoint 0x{self.addr:x}: {self._closed_reason}"
        return LinkDown(what) if self._link_lost else EndpointClosed(what)

    def _dst(self) -> int:
        if self.dst == RPMSG_ADDR_ANY:
            raise AddressError(
                f"endpoint 0x{self.addr:x} has no destination yet: use sendto(), or wait "
                "until the peer has sent to it"
            )
        return self.dst

    # -- sending --
    def send(self, data: bytes | bytearray | memoryview,
             timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send to the endpoint's destination, waiting up to ``timeout`` s for a buffer."""
        if self._closed_reason is not None or self.dst == RPMSG_ADDR_ANY:
            self._check_open()
            self._dst()
        self._bus.send_message(self, self.addr, self.dst, data, timeout)

    def sendto(self, data: bytes | bytearray | memoryview, dst: int,
               timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send to address ``dst`` from this endpoint."""
        if self._closed_reason is not None:
            self._check_open()
        self._bus.send_message(self, self.addr, dst, data, timeout)

    def send_offchannel(self, src: int, dst: int, data: bytes | bytearray | memoryview,
                        timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send with an explicit source address (replies then go to ``src``)."""
        self._check_open()
        self._bus.send_message(self, src, dst, data, timeout)

    def try_send(self, data: bytes | bytearray | memoryview) -> None:
        """Like :meth:`send` but raise NoBufferAvailable at once if no buffer is free."""
        self._check_open()
        self._bus.send_message(self, self.addr, self._dst(), data, 0)

    def try_sendto(self, data: bytes | bytearray | memoryview, dst: int) -> None:
        self._check_open()
        self._bus.send_message(self, self.addr, dst, data, 0)

    def try_send_offchannel(self, src: int, dst: int,
                            data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        self._bus.send_message(self, src, dst, data, 0)

    # -- receiving --
    def _taker(self) -> tuple[Callable[[], bool], list[tuple[bytes, int]]]:
        """A ready() for the bus that takes the message under the bus lock.

        Taking it there, not after the wait, keeps two readers of one endpoint from
        seeing the same message as theirs.
        """
        got: list[tuple[bytes, int]] = []
        queue = self._queue

        def ready() -> bool:
            if queue:
                got.append(queue.popleft())
                return True
            return self._closed_reason is not None

        return ready, got

    def _no_message(self, timeout: float | None) -> AmplinkError:
        if self._closed_reason is None:
            return ReceiveTimeout(f"no message for endpoint 0x{self.addr:x} in {timeout} s")
        return self._closed_error()

    def recvfrom(self, timeout: float | None = None) -> tuple[bytes, int]:
        """Return ``(payload, src)`` of the next message, waiting up to ``timeout`` s.

        Raises ReceiveTimeout, EndpointClosed (after queued messages are consumed), or
        LinkDown.
        """
        if self.callback is not None:
            raise RuntimeError("this endpoint delivers to its callback; it has no queue")
        if timeout is not None:
            timeout = timeout_arg(timeout)
        if self._queue:
            try:
                return self._queue.popleft()
            except IndexError:  # another reader was quicker
                pass
        ready, got = self._taker()
        self._bus.wait_until(ready, timeout, tx=False)
        if got:
            return got[0]
        raise self._no_message(timeout)

    def recv(self, timeout: float | None = None) -> bytes:
        """Return the payload of the next message (see :meth:`recvfrom`)."""
        return self.recvfrom(timeout)[0]

    def try_recvfrom(self) -> tuple[bytes, int] | None:
        """Return the next message if one is there now, else None."""
        if not self._queue:
            self._bus.poll()
        try:
            return self._queue.popleft()
        except IndexError:
            self._check_open()
            return None

    def __iter__(self) -> Iterator[bytes]:
        """Yield payloads until the endpoint is closed (by either side)."""
        while True:
            try:
                yield self.recv()
            except EndpointClosed:
                return

    async def arecvfrom(self, timeout: float | None = None) -> tuple[bytes, int]:
        """Await the next message without a thread: the loop watches the doorbell."""
        if timeout is not None:
            timeout = timeout_arg(timeout)
        if self._queue:
            return self._queue.popleft()  # one loop thread: nobody can take it meanwhile
        ready, got = self._taker()
        await self._bus.async_wait_until(ready, timeout, tx=False)
        if got:
            return got[0]
        raise self._no_message(timeout)

    async def arecv(self, timeout: float | None = None) -> bytes:
        return (await self.arecvfrom(timeout))[0]

    async def asend(self, data: bytes | bytearray | memoryview,
                    timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send, awaiting a free transmit buffer for up to ``timeout`` s."""
        await self.asendto(data, self._dst(), timeout)

    async def asendto(self, data: bytes | bytearray | memoryview, dst: int,
                      timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        self._check_open()
        await self._bus.async_send_message(self, self.addr, dst, data, timeout)

    # -- called by the bus, lock held --------------------------------------------------------
    def _deliver(self, payload: bytes, src: int) -> None:
        self.messages_received += 1
        if self.dst == RPMSG_ADDR_ANY:
            self.dst = src  # the peer's first message tells where to answer
        callback = self.callback
        if callback is None:
            if len(self._queue) >= self.max_queued:
                self.dropped_overflow += 1  # nobody reads: a counted drop, not a leak
                self._bus.log_overflow(self)
                return
            self._queue.append((payload, src))
            return
        try:
            callback(self, payload, src)
        except Exception:  # noqa: BLE001 - neither a callback's bug nor its failed reply
            # may escape into the thread that happens to drain, or lose the ring buffer
            self.callback_errors += 1
            self._bus.log_callback_error(self)

    def _mark_closed(self, reason: str, *, link_lost: bool = False) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
            self._link_lost = link_lost

    # -- lifetime --
    def close(self) -> None:
        """Destroy the endpoint (announcing it gone if it was announced)."""
        self._bus.destroy_endpoint(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> EndpointStatistics:
        return EndpointStatistics(
            name=self.name, addr=self.addr, dst=self.dst,
            messages_sent=self.messages_sent, messages_received=self.messages_received,
            queued=len(self._queue), callback_errors=self.callback_errors,
            dropped_overflow=self.dropped_overflow, closed=self.closed,
        )

    def __repr__(self) -> str:
        dst = "ANY" if self.dst == RPMSG_ADDR_ANY else f"0x{self.dst:x}"
        state = " closed" if self.closed else ""
        return f"<Endpoint {self.name!r} 0x{self.addr:x} -> {dst}{state}>"
