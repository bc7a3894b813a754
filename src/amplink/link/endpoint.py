"""Endpoints: the user-facing end of an address on a link."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Self

from .._args import int_arg, timeout_arg
from ..errors import AddressError, AmplinkError, EndpointClosed, LinkDown
from ..rpmsg.wire import RPMSG_ADDR_ANY
from .stats import EndpointStatistics
from .zerocopy import HeldMessage, TxLoan

if TYPE_CHECKING:
    from .runtime import Link

#: Linux's and OpenAMP's default wait for a free transmit buffer, in seconds
DEFAULT_SEND_TIMEOUT = 15.0
#: messages an endpoint queues for recv() before it drops (and counts) new ones
DEFAULT_MAX_QUEUED = 65536

#: ``callback(endpoint, payload, src)``: ``payload`` is bytes, or a :class:`HeldMessage`
#: for an endpoint created with ``hold=True``; whatever the callback returns is ignored
Callback = Callable[["Endpoint", Any, int], object]


class Endpoint:
    """A local address: send from it, receive what is sent to it.

    Messages arrive in a queue read by :meth:`recv` (or iteration), or, when a
    ``callback(endpoint, payload, src)`` is set, are handed to it by the link's
    dispatcher (never with a lock held, one at a time and in order for one endpoint).
    After :meth:`close` returns, no callback runs for it.

    With ``hold=True`` (a backend with the rx-hold capability) messages stay in the
    peer's buffers until consumed: :meth:`recv_held` returns them as
    :class:`HeldMessage` views, and a callback gets them as such.
    """

    def __init__(
        self,
        link: Link,
        addr: int,
        *,
        name: str | None,
        dst: int,
        callback: Callback | None,
        announced: bool,
        hold: bool = False,
        priv: Any = None,
    ) -> None:
        self._link = link
        self.addr = addr
        self.name = name
        self.dst = dst
        self.callback = callback
        self.announced = announced
        self.hold = hold
        self.priv = priv
        # received messages (bytes, or HeldMessage with hold) and their source, for recv()
        # or, with a callback, for the dispatcher
        self._queue: deque[tuple[Any, int]] = deque()
        self._scheduled = False  # with a callback: queued for a dispatcher
        self._dispatcher: int | None = None  # the thread running its callback, if any
        self._closed_reason: str | None = None
        self._link_lost = False
        self._closed_errno: int | None = None  # the kernel's answer, when one closed it
        self._discarded = False  # closed by its user: what it still has is dropped
        self.messages_sent = 0
        self.messages_received = 0
        self.callback_errors = 0
        self.dropped_overflow = 0
        self.dropped_at_close = 0
        #: messages kept for recv(); beyond, new ones are dropped and counted
        self.max_queued = DEFAULT_MAX_QUEUED

    # -- state --
    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def link(self) -> Link:
        return self._link

    @property
    def mtu(self) -> int:
        return self._link.mtu

    @property
    def queued(self) -> int:
        """Messages waiting for :meth:`recv` (cheap: a ``link.wait_until`` predicate may
        test it, e.g. to wait for any of several endpoints)."""
        return len(self._queue)

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise self._closed_error()

    def _closed_error(self) -> AmplinkError:
        """Why this closed endpoint cannot be used: the peer went away (LinkDown), or this
        side closed it (EndpointClosed)."""
        what = f"endpoint 0x{self.addr:x}: {self._closed_reason}"
        errors = self._link.errors
        if not self._link_lost:
            return errors.closed(what)
        return errors.down(what) if self._closed_errno is None else LinkDown(self._closed_errno,
                                                                              what)

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
        self._link.send_message(self, self.addr, self.dst, data, timeout)

    def sendto(self, data: bytes | bytearray | memoryview, dst: int,
               timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send to address ``dst`` from this endpoint."""
        if self._closed_reason is not None:
            self._check_open()
        self._link.send_message(self, self.addr, dst, data, timeout)

    def send_offchannel(self, src: int, dst: int, data: bytes | bytearray | memoryview,
                        timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send with an explicit source address (replies then go to ``src``)."""
        self._check_open()
        self._link.send_message(self, src, dst, data, timeout)

    def send_many(self, payloads: Iterable[bytes | bytearray | memoryview],
                  timeout: float | None = DEFAULT_SEND_TIMEOUT) -> int:
        """Send each of ``payloads``, in order, to the endpoint's destination.

        Every payload is checked before the first is sent. Each batch of free transmit
        buffers goes to the peer with one notification (one publication and at most one
        kick for virtio); for the rest it waits up to ``timeout`` s in all. Returns how
        many were sent: all of them, or fewer when the timeout expired (``timeout=0``:
        as many as there are free buffers now).
        """
        if self._closed_reason is not None or self.dst == RPMSG_ADDR_ANY:
            self._check_open()
            self._dst()
        return self._link.send_many(self, self.addr, self.dst, payloads, timeout)

    def sendto_many(self, payloads: Iterable[bytes | bytearray | memoryview], dst: int,
                    timeout: float | None = DEFAULT_SEND_TIMEOUT) -> int:
        """:meth:`send_many` to address ``dst``."""
        self._check_open()
        return self._link.send_many(self, self.addr, dst, payloads, timeout)

    def try_send(self, data: bytes | bytearray | memoryview) -> None:
        """Like :meth:`send` but raise NoBufferAvailable at once if no buffer is free."""
        self._check_open()
        self._link.send_message(self, self.addr, self._dst(), data, 0)

    def try_sendto(self, data: bytes | bytearray | memoryview, dst: int) -> None:
        self._check_open()
        self._link.send_message(self, self.addr, dst, data, 0)

    def try_send_offchannel(self, src: int, dst: int,
                            data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        self._link.send_message(self, src, dst, data, 0)

    def send_reference(self, target: Any,
                       timeout: float | None = DEFAULT_SEND_TIMEOUT) -> Any:
        """Send ``target``, data already in memory the peer can address (for Keem Bay: a
        shared buffer from the link's heap, or a slice of one), by reference to the
        endpoint's destination: the peer reads it in place, nothing is copied through the
        link and the MTU does not bound it. Waits up to ``timeout`` s for room. Returns
        the backend's reference (its ``done`` tells when the peer has consumed it).

        Needs the capability send_by_reference (else NotSupported).
        """
        self._check_open()
        return self._link.send_reference(self, target, self._dst(), timeout)

    def loan(self, timeout: float | None = DEFAULT_SEND_TIMEOUT) -> TxLoan:
        """A transmit buffer to fill in place (zero copy), waiting up to ``timeout`` s for
        one (0: NoBufferAvailable at once); send it with ``loan.send(length)``."""
        self._check_open()
        return self._link.loan(self, timeout_arg(timeout))

    async def aloan(self, timeout: float | None = DEFAULT_SEND_TIMEOUT) -> TxLoan:
        """:meth:`loan`, awaiting the buffer."""
        self._check_open()
        return await self._link.aloan(self, timeout_arg(timeout))

    def wait_writable(self, timeout: float | None = None) -> bool:
        """Wait until a send would not block (a transmit buffer is free); False on timeout."""
        self._check_open()
        return self._link._wait_writable(self, timeout_arg(timeout))

    async def await_writable(self, timeout: float | None = None) -> bool:
        """:meth:`wait_writable` in asyncio: back-pressure for a producer coroutine."""
        self._check_open()
        return await self._link._await_writable(self, timeout_arg(timeout))

    # -- receiving --
    def _taker(self, *, held: bool) -> tuple[Callable[[], bool], list[tuple[Any, int]]]:
        """A ready() for the link that takes the message under the link's lock.

        Taking it there, not after the wait, keeps two readers of one endpoint from
        seeing the same message as theirs. A held message is copied out and released
        there too unless ``held``.
        """
        if held or self.hold:
            return self._taker_many(1, held=held)
        got: list[tuple[Any, int]] = []
        queue = self._queue

        def ready() -> bool:  # the common case: the queue holds copies
            if queue:
                got.append(queue.popleft())
                return True
            return self._closed_reason is not None

        return ready, got

    def _taker_many(self, n: int, *, held: bool
                    ) -> tuple[Callable[[], bool], list[tuple[Any, int]]]:
        """:meth:`_taker` for up to ``n`` messages (ready once at least one is taken)."""
        got: list[tuple[Any, int]] = []
        queue = self._queue

        def ready() -> bool:
            while queue and len(got) < n:
                item, src = queue.popleft()
                if isinstance(item, HeldMessage) and not held:
                    item = self._link._copy_out(item)
                got.append((item, src))
            return bool(got) or self._closed_reason is not None

        return ready, got

    def _no_message(self, timeout: float | None) -> AmplinkError:
        if self._closed_reason is None:
            return self._link.errors.recv_timeout(
                f"no message for endpoint 0x{self.addr:x} in {timeout} s")
        return self._closed_error()

    def _check_queue_reader(self) -> None:
        if self.callback is not None:
            raise RuntimeError("this endpoint delivers to its callback; it has no queue")

    def recvfrom(self, timeout: float | None = None) -> tuple[bytes, int]:
        """Return ``(payload, src)`` of the next message, waiting up to ``timeout`` s.

        Raises ReceiveTimeout, EndpointClosed (after queued messages are consumed), or
        LinkDown.
        """
        if self.callback is not None:
            self._check_queue_reader()
        if timeout is not None:
            timeout = timeout_arg(timeout)
        if not self.hold and self._queue:
            try:
                return self._queue.popleft()  # type: ignore[no-any-return]
            except IndexError:  # another reader was quicker
                pass
        ready, got = self._taker(held=False)
        self._link.wait_until(ready, timeout, tx=False)
        if got:
            return got[0]  # type: ignore[return-value]
        raise self._no_message(timeout)

    def recv(self, timeout: float | None = None) -> bytes:
        """Return the payload of the next message (see :meth:`recvfrom`)."""
        return self.recvfrom(timeout)[0]

    def recvfrom_many(self, n: int, timeout: float | None = None) -> list[tuple[bytes, int]]:
        """Up to ``n`` messages as ``(payload, src)``: waits up to ``timeout`` s for the
        first, then takes those that have arrived too, without waiting for more.

        Raises as :meth:`recvfrom` does when none arrives.
        """
        self._check_queue_reader()
        n = int_arg(n, "n", minimum=1)
        if timeout is not None:
            timeout = timeout_arg(timeout)
        queue = self._queue
        if not self.hold:
            if len(queue) < n:
                self._link._try_drain()
            if queue:
                got: list[tuple[bytes, int]] = []
                try:
                    while queue and len(got) < n:
                        got.append(queue.popleft())
                except IndexError:  # another reader was quicker
                    pass
                if got:
                    return got
        ready, got = self._taker_many(n, held=False)
        self._link.wait_until(ready, timeout, tx=False)
        if got:
            return got
        raise self._no_message(timeout)

    def recv_many(self, n: int, timeout: float | None = None) -> list[bytes]:
        """The payloads of up to ``n`` messages (see :meth:`recvfrom_many`)."""
        return [payload for payload, _src in self.recvfrom_many(n, timeout)]

    def recv_held(self, timeout: float | None = None) -> HeldMessage:
        """The next message as a :class:`HeldMessage` (zero copy when the endpoint was
        created with ``hold=True``; else a view of the copy). Release it when done."""
        self._check_queue_reader()
        if timeout is not None:
            timeout = timeout_arg(timeout)
        ready, got = self._taker(held=True)
        self._link.wait_until(ready, timeout, tx=False)
        if got:
            return self._link._as_held(*got[0])
        raise self._no_message(timeout)

    def try_recvfrom(self) -> tuple[bytes, int] | None:
        """Return the next message if one is there now, else None."""
        self._check_queue_reader()
        if not self._queue:
            self._link.poll()
        ready, got = self._taker(held=False)
        if self._link._take_now(ready) and got:
            return got[0]  # type: ignore[return-value]
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
        self._check_queue_reader()
        if timeout is not None:
            timeout = timeout_arg(timeout)
        ready, got = self._taker(held=False)
        await self._link.async_wait_until(ready, timeout, tx=False)
        if got:
            return got[0]  # type: ignore[return-value]
        raise self._no_message(timeout)

    async def arecv(self, timeout: float | None = None) -> bytes:
        return (await self.arecvfrom(timeout))[0]

    async def arecvfrom_many(self, n: int,
                             timeout: float | None = None) -> list[tuple[bytes, int]]:
        """:meth:`recvfrom_many`, awaited: up to ``n`` messages once one is there."""
        self._check_queue_reader()
        n = int_arg(n, "n", minimum=1)
        if timeout is not None:
            timeout = timeout_arg(timeout)
        ready, got = self._taker_many(n, held=False)
        await self._link.async_wait_until(ready, timeout, tx=False)
        if got:
            return got
        raise self._no_message(timeout)

    async def arecv_many(self, n: int, timeout: float | None = None) -> list[bytes]:
        """:meth:`recv_many`, awaited."""
        return [payload for payload, _src in await self.arecvfrom_many(n, timeout)]

    async def arecv_held(self, timeout: float | None = None) -> HeldMessage:
        """:meth:`recv_held`, awaited."""
        self._check_queue_reader()
        if timeout is not None:
            timeout = timeout_arg(timeout)
        ready, got = self._taker(held=True)
        await self._link.async_wait_until(ready, timeout, tx=False)
        if got:
            return self._link._as_held(*got[0])
        raise self._no_message(timeout)

    async def asend(self, data: bytes | bytearray | memoryview,
                    timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send, awaiting a free transmit buffer for up to ``timeout`` s."""
        await self.asendto(data, self._dst(), timeout)

    async def asendto(self, data: bytes | bytearray | memoryview, dst: int,
                      timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        self._check_open()
        await self._link.async_send_message(self, self.addr, dst, data, timeout)

    def _mark_closed(self, reason: str, *, link_lost: bool = False,
                     err: int | None = None) -> None:
        """Record that the endpoint is closed (link lock held; the link empties its queue
        or keeps it readable); ``err`` is the kernel's errno when its carrier went away."""
        if self._closed_reason is None:
            self._closed_reason = reason
            self._link_lost = link_lost
            self._closed_errno = err

    # -- lifetime --
    def close(self) -> None:
        """Destroy the endpoint (announcing it gone if it was announced).

        Once this returns no callback for it runs (unless this is called from its own
        callback, which then finishes).
        """
        self._link.destroy_endpoint(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> EndpointStatistics:
        return EndpointStatistics(
            name=self.name, addr=self.addr, dst=self.dst,
            messages_sent=self.messages_sent, messages_received=self.messages_received,
            queued=len(self._queue), callback_errors=self.callback_errors,
            dropped_overflow=self.dropped_overflow, dropped_at_close=self.dropped_at_close,
            closed=self.closed,
        )

    def __repr__(self) -> str:
        dst = "ANY" if self.dst == RPMSG_ADDR_ANY else f"0x{self.dst:x}"
        state = " closed" if self.closed else ""
        return f"<Endpoint {self.name!r} 0x{self.addr:x} -> {dst}{state}>"
