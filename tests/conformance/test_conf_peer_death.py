"""The peer dies: every call blocked on the link gets LinkDown within DEATH_LIMIT
(100 ms) of the death, measured (see the run's terminal summary), and every later call
fails the same way.

The in-process backends play a death by shutting down the peer's end of the kick
socket (what the kernel does when a process dies); the simulator kills the firmware
process. Backends that cannot declare ``can_kill_peer=False``.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable

import pytest
from backends import Harness
from common_kit import wait_for
from conformance_kit import (
    DEATH_LATENCY,
    DEATH_LIMIT,
    MARGIN,
    Blocked,
    BlockedCoroutine,
    connect,
    exhaust,
    fit,
)
from peers import AgentPeer

from amplink.errors import LinkDown
from amplink.link import Endpoint

pytestmark = [pytest.mark.timeout(30), pytest.mark.needs("can_kill_peer")]


def _trace(error: BaseException | None) -> str:
    """Where an unexpected error came from (it was raised in another thread)."""
    return "" if error is None else "\n" + "".join(traceback.format_exception(error))


def _recv(ep: Endpoint) -> Blocked:
    return Blocked(lambda: ep.recv(timeout=10))


def _send_full(ep: Endpoint) -> Blocked:
    exhaust(ep)
    return Blocked(lambda: ep.send(fit(ep, b"blocked"), timeout=10))


def _wait_writable(ep: Endpoint) -> Blocked:
    exhaust(ep)
    return Blocked(lambda: ep.wait_writable(timeout=10))


def _arecv(ep: Endpoint) -> BlockedCoroutine:
    return BlockedCoroutine(lambda: ep.arecv(timeout=10))


def _asend_full(ep: Endpoint) -> BlockedCoroutine:
    exhaust(ep)
    return BlockedCoroutine(lambda: ep.asend(fit(ep, b"blocked"), timeout=10))


def _await_writable(ep: Endpoint) -> BlockedCoroutine:
    exhaust(ep)
    return BlockedCoroutine(lambda: ep.await_writable(timeout=10))


def _loan(ep: Endpoint) -> Blocked:
    exhaust(ep)
    return Blocked(lambda: ep.loan(timeout=10))


def _recv_held(ep: Endpoint) -> Blocked:
    return Blocked(lambda: ep.recv_held(timeout=10))


def _wait_channel(ep: Endpoint) -> Blocked:
    return Blocked(lambda: ep.link.wait_channel("conf-never-announced", timeout=10))


BLOCKING: dict[str, Callable[[Endpoint], Blocked | BlockedCoroutine]] = {
    "recv": _recv, "send-on-full-rings": _send_full, "wait_writable": _wait_writable,
    "arecv": _arecv, "asend-on-full-rings": _asend_full, "await_writable": _await_writable,
    "loan": _loan, "recv_held": _recv_held, "wait_channel": _wait_channel}
#: the capability each call needs
NEEDS = {"wait_writable": ("tx_ready",), "await_writable": ("tx_ready",), "loan": ("tx_loan",),
         "wait_channel": ("name_service", "channel_discovery")}


@pytest.mark.parametrize("call", BLOCKING)
def test_blocked_call_gets_link_down_at_once(harness: Harness, call: str,
                                             record_property: Callable[[str, object], None]
                                             ) -> None:
    need = NEEDS.get(call, ())
    if need and not any(getattr(harness.local.capabilities, n) for n in need):
        pytest.skip(f"{harness.case.id} does not declare the capability "  # type: ignore
                    f"{' or '.join(need)}")
    harness.tainted = True
    ep, _ = connect(harness)
    blocked = BLOCKING[call](ep)
    died = harness.peer.die()
    result, error, ended = blocked.outcome()
    assert isinstance(error, LinkDown), (f"{call} after the peer died: {result!r}, {error!r}"
                                         f"{_trace(error)}")
    latency = ended - died
    assert harness.case is not None
    # reported through the test report, which reaches the summary from xdist workers too
    record_property(DEATH_LATENCY, (harness.case.id, harness.side, call, latency))
    assert latency < DEATH_LIMIT, f"{call}: LinkDown {latency * 1000:.1f} ms after the death"


def test_every_later_call_fails_with_link_down(harness: Harness) -> None:
    harness.tainted = True
    local = harness.local
    ep, p = connect(harness)
    held = _recv(ep)
    harness.peer.die()
    _, error, _ = held.outcome()
    assert isinstance(error, LinkDown)
    # down at once, or a moment after the first error: a kernel removes a device's
    # endpoint devices just before its control device (rpmsg_char)
    assert wait_for(lambda: not local.is_up, MARGIN, 0.001), "the link stayed up"
    assert local.statistics().state == "down"
    for call in (lambda: ep.recv(timeout=1), lambda: ep.try_recvfrom(),
                 lambda: ep.send(fit(ep, b"x"), timeout=1), lambda: ep.try_send(fit(ep, b"x")),
                 lambda: ep.sendto(fit(ep, b"x"), p, timeout=1),
                 lambda: asyncio.run(ep.arecv(timeout=1)),
                 lambda: local.create_endpoint(), lambda: local.poll()):
        t0 = time.monotonic()
        with pytest.raises(LinkDown):
            call()
        assert time.monotonic() - t0 < MARGIN
    local.close()  # closing a link whose peer is gone is fine
    assert local.closed


def test_idle_link_notices_the_death_on_its_next_wait(harness: Harness) -> None:
    harness.tainted = True
    ep, _ = connect(harness)
    harness.peer.die()
    t0 = time.monotonic()
    with pytest.raises(LinkDown):
        ep.recv(timeout=5)
    assert time.monotonic() - t0 < MARGIN


@pytest.mark.needs("cross_process")
def test_peer_exits_abruptly(harness: Harness) -> None:
    """The agent leaves with os._exit() (no link close, no end-of-service messages)."""
    harness.tainted = True
    assert isinstance(harness.peer, AgentPeer)
    if harness.local.capabilities.name_service:  # an announced service: no end announced
        harness.peer.create("conf-exit-svc", announce=True)
        client = harness.local.open_channel("conf-exit-svc", timeout=5)
    else:  # static channels (Keem Bay, RTKit): a channel both sides opened
        client, _ = connect(harness)
    waiting = _recv(client)
    harness.peer.exit(3)
    _, error, _ = waiting.outcome()
    assert isinstance(error, LinkDown), error
