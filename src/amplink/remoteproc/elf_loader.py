"""Firmware images: validate an ELF file, find its resource table, load its segments.

The file is untrusted. Every header field is checked against the real file size before
it is used, pyelftools decodes only fixed-size headers (so a crafted file cannot make it
walk string tables without bound), and any decoding failure becomes a
:class:`FirmwareError` naming the header, the field and the byte offset.

Segments are placed by their **physical** address (p_paddr), translated through the
carveouts (:class:`DeviceAddressMap`), as Linux's remoteproc does.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
from typing import Any, NamedTuple, Self

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile

from ..errors import AddressError, FirmwareError
from .addrmap import DeviceAddressMap

RESOURCE_TABLE_SECTION = ".resource_table"

ELFMAG = b"\x7fELF"
EI_CLASS = 4
EI_DATA = 5
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
PT_LOAD = 1
SHT_NOBITS = 8
PN_XNUM = 0xFFFF

_EI_NIDENT = 16
_E_MACHINE = 18
_U16 = struct.Struct("<H")
_PYELFTOOLS_ERRORS = (ELFError, ConstructError, struct.error)


class _Layout(NamedTuple):
    """Sizes and field offsets that differ between ELF32 and ELF64."""

    ehdr: int
    phdr: int
    shdr: int
    p_offset: int
    p_paddr: int
    p_filesz: int
    p_memsz: int


_LAYOUTS = {
    32: _Layout(ehdr=52, phdr=32, shdr=40, p_offset=4, p_paddr=12, p_filesz=16, p_memsz=20),
    64: _Layout(ehdr=64, phdr=56, shdr=64, p_offset=8, p_paddr=24, p_filesz=32, p_memsz=40),
}
# Header field offsets, for messages.
_E_PHOFF = {32: 28, 64: 32}
_E_SHOFF = {32: 32, 64: 40}
_E_PHNUM = {32: 44, 64: 56}
_E_SHNUM = {32: 48, 64: 60}
_E_SHSTRNDX = {32: 50, 64: 62}


class Segment(NamedTuple):
    """A PT_LOAD segment: where it goes (physical/device address) and what it holds."""

    paddr: int
    offset: int
    filesz: int
    memsz: int


class ResourceTableSection(NamedTuple):
    """The ".resource_table" section: file offset, size, and sh_addr (its device address)."""

    offset: int
    size: int
    da: int


def _fail(what: str, pos: int) -> FirmwareError:
    return FirmwareError(f"ELF image: {what} (at byte 0x{pos:x})")


class FirmwareImage:
    """A validated ELF firmware image. Build one with :meth:`from_bytes` or :meth:`from_path`."""

    def __init__(
        self,
        data: bytes,
        *,
        elfclass: int,
        machine: int,
        entry: int,
        segments: list[Segment],
        segment_phdrs: list[tuple[int, int]],
        resource_table: ResourceTableSection | None,
    ) -> None:
        self.data = data
        self.elfclass = elfclass
        self.machine = machine
        self.entry = entry
        self.segments = segments
        self._segment_phdrs = segment_phdrs  # (index, file offset) of each program header
        self.resource_table = resource_table

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Self:
        """Read and validate a firmware file (OSError if it cannot be read)."""
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Validate an ELF image; raises :class:`FirmwareError` on any defect."""
        data = bytes(data)
        elfclass = _check_ident(data)
        try:
            elf = ELFFile(io.BytesIO(data))
            header = elf.header
            segments, phdrs = _read_segments(elf, data, elfclass)
            rsc = _find_resource_table(elf, data, elfclass)
            return cls(
                data,
                elfclass=elfclass,
                machine=_raw_machine(data),
                entry=header["e_entry"],
                segments=segments,
                segment_phdrs=phdrs,
                resource_table=rsc,
            )
        except _PYELFTOOLS_ERRORS as exc:
            raise FirmwareError(f"ELF image: malformed: {exc}") from None

    @property
    def segment_headers(self) -> list[tuple[int, int]]:
        """For each of :attr:`segments`: its program header's index and file offset."""
        return list(self._segment_phdrs)

    # -- resource table --------------------------------------------------------------------
    @property
    def resource_table_offset(self) -> int | None:
        """File offset of the ".resource_table" section, or None if there is none."""
        return None if self.resource_table is None else self.resource_table.offset

    def resource_table_bytes(self) -> bytes | None:
        """A copy of the ".resource_table" section (the cached table), or None."""
        rsc = self.resource_table
        return None if rsc is None else self.data[rsc.offset:rsc.offset + rsc.size]

    def find_loaded_rsc_table_da(self) -> int | None:
        """Device address (sh_addr) of the loaded table, where the processed copy goes."""
        return None if self.resource_table is None else self.resource_table.da

    # -- loading -----------------------------------------------------------------------------
    def load(self, addr_map: DeviceAddressMap) -> None:
        """Copy each segment's file bytes to its p_paddr and zero the rest up to p_memsz."""
        layout = _LAYOUTS[self.elfclass]
        view = memoryview(self.data)
        for seg, (phdr, phdr_pos) in zip(self.segments, self._segment_phdrs, strict=True):
            try:
                region, offset = addr_map.translate(seg.paddr, seg.memsz)
            except AddressError:
                raise _fail(
                    f"segment {phdr} (PT_LOAD): field p_paddr = 0x{seg.paddr:x} with p_memsz "
                    f"0x{seg.memsz:x} is not inside any carveout",
                    phdr_pos + layout.p_paddr,
                ) from None
            region.write(offset, view[seg.offset:seg.offset + seg.filesz])
            region.fill(offset + seg.filesz, seg.memsz - seg.filesz)

    def __repr__(self) -> str:
        return (
            f"FirmwareImage(ELF{self.elfclass}, entry=0x{self.entry:x}, "
            f"{len(self.segments)} segments, resource_table={self.resource_table})"
        )


