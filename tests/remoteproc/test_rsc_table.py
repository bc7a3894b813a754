"""Resource table parse and build: layout, every check, names, vendor hooks, patching."""

from __future__ import annotations

import logging
import struct

import pytest

from amplink.errors import FirmwareError
from amplink.remoteproc.constants import (
    FW_RSC_ADDR_ANY,
    RSC_CARVEOUT,
    RSC_DEVMEM,
    RSC_TRACE,
    RSC_VDEV,
    RSC_VENDOR_END,
    RSC_VENDOR_START,
)
from amplink.remoteproc.rsc_table import (
    Carveout,
    DevMem,
    ResourceTable,
    Trace,
    UnknownResource,
    VendorHookResult,
    VendorResource,
    process_vendor,
)
from amplink.virtio.vdev import VDEV_STATUS_OFFSET, VdevEntry, VringEntry

ANY = FW_RSC_ADDR_ANY


def sample() -> ResourceTable:
    return ResourceTable([
        Carveout(ANY, ANY, 0x8000, name="vdev0buffer"),
        DevMem(0x4000_0000, 0x4000_0000, 0x1000, flags=3, name="uart"),
        Trace(0x2000_4000, 0x400, name="trace0"),
        VdevEntry(7, notifyid=9, dfeatures=1, config_len=0, vrings=[
            VringEntry(ANY, 16, 256, ANY), VringEntry(ANY, 16, 256, ANY),
        ]),
    ])


def header(num: int, *offsets: int, ver: int = 1, reserved: tuple[int, int] = (0, 0)) -> bytes:
    return struct.pack("<IIII", ver, num, *reserved) + struct.pack(f"<{len(offsets)}I", *offsets)


def parse_error(data: bytes | bytearray) -> str:
    with pytest.raises(FirmwareError) as info:
        ResourceTable.parse(bytes(data))
    return str(info.value)


def test_constants() -> None:
    assert (RSC_CARVEOUT, RSC_DEVMEM, RSC_TRACE, RSC_VDEV) == (0, 1, 2, 3)
    assert (RSC_VENDOR_START, RSC_VENDOR_END, FW_RSC_ADDR_ANY) == (128, 512, 0xFFFFFFFF)
    assert VdevEntry.type == RSC_VDEV


def test_build_layout() -> None:
    table = sample()
    data = table.build()
    ver, num, r0, r1 = struct.unpack_from("<IIII", data)
    assert (ver, num, r0, r1) == (1, 4, 0, 0)
    offsets = list(struct.unpack_from("<4I", data, 16))
    assert offsets == table.entry_offsets == [32, 88, 144, 192]
    assert struct.unpack_from("<IIIIII", data, 32) == (0, ANY, ANY, 0x8000, 0, 0)
    assert data[56:88] == b"vdev0buffer".ljust(32, b"\0")
    assert struct.unpack_from("<I", data, 88)[0] == RSC_DEVMEM
    assert struct.unpack_from("<IIII", data, 144) == (RSC_TRACE, 0x2000_4000, 0x400, 0)
    assert struct.unpack_from("<I", data, 192)[0] == RSC_VDEV
    assert len(data) == 192 + 4 + 24 + 40


def test_parse_round_trip() -> None:
    table = sample()
    data = table.build()
    parsed = ResourceTable.parse(data)
    assert parsed.entries == table.entries
    assert parsed.entry_offsets == table.entry_offsets
    assert parsed.min_size == len(data)
    assert parsed.build() == data


def test_parse_accepts_any_buffer_and_unaligned_offsets() -> None:
    body = Trace(0x100, 0x10, name="t").pack()
    data = header(1, 21) + b"\x99" + struct.pack("<I", RSC_TRACE) + body
    parsed = ResourceTable.parse(memoryview(bytearray(data)))
    assert parsed.entries == [Trace(0x100, 0x10, name="t")]
    assert parsed.entry_offsets == [21] and parsed.body_offset(0) == 25


def test_empty_table() -> None:
    assert ResourceTable.parse(header(0)).entries == []
    assert ResourceTable().build() == header(0)


def test_min_size_pads_and_survives() -> None:
    table = sample()
    table.min_size = 512
    data = table.build()
    assert len(data) == 512 and data[260:] == bytes(252)
    assert ResourceTable.parse(data).build() == data


# -- header checks ---------------------------------------------------------------------------
def test_too_small() -> None:
    msg = parse_error(b"\x01\0\0\0" * 3)
    assert "12 bytes" in msg and "16" in msg and "0x0" in msg


