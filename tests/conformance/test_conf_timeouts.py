"""Timeouts: a receive and a send (on full rings) give up after their timeout, within a
margin, in every form; a blocked send goes on as soon as the peer reads."""

from __future__ import annotations

import asyncio
import time

import pytest
from backends import Harness
from conformance_kit import MARGIN, Blocked, assert_within, connect, exhaust

from amplink.errors import InvalidArgument, NoBufferAvailable, ReceiveTimeout, SendTimeout

pytestmark = [pytest.mark.timeout(30), pytest.mark.addressing("rpmsg", "channel")]

T = 0.05


def timed(call: object) -> float:
    t0 = time.monotonic()
    call()  # type: ignore[operator]
    return time.monotonic() - t0


def test_recv_timeout(harness: Harness) -> None:
    ep, _ = connect(harness)
    t0 = time.monotonic()
    with pytest.raises(ReceiveTimeout) as info:
        ep.recv(timeout=T)
    assert_within(time.monotonic() - t0, T, T + MARGIN, "recv(timeout=T)")
    assert isinstance(info.value, TimeoutError)
    t0 = time.monotonic()
    with pytest.raises(ReceiveTimeout):
        ep.recvfrom(timeout=0)
    assert_within(time.monotonic() - t0, 0, MARGIN, "recvfrom(timeout=0)")


def test_recv_timeout_asyncio(harness: Harness) -> None:
    ep, _ = connect(harness)

    async def main() -> float:
        t0 = time.monotonic()
        with pytest.raises(ReceiveTimeout):
            await ep.arecv(timeout=T)
        return time.monotonic() - t0

    assert_within(asyncio.run(asyncio.wait_for(main(), 10)), T, T + MARGIN,
                  "arecv(timeout=T)")


@pytest.mark.needs("rx_hold")
def test_recv_held_timeout(harness: Harness) -> None:
    ep = harness.local.create_endpoint(hold=True)
    t0 = time.monotonic()
    with pytest.raises(ReceiveTimeout):
        ep.recv_held(timeout=T)
    assert_within(time.monotonic() - t0, T, T + MARGIN, "recv_held(timeout=T)")


def test_bad_timeouts_refused(harness: Harness) -> None:
    ep, _ = connect(harness)
    for bad in (-1, float("nan"), -0.001):
        with pytest.raises(InvalidArgument):
            ep.recv(timeout=bad)
        with pytest.raises(InvalidArgument):
            ep.send(b"x", timeout=bad)
    with pytest.raises((InvalidArgument, TypeError)):
        ep.recv(timeout="1")  # type: ignore[arg-type]
    assert ep.statistics().messages_sent == 0


def test_send_timeout_on_full_rings(harness: Harness) -> None:
    ep, p = connect(harness)
    sent = exhaust(ep)
    t0 = time.monotonic()
    with pytest.raises(SendTimeout) as info:
        ep.send(b"blocked", timeout=T)
    assert_within(time.monotonic() - t0, T, T + MARGIN, "send(timeout=T)")
    assert isinstance(info.value, TimeoutError)
    t0 = time.monotonic()
    with pytest.raises(NoBufferAvailable):
        ep.send(b"blocked", timeout=0)  # 0: no wait at all
    assert_within(time.monotonic() - t0, 0, MARGIN, "send(timeout=0)")
    with pytest.raises(SendTimeout):
        ep.sendto(b"blocked", p, timeout=T)
    with pytest.raises(SendTimeout):
        ep.send_offchannel(ep.addr, p, b"blocked", timeout=T)
    # what timed out was not sent
    assert harness.peer.recv_many(p, len(sent)) == [(m, ep.addr) for m in sent]
    assert harness.peer.call("take_all", addr=p) == []


def test_send_timeout_asyncio(harness: Harness) -> None:
    ep, _ = connect(harness)
    exhaust(ep)

    async def main() -> float:
        t0 = time.monotonic()
        with pytest.raises(SendTimeout):
            await ep.asend(b"blocked", timeout=T)
        return time.monotonic() - t0

    assert_within(asyncio.run(asyncio.wait_for(main(), 10)), T, T + MARGIN,
                  "asend(timeout=T)")


@pytest.mark.needs("tx_loan")
def test_loan_timeout(harness: Harness) -> None:
    ep, _ = connect(harness)
    exhaust(ep)
    t0 = time.monotonic()
    with pytest.raises(SendTimeout):
        ep.loan(timeout=T)
    assert_within(time.monotonic() - t0, T, T + MARGIN, "loan(timeout=T)")
    with pytest.raises(NoBufferAvailable):
        ep.loan(timeout=0)


def test_blocked_send_resumes_when_the_peer_reads(harness: Harness) -> None:
    ep, p = connect(harness)
    sent = exhaust(ep)
    blocked = Blocked(lambda: ep.send(b"resumed", timeout=10))
    got = harness.peer.recv_many(p, len(sent) + 1, timeout=10)
    _, error, _ = blocked.outcome()
    assert error is None
    assert got == [(m, ep.addr) for m in sent + [b"resumed"]]


def test_blocked_asend_resumes_when_the_peer_reads(harness: Harness) -> None:
    ep, p = connect(harness)
    sent = exhaust(ep)

    async def main() -> None:
        reading = harness.peer.start("recv_many", addr=p, count=len(sent) + 1, timeout=10)
        await ep.asend(b"resumed", timeout=10)
        got = await asyncio.wrap_future(reading)
        assert got == [(m, ep.addr) for m in sent + [b"resumed"]]

    asyncio.run(asyncio.wait_for(main(), 20))
