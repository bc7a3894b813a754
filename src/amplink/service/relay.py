"""Relaying one processor link to the service's clients: channels, endpoints, watchers.

A :class:`ServedLink` runs one *relay thread* per processor :class:`~amplink.link.Link`,
the link's only waiting thread: it sleeps on the processor's doorbell, takes in what
arrived (the waiting thread does the work, as everywhere in amplink) and passes each
message to its client. No callback and no dispatcher thread sit in the way: a message
costs one wake-up of the service on its way back.

Each endpoint a client opens is a real endpoint of the processor's link, with an
address of its own, bound to one channel (closed by the link when the channel goes).
What the processor sends to it goes to that client (only with the "receive" right).
The channel's watchers get a copy of every message on the channel, both ways: what
the processor sends to any client's endpoint, and what any client sends to the
processor (from that client's address). The relay thread also notices channels coming and
going (from the link's core, after each drain) and tells the clients that may see them,
as rpmsg name-service messages; when the link goes down (the processor crashed or
stopped) it tells every client. Posting to a client never blocks (:mod:`.session`): a
client that does not read loses its own messages, counted, and nobody waits for it.

Messages from clients are passed to the link at once by the service's I/O thread if a
transmit buffer is free, else they wait in the client's queue (at most a window) for a
flusher thread that waits until the link is writable; a client's credits come back as
its messages are passed on. Per message, the payload is copied from the client's frame
into the processor's transmit buffer, and out of a receive buffer into one frame per
client and watcher.

Locks: ``lock`` guards the channels, the sessions and their endpoints (lists that the
relay thread reads are replaced, never changed in place); ``tx_lock`` the clients'
waiting messages. Neither is held while an endpoint is closed or a link waited on.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import (
    AddressError,
    AmplinkError,
    EndpointClosed,
    LinkDown,
    NoBufferAvailable,
)
from ..link.channel import RpmsgChannel
from ..link.endpoint import Endpoint
from ..link.runtime import Link
from ..remoteproc.api import RemoteProcessor
from ..rpmsg.wire import RPMSG_ADDR_ANY
from ..transports import service_wire as W
from ..transports.service_status import ChannelStatus, EndpointStatus, LinkStatus

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

#: how long the relay thread spins on its processor's link before it sleeps (s)
RELAY_SPIN = 200e-6

#: ``visible(session, channel_name)``: whether a client may know of a channel
VisibleFn = Callable[["Session", str], bool]
#: how long the flusher waits for a transmit buffer before it looks at its queues again
FLUSH_WAIT = 0.1
#: how long stopping waits for the relay thread
STOP_TIMEOUT = 5.0
#: how often channels are looked up on a backend that discovers them
DISCOVERY_INTERVAL = 0.5


@dataclass(eq=False)
class ClientEndpoint:
    """A client's endpoint: a real endpoint of the processor's link on one channel."""

    session: Session
    channel: ChannelState
    rights: frozenset[str]
    ep: Endpoint
    sent: int = 0
    received: int = 0
    denied: int = 0

    @property
    def addr(self) -> int:
        return self.ep.addr

    def forward(self, payload: bytes, src: int) -> None:
        """A message the processor sent to this endpoint (the relay thread)."""
        channel = self.channel
        channel.from_processor += 1
        channel.bytes_from += len(payload)
        self.received += 1
        if "receive" not in self.rights:
            self.denied += 1
        elif not self.session.post_data(src, self.ep.addr, payload):
            channel.dropped += 1
        if channel.watchers:
            channel.copy_to_watchers(src, payload, exclude=self.session)


@dataclass(eq=False)
class ChannelState:
    """A channel of the served link, the clients' endpoints on it, and its counters."""

    channel: RpmsgChannel
    endpoints: dict[int, ClientEndpoint] = field(default_factory=dict)
    #: (client, the address its copies go to); replaced, never changed in place
    watchers: tuple[tuple[Session, int], ...] = ()
    removed: bool = False
    to_processor: int = 0
    from_processor: int = 0
    bytes_to: int = 0
    bytes_from: int = 0
    dropped: int = 0
    refused: int = 0

    @property
    def name(self) -> str:
        return self.channel.name

    @property
    def dst(self) -> int:
        return self.channel.dst

    def copy_to_watchers(self, src: int, payload: bytes, exclude: Session | None) -> None:
        for session, addr in self.watchers:
            if session is not exclude and not session.post_data(src, addr, payload,
                                                                 watched=True):
                self.dropped += 1

    def status(self) -> ChannelStatus:
        return ChannelStatus(
            name=self.name, dst=self.dst,
            endpoints=tuple(EndpointStatus(ce.addr, ce.session.id, tuple(sorted(ce.rights)),
                                           ce.sent, ce.received, ce.denied)
                            for ce in list(self.endpoints.values())),
            watchers=tuple(s.id for s, _ in self.watchers),
            to_processor=self.to_processor, from_processor=self.from_processor,
            bytes_to=self.bytes_to, bytes_from=self.bytes_from, dropped=self.dropped,
            refused=self.refused)


