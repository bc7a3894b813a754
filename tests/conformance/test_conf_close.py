"""Closing: a closed endpoint refuses everything with EndpointClosed, and so does every
call blocked on it when it closes (or when its link closes); a closed link refuses
everything; closing twice is harmless."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from backends import Harness
from conformance_kit import MARGIN, Blocked, BlockedCoroutine, connect, exhaust

from amplink.errors import EndpointClosed
from amplink.link import Endpoint

pytestmark = [pytest.mark.timeout(30), pytest.mark.addressing("rpmsg", "channel")]


def test_closed_endpoint_refuses_everything(harness: Harness) -> None:
    ep, p = connect(harness)
    ep.close()
    ep.close()
    assert ep.closed
    calls: list[Callable[[], object]] = [
        lambda: ep.send(b"x", timeout=1), lambda: ep.try_send(b"x"),
        lambda: ep.sendto(b"x", p, timeout=1), lambda: ep.try_sendto(b"x", p),
        lambda: ep.send_offchannel(ep.addr, p, b"x", timeout=1),
        lambda: ep.try_send_offchannel(ep.addr, p, b"x"),
        lambda: ep.recv(timeout=0.01), lambda: ep.recvfrom(timeout=None),
        lambda: ep.try_recvfrom(), lambda: ep.wait_writable(timeout=0.01),
        lambda: asyncio.run(ep.arecv(timeout=0.01)),
        lambda: asyncio.run(ep.asend(b"x", timeout=0.01))]
    if harness.local.capabilities.tx_loan:
        calls.append(lambda: ep.loan(timeout=0.01))
    for call in calls:
        with pytest.raises(EndpointClosed):
            call()
    assert ep.statistics().closed
    assert ep not in harness.local.endpoints()
    assert list(ep) == []  # iteration of a closed endpoint ends at once


def _recv(ep: Endpoint) -> Callable[[], object]:
    return lambda: ep.recv(timeout=3)


def _send_full(ep: Endpoint) -> Callable[[], object]:
    exhaust(ep)
    return lambda: ep.send(b"blocked", timeout=3)


def _wait_writable(ep: Endpoint) -> Callable[[], object]:
    exhaust(ep)
    return lambda: ep.wait_writable(timeout=3)


def _loan(ep: Endpoint) -> Callable[[], object]:
    exhaust(ep)
    return lambda: ep.loan(timeout=3)


def _recv_held(ep: Endpoint) -> Callable[[], object]:
    return lambda: ep.recv_held(timeout=3)


BLOCKING = {"recv": _recv, "send-on-full-rings": _send_full,
            "wait_writable": _wait_writable, "loan": _loan, "recv_held": _recv_held}
#: the capability each call needs
NEEDS = {"wait_writable": "tx_ready", "loan": "tx_loan"}


@pytest.mark.parametrize("call", BLOCKING)
def test_close_wakes_a_blocked_call(harness: Harness, call: str) -> None:
    need = NEEDS.get(call)
    if need is not None and not getattr(harness.local.capabilities, need):
        pytest.skip(f"{harness.case.id} does not declare the capability {need}")  # type: ignore
    ep, p = connect(harness)
    blocked = Blocked(BLOCKING[call](ep))
    t0 = time.monotonic()
    ep.close()
    result, error, ended = blocked.outcome()
    assert isinstance(error, EndpointClosed), f"{call} on a closed endpoint: {result!r}, {error!r}"
    assert ended - t0 < MARGIN
    # nothing was sent from the closed endpoint: the peer gets only what filled the rings
    if call in ("send-on-full-rings", "loan"):
        harness.peer.call("drain")
        got = harness.peer.call("take_all", addr=p)
        assert got and b"blocked" not in [m for m, _ in got]


@pytest.mark.parametrize("call", ["arecv", "asend-on-full-rings", "await_writable"])
def test_close_wakes_a_blocked_coroutine(harness: Harness, call: str) -> None:
    if call == "await_writable" and not harness.local.capabilities.tx_ready:
        pytest.skip(f"{harness.case.id} does not declare the capability tx_ready")  # type: ignore
    ep, _ = connect(harness)
    if call == "arecv":
        blocked = BlockedCoroutine(lambda: ep.arecv(timeout=3))
    elif call == "await_writable":
        exhaust(ep)
        blocked = BlockedCoroutine(lambda: ep.await_writable(timeout=3))
    else:
        exhaust(ep)
        blocked = BlockedCoroutine(lambda: ep.asend(b"blocked", timeout=3))
    t0 = time.monotonic()
    ep.close()
    result, error, ended = blocked.outcome()
    assert isinstance(error, EndpointClosed), f"{call} on a closed endpoint: {result!r}, {error!r}"
    assert ended - t0 < MARGIN


def test_link_close_wakes_blocked_calls(harness: Harness) -> None:
    harness.tainted = True
    a, _ = connect(harness)
    b, _ = connect(harness)
    receiving = Blocked(lambda: a.recv(timeout=3))
    exhaust(b)
    sending = Blocked(lambda: b.send(b"blocked", timeout=3))
    t0 = time.monotonic()
    harness.local.close()
    for blocked in (receiving, sending):
        _, error, ended = blocked.outcome()
        assert isinstance(error, EndpointClosed), error
        assert ended - t0 < MARGIN


def test_closed_link_refuses_everything(harness: Harness) -> None:
    harness.tainted = True
    local = harness.local
    ep, p = connect(harness)
    local.close()
    local.close()
    assert local.closed and not local.is_up
    assert ep.closed
    assert local.statistics().state == "closed"
    for call in (lambda: ep.send(b"x", timeout=1), lambda: ep.recv(timeout=1),
                 lambda: local.create_endpoint(), lambda: local.poll(),
                 lambda: local.wait_channel("conf-x", timeout=0.01)):
        with pytest.raises(EndpointClosed):
            call()
    assert not local.writable()


def test_queued_messages_dropped_and_counted_at_close(harness: Harness) -> None:
    ep, p = connect(harness)
    for i in range(3):
        harness.peer.send(p, b"%d" % i)
    assert ep.recv(timeout=5) == b"0"  # the others are taken in with it, or soon after
    harness.local.wait_until(lambda: ep.statistics().queued == 2, 5, tx=False)
    ep.close()
    assert ep.statistics().dropped_at_close == 2
