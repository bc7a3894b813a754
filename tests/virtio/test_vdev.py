"""The RSC_VDEV entry codec, its validation, and live status/feature access."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import AddressError, FirmwareError
from amplink.memory.region import SharedRegion
from amplink.virtio.vdev import (
    VDEV_DFEATURES_OFFSET,
    VDEV_GFEATURES_OFFSET,
    VDEV_HEADER_SIZE,
    VDEV_STATUS_OFFSET,
    VDEV_VRINGS_OFFSET,
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_ID_RPMSG,
    VIRTIO_RPMSG_F_NS,
    VRING_DA_OFFSET,
    VRING_ENTRY_SIZE,
    VRING_NOTIFYID_OFFSET,
    VdevControl,
    VdevEntry,
    VringEntry,
    negotiate_features,
    vring_entry_offset,
)

ANY = 0xFFFF_FFFF


def rpmsg_vdev(config: bytes = b"") -> VdevEntry:
    return VdevEntry(
        VIRTIO_ID_RPMSG, notifyid=2, dfeatures=1 << VIRTIO_RPMSG_F_NS, config_len=len(config),
        vrings=[VringEntry(ANY, 16, 256, 0), VringEntry(ANY, 16, 256, 1)], config=config,
    )


def test_constants() -> None:
    assert VIRTIO_ID_RPMSG == 7 and VIRTIO_RPMSG_F_NS == 0
    assert (VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK) == (
        1, 2, 4,
    )
    assert (VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_CONFIG_S_FAILED) == (
        8, 0x40, 0x80,
    )
    assert (VDEV_GFEATURES_OFFSET, VDEV_STATUS_OFFSET, VDEV_VRINGS_OFFSET) == (12, 20, 24)
    assert (VRING_ENTRY_SIZE, VRING_DA_OFFSET, VRING_NOTIFYID_OFFSET) == (20, 0, 12)
    assert vring_entry_offset(1) == 44
    assert VdevEntry.type == 3


def test_pack_layout_matches_the_reference() -> None:
    body = rpmsg_vdev(b"xyz").pack()
    assert len(body) == 24 + 2 * 20 + 3 == rpmsg_vdev(b"xyz").size
    assert struct.unpack_from("<IIIIIBBH", body) == (7, 2, 1, 0, 3, 0, 2, 0)
    assert struct.unpack_from("<IIIII", body, 24) == (ANY, 16, 256, 0, 0)
    assert struct.unpack_from("<IIIII", body, 44) == (ANY, 16, 256, 1, 0)
    assert body[64:] == b"xyz"


def test_unpack_round_trip_at_an_offset() -> None:
    entry = rpmsg_vdev(b"cfg!")
    buf = b"\xee" * 8 + entry.pack() + b"\xee" * 5
    assert VdevEntry.unpack(buf, 8, len(buf) - 8) == entry


@given(
    vrings=st.lists(
        st.builds(
            VringEntry,
            st.integers(0, ANY),
            st.integers(0, 31).map(lambda k: 1 << k),
            st.integers(0, 15).map(lambda k: 1 << k),
            st.integers(0, ANY),
            st.integers(0, ANY),
        ),
        max_size=2,
    ),
    config=st.binary(max_size=64),
    words=st.tuples(*[st.integers(0, ANY)] * 4),
    status=st.integers(0, 255),
)
@settings(max_examples=150, derandomize=True, database=None)
def test_round_trip_property(
    vrings: list[VringEntry], config: bytes, words: tuple[int, int, int, int], status: int
) -> None:
    entry = VdevEntry(*words, config_len=len(config), status=status, vrings=vrings, config=config)
    body = entry.pack()
    assert VdevEntry.unpack(body, 0, len(body)) == entry


def _bad(body: bytes | bytearray, *, index: int | None = 5, max_vrings: int = 2) -> str:
    with pytest.raises(FirmwareError) as info:
        VdevEntry.unpack(bytes(body), 0, len(body), index=index, max_vrings=max_vrings)
    return str(info.value)


def test_truncated_header() -> None:
    msg = _bad(rpmsg_vdev().pack()[:23])
    assert "resource entry 5 (RSC_VDEV)" in msg and "truncated" in msg and "0x0" in msg


def test_truncated_vrings_and_config() -> None:
    body = rpmsg_vdev(b"abcd").pack()
    for cut in (30, 64, len(body) - 1):
        assert "truncated" in _bad(body[:cut])


def test_huge_config_len_is_refused_before_slicing() -> None:
    body = bytearray(rpmsg_vdev().pack())
    struct.pack_into("<I", body, 16, ANY)
    msg = _bad(body)
    assert "config_len" in msg and str(ANY) in msg


def test_too_many_vrings() -> None:
    entry = rpmsg_vdev()
    entry.vrings.append(VringEntry(ANY, 16, 256, 2))
    body = entry.pack()
    msg = _bad(body)
    assert "num_of_vrings = 3" in msg and "at byte 0x15" in msg
    assert VdevEntry.unpack(body, 0, len(body), max_vrings=3).vrings[2].notifyid == 2


def test_nonzero_reserved() -> None:
    body = bytearray(rpmsg_vdev().pack())
    body[23] = 1
    assert "reserved" in _bad(body) and "0x16" in _bad(body)


@pytest.mark.parametrize("num", [0, 3, 100, 65536, ANY])
def test_bad_vring_num(num: int) -> None:
    body = bytearray(rpmsg_vdev().pack())
    struct.pack_into("<I", body, 44 + 8, num)
    msg = _bad(body)
    assert "vring 1" in msg and f"num = {num}" in msg and "at byte 0x34" in msg


@pytest.mark.parametrize("align", [0, 3, 24])
def test_bad_vring_align(align: int) -> None:
    body = bytearray(rpmsg_vdev().pack())
    struct.pack_into("<I", body, 24 + 4, align)
    msg = _bad(body, index=None)
    assert msg.startswith("RSC_VDEV entry vring 0") and f"align = {align}" in msg


def test_largest_vring_is_accepted() -> None:
    body = VdevEntry(7, vrings=[VringEntry(0, 4096, 32768)]).pack()
    assert VdevEntry.unpack(body, 0, len(body)).vrings[0].num == 32768


def test_vring_unpack_alone() -> None:
    raw = VringEntry(0x1000, 64, 8, 3, 0x2000).pack()
    assert VringEntry.unpack(raw, 0, 20) == VringEntry(0x1000, 64, 8, 3, 0x2000)
    with pytest.raises(FirmwareError, match="truncated"):
        VringEntry.unpack(raw, 0, 19)


def test_span_outside_the_buffer_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="outside"):
        VdevEntry.unpack(b"\0" * 24, 4, 24)


def test_pack_refuses_inconsistent_or_unencodable_values() -> None:
    with pytest.raises(ValueError, match="config_len"):
        VdevEntry(7, config_len=1).pack()
    with pytest.raises(ValueError):
        VdevEntry(7, status=256).pack()
    with pytest.raises(ValueError):
        VringEntry(1 << 32, 16, 16).pack()


def test_negotiate_features() -> None:
    assert negotiate_features(0b1011, 0b0110) == 0b0010
    assert negotiate_features((1 << 40) | 1, (1 << 40) | 1) == 1
    assert negotiate_features(1 << VIRTIO_RPMSG_F_NS, 0) == 0


@pytest.fixture
def region() -> Iterator[SharedRegion]:
    with SharedRegion.memfd(4096, "vdev-test") as r:
        yield r


def test_control_reads_and_writes_live_fields(region: SharedRegion) -> None:
    at = 100
    region.write(at, rpmsg_vdev().pack())
    ctrl = VdevControl(region, at)
    assert ctrl.status == 0 and ctrl.dfeatures == 1 and ctrl.gfeatures == 0
    ctrl.gfeatures = negotiate_features(ctrl.dfeatures, 1 << VIRTIO_RPMSG_F_NS)
    for bits in (VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK):
        ctrl.add_status(bits)
    assert ctrl.status == 7
    assert region.read_u8(at + VDEV_STATUS_OFFSET) == 7
    assert region.read_u32(at + VDEV_GFEATURES_OFFSET) == 1
    ctrl.dfeatures = 0x3
    assert region.read_u32(at + VDEV_DFEATURES_OFFSET) == 3
    entry = VdevEntry.unpack(region.read(at, 64), 0, 64)
    assert (entry.status, entry.gfeatures, entry.dfeatures) == (7, 1, 3)
    ctrl.status = 0
    assert ctrl.status == 0


def test_control_bounds_and_value_checks(region: SharedRegion) -> None:
    with pytest.raises(AddressError):
        VdevControl(region, region.size - VDEV_HEADER_SIZE + 1)
    with pytest.raises(AddressError):
        VdevControl(region, -1)
    ctrl = VdevControl(region, region.size - VDEV_HEADER_SIZE)
    with pytest.raises(ValueError):
        ctrl.status = 0x100
    with pytest.raises(ValueError):
        ctrl.gfeatures = 1 << 32
    with pytest.raises(ValueError):
        ctrl.dfeatures = -1
