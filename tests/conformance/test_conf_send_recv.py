"""Sending and receiving in every variant: blocking, try_*, sendto, send_offchannel,
recvfrom's source, iteration, asyncio; payload types; empty messages.

Sends are checked from the side under test to the peer, receives from the peer to the
side under test: with both sides in turn under test, both directions of the wire are
covered (the simulator's device side is driven through the agent).
"""

from __future__ import annotations

import asyncio

import pytest
from backends import Harness
from conformance_kit import connect, exhaust

from amplink.errors import InvalidArgumentType, NoBufferAvailable

pytestmark = [pytest.mark.timeout(30), pytest.mark.addressing("rpmsg", "channel")]


def test_blocking_send_and_recvfrom(harness: Harness) -> None:
    ep, p = connect(harness)
    ep.send(b"ping", timeout=5)
    assert harness.peer.recv(p) == (b"ping", ep.addr)
    harness.peer.send(p, b"pong")
    assert ep.recvfrom(timeout=5) == (b"pong", p)
    harness.peer.send(p, b"again")
    assert ep.recv(timeout=5) == b"again"
    harness.peer.send(p, b"no timeout")
    assert ep.recv(timeout=None) == b"no timeout"  # blocks without a deadline
    stats = ep.statistics()
    assert (stats.messages_sent, stats.messages_received) == (1, 3)


@pytest.mark.addressing("rpmsg")  # sends to another address than its own
def test_sendto_another_address(harness: Harness) -> None:
    ep, p = connect(harness)
    other = harness.peer.create()
    ep.sendto(b"to other", other, timeout=5)
    ep.send(b"to dst", timeout=5)
    assert harness.peer.recv(other) == (b"to other", ep.addr)
    assert harness.peer.recv(p) == (b"to dst", ep.addr)
    assert ep.dst == p  # sendto does not change the destination


def test_send_offchannel_replies_go_to_the_given_source(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    ep, _ = connect(harness)
    replies = local.create_endpoint()
    echo = peer.create(echo=True)
    ep.send_offchannel(replies.addr, echo, b"reply elsewhere", timeout=5)
    assert replies.recvfrom(timeout=5) == (b"reply elsewhere", echo)
    assert ep.try_recvfrom() is None


@pytest.mark.addressing("rpmsg")  # sends to another address than its own
def test_try_variants_when_buffers_are_free_and_exhausted(harness: Harness) -> None:
    ep, p = connect(harness)
    other = harness.peer.create()
    ep.try_send(b"a")
    ep.try_sendto(b"b", other)
    ep.try_send_offchannel(ep.addr, p, b"c")
    assert harness.peer.recv_many(p, 2) == [(b"a", ep.addr), (b"c", ep.addr)]
    assert harness.peer.recv(other) == (b"b", ep.addr)
    sent = exhaust(ep)
    for call in (lambda: ep.try_send(b"x"), lambda: ep.try_sendto(b"x", p),
                 lambda: ep.try_send_offchannel(ep.addr, p, b"x")):
        with pytest.raises(NoBufferAvailable):
            call()
    # refused sends left nothing behind: exactly what was sent arrives, in order
    assert harness.peer.recv_many(p, len(sent)) == [(m, ep.addr) for m in sent]
    assert harness.peer.call("take_all", addr=p) == []
    ep.try_send(b"again")  # the buffers came back
    assert harness.peer.recv(p) == (b"again", ep.addr)


def test_try_recvfrom(harness: Harness) -> None:
    ep, p = connect(harness)
    assert ep.try_recvfrom() is None
    # the peer's send returns once the message is in the rings: there "now"
    harness.peer.send(p, b"one")
    harness.peer.send(p, b"two")
    assert ep.try_recvfrom() == (b"one", p)
    assert ep.try_recvfrom() == (b"two", p)
    assert ep.try_recvfrom() is None


def test_iteration_until_closed(harness: Harness) -> None:
    ep, p = connect(harness)
    for i in range(3):
        harness.peer.send(p, b"m%d" % i)
    got = []
    for payload in ep:
        got.append(payload)
        if len(got) == 3:
            ep.close()  # iteration ends at the endpoint's close
    assert got == [b"m0", b"m1", b"m2"]


def test_payload_types(harness: Harness) -> None:
    ep, p = connect(harness)
    ep.send(b"bytes", timeout=5)
    ep.send(bytearray(b"bytearray"), timeout=5)
    ep.send(memoryview(b"xmemoryviewx")[1:-1], timeout=5)
    ep.send(b"", timeout=5)
    assert [m for m, _ in harness.peer.recv_many(p, 4)] == [b"bytes", b"bytearray",
                                                           b"memoryview", b""]
    for bad in ("text", 5, None, [1, 2]):
        with pytest.raises(InvalidArgumentType):
            ep.send(bad, timeout=1)  # type: ignore[arg-type]
    harness.peer.send(p, b"")
    assert ep.recvfrom(timeout=5) == (b"", p)
    assert ep.statistics().messages_sent == 4


@pytest.mark.addressing("rpmsg")  # sends to another address than its own
def test_asyncio_asend_arecv(harness: Harness) -> None:
    ep, p = connect(harness)
    other = harness.peer.create()

    async def main() -> list[object]:
        await ep.asend(b"async", timeout=5)
        await ep.asendto(b"async to", other, timeout=5)
        harness.peer.send(p, b"from peer")
        got: list[object] = [await ep.arecvfrom(timeout=5)]
        harness.peer.send(p, b"second")
        got.append(await ep.arecv(timeout=5))
        return got

    assert asyncio.run(asyncio.wait_for(main(), 20)) == [(b"from peer", p), b"second"]
    assert harness.peer.recv(p) == (b"async", ep.addr)
    assert harness.peer.recv(other) == (b"async to", ep.addr)


def test_asyncio_receives_while_the_loop_runs_other_tasks(harness: Harness) -> None:
    """arecv does not block the event loop: another task keeps running meanwhile."""
    ep, p = connect(harness)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def main() -> bytes:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        await asyncio.sleep(0.01)
        pending = harness.peer.start("send", addr=p, data=b"later", timeout=5)
        try:
            return await ep.arecv(timeout=5)
        finally:
            stop.set()
            await task
            await asyncio.wrap_future(pending)

    assert asyncio.run(asyncio.wait_for(main(), 20)) == b"later"
    assert ticks > 1
