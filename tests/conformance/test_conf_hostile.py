"""Hostile bytes: garbage the peer writes into its side of the rings and buffers is
counted (``statistics().backend["protocol_faults"]`` and ``["malformed_rx"]``), raises in
no unrelated call and loses no buffer; damage beyond repair breaks only the direction
it hit.

What the peer writes is backend-specific (``peer_garbage.py`` for virtio); it says how
much the side under test must count.
"""

from __future__ import annotations

import time

import pytest
from backends import Harness
from conformance_kit import MARGIN, connect

from amplink.errors import LinkDown

pytestmark = [pytest.mark.timeout(30), pytest.mark.needs("hostile"),
              pytest.mark.addressing("rpmsg")]


def fault_counts(harness: Harness) -> tuple[int, int]:
    backend = harness.local.statistics().backend
    return sum(backend["protocol_faults"].values()), backend["malformed_rx"]


def capacity(harness: Harness, p: int, dst: int) -> int:
    """How many messages the peer can send before this side reads (then read them)."""
    n = harness.peer.call("fill", addr=p, dst=dst)
    ep = next(e for e in harness.local.endpoints() if e.addr == dst)
    got = [ep.recv(timeout=5) for _ in range(n)]
    assert got == [i.to_bytes(4, "little") for i in range(n)]
    return n


def test_garbage_is_counted_and_harmless(harness: Harness) -> None:
    harness.tainted = True
    ep, p = connect(harness)
    bystander = harness.local.create_endpoint()
    full = capacity(harness, p, ep.addr)
    faults, malformed = fault_counts(harness)
    expected = harness.peer.garbage("entries")
    # the next honest message goes to an endpoint that has nothing to do with it
    harness.peer.send(p, b"after the garbage", dst=bystander.addr)
    assert bystander.recvfrom(timeout=5) == (b"after the garbage", p)
    faults_now, malformed_now = fault_counts(harness)
    assert faults_now - faults == expected["protocol_faults"]
    assert malformed_now - malformed == expected["malformed_rx"]
    stats = harness.local.statistics()
    assert stats.state == "up" and harness.local.is_up
    assert ep.try_recvfrom() is None  # nothing of the garbage was delivered
    # both directions still work, and no buffer was lost
    ep.send(b"still talking", timeout=5)
    assert harness.peer.recv(p) == (b"still talking", ep.addr)
    assert capacity(harness, p, ep.addr) == full
    assert harness.local.create_endpoint().addr > 0


def test_damage_beyond_repair_breaks_only_the_receiving_direction(harness: Harness) -> None:
    harness.tainted = True
    ep, p = connect(harness)
    assert harness.peer.garbage("break") == {"broken": 1}
    t0 = time.monotonic()
    with pytest.raises(LinkDown):
        ep.recv(timeout=5)
    assert time.monotonic() - t0 < MARGIN
    stats = harness.local.statistics()
    assert stats.state == "receive broken"
    assert not harness.local.is_up
    assert sum(stats.backend["protocol_faults"].values()) >= 1
    with pytest.raises(LinkDown):
        ep.recv(timeout=1)  # every later receive too
    # sending goes on: the peer still gets what this side sends
    ep.send(b"one way", timeout=5)
    assert harness.peer.recv(p) == (b"one way", ep.addr)
