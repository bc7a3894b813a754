"""A host (driver) that writes garbage where the device reads: the avail rings and the
descriptors of vring 1 (messages to the device) and vring 0 (buffers the device fills).

The device must count the fault, hand every buffer with a valid head straight back (so
the driver loses nothing), raise nothing, and go on receiving well-formed messages.
"""

from __future__ import annotations

import pytest
from hostile_kit import HDR_SIZE, fault_total

from amplink import LinkDown, ReceiveTimeout
from amplink.virtio.ring import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE


def _post_victim(link, payload: bytes = b"victim") -> int:
    """The host sends one message; return the head of its descriptor on vring 1."""
    link.host_sends(payload)
    return link.last_avail_head(link.vr1)


def _device_gets_nothing(link) -> None:
    assert link.device.poll() == 0
    with pytest.raises(ReceiveTimeout):
        link.dev_ep.recv(timeout=0.02)


def _assert_recovered(link) -> None:
    link.check_host_tx_capacity()
    link.check_host_rx_capacity()
    link.check_exchange()
    assert link.host.is_up and link.device.is_up


# -- descriptors on vring 1 ------------------------------------------------------------------
def _outside_addresses(link):
    size = link.region.size
    return {
        "at_end": size,
        "crossing_end": size - 8,  # 8 bytes inside, the rest outside
        "far": 0x1_0000_0000,
        "max": 0xFFFF_FFFF_FFFF_FFFF,
    }


@pytest.mark.parametrize("where", ["at_end", "crossing_end", "far", "max"])
def test_desc_addr_outside_region(link, where):
    head = _post_victim(link)
    addr = link.region.da_base + _outside_addresses(link)[where]
    link.set_desc(link.vr1, head, addr=addr & 0xFFFF_FFFF_FFFF_FFFF,
                  length=HDR_SIZE + 6 if where != "crossing_end" else 16)
    _device_gets_nothing(link)
    assert fault_total(link.device) == 1
    _assert_recovered(link)


@pytest.mark.parametrize("length", [0, 0xFFFF_FFFF, 0x8000_0000])
def test_desc_len_zero_or_huge(link, length):
    head = _post_victim(link)
    link.set_desc(link.vr1, head, length=length)
    _device_gets_nothing(link)
    assert fault_total(link.device) == 1
    _assert_recovered(link)


@pytest.mark.parametrize("length", [1, 8, 15])
def test_desc_len_shorter_than_header(link, length):
    head = _post_victim(link)
    link.set_desc(link.vr1, head, length=length)
    _device_gets_nothing(link)
    assert link.device.statistics().backend["malformed_rx"] == 1
    _assert_recovered(link)


@pytest.mark.parametrize("hdr_len", [7, 100, 496, 0xFFFF])
def test_header_len_beyond_desc_len(link, hdr_len):
    head = _post_victim(link)  # desc len = 16 + 6
    buf = link.buffer_offset(link.vr1, head)
    link.set_header(buf, length=hdr_len)
    _device_gets_nothing(link)
    assert link.device.statistics().backend["malformed_rx"] == 1
    _assert_recovered(link)


@pytest.mark.parametrize("flags", [
    VRING_DESC_F_NEXT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT,
    VRING_DESC_F_WRITE, 0xFFFF,
])
def test_desc_flags_next_indirect_write(link, flags):
    head = _post_victim(link)
    link.set_desc(link.vr1, head, flags=flags, next_=0xFFFF)
    _device_gets_nothing(link)
    assert fault_total(link.device) == 1
    _assert_recovered(link)


def test_desc_next_field_ignored_without_flag(link):
    """Control: a garbage ``next`` without the NEXT flag is not a fault."""
    head = _post_victim(link)
    link.set_desc(link.vr1, head, next_=0xFFFF)
    assert link.dev_ep.recv(timeout=1.0) == b"victim"
    assert fault_total(link.device) == 0


def test_desc_pointing_into_the_rings_is_harmless(link):
    """An in-bounds address that is not a buffer: read as a message (or dropped), no error."""
    head = _post_victim(link)
    link.set_desc(link.vr1, head, addr=link.region.da_base + link.vr0.desc, length=64)
    link.device.poll()
    _assert_recovered(link)


