"""The ELF firmware loader, on real gcc-built images (ELF32 and ELF64) and mutations of them."""

from __future__ import annotations

import io
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rproc_firmware import Firmware

from amplink.errors import FirmwareError
from amplink.memory.region import SharedRegion
from amplink.remoteproc.addrmap import DeviceAddressMap
from amplink.remoteproc.elf_loader import FirmwareImage, Segment
from amplink.remoteproc.rsc_table import Carveout, ResourceTable, Trace
from amplink.virtio.vdev import VIRTIO_CONFIG_S_DRIVER_OK, VdevControl, VdevEntry

# Program header field offsets and widths per class: (offset, struct format).
PHDR_FIELDS = {
    32: {"p_offset": (4, "<I"), "p_paddr": (12, "<I"), "p_filesz": (16, "<I"),
         "p_memsz": (20, "<I")},
    64: {"p_offset": (8, "<Q"), "p_paddr": (24, "<Q"), "p_filesz": (32, "<Q"),
         "p_memsz": (40, "<Q")},
}
EHDR_FIELDS = {
    32: {"e_phoff": (28, "<I"), "e_shoff": (32, "<I"), "e_phnum": (44, "<H"),
         "e_shstrndx": (50, "<H")},
    64: {"e_phoff": (32, "<Q"), "e_shoff": (40, "<Q"), "e_phnum": (56, "<H"),
         "e_shstrndx": (62, "<H")},
}


def elf_of(data: bytes) -> ELFFile:
    return ELFFile(io.BytesIO(data))


