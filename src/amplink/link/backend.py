"""The backend interface: what carries a link's messages, and what it can do.

The link core and runtime know nothing of vrings, FIFOs, mailboxes or character
devices. A backend moves messages between addresses and says what it supports in its
:class:`Capabilities`; the runtime consults them, and a call that needs a missing one
raises :class:`~amplink.errors.NotSupported` (as Zephyr's ``-ENOTSUP``), never a crash.

Every method is called with the runtime's lock held and must not block: the runtime
does the waiting (on :attr:`Backend.waiter`). After :meth:`Backend.close` the runtime
calls nothing but :meth:`Backend.statistics`.

Receiving hands each message to the runtime as a *view* of the backend's own buffer;
the runtime either copies it out at once (the buffer goes back at the end of the call)
or keeps it (zero copy) and gives it back later with :meth:`Backend.release`. Sending
either copies a finished payload (:meth:`Backend.try_send`) or fills a *loaned* buffer
in place (:meth:`Backend.loan`, then :meth:`Backend.send_loan` or
:meth:`Backend.drop_loan`).
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ..errors import (
    AddressError,
    EndpointClosed,
    LinkDown,
    NoBufferAvailable,
    NotSupported,
    ReceiveTimeout,
    SendTimeout,
)
from ..notify.waiter import Waiter

#: ``deliver(src, dst, payload, handle) -> kept``: one received message; return True to
#: keep the buffer (release it later with ``Backend.release(handle)``), False to let the
#: backend take it back as soon as ``deliver`` returns (a view is invalid then). The
#: payload is a memoryview of the buffer when :attr:`Backend.views_wanted`, else it may be
#: its bytes (a copy made anyway is then the only one)
Deliver = Callable[[int, int, "memoryview | bytes", Any], bool]

#: how endpoints are addressed: "rpmsg" (32-bit source and destination on every
#: message, any-to-any), "pair" (each endpoint talks to one fixed peer address, as
#: /dev/rpmsgN), "channel" (a channel id is both ends, as Keem Bay's), "endpoint"
#: (a small endpoint number is both ends, as RTKit's). With "channel" and "endpoint" an
#: endpoint's destination is its own address
Addressing = Literal["rpmsg", "pair", "channel", "endpoint"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do (the runtime and the conformance suite consult it)."""

    #: the largest payload of one message
    max_payload: int
    #: the smallest payload of one message: a shorter one is refused (InvalidArgument),
    #: never padded (RTKit: every message is one 64-bit word, ``min_payload == 8``)
    min_payload: int = 0
    #: the peer announces channels by name (rpmsg's name service at address 53)
    name_service: bool = False
    #: a transmit buffer can be loaned, filled in place and sent (zero-copy send)
    tx_loan: bool = False
    #: a received buffer can be held past its delivery and released later (zero-copy recv)
    rx_hold: bool = False
    #: data already in memory the peer can address (a shared buffer) can be sent by
    #: reference: the peer reads it in place, whatever its size. Either the backend sends
    #: references itself (Endpoint.send_reference: Keem Bay's heap), or a port beside the
    #: link lends buffers for a handover.BufferChannel (Link.buffers on the simulator; a
    #: ServicePort through the amplink service)
    send_by_reference: bool = False
    #: see :data:`Addressing`
    addressing: Addressing = "rpmsg"
    #: local addresses an endpoint may have: [first, last]
    address_range: tuple[int, int] = (0, 0xFFFF_FFFE)
    #: where an endpoint created with "any address" gets its address from (None: the
    #: backend assigns it in :meth:`Backend.open_endpoint`)
    dynamic_base: int | None = 1024
    #: receive buffers the peer can fill before it must wait for us (0: unknown)
    rx_buffers: int = 0
    #: the backend can tell when a send would not block (writable readiness)
    tx_ready: bool = True
    #: the peer's channels are found by looking (the kernel's list of them), not
    #: announced in band: see :meth:`Backend.discover_channels`
    channel_discovery: bool = False


class SeenChannel(NamedTuple):
    """A channel of the peer as a discovering backend found it."""

    name: str
    #: the peer's address
    dst: int
    #: the local address already bound to it that a first opener takes (RPMSG_ADDR_ANY: none)
    src: int


@dataclass(frozen=True, slots=True)
class ErrorTypes:
    """The exceptions a link raises where its backend may say more than amplink's generic
    type: each is a subclass of that type (so ``except EndpointClosed`` still works), e.g.
    one that carries the errno the backend's own API returns for the condition. Each is
    built from one message string."""

    #: an endpoint or the link was closed by this side
    closed: type[EndpointClosed] = EndpointClosed
    #: the peer is gone (or broke the link); its ``again()`` returns its own type
    down: type[LinkDown] = LinkDown
    #: a receive got nothing within its timeout
    recv_timeout: type[ReceiveTimeout] = ReceiveTimeout
    #: an explicit local address is taken
    in_use: type[AddressError] = AddressError
    #: a send found no free transmit buffer within its timeout (e.g. RTKit's
    #: MailboxSendTimeout, ETIMEDOUT)
    send_timeout: type[SendTimeout] = SendTimeout