class ServedLink:
    """One link of one processor, served to the clients attached to it (module doc)."""

    def __init__(self, processor: str, index: int, link: Link, visible: VisibleFn, *,
                 owner: RemoteProcessor | None = None) -> None:
        # The relay thread is the link's only waiter: spinning a while before it sleeps, it
        # finds the firmware's answer without a wake-up (a third of a round trip through
        # the service on 2 cores: 16 B RTT ~270 -> ~155 us, before the clients and the
        # firmware spun too). Spinners yield their core to whoever is runnable, so the
        # three processes take turns on two cores.
        link.spin = RELAY_SPIN
        self.processor = processor
        #: the processor (whose buffer port takes buffers clients lend)
        self.owner = owner
        self.index = index
        self.link = link
        self._visible = visible
        self.lock = threading.Lock()
        self.tx_lock = threading.Lock()
        self.channels: dict[RpmsgChannel, ChannelState] = {}
        #: attached clients and all their endpoints; replaced, never changed in place
        self.sessions: tuple[Session, ...] = ()
        self._endpoints: tuple[ClientEndpoint, ...] = ()
        #: why the link is gone (None while it is up)
        self.down: str | None = None
        self._stopping = False
        self._busy: list[ClientEndpoint] = []
        self._seen = -1  # the link's received count when the channels were last looked at
        self._channels_dirty = False
        self._relay: threading.Thread | None = None
        self._flusher: threading.Thread | None = None

    def start(self) -> None:
        """Take the channels there are, and start the relay thread."""
        self._sync_channels()
        self._relay = threading.Thread(target=self._run, daemon=True,
                                       name=f"amplink-service-{self.processor}-{self.index}")
        self._relay.start()

    def stop(self) -> None:
        """End the relay thread (the service stops; the link stays the processor's)."""
        self._stopping = True
        self.link.backend.waiter.wake()
        if self._relay is not None and self._relay is not threading.current_thread():
            self._relay.join(STOP_TIMEOUT)

    # -- the relay thread -------------------------------------------------------------------
    def _ready(self) -> bool:
        """Work for the relay thread? (the link's lock is held: look only)"""
        if self._stopping:
            return True
        if self.link.messages_received != self._seen and self._channels_changed():
            self._channels_dirty = True
            return True
        self._busy = [ce for ce in self._endpoints if ce.ep.queued]
        return bool(self._busy)

    def _channels_changed(self) -> bool:
        self._seen = self.link.messages_received
        current = self.link.core.channels
        known = self.channels
        return len(current) != len(known) or any(c not in known for c in current)

    def _run(self) -> None:
        link = self.link
        # a backend that finds channels outside the messages (a kernel's sysfs) is asked
        # now and then; the others announce them in band
        every = DISCOVERY_INTERVAL if link.capabilities.channel_discovery else None
        try:
            while not self._stopping:
                if not link.wait_until(self._ready, every, tx=False):
                    self._sync_channels()
                    continue
                if self._stopping:
                    return
                if self._channels_dirty:
                    self._channels_dirty = False
                    self._sync_channels()
                busy, self._busy = self._busy, []
                for ce in busy:
                    self._take(ce)
        except (LinkDown, EndpointClosed) as exc:
            self.fail(str(exc))
        except Exception:  # noqa: BLE001 - logged; the clients must still hear of it
            log.exception("%s: the relay of link %d failed", self.processor, self.index)
            self.fail("the service's relay failed")

    def _take(self, ce: ClientEndpoint) -> None:
        ep = ce.ep
        while ep.queued:
            try:
                got = ep.try_recvfrom()
            except (EndpointClosed, LinkDown):
                return  # closed meanwhile: nothing more comes
            if got is None:
                return
            ce.forward(*got)

    def _sync_channels(self) -> None:
        """Follow the channels the processor announced and removed."""
        current = self.link.channels()
        with self.lock:
            for channel in current:
                if channel not in self.channels and not channel.removed:
                    self.channels[channel] = ChannelState(channel)
                    self._announce(channel, create=True)
            for channel, state in list(self.channels.items()):
                if channel.removed or channel not in current:
                    del self.channels[channel]
                    self._drop_channel(state)

    def _drop_channel(self, state: ChannelState) -> None:  # lock held
        """The processor removed the channel: the link closed its endpoints."""
        state.removed = True
        state.watchers = ()
        gone = set(state.endpoints.values())
        for addr, ce in state.endpoints.items():
            ce.session.endpoints.pop(addr, None)
        state.endpoints.clear()
        self._endpoints = tuple(ce for ce in self._endpoints if ce not in gone)
        self._announce(state.channel, create=False)

    def _announce(self, channel: RpmsgChannel, *, create: bool) -> None:  # lock held
        for session in self.sessions:
            if self._visible(session, channel.name):
                session.post_announcement(channel.name, channel.dst, create=create)

    def find(self, name: str | None, dst: int | None) -> ChannelState | None:
        """The channel at remote address ``dst``, else the one called ``name``.

        With both, the address decides and the name only labels the endpoint, as the name
        of an endpoint created on /dev/rpmsg_ctrlN does: rights are the channel's anyway.
        """
        with self.lock:
            for state in self.channels.values():
                if (state.dst == dst) if dst is not None else (state.name == name):
                    return state
        return None

    # -- clients (the service's I/O thread) ---------------------------------------------------
    def attach(self, session: Session) -> None:
        """Serve this link to ``session`` and announce the channels it may see."""
        with self.lock:
            if self.down is not None:
                raise LinkDown(f"{self.processor}: {self.down}")
            self.sessions += (session,)
            session.served = self
            for state in self.channels.values():
                if self._visible(session, state.name):
                    session.post_announcement(state.name, state.dst, create=True)

    def open(self, session: Session, state: ChannelState, rights: frozenset[str],
             addr: int | None) -> ClientEndpoint:
        """A new endpoint of ``session`` on ``state``'s channel (LinkDown, AddressError,
        EndpointClosed as the link raises them; LookupError if the channel went)."""
        # "endpoint" (RTKit) and "channel" (Keem Bay) addressing: a channel's one number
        # is both ends, so one client at a time holds it
        numbered = self.link.capabilities.addressing in ("endpoint", "channel")
        if addr is None:
            addr = state.dst if numbered else RPMSG_ADDR_ANY
        try:
            ep = self.link.create_endpoint(state.name, addr=addr, dst=state.dst,
                                           priv=state.channel)  # closed when the channel goes
        except AddressError:
            if not numbered or addr != state.dst:
                raise
            raise AddressError(f"{self.processor}: {state.name} is held by another client: "
                               "one at a time") from None
        ce = ClientEndpoint(session, state, rights, ep)
        with self.lock:
            if not (state.removed or state.channel.removed):
                state.endpoints[ce.addr] = ce
                session.endpoints[ce.addr] = ce
                self._endpoints += (ce,)
                if session.watch and "watch" in rights and not any(
                        s is session for s, _ in state.watchers):
                    state.watchers += ((session, ce.addr),)
                self.link.backend.waiter.wake()  # a message may wait for it already
                return ce
        ep.close()
        raise LookupError(f"channel {state.name!r} of {self.processor} went away")

    def close_endpoint(self, ce: ClientEndpoint) -> None:
        """Close one endpoint of a client (no lock held: closing takes the link's)."""
        self._unlist(ce)
        try:
            ce.ep.close()
        except AmplinkError as exc:  # a link closing meanwhile: the endpoint is gone too
            log.debug("closing endpoint 0x%x: %s", ce.addr, exc)

    def _unlist(self, ce: ClientEndpoint) -> None:
        session, state = ce.session, ce.channel
        with self.lock:
            session.endpoints.pop(ce.addr, None)
            state.endpoints.pop(ce.addr, None)
            self._endpoints = tuple(e for e in self._endpoints if e is not ce)
            watchers = [(s, a) for s, a in state.watchers if s is not session]
            if len(watchers) != len(state.watchers):  # watch on with another endpoint of its
                others = [e for e in session.endpoints.values() if e.channel is state]
                if others:
                    watchers.append((session, others[0].addr))
                state.watchers = tuple(watchers)

    def detach(self, session: Session) -> None:
        """``session`` is gone: everything it held is released."""
        with self.lock:
            self.sessions = tuple(s for s in self.sessions if s is not session)
            held = list(session.endpoints.values())
        with self.tx_lock:
            session.pending.clear()
        for ce in held:
            self.close_endpoint(ce)

    # -- messages from clients ----------------------------------------------------------------
    def send(self, ce: ClientEndpoint, payload: bytes) -> None:
        """Pass a client's message on now, or queue it for the flusher (in order)."""
        session = ce.session
        with self.tx_lock:
            if not session.pending and self._try_send(ce, payload):
                session.owe()
                return
            session.pending.append((ce, payload))
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush, daemon=True,
                    name=f"amplink-service-{self.processor}-flush")
                self._flusher.start()

    def _try_send(self, ce: ClientEndpoint, payload: bytes) -> bool:
        """One try (TX lock held); True once the message is passed on or refused."""
        try:
            ce.ep.send(payload, 0)
        except NoBufferAvailable:
            return False
        except AmplinkError as exc:  # a link gone, or a message it refuses (its size)
            if isinstance(exc, LinkDown):
                self.fail(str(exc))  # before the refusal returns the client's credit
            err = (errno.ENOTCONN if isinstance(exc, (LinkDown, EndpointClosed))
                   else W.errno_of(exc))
            self.refuse(ce.session, ce.channel, err, f"{self.processor}: {W.describe(exc)}",
                        ce.addr)
            return True
        ce.sent += 1
        channel = ce.channel
        channel.to_processor += 1
        channel.bytes_to += len(payload)
        if channel.watchers:  # watchers see the channel's traffic both ways
            channel.copy_to_watchers(ce.addr, payload, exclude=ce.session)
        return True

    def refuse(self, session: Session, state: ChannelState | None, err: int, why: str,
               src: int) -> None:
        """Tell ``session`` one of its messages was not passed on."""
        session.refused += 1
        if state is not None:
            state.refused += 1
        session.post_event("refused", errno=err, error=why, src=src)

    def _flush(self) -> None:
        """Pass the clients' waiting messages on as transmit buffers free up."""
        while True:
            with self.tx_lock:
                waiting = [s for s in self.sessions if s.pending]
                progress = True
                while progress:  # one message per client per round: fair
                    progress = False
                    for session in waiting:
                        if session.pending and self._try_send(*session.pending[0]):
                            session.pending.popleft()
                            session.owe()
                            progress = True
                if not any(s.pending for s in waiting):
                    self._flusher = None
                    return
            try:
                self.link.wait_writable(FLUSH_WAIT)
            except AmplinkError as exc:  # the link is gone: what waits will never go
                # The clients hear of it before their credits come back: a send blocked on
                # credits must fail with LinkDown, not take a credit for a dead link.
                self.fail(str(exc))
                with self.tx_lock:
                    for session in self.sessions:
                        for ce, _ in session.pending:
                            self.refuse(session, ce.channel, errno.ENOTCONN,
                                        f"{self.processor}: {exc}", ce.addr)
                        session.owe(len(session.pending))
                        session.pending.clear()
                    self._flusher = None
                return

    # -- state --------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """The link is gone: tell every client (once)."""
        with self.lock:
            if self.down is not None:
                return
            sessions = self.sessions
            for session in sessions:
                session.post_event("link_down", reason=f"{self.processor}: {reason}")
            # set once every client was told: a refusal (and the credit it returns) made
            # because it is set reaches the client after the link_down event
            self.down = reason
        log.info("%s: link %d is down (%s): %d client(s) told", self.processor, self.index,
                 reason, len(sessions))

    def status(self) -> LinkStatus:
        stats = self.link.statistics()
        with self.lock:
            channels = tuple(state.status() for state in self.channels.values())
        return LinkStatus(index=self.index, name=stats.name, state=stats.state, mtu=stats.mtu,
                          messages_sent=stats.messages_sent,
                          messages_received=stats.messages_received, rx_held=stats.rx_held,
                          max_held=stats.max_held, channels=channels)