def patched(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def phdr_pos(fw: Firmware, index: int, name: str) -> tuple[int, str]:
    h = elf_of(fw.data).header
    off, fmt = PHDR_FIELDS[fw.elfclass][name]
    return h["e_phoff"] + index * h["e_phentsize"] + off, fmt


def patch_phdr(fw: Firmware, index: int, name: str, value: int) -> bytes:
    pos, fmt = phdr_pos(fw, index, name)
    return patched(fw.data, pos, fmt, value)


def patch_ehdr(fw: Firmware, name: str, value: int) -> bytes:
    pos, fmt = EHDR_FIELDS[fw.elfclass][name]
    return patched(fw.data, pos, fmt, value)


def shdr_pos(fw: Firmware, section: str) -> int:
    elf = elf_of(fw.data)
    index = elf.get_section_index(section)
    return elf.header["e_shoff"] + index * elf.header["e_shentsize"]


def load_error(data: bytes) -> str:
    with pytest.raises(FirmwareError) as info:
        FirmwareImage.from_bytes(data)
    return str(info.value)


# -- a valid image -------------------------------------------------------------------------
def test_header_and_segments(firmware: Firmware) -> None:
    img = FirmwareImage.from_bytes(firmware.data)
    assert img.elfclass == firmware.elfclass
    assert img.machine == (3 if firmware.elfclass == 32 else 62)  # EM_386 / EM_X86_64
    assert img.entry == Firmware.TEXT_VA
    expected = [
        Segment(p["p_paddr"], p["p_offset"], p["p_filesz"], p["p_memsz"])
        for p in (s.header for s in elf_of(firmware.data).iter_segments("PT_LOAD"))
    ]
    assert img.segments == expected
    text, data = img.segments
    assert text.paddr == Firmware.TEXT_PA  # the physical address, not p_vaddr
    assert data.paddr == Firmware.DATA_DA and data.memsz > data.filesz  # .bss
    paddr, offset, filesz, memsz = text  # plain tuples
    assert (paddr, offset, filesz, memsz) == tuple(text)


def test_resource_table_section(firmware: Firmware) -> None:
    img = FirmwareImage.from_path(firmware.path)
    section = elf_of(firmware.data).get_section_by_name(".resource_table")
    rsc = img.resource_table
    assert rsc is not None
    assert (rsc.offset, rsc.size, rsc.da) == (
        section["sh_offset"], section["sh_size"], section["sh_addr"],
    )
    assert img.resource_table_offset == rsc.offset
    assert img.find_loaded_rsc_table_da() == section["sh_addr"]
    raw = img.resource_table_bytes()
    assert raw == section.data()
    table = ResourceTable.parse(raw)
    carveout, trace, vdev = table.entries
    assert carveout == Carveout(Firmware.TEXT_PA, Firmware.TEXT_PA, 0x10000, name="text")
    assert trace == Trace(Firmware.TRACE_DA, Firmware.TRACE_LEN, name="trace")
    assert isinstance(vdev, VdevEntry) and vdev.id == 7 and vdev.dfeatures == 1
    assert [(v.da, v.align, v.num) for v in vdev.vrings] == [(0xFFFF_FFFF, 16, 256)] * 2


def test_load_copies_and_zero_fills(
    firmware: Firmware, addr_map: DeviceAddressMap, region: SharedRegion
) -> None:
    img = FirmwareImage.from_bytes(firmware.data)
    img.load(addr_map)
    text, data = img.segments
    assert region.read(0, text.filesz) == firmware.data[text.offset:text.offset + text.filesz]
    assert region.read_u8(text.memsz) == 0xAA  # nothing written past the segment
    base = Firmware.CARVEOUT_LEN
    assert region.read(base, data.filesz) == firmware.data[data.offset:data.offset + data.filesz]
    assert region.read(base + data.filesz, data.memsz - data.filesz) == bytes(
        data.memsz - data.filesz
    )
    assert region.read_u8(base + data.memsz) == 0xAA
    counter = elf_of(firmware.data).get_section_by_name(".data")["sh_addr"] - Firmware.DATA_DA
    assert region.read_u32(base + counter) == 0x12345678


def test_processed_table_goes_over_the_loaded_one(
    firmware: Firmware, addr_map: DeviceAddressMap, region: SharedRegion
) -> None:
    img = FirmwareImage.from_bytes(firmware.data)
    cached = bytearray(img.resource_table_bytes() or b"")
    table = ResourceTable.parse(cached)
    (index, vdev), = table.items(VdevEntry)
    for n, vring in enumerate(vdev.vrings):
        vring.da, vring.notifyid = Firmware.DATA_DA + 0x8000 + n * 0x2000, n
    table.patch_entry(cached, index)
    img.load(addr_map)
    loaded_da = img.find_loaded_rsc_table_da()
    assert loaded_da is not None
    mem, off = addr_map.translate(loaded_da, len(cached))
    mem.write(off, cached)
    VdevControl(mem, off + table.body_offset(index)).add_status(VIRTIO_CONFIG_S_DRIVER_OK)
    live = ResourceTable.parse(region.read(off, len(cached)))
    vdev_live = live.entries[index]
    assert isinstance(vdev_live, VdevEntry)
    assert vdev_live.status == VIRTIO_CONFIG_S_DRIVER_OK
    assert [v.notifyid for v in vdev_live.vrings] == [0, 1]


def test_no_resource_table(firmware: Firmware) -> None:
    data = firmware.data.replace(b".resource_table\0", b".resource_tablX\0")
    img = FirmwareImage.from_bytes(data)
    assert img.resource_table is None and img.resource_table_offset is None
    assert img.resource_table_bytes() is None and img.find_loaded_rsc_table_da() is None
    no_sections = FirmwareImage.from_bytes(patch_ehdr(firmware, "e_shoff", 0))
    assert no_sections.resource_table is None and len(no_sections.segments) == 2


# -- refusals ----------------------------------------------------------------------------------
def test_segment_outside_every_carveout(firmware: Firmware, region: SharedRegion) -> None:
    only_text = DeviceAddressMap()
    only_text.add(Firmware.TEXT_PA, Firmware.CARVEOUT_LEN, region, 0)
    img = FirmwareImage.from_bytes(firmware.data)
    with pytest.raises(FirmwareError) as info:
        img.load(only_text)
    pos, _ = phdr_pos(firmware, 1, "p_paddr")
    msg = str(info.value)
    assert "segment 1" in msg and f"p_paddr = 0x{Firmware.DATA_DA:x}" in msg
    assert f"at byte 0x{pos:x}" in msg


def test_segment_running_past_its_carveout(firmware: Firmware, region: SharedRegion) -> None:
    small = DeviceAddressMap()
    small.add(Firmware.TEXT_PA, Firmware.CARVEOUT_LEN, region, 0)
    small.add(Firmware.DATA_DA, 0x100, region, Firmware.CARVEOUT_LEN)  # memsz is 0x200
    with pytest.raises(FirmwareError, match="segment 1"):
        FirmwareImage.from_bytes(firmware.data).load(small)


def test_overlapping_segments(firmware: Firmware) -> None:
    msg = load_error(patch_phdr(firmware, 1, "p_paddr", Firmware.TEXT_PA + 0x10))
    pos, _ = phdr_pos(firmware, 1, "p_paddr")
    assert "segment 1" in msg and "overlaps segment 0" in msg and f"at byte 0x{pos:x}" in msg


def test_filesz_above_memsz(firmware: Firmware) -> None:
    img = FirmwareImage.from_bytes(firmware.data)
    msg = load_error(patch_phdr(firmware, 0, "p_filesz", img.segments[0].memsz + 1))
    pos, _ = phdr_pos(firmware, 0, "p_filesz")
    assert "segment 0" in msg and "p_filesz" in msg and f"at byte 0x{pos:x}" in msg


def test_segment_data_past_the_end_of_the_file(firmware: Firmware) -> None:
    msg = load_error(patch_phdr(firmware, 1, "p_offset", len(firmware.data) - 4))
    assert "segment 1" in msg and "past the end of the file" in msg


def test_segment_beyond_the_address_space(firmware: Firmware) -> None:
    limit = 1 << firmware.elfclass
    msg = load_error(patch_phdr(firmware, 1, "p_paddr", limit - 0x10))
    assert "address space" in msg


def test_zero_memsz_segments_are_skipped(firmware: Firmware) -> None:
    data = patch_phdr(firmware, 0, "p_filesz", 0)
    pos, fmt = phdr_pos(firmware, 0, "p_memsz")
    data = patched(data, pos, fmt, 0)
    assert [s.paddr for s in FirmwareImage.from_bytes(data).segments] == [Firmware.DATA_DA]


def test_big_endian_is_refused(firmware: Firmware) -> None:
    data = bytearray(firmware.data)
    data[5] = 2
    msg = load_error(bytes(data))
    assert "big-endian" in msg and "at byte 0x5" in msg


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: b"\x7fELG" + d[4:], "bad magic"),
        (lambda d: b"", "bad magic"),
        (lambda d: d[:3], "bad magic"),
        (lambda d: d[:4] + b"\x03" + d[5:], "EI_CLASS = 3"),
        (lambda d: d[:5] + b"\x00" + d[6:], "EI_DATA = 0"),
        (lambda d: d[:40], "truncated"),
    ],
)
def test_bad_identification(
    firmware: Firmware, mutate: Callable[[bytes], bytes], expected: str
) -> None:
    assert expected in load_error(mutate(firmware.data))