def test_bad_version() -> None:
    msg = parse_error(header(0, ver=2))
    assert "field ver = 2" in msg and "at byte 0x0" in msg


@pytest.mark.parametrize(("reserved", "pos"), [((1, 0), "0x8"), ((0, 5), "0xc")])
def test_nonzero_header_reserved(reserved: tuple[int, int], pos: str) -> None:
    msg = parse_error(header(0, reserved=reserved))
    assert "reserved" in msg and f"at byte {pos}" in msg


def test_num_larger_than_the_table() -> None:
    msg = parse_error(header(0xFFFF_FFFF) + bytes(64))
    assert "num = 4294967295" in msg and "at byte 0x4" in msg


def test_offset_into_the_header() -> None:
    msg = parse_error(header(2, 8, 24) + bytes(8))
    assert "resource entry 0: field offset[0] = 0x8" in msg
    assert "header, which ends at 0x18" in msg and "at byte 0x10" in msg


def test_offset_past_the_end() -> None:
    data = header(1, 100) + bytes(60)
    msg = parse_error(data)
    assert "offset[0] = 0x64" in msg and "at byte 0x10" in msg
    # Room for less than the type word is also refused.
    assert "type word" in parse_error(header(1, 20) + b"\0\0\0")


def test_duplicate_offsets() -> None:
    body = struct.pack("<I", RSC_TRACE) + Trace(0, 4).pack()
    msg = parse_error(header(2, 24, 24) + body)
    assert "offset[1]" in msg and "repeats offset[0]" in msg and "at byte 0x14" in msg


def test_truncated_entry() -> None:
    data = ResourceTable([Trace(0, 1), Carveout(0, 0, 1)]).build()
    msg = parse_error(data[:-1])
    assert "resource entry 1 (RSC_CARVEOUT)" in msg and "truncated" in msg
    data = ResourceTable([Carveout(0, 0, 1)]).build()
    msg = parse_error(data[:-1])
    assert "resource entry 0 (RSC_CARVEOUT)" in msg and "truncated" in msg


def test_overlapping_entries() -> None:
    carveout = struct.pack("<I", RSC_CARVEOUT) + Carveout(0, 0, 16).pack()
    data = header(2, 24, 40) + carveout + bytes(16)
    msg = parse_error(data)
    assert "resource entry 0 (RSC_CARVEOUT)" in msg and "overlaps the entry at byte 0x28" in msg


@pytest.mark.parametrize("kind", [Carveout, DevMem])
def test_memory_reserved_must_be_zero(kind: type[Carveout | DevMem]) -> None:
    data = ResourceTable([kind(1, 2, 3, reserved=7)]).build()
    msg = parse_error(data)
    assert "field reserved = 0x7" in msg and "at byte 0x28" in msg  # 20 + 4 + 16


def test_trace_reserved_must_be_zero() -> None:
    msg = parse_error(ResourceTable([Trace(1, 2, reserved=1)]).build())
    assert "resource entry 0 (RSC_TRACE)" in msg and "reserved" in msg and "0x20" in msg


def test_vdev_errors_name_the_table_entry() -> None:
    table = sample()
    table.entries[3].vrings[1].num = 3  # type: ignore[union-attr]
    msg = parse_error(table.build())
    assert "resource entry 3 (RSC_VDEV) vring 1" in msg and "num = 3" in msg
    assert f"at byte 0x{192 + 4 + 44 + 8:x}" in msg


def test_max_vrings_is_a_parameter() -> None:
    table = ResourceTable([VdevEntry(7, vrings=[VringEntry(0, 16, 4)] * 3)])
    data = table.build()
    assert "num_of_vrings = 3" in parse_error(data)
    assert len(ResourceTable.parse(data, max_vrings=3).entries[0].vrings) == 3  # type: ignore[union-attr]


# -- names -------------------------------------------------------------------------------------
def test_name_stops_at_the_first_nul() -> None:
    data = bytearray(ResourceTable([Carveout(1, 2, 3, name="abc")]).build())
    data[24 + 20 + 4:24 + 20 + 32] = b"\xff" * 28  # garbage after the NUL
    assert ResourceTable.parse(data).entries[0].name == "abc"  # type: ignore[union-attr]


def test_name_without_nul_is_refused() -> None:
    data = bytearray(ResourceTable([Trace(1, 2, name="x")]).build())
    data[24 + 12:24 + 44] = b"A" * 32
    msg = parse_error(data)
    assert "field name has no NUL" in msg and "at byte 0x24" in msg


