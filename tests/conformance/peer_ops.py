"""The far side's command set: what a conformance case can make the peer do.

One :class:`PeerOps` wraps the peer's :class:`~amplink.link.Link`. The same code runs
wherever the peer lives: in the test process (a :class:`peers.LocalPeer` calls it
directly) or in a simulated processor (the agent firmware ``peer_agent.py`` runs it for
commands that arrive on its control socket). Every argument and result is a plain
value (ints, bytes, str, lists, dicts) so that it can cross a process boundary, and
every wait has a timeout.

Peer endpoints are named by their address on the peer's link.

Nothing here drains the peer's rings unless a command waits (``recv``, ``send`` on a
full ring, ``drain``) or an echo endpoint exists: a peer that is not told to read
leaves the side under test's transmit buffers full, as the cases need.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from typing import Any

from peer_garbage import write_garbage

from amplink.errors import AmplinkError, InvalidArgument, NoBufferAvailable
from amplink.link import Endpoint, Link
from amplink.rpmsg.wire import RPMSG_ADDR_ANY

#: how long the peer waits for a transmit buffer unless told otherwise (s)
PEER_SEND_TIMEOUT = 10.0
#: the most messages ``fill`` sends (a backend without finite buffers would never fill)
FILL_MAX = 100_000


def payloads(seed: int, count: int, mtu: int, minimum: int = 0) -> list[bytes]:
    """``count`` random payloads from ``seed``: the first three are ``minimum``, ``mtu``
    and ``minimum + 1`` bytes long (0, MTU, 1 on a link without a smallest payload), the
    others of random length between. Both sides of a case generate the same list from
    the seed (the peer need not be sent it)."""
    rng = random.Random(seed)
    sizes = [minimum, mtu, min(minimum + 1, mtu)][:count]
    sizes += [rng.randint(minimum, mtu) for _ in range(count - 3)]
    return [rng.randbytes(n) for n in sizes]


class PeerOps:
    """The commands of one peer link (see the module docstring).

    ``dispatch`` is the peer link's dispatch mode: with "caller" nobody runs callbacks
    unless someone calls ``link.run()``, so echo endpoints get a runner thread of
    their own.
    """

    def __init__(self, link: Link, *, dispatch: str) -> None:
        self.link = link
        self.dispatch = dispatch
        self.eps: dict[int, Endpoint] = {}
        self._echoes: set[int] = set()
        self._runner: threading.Thread | None = None
        self._stop_runner = threading.Event()
        self._lock = threading.Lock()

    # -- endpoints ---------------------------------------------------------------------------
    def _ep(self, addr: int) -> Endpoint:
        try:
            return self.eps[addr]
        except KeyError:
            raise InvalidArgument(f"the peer has no endpoint 0x{addr:x}") from None

    def create(self, name: str | None = None, addr: int = RPMSG_ADDR_ANY,
               dst: int = RPMSG_ADDR_ANY, announce: bool = False, echo: bool = False) -> int:
        """Create an endpoint (an echo endpoint sends every message back to its sender);
        return its address."""
        ep = self.link.create_endpoint(name, addr=addr, dst=dst, announce=announce,
                                       callback=_echo if echo else None)
        with self._lock:
            self.eps[ep.addr] = ep
            if echo:
                self._echoes.add(ep.addr)
        if echo:
            self._start_runner()
        return ep.addr

    def set_dst(self, addr: int, dst: int) -> None:
        self._ep(addr).dst = dst

    def info(self, addr: int) -> dict[str, Any]:
        """What the peer knows of one of its endpoints."""
        ep = self._ep(addr)
        stats = ep.statistics()
        return {"dst": ep.dst, "closed": ep.closed, "received": stats.messages_received,
                "sent": stats.messages_sent, "queued": stats.queued,
                "callback_errors": stats.callback_errors}

    def close(self, addr: int) -> None:
        with self._lock:
            ep = self.eps.pop(addr, None)
            self._echoes.discard(addr)
            idle = not self._echoes
        if ep is not None:
            ep.close()
        if idle:
            self._stop()

    # -- channels ----------------------------------------------------------------------------
    def wait_channel(self, name: str, timeout: float) -> int:
        """Wait until the side under test announced ``name``; return its address."""
        return self.link.wait_channel(name, timeout).dst

    def wait_channel_gone(self, name: str, timeout: float) -> bool:
        """Wait until no channel ``name`` is known (its end was announced)."""
        return self.link.wait_channels(lambda channels: all(c.name != name for c in channels),
                                       timeout)

    def open_channel(self, name: str, timeout: float) -> tuple[int, int]:
        """Open an endpoint on channel ``name``; return ``(its address, its destination)``."""
        ep = self.link.open_channel(name, timeout=timeout)
        with self._lock:
            self.eps[ep.addr] = ep
        return ep.addr, ep.dst

    def channels(self) -> list[tuple[str, int]]:
        return [(c.name, c.dst) for c in self.link.channels()]

    # -- traffic -----------------------------------------------------------------------------
    def send(self, addr: int, data: bytes, dst: int | None = None,
             timeout: float = PEER_SEND_TIMEOUT) -> None:
        ep = self._ep(addr)
        if dst is None:
            ep.send(data, timeout=timeout)
        else:
            ep.sendto(data, dst, timeout=timeout)

    def send_offchannel(self, addr: int, src: int, dst: int, data: bytes,
                        timeout: float = PEER_SEND_TIMEOUT) -> None:
        self._ep(addr).send_offchannel(src, dst, data, timeout=timeout)

    def send_random(self, addr: int, dst: int, seed: int, count: int,
                    timeout: float = PEER_SEND_TIMEOUT) -> int:
        """Send :func:`payloads` ``(seed, count, mtu)`` to ``dst`` in order; return the count."""
        ep = self._ep(addr)
        for payload in payloads(seed, count, ep.mtu, self.link.min_payload):
            ep.sendto(payload, dst, timeout=timeout)
        return count

    def send_many(self, addr: int, dst: int, items: list[bytes],
                  timeout: float = PEER_SEND_TIMEOUT) -> int:
        ep = self._ep(addr)
        for payload in items:
            ep.sendto(payload, dst, timeout=timeout)
        return len(items)

    def fill(self, addr: int, dst: int) -> int:
        """Send to ``dst`` until no transmit buffer is free; return how many were sent
        (message i is ``i.to_bytes(4, "little")``)."""
        ep = self._ep(addr)
        for i in range(FILL_MAX):
            try:
                ep.try_sendto(i.to_bytes(4, "little"), dst)
            except NoBufferAvailable:
                return i
        raise RuntimeError(f"{FILL_MAX} messages never filled the ring")

    def recv(self, addr: int, timeout: float) -> tuple[bytes, int]:
        return self._ep(addr).recvfrom(timeout)

    def recv_many(self, addr: int, count: int, timeout: float) -> list[tuple[bytes, int]]:
        """``count`` messages, each waited for up to ``timeout`` s."""
        ep = self._ep(addr)
        return [ep.recvfrom(timeout) for _ in range(count)]

    def take_all(self, addr: int) -> list[tuple[bytes, int]]:
        """Every message that has arrived for ``addr`` by now (without waiting)."""
        ep = self._ep(addr)
        got: list[tuple[bytes, int]] = []
        while (item := ep.try_recvfrom()) is not None:
            got.append(item)
        return got

    def drain(self) -> int:
        """Take everything out of the rings now (freeing the sender's buffers)."""
        return self.link.poll(dispatch=False)

    # -- hand-over by reference (send_by_reference) --------------------------------------------
    def serve_frames(self, addr: int) -> None:
        """Serve buffers handed over by reference on endpoint ``addr`` (created without
        echo): each one is inverted in place when it may be written, and given back; the
        DONEs of what arrived together go in one message. A thread, until the endpoint
        closes or the link goes down."""
        from amplink.handover import BufferChannel

        channel = BufferChannel(self._ep(addr), name=f"conf-frames-0x{addr:x}")

        def serve() -> None:
            try:
                while True:
                    for frame in channel.recv_many():
                        view = frame.view
                        if not view.readonly:
                            view[:] = bytes(255 - b for b in view)
                        frame.done(flush=False)
                    channel.flush()
            except AmplinkError:
                pass  # closed, or the link went down: nothing left to serve

        threading.Thread(target=serve, daemon=True, name="conformance-peer-frames").start()

    # -- state -------------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        return dataclasses.asdict(self.link.statistics())

    def garbage(self, kind: str) -> dict[str, int]:
        return write_garbage(self.link, kind)

    def ping(self) -> str:
        return "pong"

    def reset(self, timeout: float) -> bool:
        """Close every endpoint, stop the echo runner, wait until the other side's
        channels are gone and the rings are drained; True if the link is clean."""
        with self._lock:
            eps = list(self.eps.values())
            self.eps.clear()
            self._echoes.clear()
        self._stop()
        for ep in eps:
            ep.close()
        link = self.link
        if not link.wait_channels(lambda channels: not channels, timeout):
            return False
        link.poll(dispatch=False)
        return link.is_up and not link.endpoints()

    # -- echo runner -------------------------------------------------------------------------
    def _start_runner(self) -> None:
        if self.dispatch != "caller":
            return  # the link's dispatcher threads run the callbacks
        with self._lock:
            if self._runner is not None:
                return
            self._stop_runner.clear()
            self._runner = threading.Thread(target=self._run, daemon=True,
                                            name="conformance-peer-runner")
            self._runner.start()

    def _run(self) -> None:
        try:
            self.link.run(until=self._stop_runner.is_set)
        except AmplinkError:
            pass  # the link closed or went down: nothing left to echo

    def _stop(self) -> None:
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            self._stop_runner.set()
            runner.join(2.0)

    def shutdown(self) -> None:
        """Stop the runner (the link is about to close)."""
        self._stop()


def _echo(ep: Endpoint, payload: bytes, src: int) -> None:
    ep.sendto(payload, src, timeout=PEER_SEND_TIMEOUT)