# -- validation helpers ----------------------------------------------------------------------
def _check_ident(data: bytes) -> int:
    """Check magic, class, byte order and header size; return 32 or 64."""
    if len(data) < _EI_NIDENT or data[:4] != ELFMAG:
        raise _fail("bad magic: not an ELF file", 0)
    cls_byte = data[EI_CLASS]
    if cls_byte not in (ELFCLASS32, ELFCLASS64):
        raise _fail(f"field EI_CLASS = {cls_byte} is neither ELF32 nor ELF64", EI_CLASS)
    if data[EI_DATA] == ELFDATA2MSB:
        raise _fail("field EI_DATA: big-endian images are not supported", EI_DATA)
    if data[EI_DATA] != ELFDATA2LSB:
        raise _fail(f"field EI_DATA = {data[EI_DATA]} is not a byte order", EI_DATA)
    elfclass = 32 if cls_byte == ELFCLASS32 else 64
    if len(data) < _LAYOUTS[elfclass].ehdr:
        raise _fail(
            f"truncated: ELF{elfclass} header needs {_LAYOUTS[elfclass].ehdr} bytes, "
            f"file has {len(data)}",
            0,
        )
    return elfclass


def _raw_machine(data: bytes) -> int:
    # pyelftools maps e_machine to a name; keep the number (the coredump needs it).
    return _U16.unpack_from(data, _E_MACHINE)[0]


def _check_table(
    data: bytes, what: str, off: int, count: int, entsize: int, minsize: int, pos: int
) -> None:
    """Check that ``count`` entries of ``entsize`` bytes at ``off`` lie inside the file."""
    if entsize < minsize:
        raise _fail(f"{what} entry size {entsize} is below {minsize}", pos)
    if off + count * entsize > len(data):
        raise _fail(
            f"{what}: {count} entries of {entsize} bytes at 0x{off:x} run past the end "
            f"of the file (0x{len(data):x} bytes)",
            pos,
        )


def _parse(st: Any, data: bytes, pos: int, size: int) -> Any:
    return st.parse(data[pos:pos + size])


