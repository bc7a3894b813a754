"""Resource processing: what is allocated, what is written back, what is refused."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from rproc_kit import ANY, POOL_DA, POOL_SIZE, rpmsg_vdev

from amplink.errors import FirmwareError
from amplink.memory.region import SharedRegion
from amplink.remoteproc.devmem import PAGE_SIZE, DeviceMemory
from amplink.remoteproc.resources import process_resources
from amplink.remoteproc.rsc_table import (
    Carveout,
    DevMem,
    ResourceTable,
    Trace,
    UnknownResource,
    VendorHookResult,
    VendorResource,
)
from amplink.virtio.ring import vring_size
from amplink.virtio.vdev import VdevEntry, VringEntry

INTERNAL_DA = 0x2000_0000


@pytest.fixture
def memory() -> Iterator[DeviceMemory]:
    mem = DeviceMemory(SharedRegion.memfd(POOL_SIZE, "rsc-pool", da_base=POOL_DA),
                       [SharedRegion.memfd(0x10000, "rsc-internal", da_base=INTERNAL_DA)])
    yield mem
    mem.close()


def test_any_addresses_are_allocated_and_written_back(memory: DeviceMemory) -> None:
    table = ResourceTable([
        Carveout(ANY, ANY, 0x3000, name="data"),
        Trace(ANY, 256, name="trace0"),
        rpmsg_vdev(num=16),
        rpmsg_vdev(num=8, align=64),
    ])
    raw = table.build()
    res = process_resources(raw, memory, buf_size=512)
    assert len(res.table_bytes) == len(raw)
    out = ResourceTable.parse(res.table_bytes)
    carve, trace, v0, v1 = out.entries
    assert isinstance(carve, Carveout) and isinstance(trace, Trace)
    assert carve.da == carve.pa == POOL_DA  # the lowest free page
    assert POOL_DA <= trace.da < POOL_DA + POOL_SIZE
    assert [r.notifyid for v in (v0, v1) for r in v.vrings] == [0, 1, 2, 3]
    for vdev in (v0, v1):
        assert isinstance(vdev, VdevEntry) and vdev.status == 0 and vdev.gfeatures == 0
        for ring in vdev.vrings:
            assert ring.da % ring.align == 0 and POOL_DA <= ring.da < POOL_DA + POOL_SIZE
    # nothing overlaps: carveout, trace, 4 vrings, 2 buffer pools, the table
    spans = sorted((a.da, a.da + a.length) for a in res.dump_segments
                   if a.region is memory.pool)
    assert len(spans) == 1 + 1 + 4 + 2 + 1
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    assert res.vdevs[0].buffers is not None and res.vdevs[0].buffers.length == 32 * 512
    assert res.addr_map.translate(carve.da, carve.len)[0] is memory.pool
    assert res.traces[0].da == trace.da and res.traces[0].length == 256
    assert res.table_location is not None and res.table_location.region is memory.pool


def test_layout_is_kept_byte_for_byte(memory: DeviceMemory) -> None:
    # A table laid out by hand, with a gap after the header: only fields change.
    table = ResourceTable([Carveout(ANY, ANY, 0x1000, name="c"), rpmsg_vdev()])
    raw = bytearray(table.build())
    gap = 8
    new = bytearray(raw[:16 + 8]) + bytes(gap) + raw[16 + 8:]
    for i in range(2):
        off = int.from_bytes(new[16 + 4 * i:20 + 4 * i], "little") + gap
        new[16 + 4 * i:20 + 4 * i] = off.to_bytes(4, "little")
    res = process_resources(bytes(new), memory)
    assert res.table is not None
    assert res.table.entry_offsets == ResourceTable.parse(bytes(new)).entry_offsets
    assert res.table_bytes[:16 + 8 + gap] == bytes(new[:16 + 8 + gap])


def test_fixed_carveouts_are_honoured_inside_memory(memory: DeviceMemory) -> None:
    table = ResourceTable([
        Carveout(POOL_DA + 0x8000, ANY, 0x1000, name="pool-fixed"),
        Carveout(ANY, INTERNAL_DA + 0x100, 0x100, name="in-internal"),
        Carveout(ANY, ANY, PAGE_SIZE, name="any"),
        Trace(INTERNAL_DA + 0x200, 64, name="t"),
    ])
    res = process_resources(table.build(), memory)
    fixed, internal, anywhere, _ = ResourceTable.parse(res.table_bytes).entries
    assert (fixed.da, fixed.pa) == (POOL_DA + 0x8000, POOL_DA + 0x8000)
    assert (internal.da, internal.pa) == (INTERNAL_DA + 0x100, INTERNAL_DA + 0x100)
    assert anywhere.da == POOL_DA  # below the fixed one: first fit
    assert res.traces[0].region is memory.internal[0] and res.traces[0].offset == 0x200


@pytest.mark.parametrize(("entries", "message"), [
    ([Carveout(0x4000_0000, ANY, 0x1000, name="far")], "outside the processor's memory"),
    ([Carveout(POOL_DA, POOL_DA + 0x1000, 0x1000, name="x")], "no IOMMU"),
    ([Carveout(ANY, ANY, 0, name="empty")], "len = 0"),
    ([Carveout(POOL_DA, ANY, 0x2000, name="a"), Carveout(POOL_DA + 0x1000, ANY, 0x1000,
                                                         name="b")], "overlaps"),
    ([Carveout(ANY, ANY, POOL_SIZE + 1, name="huge")], "no room"),
    ([Trace(0x3000_0000, 64, name="t")], "not inside a carveout"),
    ([DevMem(ANY, ANY, 0x100, name="regs")], "must both be given"),
    ([DevMem(0x5000_0000, 0x5000_0000, 0x100, name="regs")], "outside the processor's memory"),
    ([VdevEntry(7, dfeatures=1, vrings=[VringEntry(ANY, 16, 16, ANY)])], "needs 2 vrings"),
    ([rpmsg_vdev(da=POOL_DA + 0x10)], "not a multiple of its align"),
    ([rpmsg_vdev(num=32768, align=16)], "no room"),
], ids=["outside", "da-ne-pa", "empty", "overlap", "too-big", "trace-unmapped", "devmem-any",
        "devmem-outside", "one-vring", "misaligned-vring", "vring-too-big"])
def test_bad_resources_raise_firmware_error(memory: DeviceMemory, entries: list,
                                            message: str) -> None:
    with pytest.raises(FirmwareError, match=message) as info:
        process_resources(ResourceTable(entries).build(), memory)
    assert "resource entry" in str(info.value) and "(at byte 0x" in str(info.value)


def test_vendor_entries_go_to_the_hook_and_unknown_ones_are_skipped(
        memory: DeviceMemory, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[VendorResource] = []

    def hook(entry: VendorResource) -> VendorHookResult:
        seen.append(entry)
        return VendorHookResult.HANDLED

    table = ResourceTable([VendorResource(200, b"\x01\x02\x03\x04"),
                           UnknownResource(77, b"\0" * 8), rpmsg_vdev()])
    res = process_resources(table.build(), memory, vendor_hook=hook)
    assert [e.body for e in seen] == [b"\x01\x02\x03\x04"]
    assert len(res.vdevs) == 1
    assert "unknown type 77" in caplog.text
    with pytest.raises(FirmwareError, match="rejected by the platform hook"):
        process_resources(table.build(), memory, vendor_hook=lambda e: VendorHookResult.ERROR)


def test_loaded_table_location_and_no_table(memory: DeviceMemory) -> None:
    table = ResourceTable([rpmsg_vdev()]).build()
    res = process_resources(table, memory, loaded_table_da=INTERNAL_DA + 0x1000)
    assert res.table_location is not None
    assert (res.table_location.region, res.table_location.offset) == (memory.internal[0], 0x1000)
    with pytest.raises(FirmwareError, match="loaded copy"):
        process_resources(table, memory, loaded_table_da=0x6000_0000)
    empty = process_resources(None, memory)
    assert empty.table is None and empty.table_location is None and not empty.vdevs


def test_fixed_vring_addresses_are_reserved(memory: DeviceMemory) -> None:
    res = process_resources(ResourceTable([rpmsg_vdev(num=16, da=POOL_DA + 0x4000)]).build(),
                            memory)
    rings = res.vdevs[0].vrings
    assert [r.da for r in rings] == [POOL_DA + 0x4000, POOL_DA + 0x14000]
    assert all(r.length == vring_size(16, 0x1000) for r in rings)
