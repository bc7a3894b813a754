"""The vhost-user codec and request table: round trips, and any bytes give a typed error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.platforms.vhost_user import protocol as P
from amplink.platforms.vhost_user.backend import VhostUserBackend
from amplink.platforms.vhost_user.protocol import (
    Header,
    MemRegion,
    VhostUserError,
    VringAddr,
    VringState,
)
from amplink.platforms.vhost_user.rings import derive_align
from amplink.virtio.ring import VringLayout

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)


@given(st.integers(0, 40), st.binary(max_size=P.MAX_PAYLOAD), st.booleans())
def test_request_header_round_trip(request: int, payload: bytes, need_reply: bool) -> None:
    data = P.encode_request(request, payload, need_reply=need_reply)
    head = Header.unpack(data[:P.HEADER_SIZE])
    assert (head.request, head.size, head.need_reply) == (request, len(payload), need_reply)
    assert data[P.HEADER_SIZE:] == payload


@given(st.binary(min_size=12, max_size=12))
def test_any_header_decodes_or_is_a_typed_error(data: bytes) -> None:
    try:
        head = Header.unpack(data)
    except VhostUserError:
        return
    assert head.flags & 3 == 1 and not head.flags & P.VHOST_USER_FLAG_REPLY
    assert head.size <= P.MAX_PAYLOAD


@given(u32, u32)
def test_vring_state_round_trip(index: int, num: int) -> None:
    assert VringState.unpack(VringState(index, num).pack()) == VringState(index, num)


@given(st.builds(VringAddr, u32, u32, u64, u64, u64, u64))
def test_vring_addr_round_trip(addr: VringAddr) -> None:
    assert VringAddr.unpack(addr.pack()) == addr


@given(st.lists(st.builds(MemRegion, u64, u64, u64, u64), min_size=1, max_size=8),
       st.integers(0, 8))
def test_mem_table_round_trip_with_spare_slots(regions: list[MemRegion], spare: int) -> None:
    spare = min(spare, 8 - len(regions))
    payload = P.pack_mem_table(regions) + bytes(32 * spare)  # as UML pads to two slots
    assert P.unpack_mem_table(payload) == regions


@given(st.binary(max_size=P.MAX_PAYLOAD + 40))
def test_any_payload_decodes_or_is_a_typed_error(payload: bytes) -> None:
    for decode in (lambda: VringState.unpack(payload), lambda: VringAddr.unpack(payload),
                   lambda: P.unpack_mem_table(payload),
                   lambda: P.unpack_vring_fd(payload, "x"), lambda: P.unpack_u64(payload, "x")):
        try:
            decode()
        except VhostUserError:
            pass


def test_mem_table_with_a_partial_slot_is_refused() -> None:
    with pytest.raises(VhostUserError):
        P.unpack_mem_table(struct.pack("<II", 1, 0) + bytes(40))


@settings(max_examples=300)
@given(st.integers(0, 45), st.integers(0, 15), st.binary(max_size=80))
def test_the_request_table_never_fails_untyped(request: int, flags: int, payload: bytes) -> None:
    """Any request without fds: a reply, nothing, or VhostUserError; never a crash."""
    backend = VhostUserBackend(lambda config: pytest.fail("no run without memory"))
    try:
        backend.handle(Header(request, 1 | flags << 2 & 0xC, len(payload)), payload, [])
    except VhostUserError:
        pass
    finally:
        backend.close()


@given(st.sampled_from([1, 2, 4, 64, 256, 1024, 32768]),
       st.sampled_from([2, 4, 16, 64, 4096, 65536]))
def test_the_standard_layout_gives_back_its_alignment(num: int, align: int) -> None:
    layout = VringLayout(0x10000, num, align)
    addr = VringAddr(0, 0, layout.desc, layout.used, layout.avail, 0)
    found = derive_align(num, addr, "ring")
    assert VringLayout(0x10000, num, found).used == layout.used


def test_a_used_ring_no_alignment_explains_is_refused() -> None:
    layout = VringLayout(0, 256, 4096)
    with pytest.raises(VhostUserError, match="standard split layout"):
        derive_align(256, VringAddr(0, 0, 0, layout.used + 8, layout.avail, 0), "ring")