# -- the avail ring of vring 1 ---------------------------------------------------------------
@pytest.mark.parametrize("bad_head", [8, 0x100, 0xFFFF])
def test_avail_entry_out_of_range(link, bad_head):
    link.host_sends(b"victim")
    link.region.write_u16(link.avail_slot_offset(link.vr1, link.avail_idx(link.vr1) - 1),
                          bad_head)
    _device_gets_nothing(link)
    assert fault_total(link.device) == 1
    # the host lost that buffer (its own doing); the device goes on receiving
    for i in range(3 * link.n):
        link.host_sends(b"after-%d" % i)
        assert link.dev_ep.recv(timeout=1.0) == b"after-%d" % i
    link.check_host_rx_capacity()


def test_avail_entry_duplicated(link):
    link.host_sends(b"A")
    link.host_sends(b"B")
    idx = link.avail_idx(link.vr1)
    head_a = link.avail_head(link.vr1, idx - 2)
    link.region.write_u16(link.avail_slot_offset(link.vr1, idx - 1), head_a)
    link.device.poll()
    got = []
    while True:
        try:
            got.append(link.dev_ep.recv(timeout=0.02))
        except ReceiveTimeout:
            break
    assert got and set(got) <= {b"A"}
    for i in range(3 * link.n):
        link.host_sends(b"after-%d" % i)
        assert link.dev_ep.recv(timeout=1.0) == b"after-%d" % i
    link.check_host_rx_capacity()


@pytest.mark.parametrize("delta", [1000, 9, 0x8000, 0xFFFE])
def test_avail_idx_jump_breaks_that_direction_clearly(link, delta):
    """avail.idx more than a ring ahead (0xFFFE: behind) is beyond repair: like Linux's
    BAD_RING, receiving on the device fails saying why; the other queue is intact."""
    link.host_sends(b"A")
    link.set_avail_idx(link.vr1, link.avail_idx(link.vr1) + delta)
    with pytest.raises(LinkDown, match="broke the ring protocol"):
        link.dev_ep.recv(timeout=1.0)
    with pytest.raises(LinkDown, match="broke the ring protocol"):
        link.dev_ep.recv(timeout=1.0)
    assert fault_total(link.device) >= 1
    assert not link.device.is_up
    link.device_sends(b"after")
    assert link.host_ep.recv(timeout=1.0) == b"after"


# -- vring 0: the buffers the device fills ---------------------------------------------------
def _posted_rx_heads(link) -> list[int]:
    """Heads the host has posted on vring 0 and the device has not taken yet."""
    idx = link.avail_idx(link.vr0)
    return [link.avail_head(link.vr0, idx - k) for k in range(link.n, 0, -1)]


@pytest.mark.parametrize("corruption", [
    {"flags": 0}, {"flags": VRING_DESC_F_WRITE | VRING_DESC_F_NEXT},
    {"flags": VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT}, {"length": 0},
    {"length": 8}, {"addr": 0xFFFF_FFFF_FFFF_0000}, {"length": 0xFFFF_FFFF},
])
def test_rx_desc_corrupt(link, corruption):
    """One RX descriptor is bad: the device skips and returns it, the host re-posts it."""
    heads = _posted_rx_heads(link)
    link.set_desc(link.vr0, heads[0], **corruption)
    for i in range(2 * link.n):
        link.device_sends(b"up-%d" % i)
        assert link.host_ep.recv(timeout=1.0) == b"up-%d" % i
    assert fault_total(link.device) == 1
    assert link.host.statistics().backend["malformed_rx"] <= 1  # the 0-length return
    _assert_recovered(link)


def test_rx_desc_smaller_than_message_but_big_enough_for_small_ones(link):
    heads = _posted_rx_heads(link)
    link.set_desc(link.vr0, heads[0], length=64)
    for i in range(2 * link.n):
        payload = bytes([i]) * 400
        link.device_sends(payload)
        assert link.host_ep.recv(timeout=1.0) == payload
    assert fault_total(link.device) == 1
    _assert_recovered(link)


@pytest.mark.parametrize("where", ["ahead", "behind"])
def test_rx_avail_idx_jump_breaks_that_direction_clearly(link, where):
    real = link.avail_idx(link.vr0)
    # all N RX buffers are posted and untaken: N + 2 back is behind what the device took
    link.set_avail_idx(link.vr0, real + 1000 if where == "ahead" else real - link.n - 2)
    with pytest.raises(LinkDown, match="broke the ring protocol"):
        link.device_sends(b"blocked", timeout=1.0)
    assert fault_total(link.device) >= 1
    assert not link.device.is_up
    link.host_sends(b"still")
    assert link.dev_ep.recv(timeout=1.0) == b"still"
