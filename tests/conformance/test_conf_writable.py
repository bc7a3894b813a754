"""Writable readiness: whether a send would block, and waiting until it would not
(synchronously and in asyncio): True once a buffer frees, False on timeout."""

from __future__ import annotations

import asyncio
import time

import pytest
from backends import Harness
from conformance_kit import MARGIN, Blocked, assert_within, connect, exhaust

from amplink.errors import NotSupported

pytestmark = [pytest.mark.timeout(30), pytest.mark.addressing("rpmsg", "channel")]

T = 0.05


@pytest.mark.needs("tx_ready")
def test_writable_and_wait_writable(harness: Harness) -> None:
    local = harness.local
    ep, p = connect(harness)
    assert local.writable()
    assert ep.wait_writable(timeout=0) is True
    assert local.wait_writable(timeout=1) is True
    sent = exhaust(ep)
    assert not local.writable()
    t0 = time.monotonic()
    assert ep.wait_writable(timeout=T) is False
    assert_within(time.monotonic() - t0, T, T + MARGIN, "wait_writable(timeout=T)")
    assert local.wait_writable(timeout=0) is False
    waiting = Blocked(lambda: ep.wait_writable(timeout=10))
    t0 = time.monotonic()
    harness.peer.recv(p)  # the peer takes one message: its buffer frees
    result, error, ended = waiting.outcome()
    assert (result, error) == (True, None)
    assert ended - t0 < MARGIN
    assert local.writable()
    ep.try_send(b"fits now")
    got = harness.peer.recv_many(p, len(sent))
    assert [m for m, _ in got] == sent[1:] + [b"fits now"]


@pytest.mark.needs("tx_ready")
def test_await_writable(harness: Harness) -> None:
    ep, p = connect(harness)
    exhaust(ep)

    async def main() -> tuple[bool, bool, float]:
        t0 = time.monotonic()
        timed_out = await ep.await_writable(timeout=T)
        elapsed = time.monotonic() - t0
        reading = harness.peer.start("recv", addr=p, timeout=5)
        became = await ep.await_writable(timeout=10)
        await asyncio.wrap_future(reading)
        return timed_out, became, elapsed

    timed_out, became, elapsed = asyncio.run(asyncio.wait_for(main(), 20))
    assert timed_out is False
    assert_within(elapsed, T, T + MARGIN, "await_writable(timeout=T)")
    assert became is True
    assert asyncio.run(harness.local.await_writable(timeout=0)) is True


@pytest.mark.lacks("tx_ready")
def test_wait_writable_without_the_capability_is_not_supported(harness: Harness) -> None:
    ep, _ = connect(harness)
    with pytest.raises(NotSupported):
        ep.wait_writable(timeout=0.1)
    with pytest.raises(NotSupported):
        asyncio.run(ep.await_writable(timeout=0.1))
