"""Ordered, intact delivery of random messages in both directions; the MTU: the largest
payload passes, one byte more is refused whole, nothing is ever truncated; on a link
with a smallest payload (RTKit's 8-byte messages) a shorter one is refused, not padded."""

from __future__ import annotations

import asyncio

import pytest
from backends import Harness
from conformance_kit import connect, fit
from peer_ops import payloads

from amplink.errors import InvalidArgument, MessageTooLarge

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.addressing("rpmsg", "channel", "endpoint")]

COUNT = 1000


def local_sends(harness: Harness, direction: str) -> bool:
    """True if, in ``direction`` ("h2d" or "d2h"), the side under test is the sender."""
    return (direction == "h2d") == (harness.side == "host")


def test_1000_random_messages_in_order(harness: Harness, direction: str) -> None:
    ep, p = connect(harness)
    msgs = payloads(0xA11CE, COUNT, ep.mtu, harness.local.min_payload)
    if local_sends(harness, direction):
        receiving = harness.peer.start("recv_many", addr=p, count=COUNT, timeout=10)
        for m in msgs:
            ep.send(m, timeout=10)
        got = receiving.result(30)
        assert len(got) == COUNT
        for i, (payload, src) in enumerate(got):
            assert src == ep.addr
            assert payload == msgs[i], f"message {i} differs ({len(payload)} B)"
        assert ep.statistics().messages_sent == COUNT
    else:
        sending = harness.peer.start("send_random", addr=p, dst=ep.addr, seed=0xA11CE,
                                     count=COUNT, timeout=10)
        for i, expected in enumerate(msgs):
            payload, src = ep.recvfrom(timeout=10)
            assert src == p
            assert payload == expected, f"message {i} differs ({len(payload)} B)"
        assert sending.result(30) == COUNT
        assert ep.statistics().messages_received == COUNT
    assert ep.try_recvfrom() is None
    assert harness.peer.call("take_all", addr=p) == []


def test_both_directions_at_once(harness: Harness) -> None:
    ep, p = connect(harness)
    count = 200  # both directions share the buffers' owner's CPU time
    minimum = harness.local.min_payload
    down = payloads(1, count, ep.mtu, minimum)
    receiving = harness.peer.start("recv_many", addr=p, count=count, timeout=10)
    sending = harness.peer.start("send_random", addr=p, dst=ep.addr, seed=2, count=count,
                                 timeout=10)
    got_up = []
    for i, m in enumerate(down):
        ep.send(m, timeout=10)
        # interleaved: this side reads while the peer writes, on one thread
        if i % 2:
            got_up.append(ep.recv(timeout=10))
    while len(got_up) < count:
        got_up.append(ep.recv(timeout=10))
    assert sending.result(30) == count
    assert [m for m, _ in receiving.result(30)] == down
    assert got_up == payloads(2, count, ep.mtu, minimum)


def test_mtu_largest_payload_passes_whole(harness: Harness, direction: str) -> None:
    ep, p = connect(harness)
    mtu = harness.local.mtu
    assert ep.mtu == mtu == harness.local.capabilities.max_payload
    sizes = [n for n in (mtu, mtu - 1, 0, 1) if n >= harness.local.min_payload]
    msgs = [bytes((i + n) & 0xFF for i in range(n)) for n in sizes]
    if local_sends(harness, direction):
        for m in msgs:
            ep.send(m, timeout=5)
        got = [m for m, _ in harness.peer.recv_many(p, len(msgs))]
    else:
        harness.peer.call("send_many", addr=p, dst=ep.addr, items=msgs)
        got = [ep.recv(timeout=5) for _ in msgs]
    assert [len(m) for m in got] == sizes  # never truncated
    assert got == msgs


def test_mtu_exceeded_is_refused_whole(harness: Harness) -> None:
    ep, p = connect(harness)
    mtu = harness.local.mtu
    too_big = bytes(mtu + 1)
    calls = [lambda: ep.send(too_big, timeout=1), lambda: ep.try_send(too_big),
             lambda: ep.sendto(too_big, p, timeout=1), lambda: ep.try_sendto(too_big, p),
             lambda: ep.send_offchannel(ep.addr, p, too_big, timeout=1),
             lambda: ep.try_send_offchannel(ep.addr, p, too_big),
             lambda: ep.send_many([fit(harness, b"first"), too_big], timeout=1)]
    for call in calls:
        with pytest.raises(MessageTooLarge) as info:
            call()
        assert isinstance(info.value, ValueError)
    with pytest.raises(MessageTooLarge):
        ep.send(bytes(10 * mtu + 7), timeout=1)
    # nothing was sent (not even a truncated part): the next message is the sentinel
    ep.send(fit(harness, b"sentinel"), timeout=5)
    assert harness.peer.recv(p) == (fit(harness, b"sentinel"), ep.addr)
    assert harness.peer.call("take_all", addr=p) == []
    assert ep.statistics().messages_sent == 1


def test_below_the_smallest_payload_is_refused_whole(harness: Harness) -> None:
    minimum = harness.local.capabilities.min_payload
    assert harness.case is not None
    if minimum == 0:
        pytest.skip(f"{harness.case.id}: capability min_payload=0 (every length from 0 is a "
                    "payload)")
    ep, p = connect(harness)
    too_short = bytes(range(minimum - 1))
    calls = [lambda: ep.send(too_short, timeout=1), lambda: ep.try_send(too_short),
             lambda: ep.sendto(too_short, p, timeout=1), lambda: ep.try_sendto(too_short, p),
             lambda: ep.send(b"", timeout=1), lambda: asyncio.run(ep.asend(too_short, 1)),
             # every payload of a batch is checked before the first is sent
             lambda: ep.send_many([fit(harness, b"first"), too_short], timeout=1),
             lambda: ep.sendto_many([too_short], p, timeout=1)]
    for call in calls:
        with pytest.raises(InvalidArgument):  # refused, not padded
            call()
    with pytest.raises(InvalidArgument):
        harness.peer.send(p, too_short)  # the peer's side refuses just the same
    ep.send(fit(harness, b"sentinel"), timeout=5)
    assert harness.peer.recv(p) == (fit(harness, b"sentinel"), ep.addr)
    assert harness.peer.call("take_all", addr=p) == []
    assert ep.statistics().messages_sent == 1


def test_mtu_exceeded_by_the_peer_is_refused_too(harness: Harness) -> None:
    """The peer's side (the other role) refuses just the same."""
    ep, p = connect(harness)
    with pytest.raises(MessageTooLarge):
        harness.peer.send(p, bytes(harness.local.mtu + 1))
    harness.peer.send(p, fit(harness, b"sentinel"))
    assert ep.recvfrom(timeout=5) == (fit(harness, b"sentinel"), p)
    assert ep.try_recvfrom() is None
