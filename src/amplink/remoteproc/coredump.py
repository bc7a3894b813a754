"""Remote processor coredumps: an ELF ET_CORE file with one PT_LOAD per memory segment.

Each segment's bytes are in the file (p_filesz = p_memsz), at p_vaddr = p_paddr = its
device address, so ``readelf -l`` and pyelftools read it like Linux's remoteproc dumps.
pyelftools cannot write ELF, so the file is laid out here with struct.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterable
from typing import BinaryIO, Self

from ..errors import InvalidArgument

EM_NONE = 0
ET_CORE = 4
PT_LOAD = 1
PF_X, PF_W, PF_R = 1, 2, 4
EV_CURRENT = 1

_ELFCLASS = {32: 1, 64: 2}
_ELFDATA2LSB = 1
_EHDR = {
    32: struct.Struct("<16sHHIIIIIHHHHHH"),
    64: struct.Struct("<16sHHIQQQIHHHHHH"),
}
# p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align (ELF32 order)
_PHDR32 = struct.Struct("<IIIIIIII")
# p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align (ELF64 order)
_PHDR64 = struct.Struct("<IIQQQQQQ")
_MAX_SEGMENTS = 0xFFFE  # e_phnum is 16 bits and 0xFFFF (PN_XNUM) means "look elsewhere"


class CoredumpMode(enum.StrEnum):
    """The remoteproc ``coredump`` sysfs setting."""

    DISABLED = "disabled"
    ENABLED = "enabled"  # copy the segments into a dump file, then recover
    INLINE = "inline"  # read the segments straight from device memory; recovery waits

    @classmethod
    def from_sysfs(cls, text: str) -> Self:
        """Parse a sysfs value (one trailing newline allowed); ValueError otherwise."""
        return cls(text.removesuffix("\n"))


def coredump_mode(value: object) -> CoredumpMode:
    """A :class:`CoredumpMode` from itself or its string ("disabled", "enabled", "inline")."""
    try:
        return CoredumpMode(value)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(f"coredump must be one of {', '.join(CoredumpMode)}, got "
                              f"{value!r}") from None


def write_coredump(
    path_or_file: str | os.PathLike[str] | BinaryIO,
    segments: Iterable[tuple[int, bytes | bytearray | memoryview]],
    *,
    machine: int = EM_NONE,
    elfclass: int = 32,
) -> int:
    """Write an ELF core file of ``(device address, bytes)`` segments; returns its size.

    ``elfclass`` is 32 or 64 (every address must fit); ``machine`` is the e_machine of
    the firmware (e.g. ``FirmwareImage.machine``).
    """
    if elfclass not in _EHDR:
        raise ValueError(f"elfclass must be 32 or 64, got {elfclass}")
    segs = [(da, memoryview(data).cast("B")) for da, data in segments]
    if len(segs) > _MAX_SEGMENTS:
        raise ValueError(f"a core file holds at most {_MAX_SEGMENTS} segments, got {len(segs)}")
    limit = 1 << elfclass
    ehdr, phdr = _EHDR[elfclass], _PHDR32 if elfclass == 32 else _PHDR64
    offset = ehdr.size + phdr.size * len(segs)
    headers = bytearray()
    for da, data in segs:
        size = len(data)
        if da < 0 or da + size > limit or offset + size > limit:
            raise ValueError(
                f"segment 0x{da:x}+0x{size:x} does not fit an ELF{elfclass} core; use elfclass=64"
            )
        flags = PF_R | PF_W | PF_X
        if elfclass == 32:
            headers += phdr.pack(PT_LOAD, offset, da, da, size, size, flags, 0)
        else:
            headers += phdr.pack(PT_LOAD, flags, offset, da, da, size, size, 0)
        offset += size
    ident = b"\x7fELF" + bytes([_ELFCLASS[elfclass], _ELFDATA2LSB, EV_CURRENT])
    header = ehdr.pack(
        ident.ljust(16, b"\0"), ET_CORE, machine, EV_CURRENT,
        0,  # e_entry
        ehdr.size if segs else 0,  # e_phoff
        0, 0,  # e_shoff, e_flags: no section table
        ehdr.size, phdr.size, len(segs),
        0, 0, 0,  # e_shentsize, e_shnum, e_shstrndx
    )
    parts: list[bytes | bytearray | memoryview] = [header, headers, *(d for _, d in segs)]
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "wb") as f:
            f.writelines(parts)
    else:
        path_or_file.writelines(parts)
    return offset