class Backend(ABC):
    """A message carrier with a doorbell, driven by the link runtime (see the module doc)."""

    capabilities: Capabilities
    #: the error types of links over this backend
    errors: ErrorTypes = ErrorTypes()
    #: sleeps on the doorbell and the peer's lifeline
    waiter: Waiter
    #: set once the peer is gone; every later call fails with it
    down: LinkDown | None = None
    #: set when the peer broke the receiving / sending direction beyond repair; calls
    #: in that direction fail with it while the other direction goes on
    rx_broken: LinkDown | None = None
    tx_broken: LinkDown | None = None
    #: False if the peer never rings when it frees a transmit buffer (OpenAMP): a
    #: blocked send then polls every :attr:`tx_poll_interval` seconds instead of sleeping
    tx_kicks: bool = True
    tx_poll_interval: float = 0.001
    #: messages sent before the peer went away that it never consumed (set by mark_down)
    unconsumed_at_down: int = 0
    #: the link holds received buffers (zero copy): ``deliver`` must get views
    views_wanted: bool = False
    #: set when local endpoints lost their carrier (see :meth:`take_lost_endpoints`)
    endpoints_lost: bool = False

    # -- receiving ---------------------------------------------------------------------------
    @abstractmethod
    def receive(self, deliver: Deliver, budget: int) -> int:
        """Hand up to ``budget`` received messages to ``deliver``, in order.

        Returns the number of buffers taken (malformed ones included), so that a peer
        flooding garbage cannot hold the caller. A buffer whose message ``deliver`` did
        not keep goes back to the peer (by the end of this call).
        """

    def receive_copies(self, budget: int) -> tuple[int, list[tuple[int, int, bytes]]]:
        """:meth:`receive` with every payload copied out and every buffer given back:
        ``(buffers taken, [(src, dst, payload), ...])``. Backends override it when they
        can do it without a call per message."""
        got: list[tuple[int, int, bytes]] = []

        def deliver(src: int, dst: int, payload: memoryview | bytes, handle: Any) -> bool:
            got.append((src, dst, bytes(payload)))
            return False

        return self.receive(deliver, budget), got

    def release(self, handle: Any) -> None:
        """Give back a buffer that ``deliver`` kept (its view must not be used after)."""
        raise NotSupported(f"{type(self).__name__} cannot hold received buffers")

    @abstractmethod
    def rx_pending(self) -> bool:
        """Cheap check: may a message be waiting?"""

    # -- sending -----------------------------------------------------------------------------
    @abstractmethod
    def try_send(self, src: int, dst: int, payload: bytes | bytearray | memoryview) -> bool:
        """Send one message (``len(payload)`` <= max_payload) if a buffer is free now;
        False if none is."""

    def send_many(self, src: int, dst: int, payloads: Sequence[bytes | bytearray | memoryview],
                  start: int) -> int:
        """Send ``payloads[start:]`` in order (each <= max_payload) while buffers are free
        now; return how many were sent. Backends that can notify the peer once for the
        batch override it (one publication, at most one kick)."""
        sent = 0
        for i in range(start, len(payloads)):
            if not self.try_send(src, dst, payloads[i]):
                break
            sent += 1
        return sent

    def loan(self) -> tuple[Any, memoryview] | None:
        """A free transmit buffer, ``(handle, writable view of max_payload bytes)``, or
        None if none is free now. It is the caller's until :meth:`send_loan` or
        :meth:`drop_loan`."""
        raise NotSupported(f"{type(self).__name__} cannot loan transmit buffers")

    def send_loan(self, handle: Any, src: int, dst: int, length: int) -> None:
        """Send the first ``length`` bytes of a loaned buffer (0 <= length <= max_payload)."""
        raise NotSupported(f"{type(self).__name__} cannot loan transmit buffers")

    def drop_loan(self, handle: Any) -> None:
        """Take back a loaned buffer unsent."""
        raise NotSupported(f"{type(self).__name__} cannot loan transmit buffers")

    @abstractmethod
    def tx_available(self) -> bool:
        """Cheap check: may a transmit buffer be free?"""

    def wait_pending(self, tx: bool, timeout: float) -> bool:
        """Spin up to ``timeout`` seconds until :meth:`tx_available` (``tx``) or
        :meth:`rx_pending`; True if so. Called without the runtime's lock; a backend that
        can spin without holding the GIL overrides it."""
        pending = self.tx_available if tx else self.rx_pending
        end = time.monotonic() + timeout
        while True:
            for _ in range(64):
                if pending():
                    return True
            if time.monotonic() >= end:
                return False
            # the core (and the GIL) to whoever is runnable: the peer may wait for it
            os.sched_yield()

    # -- queued sends (optional) ---------------------------------------------------------------
    def enqueue(self, src: int, dst: int, payload: Any) -> Any | None:
        """Queue a message whose sender waits for it (``try_send`` just refused it), to go
        out in the backend's own order (e.g. transmit queues served round-robin); returns
        a ticket for :meth:`sent` and :meth:`withdraw`. None, the default: the backend
        keeps no queues, and the waiting sender tries :meth:`try_send` again and again.

        Every queued message has a sender waiting for it, so whoever calls into the
        backend moves queued messages out when there is room: nothing is left behind
        when the caller stops calling."""
        return None

    def sent(self, ticket: Any) -> bool:
        """Whether the queued message of ``ticket`` went out (sending what is queued, in
        order, while there is room)."""
        raise NotSupported(f"{type(self).__name__} queues no sends")

    def withdraw(self, ticket: Any) -> bool:
        """The sender gives up (timeout, closed endpoint): take its message out of the
        queue unsent. False if it went out already; idempotent."""
        raise NotSupported(f"{type(self).__name__} queues no sends")

    # -- sending by reference (capability send_by_reference) ---------------------------------
    def reference(self, target: Any) -> Any:
        """Check ``target`` (data the peer can address in place, e.g. a shared buffer) and
        return what :meth:`try_send` and :meth:`enqueue` take as its payload. Raises a
        typed error when the peer cannot address it."""
        raise NotSupported(f"{type(self).__name__} cannot send by reference")

    def drop_reference(self, ref: Any) -> None:
        """A reference from :meth:`reference` was not sent after all (timeout, error)."""
        raise NotSupported(f"{type(self).__name__} cannot send by reference")

    def in_flight(self) -> int:
        """Messages sent that the peer has not consumed yet (0 if the backend cannot tell)."""
        return 0

    def no_buffer_error(self) -> NoBufferAvailable:
        """The error of a send that cannot wait when :meth:`try_send` (or :meth:`loan`)
        just refused (a backend may name why: no buffer, a full queue)."""
        return NoBufferAvailable()

    # -- endpoints ---------------------------------------------------------------------------
    def open_endpoint(self, addr: int | None, name: str | None, dst: int) -> int:
        """A local endpoint comes into being: return its address (``addr``, or one the
        backend assigns when ``addr`` is None). Backends whose endpoints are kernel
        objects (rpmsg_char) or opened channels (Keem Bay) create them here."""
        if addr is None:
            raise NotSupported(f"{type(self).__name__} assigns no addresses")
        return addr

    def close_endpoint(self, addr: int) -> None:  # noqa: B027 - optional, nothing by default
        """A local endpoint is gone (its messages are dropped from now on)."""

    def take_lost_endpoints(self) -> list[tuple[int, LinkDown]]:
        """Local endpoints whose carrier went away (a kernel removed its device) with why;
        each is reported once, and :attr:`endpoints_lost` is cleared. The runtime closes
        them: their blocked and later calls raise that error."""
        return []

    # -- channels ----------------------------------------------------------------------------
    def discover_channels(self) -> list[SeenChannel]:
        """The peer's channels now (backends with ``channel_discovery``): the runtime
        compares them with what it knows, adds the new and removes the vanished ones."""
        raise NotSupported(f"{type(self).__name__} learns channels from the name service")

    # -- notifications -----------------------------------------------------------------------
    @abstractmethod
    def arm(self, *, rx: bool, tx: bool) -> bool:
        """Ask the peer to ring for received messages and/or freed transmit buffers.

        Returns True if work arrived meanwhile (the caller must not sleep then).
        """

    @abstractmethod
    def disarm(self) -> None:
        """Tell the peer not to ring (we are busy or polling)."""

    # -- state -------------------------------------------------------------------------------
    def mark_down(self, reason: str) -> None:
        """Record that the peer is gone; wakes every waiter.

        Sends into a ring succeed until the peer's death is noticed (rpmsg has no
        acknowledgements): the error says how many of them the peer never consumed.
        """
        if self.down is None:
            lost = self.in_flight()
            self.unconsumed_at_down = lost
            if lost:
                reason += (f"; {lost} message{'s' if lost != 1 else ''} sent before were "
                           "never consumed by the peer")
            self.down = self.errors.down(reason)
        self.waiter.wake()

    def broken(self, *, tx: bool) -> LinkDown | None:
        """Why calls in one direction cannot succeed (peer gone or that direction broken)."""
        return self.down or (self.tx_broken if tx else self.rx_broken)

    def statistics(self) -> Mapping[str, Any]:
        """Backend-specific counters (merged into the link's statistics)."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Release everything the backend owns."""