def _read_segments(
    elf: ELFFile, data: bytes, elfclass: int
) -> tuple[list[Segment], list[tuple[int, int]]]:
    """The PT_LOAD segments with memsz > 0, and the (index, file offset) of their headers."""
    layout = _LAYOUTS[elfclass]
    h = elf.header
    phoff, phnum, phentsize = h["e_phoff"], h["e_phnum"], h["e_phentsize"]
    if phnum == 0:
        raise _fail("field e_phnum = 0: no program headers", _E_PHNUM[elfclass])
    if phnum == PN_XNUM:
        raise _fail("field e_phnum = PN_XNUM: extended numbering is not supported",
                    _E_PHNUM[elfclass])
    _check_table(data, "program header table (e_phoff)", phoff, phnum, phentsize, layout.phdr,
                 _E_PHOFF[elfclass])
    limit = 1 << elfclass
    found: list[tuple[Segment, int, int]] = []
    for i in range(phnum):
        pos = phoff + i * phentsize
        ph = _parse(elf.structs.Elf_Phdr, data, pos, layout.phdr)
        if ph["p_type"] not in ("PT_LOAD", PT_LOAD) or ph["p_memsz"] == 0:
            continue
        seg = Segment(ph["p_paddr"], ph["p_offset"], ph["p_filesz"], ph["p_memsz"])
        if seg.filesz > seg.memsz:
            raise _fail(
                f"segment {i} (PT_LOAD): field p_filesz = 0x{seg.filesz:x} exceeds p_memsz "
                f"0x{seg.memsz:x}",
                pos + layout.p_filesz,
            )
        if seg.offset + seg.filesz > len(data):
            raise _fail(
                f"segment {i} (PT_LOAD): field p_offset = 0x{seg.offset:x} + p_filesz "
                f"0x{seg.filesz:x} runs past the end of the file (0x{len(data):x} bytes)",
                pos + layout.p_offset,
            )
        if seg.paddr + seg.memsz > limit:
            raise _fail(
                f"segment {i} (PT_LOAD): field p_paddr = 0x{seg.paddr:x} + p_memsz "
                f"0x{seg.memsz:x} exceeds the {elfclass}-bit address space",
                pos + layout.p_paddr,
            )
        found.append((seg, i, pos))
    ordered = sorted(found, key=lambda item: item[0].paddr)
    for (a, ia, _), (b, ib, pos_b) in itertools.pairwise(ordered):
        if a.paddr + a.memsz > b.paddr:
            raise _fail(
                f"segment {ib} (PT_LOAD): field p_paddr = 0x{b.paddr:x} overlaps segment {ia} "
                f"at 0x{a.paddr:x}+0x{a.memsz:x}",
                pos_b + layout.p_paddr,
            )
    return [seg for seg, _, _ in found], [(i, pos) for _, i, pos in found]


def _find_resource_table(
    elf: ELFFile, data: bytes, elfclass: int
) -> ResourceTableSection | None:
    """The ".resource_table" section, found by a bounded walk of the section headers."""
    layout = _LAYOUTS[elfclass]
    h = elf.header
    shoff, shnum, shentsize = h["e_shoff"], h["e_shnum"], h["e_shentsize"]
    shstrndx = h["e_shstrndx"]
    if shoff == 0:
        return None
    if shnum == 0:
        raise _fail("field e_shnum = 0 with a section table: extended numbering is not "
                    "supported", _E_SHNUM[elfclass])
    _check_table(data, "section header table (e_shoff)", shoff, shnum, shentsize, layout.shdr,
                 _E_SHOFF[elfclass])
    if shstrndx == 0:
        return None  # no section names, so no ".resource_table"
    if shstrndx >= shnum:
        raise _fail(f"field e_shstrndx = {shstrndx} is not below e_shnum = {shnum}",
                    _E_SHSTRNDX[elfclass])

    def section(index: int) -> Any:
        return _parse(elf.structs.Elf_Shdr, data, shoff + index * shentsize, layout.shdr)

    strtab = section(shstrndx)
    str_off, str_size = strtab["sh_offset"], strtab["sh_size"]
    if str_off + str_size > len(data):
        raise _fail(
            f"section {shstrndx} (names): field sh_offset = 0x{str_off:x} + sh_size "
            f"0x{str_size:x} runs past the end of the file",
            shoff + shstrndx * shentsize,
        )
    wanted = RESOURCE_TABLE_SECTION.encode() + b"\0"
    found: ResourceTableSection | None = None
    for i in range(shnum):
        sh = section(i)
        name_at = sh["sh_name"]
        # A bounded comparison: never scan a string table for a NUL.
        if name_at + len(wanted) > str_size:
            continue
        if data[str_off + name_at:str_off + name_at + len(wanted)] != wanted:
            continue
        pos = shoff + i * shentsize
        if found is not None:
            raise _fail(f"section {i}: a second {RESOURCE_TABLE_SECTION} section", pos)
        if sh["sh_type"] in ("SHT_NOBITS", SHT_NOBITS):
            raise _fail(f"section {i} ({RESOURCE_TABLE_SECTION}): field sh_type is NOBITS, "
                        "the table has no bytes in the file", pos)
        if sh["sh_offset"] + sh["sh_size"] > len(data):
            raise _fail(
                f"section {i} ({RESOURCE_TABLE_SECTION}): field sh_offset = "
                f"0x{sh['sh_offset']:x} + sh_size 0x{sh['sh_size']:x} runs past the end of "
                f"the file (0x{len(data):x} bytes)",
                pos,
            )
        found = ResourceTableSection(sh["sh_offset"], sh["sh_size"], sh["sh_addr"])
    return found
