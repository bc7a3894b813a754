"""The sans-IO link core: endpoint table, addresses, name service, channels and drivers.

A plain object in the spirit of h11: it holds the state of one link and, fed what the
backend received, says what must happen next. It has no threads, locks, clocks or I/O
and runs no user code: a driver's ``probe``/``remove`` come back as :class:`Probe` and
:class:`Unbind` events for the runtime to carry out (outside its lock), announcements
as name-service payloads for the runtime to send. It can be driven and fuzzed alone.

Endpoints are the runtime's objects; the core reads and writes their ``addr``, ``name``,
``dst`` and ``announced`` fields and keeps them in its table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import AddressError, RemoteProtocolError
from ..rpmsg.wire import (
    RPMSG_ADDR_ANY,
    RPMSG_NS_ADDR,
    RPMSG_NS_CREATE,
    RPMSG_NS_DESTROY,
    NameServiceMessage,
)
from .backend import Capabilities, SeenChannel
from .channel import RpmsgChannel, RpmsgDriver

if TYPE_CHECKING:
    from .endpoint import Endpoint

log = logging.getLogger(__name__)

#: announced channels kept from the peer; more are refused (and counted)
MAX_REMOTE_CHANNELS = 1024


@dataclass(frozen=True)
class NameServiceRules:
    """Where name-service dialects differ (passed once, by the backend's profile)."""

    #: OpenAMP: an announcement fills in the destination of a same-named local endpoint
    #: that has none yet (its service was created before the peer announced)
    adopt_announced: bool = False
    #: OpenAMP: the end of a service is announced only for addresses from this one on
    announce_destroy_min_addr: int = 0


@dataclass(frozen=True, slots=True)
class Probe:
    """Bind ``driver`` to ``channel``: create its endpoint, then call ``driver.probe``."""

    driver: RpmsgDriver
    channel: RpmsgChannel


@dataclass(frozen=True, slots=True)
class Unbind:
    """``channel`` is gone: call ``driver.remove`` (if ``driver`` and ``run_remove``), then
    close ``endpoints`` with ``reason`` (as LinkDown when ``lost``: the peer went away)."""

    channel: RpmsgChannel
    driver: RpmsgDriver | None
    endpoints: tuple[Endpoint, ...]
    reason: str
    lost: bool = False
    run_remove: bool = True


Event = Probe | Unbind


class LinkCore:
    """The state of one link (see the module docstring)."""

    def __init__(self, capabilities: Capabilities, rules: NameServiceRules | None = None,
                 *, name: str = "link", in_use: type[AddressError] = AddressError) -> None:
        self.capabilities = capabilities
        self._in_use = in_use  # what an explicit address already taken raises
        self.rules = rules or NameServiceRules()
        self.name = name
        self.name_service = capabilities.name_service
        self.endpoints: dict[int, Endpoint] = {}
        self.channels: list[RpmsgChannel] = []
        self.drivers: list[RpmsgDriver] = []
        self.dropped_unknown_dst = 0
        self.ns_errors = 0

    # -- addresses ---------------------------------------------------------------------------
    def allocate_address(self) -> int:
        """The lowest free dynamic address (as Linux's idr_alloc)."""
        base = self.capabilities.dynamic_base
        if base is None:
            raise AddressError("this link's backend assigns addresses itself")
        last = self.capabilities.address_range[1]
        addr = base
        endpoints = self.endpoints
        while addr in endpoints:
            addr += 1
        if addr > last:
            raise AddressError("no free address left: close endpoints you no longer use")
        return addr

    def check_address(self, addr: int) -> None:
        """Refuse an explicit local address outside the backend's range or in use."""
        first, last = self.capabilities.address_range
        if not first <= addr <= last:
            raise AddressError(f"address 0x{addr:x} is outside 0x{first:x}..0x{last:x} of this "
                               "link's backend")
        if addr in self.endpoints:
            raise self._in_use(f"address 0x{addr:x} is in use: pick another or RPMSG_ADDR_ANY")

    def add_endpoint(self, ep: Endpoint) -> None:
        self.endpoints[ep.addr] = ep

    def remove_endpoint(self, ep: Endpoint) -> bool:
        """Take ``ep`` out of the table (False if it was not in it); a channel bound to it
        is free for the next opener."""
        if self.endpoints.get(ep.addr) is not ep:
            return False
        del self.endpoints[ep.addr]
        for channel in self.channels:
            if channel.endpoint is ep:
                channel.endpoint = None
        return True

    def route(self, dst: int) -> Endpoint | None:
        """The endpoint a message to ``dst`` is for (None: dropped and counted)."""
        ep = self.endpoints.get(dst)
        if ep is None:
            self.dropped_unknown_dst += 1
            if self.dropped_unknown_dst == 1 or log.isEnabledFor(logging.DEBUG):
                log.warning("%s: message to unknown address 0x%x dropped", self.name, dst)
        return ep

    # -- announcements -----------------------------------------------------------------------
    def announcement(self, ep: Endpoint, *, destroy: bool) -> bytes | None:
        """The name-service message that announces ``ep`` (or its end); None if nothing is
        to be announced."""
        if not (ep.announced and self.name_service) or ep.name is None:
            return None
        if destroy and ep.addr < self.rules.announce_destroy_min_addr:
            return None
        return NameServiceMessage(ep.name, ep.addr,
                                  RPMSG_NS_DESTROY if destroy else RPMSG_NS_CREATE).encode()

    def adopt(self, ep: Endpoint) -> None:
        """OpenAMP: a named endpoint without a destination takes that of a channel the peer
        announced under its name before the endpoint existed."""
        if not self.rules.adopt_announced or ep.dst != RPMSG_ADDR_ANY:
            return
        for channel in self.channels:
            if channel.name == ep.name and channel.endpoint is None and not channel.removed:
                ep.dst = channel.dst
                channel.src = ep.addr
                channel.endpoint = ep
                return

    def name_service_message(self, payload: bytes, src: int) -> list[Event]:
        """The peer announced a channel (or its end)."""
        try:
            msg = NameServiceMessage.decode(payload)
        except RemoteProtocolError as exc:
            # str: a record holding the exception would pin the frames of the receive loop,
            # and with them the views of shared memory they hold
            self._ns_error("bad name-service message from 0x%x: %s", src, str(exc))
            return []
        return self._remote_destroy(msg) if msg.is_destroy else self._remote_create(msg)

    def _ns_error(self, fmt: str, *args: object) -> None:
        """Count a bad announcement; only the first is logged as a warning (peers flood)."""
        self.ns_errors += 1
        level = logging.WARNING if self.ns_errors == 1 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%s: " + fmt, self.name, *args)

    def _remote_create(self, msg: NameServiceMessage) -> list[Event]:
        if any(c.name == msg.name and c.dst == msg.addr and not c.removed
               for c in self.channels):
            self._ns_error("duplicate announcement of %r at 0x%x refused", msg.name, msg.addr)
            return []
        if len(self.channels) >= MAX_REMOTE_CHANNELS:
            self._ns_error("announcement of %r refused: %d channels already", msg.name,
                           len(self.channels))
            return []
        channel = RpmsgChannel(msg.name, msg.addr)
        self.channels.append(channel)
        if self.rules.adopt_announced:
            for ep in self.endpoints.values():
                if (ep.name == msg.name and ep.dst == RPMSG_ADDR_ANY
                        and ep.addr != RPMSG_NS_ADDR):
                    ep.dst = msg.addr
                    channel.endpoint = ep
                    channel.src = ep.addr
                    return []
        return [*self._match(channel)]

    def _remote_destroy(self, msg: NameServiceMessage) -> list[Event]:
        for channel in self.channels:
            if channel.name == msg.name and channel.dst == msg.addr and not channel.removed:
                return [self._unbind(channel, f"channel {msg.name!r} was removed by the peer")]
        self._ns_error("destroy of unknown channel %r at 0x%x", msg.name, msg.addr)
        return []

    # -- channels and drivers ----------------------------------------------------------------
    def sync_channels(self, seen: Iterable[SeenChannel]) -> list[Event]:
        """The peer's channels as a discovering backend found them now: new ones are added
        (and matched to drivers), vanished ones removed as if the peer had announced their
        end; the local address of one without an endpoint follows what was seen."""
        current = {(c.name, c.dst): c.src for c in seen}
        events: list[Event] = []
        for channel in list(self.channels):
            key = (channel.name, channel.dst)
            if channel.static:
                continue
            if key not in current:
                events.append(self._unbind(channel,
                                           f"channel {channel.name!r} was removed by the peer"))
            elif channel.endpoint is None:
                channel.src = current[key]
        known = {(c.name, c.dst) for c in self.channels}
        for (name, dst), src in current.items():
            if (name, dst) in known:
                continue
            if len(self.channels) >= MAX_REMOTE_CHANNELS:
                self._ns_error("channel %r refused: %d channels already", name,
                               len(self.channels))
                continue
            channel = RpmsgChannel(name, dst, src=src)
            self.channels.append(channel)
            events += self._match(channel)
        return events

    def find_channels(self, name: str) -> list[RpmsgChannel]:
        return [c for c in self.channels if c.name == name and not c.removed]

    def add_static_channel(self, name: str, dst: int, src: int) -> tuple[RpmsgChannel,
                                                                         list[Probe]]:
        channel = RpmsgChannel(name, dst, src=src, static=True)
        self.channels.append(channel)
        return channel, self._match(channel)

    def register_driver(self, driver: RpmsgDriver) -> list[Probe]:
        """Add ``driver``; it is probed on every matching channel without an endpoint."""
        self.drivers.append(driver)
        return [Probe(driver, c) for c in self.channels
                if c.endpoint is None and c.driver is None and not c.removed
                and driver.matches(c.name)]

    def unregister_driver(self, driver: RpmsgDriver) -> list[Unbind]:
        if driver in self.drivers:
            self.drivers.remove(driver)
        return [self._unbind(c, "driver unregistered", keep=True) for c in list(driver.channels)]

    def bind(self, driver: RpmsgDriver, channel: RpmsgChannel, ep: Endpoint) -> None:
        """Record that ``driver``'s endpoint ``ep`` serves ``channel`` (the runtime made it)."""
        channel.endpoint = ep
        channel.driver = driver
        driver.channels.append(channel)

    def remove_channels(self, reason: str, *, lost: bool) -> list[Unbind]:
        """Every channel is gone (the link goes away)."""
        return [self._unbind(c, reason, lost=lost) for c in list(self.channels)]

    def _match(self, channel: RpmsgChannel) -> list[Probe]:
        for driver in self.drivers:
            if driver.matches(channel.name):
                return [Probe(driver, channel)]
        return []

    def detach(self, channel: RpmsgChannel, reason: str) -> Unbind:
        """Take ``channel`` from its driver and endpoints, keeping the channel (a probe
        failed)."""
        return self._unbind(channel, reason, keep=True)

    def _unbind(self, channel: RpmsgChannel, reason: str, *, lost: bool = False,
                keep: bool = False) -> Unbind:
        """Detach ``channel`` from its driver and endpoints (and drop it unless ``keep``:
        only its driver went)."""
        if not keep:
            channel.removed = True
            if channel in self.channels:
                self.channels.remove(channel)
        driver = channel.driver
        channel.driver = None
        if driver is not None and channel in driver.channels:
            driver.channels.remove(channel)
        bound: list[Endpoint] = []
        ep = channel.endpoint
        channel.endpoint = None
        if ep is not None:
            bound.append(ep)
        bound += [e for e in self.endpoints.values() if e.priv is channel and e is not ep]
        for e in bound:  # their messages are dropped from now on
            if self.endpoints.get(e.addr) is e:
                del self.endpoints[e.addr]
        return Unbind(channel, driver, tuple(bound), reason, lost=lost)

