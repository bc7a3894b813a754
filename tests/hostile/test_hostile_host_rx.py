"""A device that writes garbage where the host reads: vring 0's used ring and RX buffers.

For each fault: the host raises nothing (or only a documented amplink error), the fault
is counted in ``statistics()``, every RX buffer keeps cycling afterwards (bursts of N
unread messages need all N posted), and well-formed messages still arrive.
"""

from __future__ import annotations

import pytest
from hostile_kit import HDR_SIZE, fault_total

from amplink import LinkDown, ReceiveTimeout

BUF = 512


def _send_victim(link, payload: bytes = b"victim") -> tuple[int, int, int]:
    """The device sends one message; return (used slot index, head, buffer offset)."""
    link.device_sends(payload)
    idx = (link.used_idx(link.vr0) - 1) & 0xFFFF
    head, used_len = link.used_elem(link.vr0, idx)
    assert used_len == HDR_SIZE + len(payload)
    return idx, head, link.buffer_offset(link.vr0, head)


def _assert_nothing_delivered(link) -> None:
    with pytest.raises(ReceiveTimeout):
        link.host_ep.recv(timeout=0.02)


def _assert_recovered(link) -> None:
    link.check_host_rx_capacity()
    link.check_exchange()
    assert link.host.is_up and link.device.is_up


@pytest.mark.parametrize("used_len", [0, 1, 8, 15])
def test_used_len_shorter_than_header(link, used_len):
    idx, _head, buf = _send_victim(link)
    link.set_used_elem(link.vr0, idx, length=used_len)
    link.set_header(buf, length=0)  # Linux's unsigned `len - 16` would let this through
    before = link.host.statistics()
    assert link.host.poll() == 0
    after = link.host.statistics()
    assert after.backend["malformed_rx"] == before.backend["malformed_rx"] + 1
    assert fault_total(link.host) >= 1
    assert after.messages_received == before.messages_received
    _assert_nothing_delivered(link)
    _assert_recovered(link)


@pytest.mark.parametrize("hdr_len", [BUF - HDR_SIZE + 1, BUF, 0x8000, 0xFFFF])
def test_header_len_beyond_buffer(link, hdr_len):
    idx, _head, buf = _send_victim(link)
    link.set_used_elem(link.vr0, idx, length=BUF)  # the whole buffer "written"
    link.set_header(buf, length=hdr_len)
    before = link.host.statistics().backend["malformed_rx"]
    assert link.host.poll() == 0
    assert link.host.statistics().backend["malformed_rx"] == before + 1
    _assert_nothing_delivered(link)
    _assert_recovered(link)


@pytest.mark.parametrize("hdr_len", [7, 11, 100, BUF - HDR_SIZE])
def test_header_len_beyond_used_len(link, hdr_len):
    idx, _head, buf = _send_victim(link, b"0123456789")  # used.len = 26
    link.set_header(buf, length=hdr_len)
    link.set_used_elem(link.vr0, idx, length=HDR_SIZE + 6)
    before = link.host.statistics().backend["malformed_rx"]
    assert link.host.poll() == 0
    assert link.host.statistics().backend["malformed_rx"] == before + 1
    _assert_nothing_delivered(link)
    _assert_recovered(link)


def test_header_len_shorter_than_used_len_is_accepted(link):
    """Control: a header length within the used length is a valid (shorter) message."""
    _idx, _head, buf = _send_victim(link, b"0123456789")
    link.set_header(buf, length=3)
    assert link.host_ep.recv(timeout=1.0) == b"012"
    assert link.host.statistics().backend["malformed_rx"] == 0
    _assert_recovered(link)


@pytest.mark.parametrize("used_len", [BUF + 1, 0x10000, 0xFFFFFFFF])
def test_used_len_beyond_buffer(link, used_len):
    idx, _head, _buf = _send_victim(link)
    link.set_used_elem(link.vr0, idx, length=used_len)
    link.host.poll()
    assert fault_total(link.host) >= 1
    # The header itself is sound, so delivering the message is fine; garbage is not.
    got = []
    while True:
        try:
            got.append(link.host_ep.recv(timeout=0.02))
        except ReceiveTimeout:
            break
    assert got in ([], [b"victim"])
    _assert_recovered(link)