def test_header_tables_are_checked(firmware: Firmware) -> None:
    assert "e_phnum = 0" in load_error(patch_ehdr(firmware, "e_phnum", 0))
    assert "PN_XNUM" in load_error(patch_ehdr(firmware, "e_phnum", 0xFFFF))
    assert "program header table" in load_error(patch_ehdr(firmware, "e_phoff", len(firmware.data)))
    assert "section header table" in load_error(
        patch_ehdr(firmware, "e_shoff", len(firmware.data) - 8)
    )
    assert "e_shstrndx" in load_error(patch_ehdr(firmware, "e_shstrndx", 0xFF00))


def test_resource_table_section_is_checked(firmware: Firmware) -> None:
    rsc = shdr_pos(firmware, ".resource_table")
    size_field = (20, "<I") if firmware.elfclass == 32 else (32, "<Q")
    msg = load_error(patched(firmware.data, rsc + size_field[0], size_field[1], 1 << 30))
    assert ".resource_table" in msg and "sh_size" in msg and f"at byte 0x{rsc:x}" in msg
    assert "NOBITS" in load_error(patched(firmware.data, rsc + 4, "<I", 8))
    # A second section with the same name is ambiguous.
    name = struct.unpack_from("<I", firmware.data, rsc)[0]
    assert "a second .resource_table" in load_error(
        patched(firmware.data, shdr_pos(firmware, ".bss"), "<I", name)
    )


# -- hostile images ----------------------------------------------------------------------------
# A hostile size field must never turn into a large allocation (the image is ~100 KiB);
# measured in bytes allocated, not wall-clock time, so that a loaded machine cannot fail it.
HOSTILE_ALLOCATION_LIMIT = 4 << 20


def _check_hostile(data: bytes, addr_map: DeviceAddressMap) -> None:
    tracemalloc.start()
    try:
        img = FirmwareImage.from_bytes(data)
        img.load(addr_map)
        raw = img.resource_table_bytes()
        if raw is not None:
            ResourceTable.parse(raw)
    except FirmwareError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < HOSTILE_ALLOCATION_LIMIT


INTERESTING = st.sampled_from([0, 1, 2, 8, 0x38, 0xFFFF, 0xFFFF_FFFF, 0x7FFF_FFFF,
                               0x1000_0000, 0x2000_0000, 0x2000])


@settings(max_examples=150, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(["ehdr", "phdr", "shdr"]), st.integers(0, 1 << 16),
                  st.booleans(), INTERESTING | st.integers(0, 255)),
        min_size=1, max_size=4,
    ),
    st.integers(0, 1 << 16) | st.none(),
)
def test_header_mutations_only_raise_firmware_error(
    firmware: Firmware,
    addr_map: DeviceAddressMap,
    edits: list[tuple[str, int, bool, int]],
    cut: int | None,
) -> None:
    h = elf_of(firmware.data).header
    spans = {
        "ehdr": (0, h["e_ehsize"]),
        "phdr": (h["e_phoff"], h["e_phnum"] * h["e_phentsize"]),
        "shdr": (h["e_shoff"], h["e_shnum"] * h["e_shentsize"]),
    }
    data = bytearray(firmware.data)
    for where, pos, word, value in edits:
        start, length = spans[where]
        at = start + pos % (length - 4)
        if word:
            struct.pack_into("<I", data, at, value & 0xFFFF_FFFF)
        else:
            data[at] = value & 0xFF
    if cut is not None:
        del data[cut % len(data):]
    _check_hostile(bytes(data), addr_map)


def test_every_header_truncation(firmware: Firmware, addr_map: DeviceAddressMap) -> None:
    for n in range(0, 200):
        _check_hostile(firmware.data[:n], addr_map)
    h = elf_of(firmware.data).header
    for n in range(h["e_shoff"], len(firmware.data), 7):
        _check_hostile(firmware.data[:n], addr_map)
