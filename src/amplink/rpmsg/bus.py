"""The rpmsg bus: endpoints, addresses, name service, channels and drivers over a Transport.

No background thread: the thread that waits (in ``recv`` or a blocked ``send``) drains
the transport and dispatches to every endpoint. One waiting thread at a time sleeps on
the doorbell (the *poller*); the others wait on a condition it signals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._args import callable_arg, int_arg, payload_arg, timeout_arg
from ..errors import (
    AddressError,
    AmplinkError,
    EndpointClosed,
    InvalidArgument,
    InvalidArgumentType,
    LinkDown,
    MessageTooLarge,
    NoBufferAvailable,
    PeerTimeout,
    SendTimeout,
)
from .channel import RpmsgChannel, RpmsgDriver
from .endpoint import DEFAULT_SEND_TIMEOUT, Callback, Endpoint
from .stats import LinkStatistics
from .transport import Transport
from .wire import (
    RPMSG_ADDR_ANY,
    RPMSG_NS_ADDR,
    RPMSG_NS_CREATE,
    RPMSG_NS_DESTROY,
    RPMSG_RESERVED_ADDRESSES,
    NameServiceMessage,
    RemoteProtocolError,
    check_name,
)

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

#: longest sleep before the rings are re-checked even without a kick (the safety net)
DEFAULT_SAFETY_TIMEOUT = 0.05
#: how long creating an announced endpoint waits for a TX buffer for its announcement
ANNOUNCE_TIMEOUT = 1.0
#: the end-of-service announcement is best effort: closing must not hang on a stuck peer
ANNOUNCE_END_TIMEOUT = 0.2
#: buffers taken from the transport per call, and calls per drain
_DRAIN_BATCH = 64
_DRAIN_BATCHES = 16
#: announced channels kept from the peer; more are refused (and counted)
MAX_REMOTE_CHANNELS = 1024


def _check_addr(addr: int, what: str) -> int:
    return int_arg(addr, what, minimum=0, maximum=RPMSG_ADDR_ANY - 1)


class RpmsgBus:
    """One rpmsg link: the endpoint table and name service over one transport.

    ``poll_mode`` makes waiting spin on the rings instead of sleeping on the doorbell;
    ``spin`` is how long (seconds) to spin before each sleep in blocking mode.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        name: str = "rpmsg",
        poll_mode: bool = False,
        spin: float = 0.0,
        safety_timeout: float = DEFAULT_SAFETY_TIMEOUT,
        announce_destroy_min_addr: int = 0,
    ) -> None:
        self.transport = transport
        self.name = name
        self.mtu = transport.mtu
        self.poll_mode = poll_mode
        self.spin = timeout_arg(spin) or 0.0
        self.safety_timeout = safety_timeout
        # OpenAMP announces the end of a service only for dynamic addresses (>= 1024)
        self.announce_destroy_min_addr = announce_destroy_min_addr
        self._lock = threading.RLock()
        self._cond = threading.Condition(threading.Lock())
        self._poller: int | None = None  # the thread watching the rings, if any
        self._followers = 0
        self._drainer: int | None = None  # the thread delivering messages, if any
        self._generation = 0  # bumped whenever waiters must re-check their condition
        self._endpoints: dict[int, Endpoint] = {}
        self._channels: list[RpmsgChannel] = []
        self._drivers: list[RpmsgDriver] = []
        self._closed = False
        self._lost: str | None = None  # why the link was closed because the peer is gone
        self._async_futures: set[asyncio.Future[None]] = set()
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_fd = -1
        self._transport_closed = False
        self.messages_sent = 0
        self.messages_received = 0
        self.dropped_unknown_dst = 0
        self.ns_errors = 0
        self.safety_net_wakeups = 0
        self.sleeps = 0
        transport.disarm()
        if transport.supports_ns:
            self._endpoints[RPMSG_NS_ADDR] = Endpoint(
                self, RPMSG_NS_ADDR, name="rpmsg-ns", dst=RPMSG_ADDR_ANY,
                callback=self._on_ns_message, announced=False,
            )

    # -- addresses and endpoints --
    def _allocate_addr(self) -> int:
        # Linux (idr_alloc) hands out the lowest free dynamic address.
        addr = RPMSG_RESERVED_ADDRESSES
        endpoints = self._endpoints
        while addr in endpoints:
            addr += 1
        if addr >= RPMSG_ADDR_ANY:
            raise AddressError("no free rpmsg address left: close endpoints you no longer use")
        return addr

    def create_endpoint(
        self,
        name: str | None = None,
        *,
        addr: int = RPMSG_ADDR_ANY,
        dst: int = RPMSG_ADDR_ANY,
        callback: Callback | None = None,
        announce: bool = False,
        priv: Any = None,
    ) -> Endpoint:
        """Create a local endpoint.

        ``addr`` ANY picks the lowest free dynamic address (>= 1024); an explicit address
        (reserved ones below 1024 included) must be free. ``announce`` sends a
        name-service create for ``name`` if the peer supports the name service.
        """
        if name is not None:
            check_name(name)
        if dst != RPMSG_ADDR_ANY:
            _check_addr(dst, "dst")
        if addr != RPMSG_ADDR_ANY:
            _check_addr(addr, "addr")
        callable_arg(callback, "callback")
        if announce and name is None:
            raise InvalidArgument("an announced endpoint needs a name")
        with self._lock:
            self._check_usable()
            if addr == RPMSG_ADDR_ANY:
                addr = self._allocate_addr()
            else:
                if addr in self._endpoints:
                    raise AddressError(f"rpmsg address 0x{addr:x} is in use: pick another or "
                                       "RPMSG_ADDR_ANY")
            ep = Endpoint(self, addr, name=name, dst=dst, callback=callback,
                          announced=announce and self.transport.supports_ns, priv=priv)
            self._endpoints[addr] = ep
        if ep.announced:
            try:
                self._announce(ep, RPMSG_NS_CREATE, ANNOUNCE_TIMEOUT)
            except BaseException:
                with self._lock:
                    if self._endpoints.get(ep.addr) is ep:
                        del self._endpoints[ep.addr]
                ep._mark_closed("its announcement could not be sent")
                raise
        return ep

    def destroy_endpoint(self, ep: Endpoint, announce_timeout: float = ANNOUNCE_END_TIMEOUT
                         ) -> None:
        """Remove ``ep``; once this returns no callback for it runs."""
        with self._lock:
            if self._endpoints.get(ep.addr) is not ep:
                ep._mark_closed("closed")
                return
            del self._endpoints[ep.addr]
            ep._mark_closed("closed by this side")
            for channel in self._channels:  # the channel is free for the next opener
                if channel.endpoint is ep:
                    channel.endpoint = None
            announce = (ep.announced and self.transport.down is None and not self._closed
                        and ep.addr >= self.announce_destroy_min_addr and announce_timeout > 0)
        if announce:
            try:
                self._announce(ep, RPMSG_NS_DESTROY, announce_timeout)
            except (LinkDown, SendTimeout, EndpointClosed) as exc:
                log.info("%s: could not announce the end of %r: %s", self.name, ep.name, exc)
        self._wake_waiters()

    def endpoints(self) -> list[Endpoint]:
        with self._lock:
            return [ep for addr, ep in self._endpoints.items() if addr != RPMSG_NS_ADDR]

    def _announce(self, ep: Endpoint, flags: int, timeout: float) -> None:
        assert ep.name is not None
        msg = NameServiceMessage(ep.name, ep.addr, flags).encode()
        self.send_message(None, ep.addr, RPMSG_NS_ADDR, msg, timeout)

    # -- channels and drivers --
    def channels(self) -> list[RpmsgChannel]:
        with self._lock:
            return list(self._channels)

    def register_driver(self, driver: RpmsgDriver) -> None:
        """Register ``driver`` and probe it on every matching channel without an endpoint."""
        if not isinstance(driver, RpmsgDriver):
            raise InvalidArgumentType(f"driver must be an RpmsgDriver, got {driver!r}")
        with self._lock:
            self._check_usable()
            self._drivers.append(driver)
            for channel in self._channels:
                if channel.endpoint is None and driver.matches(channel.name):
                    self._probe(driver, channel)

    def unregister_driver(self, driver: RpmsgDriver) -> None:
        with self._lock:
            if driver in self._drivers:
                self._drivers.remove(driver)
            for channel in list(driver.channels):
                self._unbind(channel, "driver unregistered")

    def add_static_channel(self, name: str, dst: int, src: int = RPMSG_ADDR_ANY) -> RpmsgChannel:
        """Declare a channel the peer never announces; matching drivers are probed."""
        check_name(name)
        _check_addr(dst, "dst")
        with self._lock:
            channel = RpmsgChannel(name, dst, src=src, static=True)
            self._channels.append(channel)
            self._match(channel)
        return channel

    def open_channel(self, name: str, *, timeout: float | None = 10.0,
                     callback: Callback | None = None) -> Endpoint:
        """Wait for channel ``name`` and return a new local endpoint bound to it."""
        channel = self.wait_channel(name, timeout)
        # a second opener gets an address of its own
        addr = channel.src if channel.endpoint is None else RPMSG_ADDR_ANY
        ep = self.create_endpoint(name, addr=addr, dst=channel.dst, callback=callback)
        with self._lock:
            if channel.removed:
                ep._mark_closed(f"channel {name!r} was removed by the peer")
            elif channel.endpoint is None:
                channel.endpoint = ep
            else:
                ep.priv = channel  # a second opener: closed when the channel goes
        return ep

    def wait_channel(self, name: str, timeout: float | None = 10.0) -> RpmsgChannel:
        """Wait until the peer announced ``name``; return the channel."""
        check_name(name)
        found: list[RpmsgChannel] = []

        def ready() -> bool:
            found[:] = [c for c in self._channels if c.name == name and not c.removed]
            return bool(found)

        if not self.wait_until(ready, timeout_arg(timeout), tx=False):
            raise PeerTimeout(f"channel {name!r} was not announced within {timeout} s: is the "
                              "firmware offering it?")
        return found[0]

    def _match(self, channel: RpmsgChannel) -> None:
        for driver in self._drivers:
            if driver.matches(channel.name):
                self._probe(driver, channel)
                return

    def _probe(self, driver: RpmsgDriver, channel: RpmsgChannel) -> None:
        ep = self.create_endpoint(channel.name, addr=channel.src, dst=channel.dst,
                                  callback=driver.callback, announce=channel.src != RPMSG_ADDR_ANY)
        channel.endpoint = ep
        channel.driver = driver
        driver.channels.append(channel)
        if driver.probe is not None:
            try:
                driver.probe(channel)
            except Exception:
                log.exception("%s: probe of driver %r on %r failed", self.name, driver.name,
                              channel.name)
                self._unbind(channel, "probe failed", run_remove=False)

    def remove_channels(self, reason: str, *, lost: bool) -> None:
        """Unbind every channel (drivers' ``remove`` runs) and close their endpoints with
        ``reason``: LinkDown when ``lost`` (the peer went away), else EndpointClosed."""
        with self._lock:
            for channel in list(self._channels):
                channel.removed = True
                self._unbind(channel, reason, link_lost=lost)
            self._channels.clear()

    def _unbind(self, channel: RpmsgChannel, reason: str, *, run_remove: bool = True,
                link_lost: bool = False) -> None:
        driver = channel.driver
        if driver is not None:
            if run_remove and driver.remove is not None:
                try:
                    driver.remove(channel)
                except Exception:
                    log.exception("%s: remove of driver %r failed", self.name, driver.name)
            if channel in driver.channels:
                driver.channels.remove(channel)
            channel.driver = None
        ep = channel.endpoint
        channel.endpoint = None
        if ep is not None:
            if self._endpoints.get(ep.addr) is ep:  # its address may be another's by now
                del self._endpoints[ep.addr]
            ep._mark_closed(reason, link_lost=link_lost)
        for other in list(self._endpoints.values()):
            if other.priv is channel:
                self._endpoints.pop(other.addr, None)
                other._mark_closed(reason, link_lost=link_lost)

    def _on_ns_message(self, _ep: Endpoint, payload: bytes, src: int) -> None:
        try:
            msg = NameServiceMessage.decode(payload)
        except RemoteProtocolError as exc:
            self._ns_error("bad name-service message from 0x%x: %s", src, exc)
            return
        if msg.is_destroy:
            self._remote_destroy(msg)
        else:
            self._remote_create(msg)
        self._wake_waiters()

    def _ns_error(self, fmt: str, *args: object) -> None:
        """Count a bad announcement; only the first is logged as a warning (peers flood)."""
        self.ns_errors += 1
        level = logging.WARNING if self.ns_errors == 1 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%s: " + fmt, self.name, *args)

    def _remote_create(self, msg: NameServiceMessage) -> None:
        if any(c.name == msg.name and c.dst == msg.addr and not c.removed
               for c in self._channels):
            self._ns_error("duplicate announcement of %r at 0x%x refused", msg.name, msg.addr)
            return
        if len(self._channels) >= MAX_REMOTE_CHANNELS:
            self._ns_error("announcement of %r refused: %d channels already", msg.name,
                           len(self._channels))
            return
        channel = RpmsgChannel(msg.name, msg.addr)
        self._channels.append(channel)
        for ep in self._endpoints.values():
            # OpenAMP: an announcement names the peer of a local endpoint still without one
            if ep.name == msg.name and ep.dst == RPMSG_ADDR_ANY and ep.addr != RPMSG_NS_ADDR:
                ep.dst = msg.addr
                channel.endpoint = ep
                channel.src = ep.addr
                return
        self._match(channel)

    def _remote_destroy(self, msg: NameServiceMessage) -> None:
        for channel in self._channels:
            if channel.name == msg.name and channel.dst == msg.addr and not channel.removed:
                channel.removed = True
                self._channels.remove(channel)
                self._unbind(channel, f"channel {msg.name!r} was removed by the peer")
                return
        self._ns_error("destroy of unknown channel %r at 0x%x", msg.name, msg.addr)

    # -- receiving --
    def _deliver(self, src: int, dst: int, payload: bytes) -> None:
        ep = self._endpoints.get(dst)
        if ep is None:
            self.dropped_unknown_dst += 1
            if self.dropped_unknown_dst == 1 or log.isEnabledFor(logging.DEBUG):
                log.warning("%s: message from 0x%x to unknown address 0x%x dropped", self.name,
                            src, dst)
            return
        self.messages_received += 1
        ep._deliver(payload, src)

    def _drain(self) -> int:
        """Deliver everything the transport has (lock held).

        Not re-entered: a callback that blocks in send() waits without draining, so
        deliveries neither recurse nor overtake the message being handled.
        """
        if self._drainer is not None:
            return 0
        self._drainer = threading.get_ident()
        before = self.messages_received
        try:
            receive = self.transport.receive
            # Bounded, so that waiters re-check their condition and timeout even while a
            # peer floods; whatever is left is taken on the next pass.
            for _ in range(_DRAIN_BATCHES):
                if receive(self._deliver, _DRAIN_BATCH) < _DRAIN_BATCH or self._closed:
                    break
        finally:
            self._drainer = None
            if self._closed:  # a callback closed the link: finish its close here
                self._close_transport()
        total = self.messages_received - before
        if total:
            self._tell_waiters()
        return total

    def _tell_waiters(self) -> None:
        """News was delivered (lock held): whoever waits elsewhere must re-check."""
        self._generation += 1
        poller = self._poller
        if poller is not None and poller != threading.get_ident():
            self.transport.waiter.wake()  # the sleeping thread may wait for this
        if self._followers:
            with self._cond:
                self._cond.notify_all()
        loop = self._async_loop
        if self._async_futures and loop is not None:
            try:
                loop.call_soon_threadsafe(self._async_readable)
            except RuntimeError:  # that loop is closed: its waiters are gone
                pass

    def poll(self) -> int:
        """Deliver what has arrived, without waiting; return the number of messages.

        Returns 0 at once if another thread holds the link (it is delivering, or a
        callback of it waits in a send).
        """
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            self._check_usable()
            return self._drain()
        finally:
            self._lock.release()

    def _closed_error(self) -> AmplinkError:
        """The error for a call on the closed link: LinkDown if the peer went away."""
        if self._lost is not None:
            return LinkDown(f"link {self.name}: {self._lost}")
        return EndpointClosed(f"link {self.name} is closed")

    def _check_usable(self) -> None:
        if self._closed:
            raise self._closed_error()
        transport = self.transport
        if transport.down is None and transport.waiter.poll_sources():
            poller = self._poller  # we may have taken the kick the sleeping thread waits for
            if poller is not None and poller != threading.get_ident():
                transport.waiter.wake()
        if transport.down is not None:
            raise LinkDown(str(transport.down))

    def _wake_waiters(self) -> None:
        self._generation += 1
        self.transport.waiter.wake()
        with self._cond:
            self._cond.notify_all()

    def _acquire(self, deadline: float | None) -> bool:
        """Take the lock, giving up at ``deadline`` (a callback may hold it in a send)."""
        lock = self._lock
        if deadline is None or lock.acquire(False):  # uncontended: no clock read
            return lock.acquire() if deadline is None else True
        return lock.acquire(timeout=max(0.0, deadline - time.monotonic()))

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
        broken = self.transport.broken(tx=tx)
        if broken is not None:
            raise LinkDown(str(broken))
        return False

    def wait_until(self, ready: Callable[[], bool], timeout: float | None, *, tx: bool) -> bool:
        """Drain and wait until ``ready()`` (called with the lock held) or the timeout.

        Returns False on timeout; raises LinkDown or EndpointClosed (link closed).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        transport = self.transport
        lock = self._lock
        me = threading.get_ident()
        if not tx and self._drainer == me:
            raise RuntimeError(
                "a callback cannot wait for messages: they are delivered by the very drain "
                "that runs the callback (use try_recvfrom, or wait in another thread)")
        while True:
            if not self._acquire(deadline):
                return False
            try:
                if self._settle(ready, tx):
                    return True
                generation = self._generation
                poller = self._poller
                # Another thread sleeps on the doorbell: have the peer ring for our
                # direction too, or its kick would not come (that thread wakes us).
                if (poller is not None and poller != me and not self.poll_mode
                        and transport.arm(rx=not tx, tx=tx)):
                    continue
            finally:
                lock.release()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            # One thread (the poller) watches the rings; the others wait for its news.
            with self._cond:
                if self._poller is not None and self._poller != me:
                    self._followers += 1
                    try:
                        if self._generation == generation:
                            self._cond.wait(self.safety_timeout if remaining is None
                                            else min(remaining, self.safety_timeout))
                    finally:
                        self._followers -= 1
                    continue
                outer = self._poller  # a callback of ours may wait inside our own wait
                self._poller = me
            try:
                if self.poll_mode:
                    self._spin(remaining, tx, generation)
                else:
                    self._sleep(remaining, tx, generation)
            finally:
                with self._cond:
                    self._poller = outer
                    self._cond.notify_all()

    def _spin(self, remaining: float | None, tx: bool, generation: int) -> None:
        transport = self.transport
        pending = transport.tx_available if tx else transport.rx_pending
        end = None if remaining is None else time.monotonic() + remaining
        spins = 0
        while not self._closed and not pending():
            spins += 1
            if spins & 0x3FF:
                continue
            # Now and then: let other threads run, notice a dead peer, news, the time.
            time.sleep(0)
            transport.waiter.poll_sources()
            if transport.broken(tx=tx) is not None:
                return
            if generation != self._generation:
                return
            if end is not None and time.monotonic() >= end:
                return

    def _sleep(self, remaining: float | None, tx: bool, generation: int) -> None:
        transport = self.transport
        pending = transport.tx_available if tx else transport.rx_pending
        if self.spin:
            end = time.monotonic() + self.spin
            while time.monotonic() < end:
                if self._closed or pending():
                    return
        with self._lock:
            if generation != self._generation or self._closed:
                return  # another thread delivered meanwhile: re-check before sleeping
            if transport.arm(rx=not tx, tx=tx):
                transport.disarm()
                return
        limit = self.safety_timeout
        polling_tx = tx and not transport.tx_kicks
        if polling_tx:
            limit = transport.tx_poll_interval  # no kick will come: this is the poll period
        timeout = limit if remaining is None else min(remaining, limit)
        self.sleeps += 1
        signalled = transport.waiter.wait(timeout)
        with self._lock:
            if self._closed:
                return
            transport.disarm()
            if not signalled and not polling_tx and pending():
                self.safety_net_wakeups += 1
            transport.waiter.reset_wake()

    async def async_wait_until(self, ready: Callable[[], bool], timeout: float | None, *,
                               tx: bool) -> bool:
        """The asyncio form of :meth:`wait_until`: the loop watches the waiter's epoll fd.

        A link is awaited from one event loop at a time.
        """
        import asyncio  # here: a firmware that never awaits does not pay for its import

        loop = asyncio.get_running_loop()
        if self._async_loop is not loop:
            if self._async_futures:
                raise RuntimeError(f"link {self.name} is already awaited in another event loop")
            self._async_loop = loop
        deadline = None if timeout is None else loop.time() + timeout
        transport = self.transport
        while True:
            with self._lock:
                if self._settle(ready, tx):
                    return True
                if transport.arm(rx=not tx, tx=tx):
                    transport.disarm()
                    continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            limit = (transport.tx_poll_interval if tx and not transport.tx_kicks
                     else self.safety_timeout)
            wait = limit if remaining is None else min(remaining, limit)
            future = self._async_future(loop)
            try:
                await asyncio.wait_for(asyncio.shield(future), wait)
            except TimeoutError:
                pass
            finally:
                self._async_futures.discard(future)
                if not self._async_futures:
                    loop.remove_reader(self._async_fd)
            with self._lock:
                if self._closed:
                    continue
                transport.waiter.poll_sources()
                transport.waiter.reset_wake()
                transport.disarm()

    def _async_future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        if not self._async_futures:
            self._async_fd = self.transport.waiter.fileno()
            loop.add_reader(self._async_fd, self._async_readable)
        future: asyncio.Future[None] = loop.create_future()
        self._async_futures.add(future)
        return future

    def _async_readable(self) -> None:
        for future in self._async_futures:
            if not future.done():
                future.set_result(None)

    # -- sending --
    def _check_send(self, src: int, dst: int, data: bytes | bytearray | memoryview) -> None:
        """The checks of a send (``data`` already a byte payload)."""
        if src == RPMSG_ADDR_ANY or dst == RPMSG_ADDR_ANY:
            raise InvalidArgument(
                "rpmsg has no broadcast: src and dst must not be RPMSG_ADDR_ANY (0xffffffff)")
        _check_addr(src, "src")
        _check_addr(dst, "dst")
        if len(data) > self.mtu:
            raise MessageTooLarge(
                f"payload of {len(data)} bytes exceeds the MTU of {self.mtu}: split it or "
                "pass large data through shared memory"
            )

    def send_message(self, ep: Endpoint | None, src: int, dst: int,
                     data: bytes | bytearray | memoryview, timeout: float | None) -> None:
        """Send one message, waiting up to ``timeout`` s (0: not at all) for a buffer."""
        # The common case is checked inline: this is the hot path. Everything is checked
        # before a buffer is taken, so a bad argument never costs the ring a buffer.
        if type(data) is not bytes:
            data = payload_arg(data)
        if not (type(src) is int and type(dst) is int and 0 <= src < RPMSG_ADDR_ANY
                and 0 <= dst < RPMSG_ADDR_ANY and len(data) <= self.mtu):
            self._check_send(src, dst, data)
        if timeout != DEFAULT_SEND_TIMEOUT:
            timeout = timeout_arg(timeout)
        transport = self.transport
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if transport.down is not None:
                raise LinkDown(str(transport.down))
            if transport.try_send(src, dst, data):
                self.messages_sent += 1
                if ep is not None:
                    ep.messages_sent += 1
                return
        if timeout == 0:
            raise NoBufferAvailable()
        if not self.wait_until(lambda: transport.try_send(src, dst, data), timeout, tx=True):
            raise SendTimeout(f"no TX buffer became free within {timeout} s")
        self._count_sent(ep)

    async def async_send_message(self, ep: Endpoint, src: int, dst: int,
                                 data: bytes | bytearray | memoryview,
                                 timeout: float | None) -> None:
        data = payload_arg(data)
        self._check_send(src, dst, data)
        transport = self.transport
        ok = await self.async_wait_until(lambda: transport.try_send(src, dst, data),
                                         timeout_arg(timeout), tx=True)
        if not ok:
            raise SendTimeout(f"no TX buffer became free within {timeout} s")
        self._count_sent(ep)

    def _count_sent(self, ep: Endpoint | None) -> None:
        self.messages_sent += 1
        if ep is not None:
            ep.messages_sent += 1

    # -- running callbacks --
    def run(self, until: Callable[[], bool] | None = None, timeout: float | None = None) -> None:
        """Drain and dispatch to callbacks until ``until()`` is true, the timeout, or link down."""
        self.wait_until(until or (lambda: False), timeout, tx=False)

    def log_callback_error(self, ep: Endpoint) -> None:
        if ep.callback_errors == 1 or log.isEnabledFor(logging.DEBUG):
            log.exception("%s: callback of endpoint 0x%x raised (further ones are counted)",
                          self.name, ep.addr)

    def log_overflow(self, ep: Endpoint) -> None:
        if ep.dropped_overflow == 1 or log.isEnabledFor(logging.DEBUG):
            log.warning("%s: endpoint 0x%x holds %d unread messages: dropping new ones "
                        "(counted in statistics)", self.name, ep.addr, ep.max_queued)

    # -- state and lifetime --
    @property
    def is_up(self) -> bool:
        """True while the link is open and both directions work."""
        t = self.transport
        return not self._closed and t.down is None and t.rx_broken is None and t.tx_broken is None

    def statistics(self) -> LinkStatistics:
        with self._lock:
            t = self.transport
            state = ("closed" if self._closed else "down" if t.down else
                     "receive broken" if t.rx_broken else "send broken" if t.tx_broken else "up")
            return LinkStatistics(
                name=self.name, state=state, mtu=self.mtu,
                messages_sent=self.messages_sent, messages_received=self.messages_received,
                dropped_unknown_dst=self.dropped_unknown_dst, ns_errors=self.ns_errors,
                safety_net_wakeups=self.safety_net_wakeups, sleeps=self.sleeps,
                endpoints=tuple(ep.statistics() for ep in self.endpoints()),
                transport=dict(self.transport.statistics()),
            )

    def close(self, reason: str | None = None) -> None:
        """Close every endpoint and the transport.

        Without ``reason`` (an orderly close) announced endpoints are announced gone
        while the link is up; with one (e.g. "the processor crashed") the link is lost:
        blocked and later receives raise LinkDown with that reason.
        Once this returns, no thread touches the rings any more.
        """
        if self._closed:
            return
        if reason is None:
            # The end-of-service announcements share one deadline: a stuck peer costs
            # ANNOUNCE_END_TIMEOUT in all, not per endpoint.
            end = time.monotonic() + ANNOUNCE_END_TIMEOUT
            for ep in self.endpoints():
                self.destroy_endpoint(ep, max(0.0, end - time.monotonic()))
        with self._lock:
            self._closed = True
            if reason is not None:
                down = self.transport.down
                self._lost = str(down) if down is not None else reason
            for ep in self._endpoints.values():
                ep._mark_closed(reason or "link closed", link_lost=reason is not None)
            self._endpoints.clear()
        self._wake_waiters()
        me = threading.get_ident()
        with self._cond:  # let the thread spinning or sleeping on the rings leave them
            end = time.monotonic() + 1.0
            while self._poller not in (None, me) and time.monotonic() < end:
                self._cond.wait(0.05)
        with self._lock:
            if self._drainer is None:  # else a callback of ours closed us: _drain finishes
                self._close_transport()

    def _close_transport(self) -> None:
        """Close the transport once (lock held); every path checks _closed first."""
        if not self._transport_closed:
            self._transport_closed = True
            self.transport.close()

    def mark_down(self, reason: str) -> None:
        """The peer is gone: fail every blocked and later call with LinkDown."""
        with self._lock:
            self.transport.mark_down(reason)
        self._wake_waiters()