@pytest.mark.parametrize("bad_head", [8, 9, 0x7FFF, 0xFFFF, 0x10000, 0xFFFFFFFF])
def test_used_id_out_of_range(link, bad_head):
    link.inject_used(link.vr0, bad_head, BUF)
    before = link.host.statistics()
    assert link.host.poll() == 0
    after = link.host.statistics()
    assert fault_total(link.host) == 1
    assert after.messages_received == before.messages_received
    _assert_recovered(link)


def test_used_id_out_of_range_between_good_messages(link):
    link.device_sends(b"A")
    link.inject_used(link.vr0, 0xFFFFFFFF, 20)
    link.device_sends(b"B")
    assert link.host_ep.recv(timeout=1.0) == b"A"
    assert link.host_ep.recv(timeout=1.0) == b"B"
    assert fault_total(link.host) == 1
    _assert_nothing_delivered(link)
    _assert_recovered(link)


def test_used_id_duplicated_in_one_batch(link):
    """The device returns the same head twice before the host reads either entry.

    The second entry names a buffer that is no longer outstanding (the host has not yet
    published it again): it must be counted, not delivered a second time, and must not
    make the host post that buffer twice (which overfills the avail ring).
    """
    idx, head, _buf = _send_victim(link, b"once")
    _head, used_len = link.used_elem(link.vr0, idx)
    link.inject_used(link.vr0, head, used_len)
    assert link.host_ep.recv(timeout=1.0) == b"once"
    _assert_nothing_delivered(link)
    assert fault_total(link.host) == 1
    _assert_recovered(link)


@pytest.mark.parametrize("delta", [1000, 9, 0x8000, 0xFFFE])
def test_used_idx_jump_breaks_that_direction_clearly(link, delta):
    """used.idx more than a ring ahead (0xFFFE: behind) cannot come from a working device:
    no loop over garbage entries, nothing delivered, receiving fails saying why; the
    host's sending queue is intact and goes on."""
    link.device_sends(b"A")
    link.set_used_idx(link.vr0, link.used_idx(link.vr0) + delta)
    before = link.host.statistics()
    with pytest.raises(LinkDown, match="broke the ring protocol"):
        link.host_ep.recv(timeout=1.0)
    assert fault_total(link.host) >= 1
    assert link.host.statistics().messages_received == before.messages_received
    assert not link.host.is_up
    link.host_sends(b"after")
    assert link.dev_ep.recv(timeout=1.0) == b"after"


@pytest.mark.parametrize("dst", [0x7777, 0, 52, 0xFFFFFFFF])
def test_header_unknown_destination(link, dst):
    _idx, _head, buf = _send_victim(link)
    link.set_header(buf, dst=dst)
    before = link.host.statistics()
    link.host.poll()
    after = link.host.statistics()
    assert after.dropped_unknown_dst == before.dropped_unknown_dst + 1
    assert after.messages_received == before.messages_received
    _assert_nothing_delivered(link)
    _assert_recovered(link)


def test_unknown_destination_from_device(link):
    for i in range(3 * link.n):
        link.dev_ep.sendto(b"nobody-%d" % i, 0x7777, timeout=1.0)
        link.host.poll()
    assert link.host.statistics().dropped_unknown_dst == 3 * link.n
    _assert_recovered(link)


@pytest.mark.parametrize("field", ["flags", "reserved"])
def test_header_nonzero_reserved_fields_tolerated(link, field):
    _idx, _head, buf = _send_victim(link)
    link.set_header(buf, **{field: 0xFFFF if field == "flags" else 0xFFFFFFFF})
    assert link.host_ep.recv(timeout=1.0) == b"victim"
    _assert_recovered(link)


def test_header_src_any_delivered_or_dropped_without_error(link):
    _idx, _head, buf = _send_victim(link)
    link.set_header(buf, src=0xFFFFFFFF)
    link.host.poll()
    assert link.host_ep.dst != 0xFFFFFFFF  # the endpoint keeps its peer
    while True:
        try:
            link.host_ep.recv(timeout=0.02)
        except ReceiveTimeout:
            break
    _assert_recovered(link)
