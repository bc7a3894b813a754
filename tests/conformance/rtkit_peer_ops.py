"""The far side of the RTKit cases: the co-processor's firmware, driven with the commands
of :class:`peer_ops.PeerOps`.

One :class:`RtkitPeerOps` wraps an :class:`~amplink.firmware.rtkit.RtkitFirmware` that
announces the application endpoints :data:`ENDPOINTS` at boot. The same code runs in
the test process (the firmware runtime in a thread, ``backend_rtkit.py``) and in a
co-processor process (``rtkit_agent.py``). Payloads are 8 bytes (one 64-bit message,
little-endian) and a peer endpoint is named by its number, which is both ends: the host
endpoint it talks to has the same number.

* ``create`` takes one of the announced numbers (the lowest free one unless ``addr``, or
  a channel name ``rtkit-0xNN``, says which); every one of them is in the endpoint map
  from the boot, so ``announce`` changes nothing;
* messages for a number nobody created are dropped and counted, as firmware would;
* the firmware reads its mailbox only while a command waits for a message (``recv``,
  ``take_all``, ``drain``) or an echo endpoint exists, and stops between two messages
  once none does: a host that sends to a peer that is not told to read fills the
  mailbox, as the cases need (the firmware's loop waits in its ``until`` and after each
  message, so it never holds a message it took);
* ``die`` makes the co-processor crash (it writes its crashlog and says so), the death
  an RTKit host sees.

Commands without a counterpart on a co-processor (channels, ``send_offchannel``,
``set_dst`` to another number, ``fill``, ``garbage``) are not here: the peers that
drive this class refuse them with NotSupported (:data:`COMMANDS` lists the others).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from peer_ops import PEER_SEND_TIMEOUT, payloads

from amplink.errors import (
    AddressError,
    EndpointClosed,
    InvalidArgument,
    MessageTooLarge,
    NotSupported,
    ReceiveTimeout,
)
from amplink.firmware.rtkit import Halted, RtkitFirmware
from amplink.platforms.rtkit.backend import MESSAGE_SIZE, channel_name
from amplink.rpmsg.wire import RPMSG_ADDR_ANY

#: the application endpoints the peer firmware announces
ENDPOINTS = range(0x20, 0x30)
#: the echo endpoint the echo-channel cases use (its channel is ``rtkit-0x2f``)
ECHO_ENDPOINT = 0x2F
#: messages one peer endpoint keeps for recv; more are dropped and counted
INBOX_LIMIT = 65536
#: how long waiting for the firmware to stop between messages may take (s)
IDLE_TIMEOUT = 5.0
#: the PeerOps commands a co-processor can carry out
COMMANDS = frozenset({"create", "close", "set_dst", "info", "send", "send_many", "send_random",
                      "recv", "recv_many", "take_all", "drain", "statistics", "ping", "reset",
                      "wait_idle"})


@dataclass
class _PeerEndpoint:
    echo: bool
    inbox: deque[int] = field(default_factory=deque)
    received: int = 0
    sent: int = 0
    dropped: int = 0
    closed: bool = False


def word(data: bytes) -> int:
    """The 64-bit message of an 8-byte payload (the checks of a link's send)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgument(f"a payload is bytes, got {type(data).__name__}")
    if len(data) > MESSAGE_SIZE:
        raise MessageTooLarge(f"payload of {len(data)} bytes exceeds the {MESSAGE_SIZE} of "
                              "an RTKit message")
    if len(data) < MESSAGE_SIZE:
        raise InvalidArgument(f"an RTKit message is {MESSAGE_SIZE} bytes, got {len(data)}")
    return int.from_bytes(data, "little")


def payload(msg: int) -> bytes:
    return msg.to_bytes(MESSAGE_SIZE, "little")


class RtkitPeerOps:
    """The commands of one co-processor (see the module docstring). Call
    :meth:`serve` in the firmware's thread."""

    def __init__(self, fw: RtkitFirmware, endpoints: range = ENDPOINTS) -> None:
        self.fw = fw
        self.endpoints = endpoints
        self._cond = threading.Condition()
        self._eps: dict[int, _PeerEndpoint] = {}
        self._waiting: dict[int, int] = {}  # endpoint -> recv calls waiting on it
        self._echoes = 0
        self._draining = False
        self._parked = False
        self._stopping = False
        self._dying = False
        #: messages to numbers nobody created
        self.dropped = 0
        for ep in endpoints:
            fw.endpoint(ep, partial(self._arrive, ep))

    # -- the firmware's thread ---------------------------------------------------------------
    def serve(self) -> None:
        """Run the firmware until :meth:`stop` (Halted once it crashed)."""
        self.fw.run(until=self._gate)

    def _wanted(self) -> bool:  # with the condition held
        fw = self.fw
        return (not fw.started or not fw.proto.running  # the boot (and a teardown's wake)
                or self._echoes > 0
                or (self._draining and fw.mailbox.rx_pending())
                or any(n and not self._eps[ep].inbox for ep, n in self._waiting.items()))

    def _gate(self) -> bool:
        """Wait while nobody wants a message; True once the firmware is to stop."""
        with self._cond:
            while not (self._stopping or self._dying or self._wanted()):
                self._parked = True
                self._cond.notify_all()
                self._cond.wait()
            self._parked = False
            dying = self._dying and not self._stopping
        if dying:
            self.fw.crash("the conformance case made it die")
        return self._stopping

    def _arrive(self, ep: int, msg: int) -> None:
        with self._cond:
            state = self._eps.get(ep)
            if state is None:
                self.dropped += 1
            elif not state.echo:
                if len(state.inbox) >= INBOX_LIMIT:
                    state.dropped += 1
                else:
                    state.inbox.append(msg)
                    state.received += 1
                    self._cond.notify_all()
        if state is not None and state.echo:
            state.received += 1
            self.fw.send(ep, msg, PEER_SEND_TIMEOUT)
            state.sent += 1
        self._gate()

    def _kick(self) -> None:
        """Wake the firmware's loop from its poll (it looks at ``until`` then)."""
        os.eventfd_write(self.fw.mailbox.fileno(), 1)

    def wait_idle(self, timeout: float = IDLE_TIMEOUT) -> bool:
        """Wait until the firmware stopped reading (nothing wants a message)."""
        self._kick()
        with self._cond:
            return self._cond.wait_for(lambda: self._parked or self._stopping, timeout)

    def stop(self) -> None:
        """End :meth:`serve` at its next look (it reads freely until then)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._kick()

    def die(self) -> None:
        """Make the co-processor crash (from its own thread: it writes its crashlog)."""
        with self._cond:
            self._dying = True
            self._cond.notify_all()
        self._kick()

    # -- endpoints ---------------------------------------------------------------------------
    def _ep(self, addr: int) -> _PeerEndpoint:
        state = self._eps.get(addr)
        if state is None:
            raise InvalidArgument(f"the peer has no endpoint 0x{addr:x}")
        return state

    def _pick(self, name: str | None, addr: int) -> int:
        if addr != RPMSG_ADDR_ANY:
            return addr
        if name is not None:
            for ep in self.endpoints:
                if channel_name(ep) == name:
                    return ep
            raise AddressError(f"{name!r} names none of the peer's endpoints")
        for ep in self.endpoints:
            if ep not in self._eps and ep != ECHO_ENDPOINT:
                return ep
        raise AddressError("every endpoint of the peer is in use")

    def create(self, name: str | None = None, addr: int = RPMSG_ADDR_ANY,
               dst: int = RPMSG_ADDR_ANY, announce: bool = False, echo: bool = False) -> int:
        """Take one of the announced numbers (an echo one sends every message back)."""
        with self._cond:
            ep = self._pick(name, addr)
            if ep not in self.endpoints:
                raise AddressError(f"the peer did not announce endpoint 0x{ep:x}")
            if ep in self._eps:
                raise AddressError(f"the peer's endpoint 0x{ep:x} is in use")
            if dst not in (RPMSG_ADDR_ANY, ep):
                raise NotSupported(f"endpoint 0x{ep:x} talks to 0x{ep:x} only")
            self._eps[ep] = _PeerEndpoint(echo)
            if echo:
                self._echoes += 1
                self._cond.notify_all()
        if echo:
            self._kick()
        return ep

    def close(self, addr: int) -> None:
        with self._cond:
            state = self._eps.pop(addr, None)
            if state is None:
                return
            state.closed = True
            if state.echo:
                self._echoes -= 1
            self._cond.notify_all()
        if state.echo:
            self.wait_idle()

    def set_dst(self, addr: int, dst: int) -> None:
        self._ep(addr)
        if dst != addr:
            raise NotSupported(f"endpoint 0x{addr:x} talks to 0x{addr:x} only")

    def info(self, addr: int) -> dict[str, Any]:
        state = self._ep(addr)
        with self._cond:
            return {"dst": addr, "closed": state.closed, "received": state.received,
                    "sent": state.sent, "queued": len(state.inbox), "callback_errors": 0}

    # -- traffic -----------------------------------------------------------------------------
    def send(self, addr: int, data: bytes, dst: int | None = None,
             timeout: float = PEER_SEND_TIMEOUT) -> None:
        state = self._ep(addr)
        if dst not in (None, addr):
            raise NotSupported(f"endpoint 0x{addr:x} sends to 0x{addr:x} only")
        if self.fw.halted:
            raise Halted("the co-processor has crashed")
        self.fw.send(addr, word(data), timeout)
        state.sent += 1

    def send_many(self, addr: int, dst: int, items: list[bytes],
                  timeout: float = PEER_SEND_TIMEOUT) -> int:
        for data in items:
            self.send(addr, data, dst, timeout)
        return len(items)

    def send_random(self, addr: int, dst: int, seed: int, count: int,
                    timeout: float = PEER_SEND_TIMEOUT) -> int:
        return self.send_many(addr, dst, payloads(seed, count, MESSAGE_SIZE, MESSAGE_SIZE),
                              timeout)

    def recv(self, addr: int, timeout: float) -> tuple[bytes, int]:
        state = self._ep(addr)
        with self._cond:
            self._waiting[addr] = self._waiting.get(addr, 0) + 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: state.inbox or state.closed, timeout)
                if not state.inbox:
                    if state.closed:
                        raise EndpointClosed(f"the peer's 0x{addr:x} was closed")
                    raise ReceiveTimeout(f"no message for the peer's 0x{addr:x} in {timeout} s")
                return payload(state.inbox.popleft()), addr
            finally:
                self._waiting[addr] -= 1

    def recv_many(self, addr: int, count: int, timeout: float) -> list[tuple[bytes, int]]:
        return [self.recv(addr, timeout) for _ in range(count)]

    def drain(self) -> int:
        """Take every message of the mailbox now; how many went into inboxes."""
        with self._cond:
            before = sum(s.received for s in self._eps.values())
            self._draining = True
            self._cond.notify_all()
        self._kick()
        try:
            with self._cond:
                self._cond.wait_for(lambda: self._parked and not self.fw.mailbox.rx_pending(),
                                    IDLE_TIMEOUT)
                return sum(s.received for s in self._eps.values()) - before
        finally:
            with self._cond:
                self._draining = False

    def take_all(self, addr: int) -> list[tuple[bytes, int]]:
        """Every message that has arrived for ``addr`` by now (the mailbox drained first)."""
        state = self._ep(addr)
        self.drain()
        with self._cond:
            got = [(payload(msg), addr) for msg in state.inbox]
            state.inbox.clear()
        return got

    # -- state -------------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        with self._cond:
            return {"dropped_unknown": self.dropped, "endpoints": sorted(self._eps),
                    "protocol_drops": dict(self.fw.proto.drops),
                    "send_timeouts": self.fw.send_timeouts}

    def ping(self) -> str:
        return "pong"

    def reset(self, timeout: float) -> bool:
        """Close every endpoint; True once the firmware stopped reading."""
        for addr in list(self._eps):
            self.close(addr)
        return self.wait_idle(timeout)

    def shutdown(self) -> None:
        """The harness is done with the peer (the PeerOps name of :meth:`stop`)."""
        self.stop()
