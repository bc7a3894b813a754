"""An RTKit co-processor's application endpoints as a link: the common endpoint API.

:class:`RtkitBackend` carries the 64-bit messages of endpoints 0x20..0xff between a
:class:`~amplink.link.Link` and the host's RTKit runtime (:class:`.runtime.RtkitHost`);
:func:`rtkit_link` makes that link (``RtkitRemoteProc.link`` is one per run).

* **Messages**: one message is one 64-bit word, as **exactly 8 bytes, little-endian**
  (:func:`pack_message`, :func:`unpack_message`). The link refuses a shorter payload
  (InvalidArgument: ``Capabilities.min_payload``) and a longer one (MessageTooLarge):
  nothing is padded or cut.
* **Addressing** "endpoint": an endpoint's number is both ends (the mailbox carries one
  endpoint byte), so an endpoint sends to its own number only (another destination:
  NotSupported) and has no "any address" (NotSupported: name the number).
* **Discovery**: the endpoints are those of the co-processor's endpoint map, each a
  channel named ``rtkit-0x20`` (``channel_discovery``: ``link.channels()``,
  ``open_channel("rtkit-0x20")``, drivers). Creating an endpoint the map did not
  announce raises :class:`~amplink.rtkit.errors.RtkitUndiscoveredEndpoint` (an
  AddressError, EINVAL); creating one sends STARTEP, waiting up to 500 ms for room in
  the mailbox (MailboxSendTimeout, ETIMEDOUT), as the runtime's other commands.
* **Receiving**: the runtime's dispatcher thread, which keeps serving the system
  endpoints, puts each message of an open endpoint into a bounded inbox and rings an
  eventfd when it was empty. It takes no lock of the link, so a link never holds it up;
  RTKit has no flow control, so beyond :data:`INBOX_LIMIT` waiting messages new ones
  are dropped and counted (statistics, and the runtime's drops as QUEUE_FULL).
* **Sending**: a free mailbox slot now, or the link waits for the co-processor's "not
  full" ring (watched by edge: the mailbox's own blocking send consumes those rings) up
  to the caller's timeout, then :class:`~amplink.transports.mailbox.MailboxSendTimeout`
  (a SendTimeout, ETIMEDOUT). While the co-processor sleeps (quiesced, idle) sends raise
  RtkitNotRunning (EINVAL).
* **The run's end** (a crash: RtkitCrashed, EINVAL; a broken mailbox or a stop:
  LinkDown) marks the link down at once; every later call raises that error. A
  recovered co-processor is a new run with a new link.

No zero copy: a message is a word, copied.
"""

from __future__ import annotations

import os
import select
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ...errors import AddressError, InvalidArgument, LinkDown, NotSupported
from ...link.backend import Backend, Capabilities, Deliver, ErrorTypes, SeenChannel
from ...link.runtime import Link
from ...notify.doorbell import Doorbell
from ...notify.waiter import Waiter
from ...rpmsg.wire import RPMSG_ADDR_ANY
from ...rtkit import messages as m
from ...rtkit.errors import DropReason, RtkitCrashed
from ...transports.mailbox import MailboxBroken, MailboxSendTimeout
from .runtime import RtkitHost

#: bytes of one message: msg0, little-endian
MESSAGE_SIZE = 8
#: received messages a link keeps before the link's users take them; more are dropped
INBOX_LIMIT = 1024
#: the channel of application endpoint ``ep`` is named ``rtkit-0x<ep>``
CHANNEL_PREFIX = "rtkit-"


def pack_message(msg: int) -> bytes:
    """The payload of 64-bit message ``msg``: 8 bytes, little-endian."""
    return m.check_word(msg).to_bytes(MESSAGE_SIZE, "little")


def unpack_message(payload: bytes | bytearray | memoryview) -> int:
    """The 64-bit message of an 8-byte payload (InvalidArgument for any other length)."""
    if len(payload) != MESSAGE_SIZE:
        raise InvalidArgument(f"an RTKit message is {MESSAGE_SIZE} bytes, got {len(payload)}")
    return int.from_bytes(payload, "little")


def channel_name(ep: int) -> str:
    """The channel name of application endpoint ``ep`` (``rtkit-0x20``)."""
    return f"{CHANNEL_PREFIX}0x{ep:02x}"


