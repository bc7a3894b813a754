"""A link: the runtime that puts a backend, the sans-IO core, waiting and dispatch together.

:class:`Link` is what users hold: endpoints, channels, drivers, sending and receiving in
every variant (blocking, non-blocking, asyncio, zero copy), statistics. Its parts:

* the backend (:mod:`.backend`) moves messages and says what it can do;
* the core (:mod:`.core`) keeps the endpoint table, channels and drivers, with no I/O;
* the wait engine (:mod:`.waiting`) lets threads and coroutines wait for the rings;
* the dispatcher (:mod:`.dispatch`) runs callbacks and drivers' probe/remove.

One lock guards the core and the backend; it is held only for short, bounded work
(taking messages out of the rings, one send), never while user code runs, and
:meth:`Link.statistics` does not take it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .._args import callable_arg, finite_seconds_arg, int_arg, payload_arg, timeout_arg
from ..errors import (
    AmplinkError,
    EndpointClosed,
    InvalidArgument,
    InvalidArgumentType,
    LinkDown,
    MessageTooLarge,
    NotSupported,
    PeerTimeout,
    SendTimeout,
)
from ..rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NS_ADDR, check_name
from .backend import Backend
from .channel import RpmsgChannel, RpmsgDriver
from .core import Event, LinkCore, NameServiceRules, Unbind
from .dispatch import Dispatcher, DispatchMode
from .endpoint import DEFAULT_SEND_TIMEOUT, Callback, Endpoint
from .stats import LinkStatistics
from .waiting import DEFAULT_SAFETY_TIMEOUT, DEFAULT_SPIN, WaitEngine
from .zerocopy import HeldMessage, TxLoan

log = logging.getLogger(__name__)

#: how long creating an announced endpoint waits for a TX buffer for its announcement
ANNOUNCE_TIMEOUT = 1.0
#: the end-of-service announcement is best effort: closing must not hang on a stuck peer
ANNOUNCE_END_TIMEOUT = 0.2
#: buffers taken from the backend per call, and calls per drain
_DRAIN_BATCH = 64
_DRAIN_BATCHES = 16
#: how long close() waits for dispatcher threads to finish their callbacks
DISPATCH_STOP_TIMEOUT = 5.0


class Link:
    """One link to a peer over a backend (see the module docstring).

    ``poll_mode`` makes waiting spin on the rings instead of sleeping on the doorbell;
    ``spin`` is how long (seconds) to spin before each sleep in blocking mode (default:
    :data:`~.waiting.DEFAULT_SPIN`, 50 us when the process may use more than one core).
    ``dispatch`` says who runs callbacks (see :mod:`.dispatch`); ``max_held`` is how
    many received buffers zero-copy endpoints may hold before the link stops taking
    more (default: half the backend's receive buffers). ``buffers`` is what hands shared
    buffers over by reference beside the link (a simulated processor's buffer port on
    the host, the attached buffers on the firmware): the link then has the
    ``send_by_reference`` capability and :attr:`buffers` gives it.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        name: str = "link",
        poll_mode: bool = False,
        spin: float = DEFAULT_SPIN,
        safety_timeout: float = DEFAULT_SAFETY_TIMEOUT,
        dispatch: DispatchMode = "thread",
        max_held: int | None = None,
        rules: NameServiceRules | None = None,
        buffers: object | None = None,
    ) -> None:
        if dispatch not in ("thread", "caller"):
            raise InvalidArgument(f"dispatch must be 'thread' or 'caller', got {dispatch!r}")
        caps = backend.capabilities
        if buffers is not None and not caps.send_by_reference:
            caps = dataclasses.replace(caps, send_by_reference=True)
        self.backend = backend
        self.capabilities = caps
        self._buffers = buffers
        #: the error types this link raises (its backend's, see ErrorTypes)
        self.errors = backend.errors
        self.name = name
        self.mtu = caps.max_payload
        self.min_payload = caps.min_payload
        self.poll_mode = poll_mode
        self.max_held = (int_arg(max_held, "max_held", minimum=1) if max_held is not None
                         else max(1, caps.rx_buffers // 2))
        self.core = LinkCore(caps, rules, name=name, in_use=backend.errors.in_use)
        self._table = self.core.endpoints  # the hot path looks endpoints up here
        self._lock = threading.Lock()
        self._closed = False
        self._lost: str | None = None  # why the link was closed because the peer is gone
        self._wait = WaitEngine(
            backend, self._lock, self._settle, lambda: self._closed, self._rx_blocked,
            poll_mode=poll_mode, spin=timeout_arg(spin, "spin") or 0.0,
            safety_timeout=safety_timeout)
        self._dispatch = Dispatcher(self, dispatch)
        self.wait_until = self._wait.wait_until  # type: ignore[method-assign]
        self._held = 0           # received buffers kept by zero-copy endpoints
        self._hold_endpoints = 0
        self._handed_out: weakref.WeakSet[HeldMessage | TxLoan] = weakref.WeakSet()
        self._returns: deque[tuple[Any, bool]] = deque()  # (handle, is_loan) of collected
        self.messages_sent = 0
        self.messages_received = 0
        self.rx_backpressure = 0
        backend.disarm()
        self._ns_ep: Endpoint | None = None
        if caps.name_service:
            self._ns_ep = Endpoint(self, RPMSG_NS_ADDR, name="rpmsg-ns", dst=RPMSG_ADDR_ANY,
                                   callback=None, announced=False)
            self.core.add_endpoint(self._ns_ep)

    # -- state -------------------------------------------------------------------------------
    @property
    def buffers(self) -> Any:
        """What hands shared buffers over by reference on this link (e.g. for a
        :class:`~amplink.handover.BufferChannel`); :class:`NotSupported` without the
        ``send_by_reference`` capability."""
        if self._buffers is None:
            raise NotSupported(f"link {self.name!r} cannot hand buffers over by reference "
                               f"(no send_by_reference capability)")
        return self._buffers

    @property
    def safety_timeout(self) -> float:
        """The longest sleep before the rings are looked at without a kick (s)."""
        return self._wait.safety_timeout

    @property
    def spin(self) -> float:
        """How long a waiter spins on the rings before each sleep (s); settable (a finite
        number of seconds >= 0), e.g. by whoever becomes the link's waiting thread."""
        return self._wait.spin

    @spin.setter
    def spin(self, seconds: float) -> None:
        self._wait.spin = finite_seconds_arg(seconds, "spin")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def is_up(self) -> bool:
        """True while the link is open and both directions work."""
        b = self.backend
        return not self._closed and b.down is None and b.rx_broken is None and b.tx_broken is None

    def _closed_error(self) -> AmplinkError:
        """The error for a call on the closed link: LinkDown if the peer went away."""
        if self._lost is not None:
            return self.errors.down(f"link {self.name}: {self._lost}")
        return self.errors.closed(f"link {self.name} is closed")

    def _check_usable(self) -> None:  # lock held
        if self._closed:
            raise self._closed_error()
        backend = self.backend
        if backend.down is None and backend.waiter.poll_sources():
            poller = self._wait.poller  # we may have taken the kick the poller waits for
            if poller is not None and poller != threading.get_ident():
                backend.waiter.wake()
        if backend.down is not None:
            raise backend.down.again()

    def _rx_blocked(self, tx: bool) -> bool:
        """Receiving is paused: zero-copy endpoints hold too many buffers."""
        return not tx and self._hold_endpoints > 0 and self._held >= self.max_held

    # -- endpoints ---------------------------------------------------------------------------
    def create_endpoint(
        self,
        name: str | None = None,
        *,
        addr: int = RPMSG_ADDR_ANY,
        dst: int = RPMSG_ADDR_ANY,
        callback: Callback | None = None,
        announce: bool = False,
        hold: bool = False,
        priv: Any = None,
    ) -> Endpoint:
        """Create a local endpoint.

        ``addr`` ANY picks the lowest free dynamic address (>= 1024); an explicit address
        (reserved ones below 1024 included) must be free. ``announce`` sends a
        name-service create for ``name`` if the peer supports the name service. ``hold``
        keeps received messages in the peer's buffers (zero copy, see :meth:`Endpoint.recv_held`).
        """
        if name is not None:
            check_name(name)
        if dst != RPMSG_ADDR_ANY:
            self._check_addr(dst, "dst")
        if addr != RPMSG_ADDR_ANY:
            self._check_addr(addr, "addr")
        callable_arg(callback, "callback")
        if announce and name is None:
            raise InvalidArgument("an announced endpoint needs a name")
        if hold and not self.capabilities.rx_hold:
            raise NotSupported(f"link {self.name}: its backend cannot hold received buffers "
                               "(rx_hold): use an endpoint without hold")
        with self._lock:
            self._check_usable()
            if addr == RPMSG_ADDR_ANY:
                picked = (None if self.capabilities.dynamic_base is None
                          else self.core.allocate_address())
            else:
                self.core.check_address(addr)
                picked = addr
            addr = self.backend.open_endpoint(picked, name, dst)
            if self.capabilities.addressing in ("channel", "endpoint"):
                dst = addr  # one number is both ends
            ep = Endpoint(self, addr, name=name, dst=dst, callback=callback,
                          announced=announce and self.core.name_service, hold=hold, priv=priv)
            self.core.add_endpoint(ep)
            if hold:
                self._hold_endpoints += 1
                self.backend.views_wanted = True
            if announce:
                self.core.adopt(ep)
            announcement = self.core.announcement(ep, destroy=False)
        if callback is not None:
            self._dispatch.ensure_thread()
        if announcement is not None:
            try:
                self.send_message(None, ep.addr, RPMSG_NS_ADDR, announcement, ANNOUNCE_TIMEOUT)
            except BaseException:
                with self._lock:
                    self._forget(ep, "its announcement could not be sent")
                raise
        return ep

    def destroy_endpoint(self, ep: Endpoint,
                         announce_timeout: float = ANNOUNCE_END_TIMEOUT) -> None:
        """Remove ``ep``; what it still queued is dropped (and counted). Once this
        returns no callback for it runs (unless called from that very callback, which
        then finishes)."""
        with self._lock:
            if not self._forget(ep, "closed by this side", drop=True):
                return
            announcement = None
            if self.backend.down is None and not self._closed and announce_timeout > 0:
                announcement = self.core.announcement(ep, destroy=True)
        self._wait.wake_all()  # its blocked calls (a callback's send among them) end now
        self._wait_callback_done(ep)
        if announcement is not None:
            try:
                self.send_message(None, ep.addr, RPMSG_NS_ADDR, announcement, announce_timeout)
            except (LinkDown, SendTimeout, EndpointClosed) as exc:
                log.info("%s: could not announce the end of %r: %s", self.name, ep.name, exc)
        self._wait.wake_all()

    def _forget(self, ep: Endpoint, reason: str, *, lost: bool = False,
                drop: bool = False, err: int | None = None) -> bool:
        """Take ``ep`` out of the link and close it (lock held); False if it was out."""
        present = self.core.remove_endpoint(ep)
        self._close_endpoint(ep, reason, lost=lost, drop=drop, err=err)
        if present and not self._closed:
            self.backend.close_endpoint(ep.addr)
        return present

    def _close_endpoint(self, ep: Endpoint, reason: str, *, lost: bool = False,
                        drop: bool = False, err: int | None = None) -> None:
        """Mark ``ep`` closed (lock held). With ``drop`` (its user closed it) what it
        queued is dropped and counted; else it stays readable, copied out of the peer's
        buffers, which go back now."""
        if ep.closed:
            return
        if ep.hold:
            self._hold_endpoints -= 1
            self.backend.views_wanted = self._hold_endpoints > 0
        queue = ep._queue
        if drop:
            ep._discarded = True
            ep.dropped_at_close += len(queue)
            self._release_all(queue)
            queue.clear()
        else:
            for i, (item, src) in enumerate(queue):
                if isinstance(item, HeldMessage):
                    queue[i] = (self._copy_out(item), src)
        ep._mark_closed(reason, link_lost=lost, err=err)

    def _wait_callback_done(self, ep: Endpoint) -> None:
        """Wait until no thread but this one runs ``ep``'s callback."""
        me = threading.get_ident()
        with self._wait.cond:
            while ep._dispatcher not in (None, me):
                self._wait.cond.wait(0.05)

    def endpoints(self) -> list[Endpoint]:
        """The user's endpoints (not the name service's)."""
        eps = tuple(self.core.endpoints.values())
        return [ep for ep in eps if ep is not self._ns_ep]

    # -- channels and drivers ----------------------------------------------------------------
    def channels(self) -> list[RpmsgChannel]:
        """The peer's channels (looked up anew on a backend that discovers them)."""
        if self.capabilities.channel_discovery:
            with self._lock:
                self._check_usable()
                self._discover_channels()
        return list(self.core.channels)

    def _discover_channels(self) -> None:
        """Bring the channels up to date with what the backend sees (lock held)."""
        self._events(self.core.sync_channels(self.backend.discover_channels()))

    def register_driver(self, driver: RpmsgDriver) -> None:
        """Register ``driver`` and probe it (in this thread) on every matching channel
        without an endpoint; channels announced later are probed by a dispatcher."""
        if not isinstance(driver, RpmsgDriver):
            raise InvalidArgumentType(f"driver must be an RpmsgDriver, got {driver!r}")
        with self._lock:
            self._check_usable()
            probes = self.core.register_driver(driver)
        self._dispatch.ensure_thread()
        for probe in probes:
            self._probe(probe.driver, probe.channel)

    def unregister_driver(self, driver: RpmsgDriver) -> None:
        """Unbind ``driver`` from its channels (its ``remove`` runs, in this thread)."""
        with self._lock:
            events = self.core.unregister_driver(driver)
        for event in events:
            self._unbind(event)

    def add_static_channel(self, name: str, dst: int, src: int = RPMSG_ADDR_ANY) -> RpmsgChannel:
        """Declare a channel the peer never announces; a matching driver is probed (in
        this thread)."""
        check_name(name)
        self._check_addr(dst, "dst")
        with self._lock:
            channel, probes = self.core.add_static_channel(name, dst, src)
        for probe in probes:
            self._probe(probe.driver, probe.channel)
        self._wait.tell()
        return channel

    def open_channel(self, name: str, *, timeout: float | None = 10.0,
                     callback: Callback | None = None, hold: bool = False) -> Endpoint:
        """Wait for channel ``name`` and return a new local endpoint bound to it."""
        channel = self.wait_channel(name, timeout)
        # a second opener gets an address of its own
        addr = channel.src if channel.endpoint is None else RPMSG_ADDR_ANY
        ep = self.create_endpoint(name, addr=addr, dst=channel.dst, callback=callback,
                                  hold=hold)
        with self._lock:
            if channel.removed:
                self._forget(ep, f"channel {name!r} was removed by the peer")
            elif channel.endpoint is None:
                channel.endpoint = ep
            else:
                ep.priv = channel  # a second opener: closed when the channel goes
        return ep

    def wait_channel(self, name: str, timeout: float | None = 10.0) -> RpmsgChannel:
        """Wait until the peer announced ``name``; return the channel."""
        check_name(name)
        found: list[RpmsgChannel] = []

        def ready(channels: list[RpmsgChannel]) -> bool:
            found[:] = [c for c in channels if c.name == name and not c.removed]
            return bool(found)

        if not self.wait_channels(ready, timeout):
            raise PeerTimeout(f"channel {name!r} was not announced within {timeout} s: is the "
                              "firmware offering it?")
        return found[0]

    def wait_channels(self, ready: Callable[[list[RpmsgChannel]], bool],
                      timeout: float | None = 10.0) -> bool:
        """Wait until ``ready(the peer's channels)`` is true (False after ``timeout``).

        ``ready`` runs with the link's lock held and must not call into the link; the
        channels are looked up anew at each wake-up on a backend that discovers them (at
        the safety net's period at least), which :meth:`channels` in a
        :meth:`wait_until` predicate could not do.
        """
        discovery = self.capabilities.channel_discovery

        def channels_ready() -> bool:
            if discovery:
                self._discover_channels()
            return ready(list(self.core.channels))

        return self.wait_until(channels_ready, timeout_arg(timeout), tx=False)

    def remove_channels(self, reason: str, *, lost: bool) -> None:
        """Every channel is gone: drivers' ``remove`` runs (in this thread) and their
        endpoints close with ``reason`` (LinkDown when ``lost``: the peer went away)."""
        with self._lock:
            events = self.core.remove_channels(reason, lost=lost)
        for event in events:
            self._unbind(event)

    def _probe(self, driver: RpmsgDriver, channel: RpmsgChannel) -> None:
        """Bind ``driver`` to ``channel`` (a dispatcher runs this)."""
        try:
            ep = self.create_endpoint(channel.name, addr=channel.src, dst=channel.dst,
                                      callback=driver.callback,
                                      announce=channel.src != RPMSG_ADDR_ANY)
        except AmplinkError as exc:
            log.warning("%s: driver %r cannot bind to %r: %s", self.name, driver.name,
                        channel.name, exc)
            return
        with self._lock:
            if channel.removed or self._closed:
                self._forget(ep, f"channel {channel.name!r} went away")
                return
            self.core.bind(driver, channel, ep)
        if driver.probe is not None:
            try:
                driver.probe(channel)
            except Exception:  # noqa: BLE001 - a driver's bug must not stop the link
                log.exception("%s: probe of driver %r on %r failed", self.name, driver.name,
                              channel.name)
                with self._lock:
                    event = self.core.detach(channel, "probe failed")
                self._unbind(Unbind(event.channel, None, event.endpoints, event.reason))

    def _unbind(self, event: Unbind) -> None:
        """A channel lost its driver: run ``remove`` (no lock held), then close its
        endpoints."""
        driver = event.driver
        if driver is not None and event.run_remove and driver.remove is not None:
            try:
                driver.remove(event.channel)
            except Exception:  # noqa: BLE001 - the endpoints must still be closed
                log.exception("%s: remove of driver %r failed", self.name, driver.name)
        with self._lock:
            for ep in event.endpoints:
                self._forget(ep, event.reason, lost=event.lost)
        self._wait.wake_all()

    def _events(self, events: Iterable[Event]) -> None:
        """Carry out the core's events (lock held): unbinding without user code now,
        the rest by a dispatcher."""
        later: list[Event] = []
        for event in events:
            if isinstance(event, Unbind) and (event.driver is None
                                              or event.driver.remove is None):
                for ep in event.endpoints:
                    self._forget(ep, event.reason, lost=event.lost)
            else:
                later.append(event)
        self._dispatch.add_events(later)

    # -- receiving ---------------------------------------------------------------------------
    def _deliver(self, src: int, dst: int, view: memoryview | bytes, handle: Any) -> bool:
        """One message from the backend (lock held); True if its buffer is kept."""
        ep = self._table.get(dst)
        if ep is None:
            self.core.route(dst)  # counted and logged there
            return False
        self.messages_received += 1
        if ep is self._ns_ep:
            self._events(self.core.name_service_message(bytes(view), src))
            return False
        ep.messages_received += 1
        if ep.dst == RPMSG_ADDR_ANY:
            ep.dst = src  # the peer's first message tells where to answer
        if ep.callback is None and len(ep._queue) >= ep.max_queued:
            ep.dropped_overflow += 1  # nobody reads: a counted drop, not a leak
            if ep.dropped_overflow == 1 or log.isEnabledFor(logging.DEBUG):
                log.warning("%s: endpoint 0x%x holds %d unread messages: dropping new ones "
                            "(counted in statistics)", self.name, ep.addr, ep.max_queued)
            return False
        kept = ep.hold
        item: Any
        if kept:
            assert isinstance(view, memoryview), "views_wanted is set while endpoints hold"
            item = HeldMessage(self, view, src, handle)
            self._held += 1
            self._handed_out.add(item)
        else:
            item = bytes(view)
        ep._queue.append((item, src))
        if ep.callback is not None:
            self._dispatch.schedule(ep)
        return kept

    def _drain(self) -> int:
        """Take what the backend has (lock held). Bounded, so that waiters re-check their
        condition and timeout even while a peer floods; the rest comes on the next pass.

        Without zero-copy endpoints every payload is copied out in one backend call per
        batch and the common case is routed inline; with them each message goes through
        :meth:`_deliver` as a view."""
        if self._returns:
            self._process_returns()
        backend = self.backend
        if backend.endpoints_lost:
            self._close_lost()
        before = self.messages_received
        for _ in range(_DRAIN_BATCHES):
            if self._hold_endpoints:
                budget = min(_DRAIN_BATCH, self.max_held - self._held)
                if budget <= 0:
                    self.rx_backpressure += 1
                    break
                taken = backend.receive(self._deliver, budget)
            else:
                budget = _DRAIN_BATCH
                taken, messages = backend.receive_copies(budget)
                if messages:
                    table = self._table
                    for src, dst, payload in messages:
                        ep = table.get(dst)
                        if (ep is None or ep.dst == RPMSG_ADDR_ANY or ep is self._ns_ep
                                or (ep.callback is None and len(ep._queue) >= ep.max_queued)):
                            self._deliver(src, dst, payload, None)  # not the common case
                            continue
                        self.messages_received += 1
                        ep.messages_received += 1
                        ep._queue.append((payload, src))
                        if ep.callback is not None:
                            self._dispatch.schedule(ep)
            if taken < budget or self._closed:
                break
        if self.backend.endpoints_lost:  # found while receiving: close them now, not at
            self._close_lost()           # the next drain (nothing may wake one soon)
        total = self.messages_received - before
        if total:
            self._wait.tell()
        return total

    def _close_lost(self) -> None:
        """Close the endpoints whose carrier the backend lost (lock held); what they
        received before stays readable."""
        for addr, error in self.backend.take_lost_endpoints():
            ep = self.core.endpoints.get(addr)
            if ep is not None:
                self._forget(ep, error.strerror or str(error), lost=True, err=error.errno)
        self._wait.tell()

    def _try_drain(self) -> None:
        """Take in what has arrived if nobody holds the lock now (never waits for it)."""
        lock = self._lock
        if lock.acquire(False):
            try:
                if not self._closed:
                    self._drain()
            finally:
                lock.release()

    def _settle(self, ready: Callable[[], bool], tx: bool) -> bool:
        """One look (lock held): drain, then True if ``ready()``; raise if it cannot be.

        Draining goes on after link down (what the peer sent before still counts) but not
        after close (nothing touches the rings then).
        """
        if not self._closed:
            self._drain()
        if ready():
            return True
        if self._closed:
            raise self._closed_error()
        backend = self.backend  # backend.broken(tx=tx), inline
        broken = backend.down or (backend.tx_broken if tx else backend.rx_broken)
        if broken is not None:
            raise broken.again()
        return False

    def wait_until(self, ready: Callable[[], bool], timeout: float | None, *, tx: bool) -> bool:
        """Drain and wait until ``ready()`` (called with the lock held: link code only) or
        the timeout; False on timeout. Raises LinkDown, or EndpointClosed (link closed).

        (Replaced per instance by the wait engine's own method: one call less.)
        """
        return self._wait.wait_until(ready, timeout, tx=tx)

    async def async_wait_until(self, ready: Callable[[], bool], timeout: float | None, *,
                               tx: bool) -> bool:
        """The asyncio form of :meth:`wait_until`."""
        return await self._wait.async_wait_until(ready, timeout, tx=tx)

    def _take_now(self, ready: Callable[[], bool]) -> bool:
        """``ready()`` once, under the lock, without draining or waiting."""
        with self._lock:
            return ready()

    def poll(self, *, dispatch: bool = True) -> int:
        """Take in what has arrived, without waiting, and (unless ``dispatch`` is False)
        run the callbacks and driver events that are ready, in this thread. Returns the
        number of messages taken in.

        Takes nothing in if another thread holds the link at that moment.
        """
        if self._closed:
            raise self._closed_error()
        if not self._lock.acquire(blocking=False):
            count = 0
        else:
            try:
                self._check_usable()
                count = self._drain()
            finally:
                self._lock.release()
        if dispatch:
            self._dispatch.dispatch()
        return count

    def run(self, until: Callable[[], bool] | None = None, timeout: float | None = None) -> None:
        """Dispatch callbacks and driver events until ``until()`` is true (checked between
        dispatches, at least every few tens of milliseconds), the timeout, or the link
        closes or goes down (LinkDown, EndpointClosed)."""
        timeout = timeout_arg(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = self._wait
        dispatch = self._dispatch.dispatch
        has_work = self._dispatch.has_work
        while True:
            dispatch()
            if until is None and deadline is None:  # the firmware's main loop: work only
                wait.wait_until(has_work, None, tx=False)
                continue
            if until is not None and until():
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            generation = wait.generation
            # wake for work, or any news (``until`` may depend on it), or now and then
            slice_ = wait.safety_timeout if until is not None else remaining
            if remaining is not None and slice_ is not None:
                slice_ = min(slice_, remaining)
            def news(g: int = generation) -> bool:
                return has_work() or (until is not None and wait.generation != g)

            self.wait_until(news, slice_, tx=False)

    # -- sending -----------------------------------------------------------------------------
    def _check_addr(self, addr: object, what: str) -> int:
        return int_arg(addr, what, minimum=0, maximum=RPMSG_ADDR_ANY - 1)

    def _check_addresses(self, src: int, dst: int) -> None:
        if src == RPMSG_ADDR_ANY or dst == RPMSG_ADDR_ANY:
            raise InvalidArgument(
                "rpmsg has no broadcast: src and dst must not be RPMSG_ADDR_ANY (0xffffffff)")
        self._check_addr(src, "src")
        self._check_addr(dst, "dst")

    def _check_send(self, src: int, dst: int, data: bytes | bytearray | memoryview) -> None:
        """The checks of a send (``data`` already a byte payload)."""
        self._check_addresses(src, dst)
        self._check_length(len(data))

    def _check_length(self, length: int) -> None:
        if length > self.mtu:
            raise MessageTooLarge(
                f"payload of {length} bytes exceeds the MTU of {self.mtu}: split it or "
                "pass large data through shared memory"
            )
        if length < self.min_payload:
            raise InvalidArgument(
                f"payload of {length} bytes is shorter than the {self.min_payload} bytes every "
                "message of this link carries: it is refused, not padded"
            )

    def send_message(self, ep: Endpoint | None, src: int, dst: int,
                     data: bytes | bytearray | memoryview, timeout: float | None) -> None:
        """Send one message, waiting up to ``timeout`` s (0: not at all) for a buffer."""
        # The common case is checked inline: this is the hot path. Everything is checked
        # before a buffer is taken, so a bad argument never costs the ring a buffer.
        if type(data) is not bytes:
            data = payload_arg(data)
        if not (type(src) is int and type(dst) is int and 0 <= src < RPMSG_ADDR_ANY
                and 0 <= dst < RPMSG_ADDR_ANY and self.min_payload <= len(data) <= self.mtu):
            self._check_send(src, dst, data)
        if timeout != DEFAULT_SEND_TIMEOUT:
            timeout = timeout_arg(timeout)
        backend = self.backend
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if backend.down is not None:
                raise backend.down.again()
            if backend.try_send(src, dst, data):
                self.messages_sent += 1  # _count_sent inline: the hot path
                if ep is not None:
                    ep.messages_sent += 1
                return
        if timeout == 0:
            raise backend.no_buffer_error()
        self._send_waiting(ep, src, dst, data, timeout)
        self._count_sent(ep)

    def _sender(self, ep: Endpoint | None, src: int, dst: int,
                payload: Any) -> tuple[Callable[[], bool], list[Any]]:
        """What a blocked send waits for: ``sent()`` (lock held) and the cell that gets
        the backend's ticket if it queues the message (see :meth:`Backend.enqueue`)."""
        backend = self.backend
        queued: list[Any] = []

        def sent() -> bool:
            if ep is not None and ep._closed_reason is not None:
                # closed while it waited: no use waiting on (unless it went out already)
                if not queued or backend.withdraw(queued[0]):
                    raise ep._closed_error()
                return True
            if queued:
                return backend.sent(queued[0])
            if backend.try_send(src, dst, payload):
                return True
            ticket = backend.enqueue(src, dst, payload)
            if ticket is not None:
                queued.append(ticket)
            return False

        return sent, queued

    def _send_timeout(self, timeout: float | None) -> SendTimeout:
        """The error of a send that found no transmit buffer within ``timeout`` s (of the
        backend's type, see ErrorTypes.send_timeout)."""
        return self.errors.send_timeout(f"link {self.name}: no TX buffer became free "
                                        f"within {timeout} s")

    def _withdraw(self, queued: list[Any]) -> bool:
        """A blocked send gives up: take its message out of the backend's queue (lock
        not held). True unless it went out meanwhile."""
        if not queued:
            return True
        with self._lock:
            return self._closed or self.backend.withdraw(queued[0])

    def _send_waiting(self, ep: Endpoint | None, src: int, dst: int, payload: Any,
                      timeout: float | None) -> None:
        """Wait until ``payload`` is sent (the first try failed); SendTimeout if it was
        not within ``timeout`` s, and then it never is."""
        sent, queued = self._sender(ep, src, dst, payload)
        try:
            ok = self.wait_until(sent, timeout, tx=True)
        except BaseException:
            self._withdraw(queued)
            raise
        if not ok and self._withdraw(queued):
            raise self._send_timeout(timeout)

    def send_many(self, ep: Endpoint | None, src: int, dst: int,
                  payloads: Iterable[bytes | bytearray | memoryview],
                  timeout: float | None) -> int:
        """Send ``payloads`` in order, one notification of the peer per batch of free
        buffers, waiting up to ``timeout`` s in all for buffers; return how many were
        sent (all, or fewer when the timeout expired; 0: those that fit now)."""
        batch: list[bytes | bytearray | memoryview] = [
            p if type(p) is bytes else payload_arg(p, "payloads[]") for p in payloads]
        self._check_addresses(src, dst)
        low, high = self.min_payload, self.mtu
        for data in batch:
            if not low <= len(data) <= high:
                self._check_length(len(data))  # MessageTooLarge or InvalidArgument: none sent
        if timeout != DEFAULT_SEND_TIMEOUT:
            timeout = timeout_arg(timeout)
        backend = self.backend
        total = len(batch)
        sent = 0

        def ready() -> bool:
            nonlocal sent
            if ep is not None and ep._closed_reason is not None:
                raise ep._closed_error()  # closed while it waited: no use waiting on
            sent += backend.send_many(src, dst, batch, sent)
            return sent == total

        try:
            with self._lock:
                if self._closed:
                    raise self._closed_error()
                if backend.down is not None:
                    raise backend.down.again()
                if ready() or timeout == 0:
                    return sent
            self.wait_until(ready, timeout, tx=True)
            return sent
        finally:
            self.messages_sent += sent
            if ep is not None:
                ep.messages_sent += sent

    async def async_send_message(self, ep: Endpoint, src: int, dst: int,
                                 data: bytes | bytearray | memoryview,
                                 timeout: float | None) -> None:
        data = payload_arg(data)
        self._check_send(src, dst, data)
        sent, queued = self._sender(ep, src, dst, data)
        try:
            ok = await self.async_wait_until(sent, timeout_arg(timeout), tx=True)
        except BaseException:
            await self._async_withdraw(queued)
            raise
        if not ok and await self._async_withdraw(queued):
            raise self._send_timeout(timeout)
        self._count_sent(ep)

    async def _async_withdraw(self, queued: list[Any]) -> bool:
        """:meth:`_withdraw` in a coroutine: the lock is only tried, never waited for."""
        import asyncio

        while queued and not self._lock.acquire(blocking=False):
            await asyncio.sleep(0)  # a thread holds it for a moment (no user code runs)
        if not queued:
            return True
        try:
            return self._closed or self.backend.withdraw(queued[0])
        finally:
            self._lock.release()

    def send_reference(self, ep: Endpoint, target: Any, dst: int,
                       timeout: float | None) -> Any:
        """Send ``target`` by reference from ``ep`` (see :meth:`Endpoint.send_reference`);
        returns the backend's reference."""
        if not self.capabilities.send_by_reference:
            raise NotSupported(f"link {self.name}: its backend cannot send by reference "
                               "(send_by_reference): send the bytes")
        if not self.backend.capabilities.send_by_reference:  # by a buffer port beside it
            raise NotSupported(f"link {self.name} hands shared buffers over through its "
                               f"buffer port (link.buffers, a handover.BufferChannel), not "
                               f"Endpoint.send_reference")
        self._check_addresses(ep.addr, dst)
        timeout = timeout_arg(timeout)
        backend = self.backend
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if backend.down is not None:
                raise backend.down.again()
            ref = backend.reference(target)  # checked and handed to the peer's side
            try:
                if backend.try_send(ep.addr, dst, ref):
                    self._count_sent(ep)
                    return ref
            except BaseException:
                backend.drop_reference(ref)
                raise
        sent, queued = self._sender(ep, ep.addr, dst, ref)
        went = False
        try:
            if timeout == 0:
                raise backend.no_buffer_error()
            try:
                went = self.wait_until(sent, timeout, tx=True)
            finally:
                went = went or not self._withdraw(queued)
            if not went:
                raise self._send_timeout(timeout)
        finally:
            if not went:
                with self._lock:
                    if not self._closed:
                        backend.drop_reference(ref)
        self._count_sent(ep)
        return ref

    def _count_sent(self, ep: Endpoint | None) -> None:
        self.messages_sent += 1
        if ep is not None:
            ep.messages_sent += 1

    def writable(self) -> bool:
        """True if a send would not block now (a transmit buffer is free)."""
        with self._lock:
            return not self._closed and self.backend.tx_available()

    def wait_writable(self, timeout: float | None = None) -> bool:
        """Wait until a send would not block (a transmit buffer is free); False on timeout."""
        return self._wait_writable(None, timeout)

    async def await_writable(self, timeout: float | None = None) -> bool:
        """:meth:`wait_writable` for asyncio."""
        return await self._await_writable(None, timeout)

    def _wait_writable(self, ep: Endpoint | None, timeout: float | None) -> bool:
        """:meth:`wait_writable` for ``ep`` (its close ends the wait: EndpointClosed)."""
        self._check_tx_ready()
        return self.wait_until(self._writable(ep), timeout_arg(timeout), tx=True)

    async def _await_writable(self, ep: Endpoint | None, timeout: float | None) -> bool:
        self._check_tx_ready()
        return await self.async_wait_until(self._writable(ep), timeout_arg(timeout), tx=True)

    def _writable(self, ep: Endpoint | None) -> Callable[[], bool]:
        tx_available = self.backend.tx_available
        if ep is None:
            return tx_available

        def ready() -> bool:
            if ep._closed_reason is not None:
                raise ep._closed_error()  # closed while it waited, as a blocked send
            return tx_available()

        return ready

    def _check_tx_ready(self) -> None:
        if not self.capabilities.tx_ready:
            raise NotSupported(f"link {self.name}: its backend cannot tell when a send would "
                               "not block")

    # -- zero copy ---------------------------------------------------------------------------
    def _loan_ready(self, ep: Endpoint,
                    got: list[tuple[Any, memoryview]]) -> Callable[[], bool]:
        backend = self.backend

        def ready() -> bool:
            if ep._closed_reason is not None:
                raise ep._closed_error()
            slot = backend.loan()
            if slot is None:
                return False
            got.append(slot)
            return True

        return ready

    def _check_loan(self) -> None:
        if not self.capabilities.tx_loan:
            raise NotSupported(f"link {self.name}: its backend cannot loan transmit buffers "
                               "(tx_loan): use send()")

    def loan(self, ep: Endpoint, timeout: float | None) -> TxLoan:
        """A transmit buffer for ``ep`` to fill (see :meth:`Endpoint.loan`)."""
        self._check_loan()
        with self._lock:  # first without waiting, as a send: the common case
            if self._closed:
                raise self._closed_error()
            if self.backend.down is not None:
                raise self.backend.down.again()
            slot = self.backend.loan()
        if slot is not None:
            return self._lend(ep, *slot)
        if timeout == 0:
            raise self.backend.no_buffer_error()
        got: list[tuple[Any, memoryview]] = []
        if not self.wait_until(self._loan_ready(ep, got), timeout, tx=True):
            raise self._send_timeout(timeout)
        return self._lend(ep, *got[0])

    async def aloan(self, ep: Endpoint, timeout: float | None) -> TxLoan:
        self._check_loan()
        got: list[tuple[Any, memoryview]] = []
        if not await self.async_wait_until(self._loan_ready(ep, got), timeout, tx=True):
            raise self._send_timeout(timeout)
        return self._lend(ep, *got[0])

    def _lend(self, ep: Endpoint, handle: Any, view: memoryview) -> TxLoan:
        loan = TxLoan(ep, handle, view)
        self._handed_out.add(loan)
        return loan

    def _send_loan(self, ep: Endpoint, handle: Any, dst: int, length: int) -> None:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            backend = self.backend
            if ep.closed:
                backend.drop_loan(handle)
                raise ep._closed_error()
            if backend.down is not None:
                backend.drop_loan(handle)
                raise backend.down.again()
            self._check_length(length)
            backend.send_loan(handle, ep.addr, dst, length)
            self._count_sent(ep)

    def _drop_loan(self, handle: Any) -> None:
        with self._lock:
            if not self._closed:
                self.backend.drop_loan(handle)
        self._wait.tell()

    def _release_held(self, handle: Any) -> None:
        """A held message was released by its user."""
        with self._lock:
            if not self._closed:
                self.backend.release(handle)
                self._held -= 1
        self._wait.tell()

    def _give_back(self, handle: Any, *, loan: bool) -> None:
        """A held message or a loan was garbage-collected: give its buffer back. The
        collector may run in a thread that holds the lock: never wait for it."""
        self._returns.append((handle, loan))
        if self._lock.acquire(blocking=False):
            try:
                self._process_returns()
            finally:
                self._lock.release()
        self.backend.waiter.wake()  # else the next one to take the lock does it

    def _process_returns(self) -> None:  # lock held
        while self._returns:
            handle, loan = self._returns.popleft()
            if self._closed:
                continue
            if loan:
                self.backend.drop_loan(handle)
            else:
                self.backend.release(handle)
                self._held -= 1
        self._wait.tell()

    def _copy_out(self, msg: HeldMessage) -> bytes:
        """A held message's bytes, its buffer given back (lock held)."""
        data = bytes(msg.view)
        self._release_all([(msg, msg.src)])
        return data

    def _release_all(self, items: Iterable[Any], *, lock: bool = False) -> None:
        """Give back the buffers of the held messages among ``items`` (queue entries or
        messages) unused; with ``lock`` the lock is taken here."""
        held = [item for entry in items
                for item in ((entry[0],) if isinstance(entry, tuple) else (entry,))
                if isinstance(item, HeldMessage) and not item.released]
        if not held:
            return
        if lock:
            with self._lock:
                self._release_all(held)
            return
        for msg in held:
            handle = msg._invalidate()
            if not self._closed:
                self.backend.release(handle)
                self._held -= 1

    def _as_held(self, item: Any, src: int) -> HeldMessage:
        """A queue entry as a held message (a copied one wraps its bytes)."""
        return item if isinstance(item, HeldMessage) else HeldMessage.of_copy(item, src)

    # -- state and lifetime ------------------------------------------------------------------
    def statistics(self) -> LinkStatistics:
        """A snapshot of the counters; never waits for the link's lock."""
        b = self.backend
        state = ("closed" if self._closed else "down" if b.down else
                 "receive broken" if b.rx_broken else "send broken" if b.tx_broken else "up")
        return LinkStatistics(
            name=self.name, state=state, mtu=self.mtu,
            messages_sent=self.messages_sent, messages_received=self.messages_received,
            dropped_unknown_dst=self.core.dropped_unknown_dst, ns_errors=self.core.ns_errors,
            safety_net_wakeups=self._wait.safety_net_wakeups, sleeps=self._wait.sleeps,
            rx_held=self._held, max_held=self.max_held, rx_backpressure=self.rx_backpressure,
            endpoints=tuple(ep.statistics() for ep in self.endpoints()),
            backend=dict(b.statistics()),
        )

    def close(self, reason: str | None = None) -> None:
        """Close every endpoint and the backend.

        Without ``reason`` (an orderly close) announced endpoints are announced gone
        while the link is up; with one (e.g. "the processor crashed") the link is lost:
        blocked and later calls raise LinkDown with that reason. Once this returns, no
        thread touches the backend any more, no callback runs (but one of this link that
        called close() itself) and every held message and loan is void.
        """
        if self._closed:
            # A callback that closed its own link may still be returning through the
            # dispatcher (holding views of the rings): this close waits for it as well.
            self._dispatch.stop(DISPATCH_STOP_TIMEOUT)
            return
        if reason is None:
            # The end-of-service announcements share one deadline: a stuck peer costs
            # ANNOUNCE_END_TIMEOUT in all, not per endpoint.
            end = time.monotonic() + ANNOUNCE_END_TIMEOUT
            for ep in self.endpoints():
                self.destroy_endpoint(ep, max(0.0, end - time.monotonic()))
        with self._lock:
            if reason is not None:
                down = self.backend.down
                self._lost = str(down) if down is not None else reason
            for ep in self.endpoints():
                self._close_endpoint(ep, reason or "link closed", lost=reason is not None)
            self.core.endpoints.clear()
            self._closed = True
        self._wait.wake_all()
        self._wait.wait_poller_gone(1.0)
        self._dispatch.stop(DISPATCH_STOP_TIMEOUT)
        with self._lock:
            for item in list(self._handed_out):  # views of memory about to go
                item._invalidate()
            self.backend.close()

    def mark_down(self, reason: str) -> None:
        """The peer is gone: fail every blocked and later call with LinkDown.

        Takes no lock: it is called from where the peer's end is noticed, which may be a
        watch run by a thread that holds the link's lock.
        """
        self.backend.mark_down(reason)
        self._wait.wake_all()

    def __repr__(self) -> str:
        return f"<Link {self.name!r} {self.statistics().state}>"


#: the name the link had when rpmsg over virtio was its only backend
RpmsgBus = Link
