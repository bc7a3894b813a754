"""A device that writes garbage into vring 1's used ring, which the host reads to reclaim
its transmit buffers.

The host takes fresh TX buffers first and reclaims used ones only when none is fresh, so
every test first cycles all of them once (:func:`_exhaust_fresh`).
"""

from __future__ import annotations

import time

import pytest
from hostile_kit import fault_total

from amplink import LinkDown


def _exhaust_fresh(link) -> None:
    for i in range(link.n):
        link.host_sends(b"warm-%d" % i)
        assert link.dev_ep.recv(timeout=1.0) == b"warm-%d" % i
    stats = link.host.statistics().backend
    assert stats["tx_buffers_never_used"] == 0
    assert stats["tx_buffers_free"] == stats["tx_buffers"]  # the device returned them all


def _one_by_one(link, count: int, tag: bytes = b"seq") -> None:
    for i in range(count):
        link.host_sends(tag + b"-%d" % i)
        assert link.dev_ep.recv(timeout=1.0) == tag + b"-%d" % i


@pytest.mark.parametrize("used_len", [513, 0x10000, 0xFFFFFFFF])
def test_used_len_beyond_buffer(link, used_len):
    _exhaust_fresh(link)
    link.host_sends(b"victim")
    assert link.dev_ep.recv(timeout=1.0) == b"victim"
    idx = link.used_idx(link.vr1) - 1
    link.set_used_elem(link.vr1, idx, length=used_len)
    # reclaiming every buffer once reaches the bad entry
    link.check_host_tx_capacity()
    assert fault_total(link.host) == 1
    link.check_host_rx_capacity()


@pytest.mark.parametrize("bad_head", [8, 0xFFFF, 0xFFFFFFFF])
def test_used_id_out_of_range_replacing_an_entry(link, bad_head):
    """The device returns a buffer under a bogus id: that one is lost (the device's own
    doing), the fault is counted, and the remaining buffers keep cycling."""
    _exhaust_fresh(link)
    link.host_sends(b"victim")
    assert link.dev_ep.recv(timeout=1.0) == b"victim"
    link.set_used_elem(link.vr1, link.used_idx(link.vr1) - 1, head=bad_head)
    _one_by_one(link, 3 * link.n)
    assert fault_total(link.host) == 1
    # all but the lost buffer still cycle
    for r in range(3):
        sent = [b"burst-%d-%d" % (r, i) for i in range(link.n - 1)]
        for payload in sent:
            link.host_sends(payload)
        assert [link.dev_ep.recv(timeout=1.0) for _ in sent] == sent
    link.check_host_rx_capacity()


def test_used_id_duplicated_replacing_an_entry(link):
    """Two used entries name the same head: no exception, and the link keeps working."""
    _exhaust_fresh(link)
    link.host_sends(b"A")
    link.host_sends(b"B")
    assert link.dev_ep.recv(timeout=1.0) == b"A"
    assert link.dev_ep.recv(timeout=1.0) == b"B"
    idx = link.used_idx(link.vr1)
    head_a, _len = link.used_elem(link.vr1, idx - 2)
    link.set_used_elem(link.vr1, idx - 1, head=head_a)
    for i in range(3 * link.n):
        link.host_sends(b"after-%d" % i)
        got = link.dev_ep.recv(timeout=1.0)
        assert got.startswith(b"after-")
    link.check_host_rx_capacity()


@pytest.mark.parametrize("bad_head", [8, 0xFFFFFFFF])
def test_extra_bogus_used_entry_breaks_sending_clearly(link, bad_head):
    """One extra used entry when the host's N unread ones are already there makes N + 1,
    which an honest device can never produce: not a silent stall but a clear LinkDown."""
    _exhaust_fresh(link)
    link.inject_used(link.vr1, bad_head, 0)
    t0 = time.monotonic()
    with pytest.raises(LinkDown, match="broke the ring protocol"):
        link.check_host_tx_capacity(timeout=0.2)
    assert time.monotonic() - t0 < 2.0
    assert fault_total(link.host) >= 1
    link.check_host_rx_capacity()  # the receiving queue is intact


def test_used_idx_jump_fails_cleanly(link):
    _exhaust_fresh(link)
    real = link.used_idx(link.vr1)
    link.set_used_idx(link.vr1, real + 1000)
    t0 = time.monotonic()
    with pytest.raises(LinkDown, match="broke the ring protocol"):
        for i in range(link.n + 1):
            link.host_sends(b"stuck-%d" % i, timeout=0.1)
            link.dev_ep.recv(timeout=1.0)
    assert time.monotonic() - t0 < 0.1 * (link.n + 1) + 2.0
    assert fault_total(link.host) >= 1
    assert not link.host.is_up
    link.check_host_rx_capacity()  # the receiving queue is intact