class _Doorbell(Doorbell):
    """The link's doorbell: an epoll set of the inbox's eventfd and the mailbox's "not
    full" ring, both by edge, so that nothing here consumes a ring the mailbox's blocking
    send waits for. Readable while an edge is unseen; :meth:`clear` sees them."""

    def __init__(self, space_fd: int) -> None:
        self.rx_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        try:
            self._epoll.register(self.rx_fd, select.EPOLLIN | select.EPOLLET)
            self._epoll.register(space_fd, select.EPOLLIN | select.EPOLLET)
        except BaseException:
            self.close()
            raise

    def ring(self) -> None:
        """A message was queued for the link."""
        os.eventfd_write(self.rx_fd, 1)

    def kick(self) -> None:
        pass  # the mailbox rings the co-processor with every message sent

    def fileno(self) -> int:
        return self._epoll.fileno()

    def clear(self) -> None:
        self._epoll.poll(0)  # edges reported once: seen now
        try:
            os.eventfd_read(self.rx_fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._epoll.close()
        if self.rx_fd >= 0:
            os.close(self.rx_fd)
            self.rx_fd = -1


class _Route:
    """One open endpoint as the runtime's dispatcher sees it (an ``AppReceiver``)."""

    __slots__ = ("backend", "ep")

    def __init__(self, backend: RtkitBackend, ep: int) -> None:
        self.backend = backend
        self.ep = ep

    def _deliver(self, msg: int) -> DropReason | None:
        return self.backend._arrive(self.ep, msg)

    def _down(self, error: BaseException) -> None:
        pass  # the link hears of the run's end through RtkitHost.watch_down


class RtkitBackend(Backend):
    """The application endpoints of one run of an RTKit co-processor (see the module
    docstring); ``inbox_limit`` bounds the messages kept for the link."""

    #: a send timeout is the mailbox's (ETIMEDOUT), as a blocking mailbox send raises it;
    #: the co-processor going away is its crash (RtkitCrashed, EINVAL), whether the call
    #: meets it in the runtime or finds the link already marked down by the crash handler
    errors = ErrorTypes(down=RtkitCrashed, send_timeout=MailboxSendTimeout)

    def __init__(self, host: RtkitHost, *, inbox_limit: int = INBOX_LIMIT) -> None:
        self.capabilities = Capabilities(
            max_payload=MESSAGE_SIZE, min_payload=MESSAGE_SIZE, addressing="endpoint",
            address_range=(m.APP_ENDPOINT_START, m.MAX_ENDPOINTS - 1), dynamic_base=None,
            rx_buffers=inbox_limit, tx_ready=True, channel_discovery=True)
        self._host = host
        self._mailbox = host.mailbox
        self._doorbell = _Doorbell(host.mailbox.space_fileno())
        self.waiter = Waiter(self._doorbell)
        self._limit = inbox_limit
        self._inbox: deque[tuple[int, int]] = deque()
        # guards the inbox, and the doorbell against being rung once closed; held for
        # O(1) work by the dispatcher and the link
        self._inbox_lock = threading.Lock()
        self._closed = False
        self._routes: dict[int, _Route] = {}
        self._on_down: Callable[[str], object] | None = None
        self.dropped_inbox_full = 0

    def __repr__(self) -> str:
        return f"<RtkitBackend {self._host.name} {sorted(self._routes)}>"

    def watch_run(self, on_down: Callable[[str], object]) -> None:
        """Call ``on_down(reason)`` (the link's ``mark_down``) when the run ends; the
        error later calls raise keeps its type and errno (RtkitCrashed, EINVAL)."""
        self._on_down = on_down
        self._host.watch_down(self._run_ended)

    def _run_ended(self, error: LinkDown) -> None:
        if self.down is None:
            self.unconsumed_at_down = self.in_flight()
            self.down = error
        if self._on_down is not None:
            self._on_down(str(error))
        else:
            self.waiter.wake()

    # -- receiving ---------------------------------------------------------------------------
    def _arrive(self, ep: int, msg: int) -> DropReason | None:
        """A message of endpoint ``ep`` (the dispatcher thread, no lock of the link)."""
        with self._inbox_lock:
            if self._closed:
                return DropReason.NO_LISTENER
            inbox = self._inbox
            if len(inbox) >= self._limit:
                self.dropped_inbox_full += 1
                return DropReason.QUEUE_FULL
            inbox.append((ep, msg))
            if len(inbox) == 1:  # the link drains it all before it sleeps again
                self._doorbell.ring()
        return None

    def receive(self, deliver: Deliver, budget: int) -> int:
        with self._inbox_lock:
            inbox = self._inbox
            batch = [inbox.popleft() for _ in range(min(budget, len(inbox)))]
        for ep, msg in batch:
            deliver(ep, ep, msg.to_bytes(MESSAGE_SIZE, "little"), None)
        return len(batch)

    def rx_pending(self) -> bool:
        return bool(self._inbox)

    # -- sending -----------------------------------------------------------------------------
    def try_send(self, src: int, dst: int, payload: bytes | bytearray | memoryview) -> bool:
        if src != dst:
            raise NotSupported(f"an RTKit message carries one endpoint number: endpoint "
                               f"0x{src:x} sends to itself only, not to 0x{dst:x}")
        if dst not in self._routes:
            raise AddressError(f"endpoint 0x{dst:x} is not open on this link")
        try:
            return self._host.try_send(dst, int.from_bytes(payload, "little"))
        except MailboxBroken as exc:
            self.tx_broken = exc
            raise

    def tx_available(self) -> bool:
        # not once the run ended: a waiter then gets the run's error (a wait_writable
        # would otherwise say True for a co-processor that is gone)
        return self.down is None and self._mailbox.tx_ready()

    def in_flight(self) -> int:
        if self._mailbox.closed:
            return 0
        return self._mailbox.statistics().tx_queued

    # -- endpoints ---------------------------------------------------------------------------
    def open_endpoint(self, addr: int | None, name: str | None, dst: int) -> int:
        if addr is None:
            raise NotSupported("RTKit endpoints are the numbers the co-processor announced: "
                               "name one (addr=0x20), or open its channel ('rtkit-0x20')")
        if dst not in (RPMSG_ADDR_ANY, addr):
            raise NotSupported(f"an RTKit endpoint sends to its own number: dst must be "
                               f"0x{addr:x} (or left out), not 0x{dst:x}")
        route = _Route(self, addr)
        self._host.attach(addr, route)  # STARTEP: up to 500 ms if the mailbox is full
        self._routes[addr] = route
        return addr

    def close_endpoint(self, addr: int) -> None:
        route = self._routes.pop(addr, None)
        if route is not None:
            self._host.detach(addr, route)

    def discover_channels(self) -> list[SeenChannel]:
        return [SeenChannel(channel_name(ep), ep, ep) for ep in self._host.app_endpoints()]

    # -- notifications -----------------------------------------------------------------------
    def arm(self, *, rx: bool, tx: bool) -> bool:
        # the dispatcher rings for every message queued into an empty inbox, the
        # co-processor for every pop from a full FIFO: only say whether work is there
        return (rx and self.rx_pending()) or (tx and self.tx_available())

    def disarm(self) -> None:
        pass

    # -- state -------------------------------------------------------------------------------
    def statistics(self) -> Mapping[str, Any]:
        return {"kind": "rtkit", "endpoints": tuple(sorted(self._routes)),
                "queued_in": len(self._inbox), "inbox_limit": self._limit,
                "dropped_inbox_full": self.dropped_inbox_full}

    def close(self) -> None:
        self._host.unwatch_down(self._run_ended)
        for addr, route in self._routes.items():
            self._host.detach(addr, route)
        self._routes.clear()
        with self._inbox_lock:
            self._closed = True
            self._inbox.clear()
            self.waiter.close()
            self._doorbell.close()


def rtkit_link(host: RtkitHost, *, name: str | None = None, **link_options: Any) -> Link:
    """A link over the application endpoints of ``host``'s run (``link_options`` go to
    :class:`~amplink.link.Link`: dispatch, poll_mode, ...)."""
    backend = RtkitBackend(host)
    try:
        link = Link(backend, name=name or host.name, **link_options)
    except BaseException:
        backend.close()
        raise
    backend.watch_run(link.mark_down)
    return link