def test_name_must_be_utf8() -> None:
    data = bytearray(ResourceTable([Trace(1, 2, name="xy")]).build())
    data[24 + 12] = 0xC3
    data[24 + 13] = 0x28
    assert "not valid UTF-8" in parse_error(data)


def test_names_are_utf8_and_bounded_on_build() -> None:
    name = "é" * 15  # 30 bytes
    data = ResourceTable([Carveout(0, 0, 1, name=name)]).build()
    assert ResourceTable.parse(data).entries[0].name == name  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        Carveout(0, 0, 1, name="x" * 32).pack()
    with pytest.raises(ValueError):
        Trace(0, 1, name="a\0b").pack()


# -- vendor and unknown entries --------------------------------------------------------------
def test_vendor_and_unknown_bodies_run_to_the_next_entry(caplog: pytest.LogCaptureFixture) -> None:
    table = ResourceTable([
        VendorResource(RSC_VENDOR_START, b"abcdef"),
        UnknownResource(77, b"12345678"),
        VendorResource(RSC_VENDOR_END, b"zz"),
        UnknownResource(RSC_VENDOR_END + 1, b""),
    ])
    data = table.build()
    with caplog.at_level(logging.WARNING, logger="amplink.remoteproc.rsc_table"):
        parsed = ResourceTable.parse(data)
    assert parsed.entries == [
        VendorResource(128, b"abcdef\0\0"),  # padded to the 4-byte aligned next entry
        UnknownResource(77, b"12345678"),
        VendorResource(512, b"zz\0\0"),
        UnknownResource(513, b""),
    ]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("unknown type 77" in w for w in warnings)
    assert any("unknown type 513" in w for w in warnings)
    assert parsed.build() == data


def test_vendor_hook_results(caplog: pytest.LogCaptureFixture) -> None:
    entry = VendorResource(200, b"\1\2\3\4")
    seen: list[VendorResource] = []

    def handled(e: VendorResource) -> VendorHookResult:
        seen.append(e)
        return VendorHookResult.HANDLED

    assert process_vendor(entry, handled) is VendorHookResult.HANDLED and seen == [entry]
    with caplog.at_level(logging.WARNING, logger="amplink.remoteproc.rsc_table"):
        assert process_vendor(entry, lambda e: VendorHookResult.IGNORED, index=2, offset=0x40) is (
            VendorHookResult.IGNORED
        )
        assert process_vendor(entry, None) is VendorHookResult.IGNORED
    assert "resource entry 2 (vendor type 200)" in caplog.records[0].getMessage()
    with pytest.raises(FirmwareError) as info:
        process_vendor(entry, lambda e: VendorHookResult.ERROR, index=2, offset=0x40)
    assert "resource entry 2 (vendor type 200)" in str(info.value)
    assert "body" in str(info.value) and "at byte 0x40" in str(info.value)
    with pytest.raises(TypeError):
        process_vendor(entry, lambda e: True)  # type: ignore[arg-type, return-value]


# -- in-place patching -----------------------------------------------------------------------
def test_patch_entry_and_field_offsets() -> None:
    table = sample()
    buf = bytearray(table.build())
    cached = ResourceTable.parse(buf)
    carveout = cached.entries[0]
    assert isinstance(carveout, Carveout)
    carveout.da, carveout.pa = 0x3000_0000, 0x9000_0000
    cached.patch_entry(buf, 0)
    (i, vdev), = cached.items(VdevEntry)
    for n, vring in enumerate(vdev.vrings):
        vring.da, vring.notifyid = 0x3000_0000 + n * 0x4000, n
    cached.patch_entry(buf, i)
    buf[cached.body_offset(i) + VDEV_STATUS_OFFSET] = 7
    again = ResourceTable.parse(buf)
    assert again.entries[0] == Carveout(0x3000_0000, 0x9000_0000, 0x8000, name="vdev0buffer")
    assert [v.notifyid for v in again.entries[3].vrings] == [0, 1]  # type: ignore[union-attr]
    assert again.entries[3].status == 7  # type: ignore[union-attr]
    assert cached.items(Trace) == [(2, Trace(0x2000_4000, 0x400, name="trace0"))]


def test_patch_entry_refuses_to_grow_into_the_next_entry() -> None:
    table = ResourceTable([VendorResource(130, b"ab"), Trace(0, 1)])
    buf = bytearray(table.build())
    table.entries[0] = VendorResource(130, b"abcdefgh")
    with pytest.raises(ValueError, match="does not fit"):
        table.patch_entry(buf, 0)
