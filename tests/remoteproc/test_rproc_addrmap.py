"""Device address map: windows from carveouts, translation, refusals."""

from __future__ import annotations

import pytest

from amplink.errors import AddressError, FirmwareError
from amplink.memory.region import SharedRegion
from amplink.remoteproc.addrmap import DeviceAddressMap
from amplink.remoteproc.constants import FW_RSC_ADDR_ANY
from amplink.remoteproc.devmem import Allocation
from amplink.remoteproc.rsc_table import Carveout


def test_translate_inside_one_window(addr_map: DeviceAddressMap, region: SharedRegion) -> None:
    assert addr_map.translate(0x1000_0000) == (region, 0)
    assert addr_map.translate(0x1000_0010, 0x10) == (region, 0x10)
    assert addr_map.translate(0x2000_0000 + 0xFFF0, 0x10) == (region, 0x1FFF0)
    assert addr_map.translate(0x1000_FFFF, 1) == (region, 0xFFFF)


@pytest.mark.parametrize(
    ("da", "length"),
    [
        (0x0FFF_FFFF, 1),  # just below the first window
        (0x1000_FFF0, 0x11),  # runs past its end
        (0x1001_0000, 1),  # in the gap
        (0x1000_0000, 0x2_0000),  # spans both windows and the gap
        (0x2001_0000, 1),  # just past the last window
        (-1, 1),
        (0x1000_0000, -1),
    ],
)
def test_translate_refuses_ranges_outside_one_window(
    addr_map: DeviceAddressMap, da: int, length: int
) -> None:
    with pytest.raises(AddressError):
        addr_map.translate(da, length)


def test_windows_are_sorted_and_readable(region: SharedRegion) -> None:
    m = DeviceAddressMap()
    m.add(0x9000, 0x10, region, 0x100, name="b")
    m.add(0x1000, 0x10, region, 0, name="a")
    assert [w.name for w in m.windows] == ["a", "b"] and len(m) == 2
    region.write(0x100, b"0123456789abcdef")
    assert m.windows[1].read() == b"0123456789abcdef"
    assert m.windows[1].end == 0x9010
    assert list(m) == list(m.windows)
    assert DeviceAddressMap(m.windows).windows == m.windows


def test_add_refuses_overlap_emptiness_and_region_overflow(region: SharedRegion) -> None:
    m = DeviceAddressMap([Allocation("", 0x1000, region, 0, 0x100)])
    for da, length in [(0x10F0, 0x20), (0x0F00, 0x101), (0x1000, 0x100), (0x0, 0x2000)]:
        with pytest.raises(AddressError, match="overlaps"):
            m.add(da, length, region, 0x1000)
    m.add(0x1100, 0x100, region, 0x1000)  # adjacent is fine
    m.add(0x0F00, 0x100, region, 0x2000)
    with pytest.raises(AddressError):
        m.add(0x5000, 0, region)
    with pytest.raises(AddressError):
        m.add(0x5000, 0x10, region, region.size - 8)
    with pytest.raises(AddressError):
        m.add((1 << 64) - 8, 0x10, region)


def test_add_carveout(region: SharedRegion) -> None:
    with SharedRegion.memfd(0x1000, "pa-space", da_base=0x8000_0000) as phys:
        m = DeviceAddressMap()
        w = m.add_carveout(Carveout(0x1000, 0x8000_0100, 0x100, name="fw"), phys)
        assert (w.region, w.offset, w.name) == (phys, 0x100, "fw")
        assert m.translate(0x1080, 4) == (phys, 0x180)
        with pytest.raises(FirmwareError, match=r"resource entry 4 \(RSC_CARVEOUT\) 'big'"):
            m.add_carveout(Carveout(0x4000, 0x8000_0000, 0x2000, name="big"), phys, index=4)
    with pytest.raises(FirmwareError, match="da is FW_RSC_ADDR_ANY"):
        m.add_carveout(Carveout(FW_RSC_ADDR_ANY, 0, 0x10), region)
    with pytest.raises(FirmwareError, match="pa is FW_RSC_ADDR_ANY"):
        m.add_carveout(Carveout(0x9000, FW_RSC_ADDR_ANY, 0x10), region)
    w = m.add_carveout(Carveout(0x9000, FW_RSC_ADDR_ANY, 0x10), region, 0x40)
    assert m.translate(0x9000) == (region, 0x40) and w.length == 0x10
