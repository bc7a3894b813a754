"""The remoteproc resource table: parse (untrusted input) and build.

Layout, little-endian and packed: a 16-byte header (ver u32 = 1, num u32, reserved[2] u32
= 0), then ``offset[num]`` u32, each pointing at an entry: a type word and its body.

Parsing keeps every check Linux makes and adds bounds checks on every offset, size and
count: a bad table raises :class:`FirmwareError` naming the entry, the field and the byte
offset, and nothing else (no IndexError, no struct.error, no allocation sized by an
unchecked count). Two choices are stricter than Linux: entries may not overlap one
another (the host writes into them in place), and a name must be NUL-terminated UTF-8
within its 32 bytes. Offsets need not be 4-aligned (Linux does not require it).
"""

from __future__ import annotations

import enum
import itertools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Self, TypeVar

from ..errors import FirmwareError
from ..virtio.vdev import VDEV_MAX_VRINGS, VdevEntry
from .constants import (
    CARVEOUT_NAME_OFFSET,
    CARVEOUT_RESERVED_OFFSET,
    CARVEOUT_SIZE,
    RSC_CARVEOUT,
    RSC_DEVMEM,
    RSC_ENTRY_HEADER_SIZE,
    RSC_NAME_LEN,
    RSC_TABLE_HEADER_SIZE,
    RSC_TABLE_VERSION,
    RSC_TRACE,
    RSC_VDEV,
    RSC_VENDOR_END,
    RSC_VENDOR_START,
    TRACE_NAME_OFFSET,
    TRACE_RESERVED_OFFSET,
    TRACE_SIZE,
    resource_type_name,
)

logger = logging.getLogger(__name__)

BufferLike = bytes | bytearray | memoryview

_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<IIII")
_MEMORY = struct.Struct(f"<IIIII{RSC_NAME_LEN}s")
_TRACE = struct.Struct(f"<III{RSC_NAME_LEN}s")

# build() starts every entry on a 4-byte boundary so the remote can use aligned loads.
_ENTRY_ALIGN = 4


def _where(index: int | None, rtype: int) -> str:
    name = resource_type_name(rtype)
    return f"{name} entry" if index is None else f"resource entry {index} ({name})"


def _fail(index: int | None, rtype: int, what: str, pos: int) -> FirmwareError:
    return FirmwareError(f"{_where(index, rtype)}: {what} (at byte 0x{pos:x})")


def _check_span(buf: BufferLike, offset: int, available: int) -> None:
    # Caller mistakes, not firmware faults: the span must lie inside the buffer.
    if offset < 0 or available < 0 or offset + available > len(buf):
        raise ValueError(
            f"span 0x{offset:x}+0x{available:x} is outside a buffer of 0x{len(buf):x} bytes"
        )


def _pack(st: struct.Struct, what: str, *values: object) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise ValueError(f"{what}: a field does not fit its width: {exc}") from None


def _decode_name(raw: bytes, index: int | None, rtype: int, pos: int) -> str:
    # Bytes after the NUL may be garbage and are ignored.
    end = raw.find(b"\0")
    if end < 0:
        raise _fail(index, rtype, f"field name has no NUL within its {RSC_NAME_LEN} bytes", pos)
    try:
        return raw[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(index, rtype, "field name is not valid UTF-8", pos) from None


def _encode_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) >= RSC_NAME_LEN or b"\0" in raw:
        raise ValueError(
            f"resource name {name!r} must be at most {RSC_NAME_LEN - 1} UTF-8 bytes without NUL"
        )
    return raw  # struct pads the field with NULs


@dataclass
class _MemoryResource:
    """The carveout/devmem layout: da, pa, len, flags, reserved (must be 0), name."""

    da: int
    pa: int
    len: int
    flags: int = 0
    reserved: int = 0
    name: str = ""

    type: ClassVar[int]
    size: ClassVar[int] = CARVEOUT_SIZE

    def pack(self) -> bytes:
        """The 52-byte body."""
        return _pack(
            _MEMORY, resource_type_name(self.type), self.da, self.pa, self.len, self.flags,
            self.reserved, _encode_name(self.name),
        )

    @classmethod
    def unpack(
        cls, buf: BufferLike, offset: int, available: int, *, index: int | None = None
    ) -> Self:
        """Decode and validate the body at ``buf[offset:offset + available]``.

        ``index`` names the entry in error messages; their byte offsets are positions in
        ``buf``.
        """
        _check_span(buf, offset, available)
        if available < CARVEOUT_SIZE:
            raise _fail(
                index, cls.type,
                f"truncated: needs {CARVEOUT_SIZE} bytes, {available} available", offset,
            )
        da, pa, length, flags, reserved, raw = _MEMORY.unpack_from(buf, offset)
        if reserved:
            raise _fail(
                index, cls.type, f"field reserved = 0x{reserved:x} must be zero",
                offset + CARVEOUT_RESERVED_OFFSET,
            )
        name = _decode_name(raw, index, cls.type, offset + CARVEOUT_NAME_OFFSET)
        return cls(da, pa, length, flags, reserved, name)


@dataclass
class Carveout(_MemoryResource):
    """RSC_CARVEOUT: memory the host allocates (da/pa may be FW_RSC_ADDR_ANY)."""

    type: ClassVar[int] = RSC_CARVEOUT


@dataclass
class DevMem(_MemoryResource):
    """RSC_DEVMEM: a device memory range the host maps for the remote."""

    type: ClassVar[int] = RSC_DEVMEM


@dataclass
class Trace:
    """RSC_TRACE: a text log buffer the remote writes into."""

    da: int
    len: int
    reserved: int = 0
    name: str = ""

    type: ClassVar[int] = RSC_TRACE
    size: ClassVar[int] = TRACE_SIZE

    def pack(self) -> bytes:
        """The 44-byte body."""
        return _pack(
            _TRACE, "RSC_TRACE", self.da, self.len, self.reserved, _encode_name(self.name)
        )

    @classmethod
    def unpack(
        cls, buf: BufferLike, offset: int, available: int, *, index: int | None = None
    ) -> Self:
        """Decode and validate the body at ``buf[offset:offset + available]``."""
        _check_span(buf, offset, available)
        if available < TRACE_SIZE:
            raise _fail(
                index, RSC_TRACE, f"truncated: needs {TRACE_SIZE} bytes, {available} available",
                offset,
            )
        da, length, reserved, raw = _TRACE.unpack_from(buf, offset)
        if reserved:
            raise _fail(
                index, RSC_TRACE, f"field reserved = 0x{reserved:x} must be zero",
                offset + TRACE_RESERVED_OFFSET,
            )
        name = _decode_name(raw, index, RSC_TRACE, offset + TRACE_NAME_OFFSET)
        return cls(da, length, reserved, name)


@dataclass
class VendorResource:
    """A vendor-specific entry (type 128..512): handled by a platform hook.

    Its size is not encoded, so the body runs to the next entry (or the end of the table).
    """

    type: int
    body: bytes

    @property
    def size(self) -> int:
        """Bytes of the body."""
        return len(self.body)

    def pack(self) -> bytes:
        """The body, unchanged."""
        return bytes(self.body)


@dataclass
class UnknownResource:
    """An entry of a type nobody handles: skipped with a warning, kept for round-trips."""

    type: int
    body: bytes

    @property
    def size(self) -> int:
        """Bytes of the body."""
        return len(self.body)

    def pack(self) -> bytes:
        """The body, unchanged."""
        return bytes(self.body)


Resource = Carveout | DevMem | Trace | VdevEntry | VendorResource | UnknownResource
R = TypeVar("R")

_FIXED_DECODERS: dict[int, type[Carveout | DevMem | Trace]] = {
    RSC_CARVEOUT: Carveout,
    RSC_DEVMEM: DevMem,
    RSC_TRACE: Trace,
}


@dataclass
class ResourceTable:
    """A resource table: its entries in table order and where each one sits.

    ``entry_offsets[i]`` is the byte offset of entry ``i``'s type word in the bytes this
    table was parsed from, or last built into (:meth:`build` records them); the body
    starts 4 bytes later (:meth:`body_offset`). With those, callers patch fields in place,
    e.g. a vdev's status byte at ``body_offset(i) + VDEV_STATUS_OFFSET``.
    ``min_size`` pads :meth:`build`'s output with zeros; :meth:`parse` sets it to the
    input's length so that a processed table still fills its ELF section.
    """

    entries: list[Resource] = field(default_factory=list)
    entry_offsets: list[int] = field(default_factory=list)
    min_size: int = 0

    @classmethod
    def parse(cls, data: BufferLike, *, max_vrings: int = VDEV_MAX_VRINGS) -> Self:
        """Decode and validate a table; raises :class:`FirmwareError` on any defect."""
        data = bytes(data)
        size = len(data)
        if size < RSC_TABLE_HEADER_SIZE:
            raise FirmwareError(
                f"resource table header: truncated: {size} bytes, the header needs "
                f"{RSC_TABLE_HEADER_SIZE} (at byte 0x0)"
            )
        ver, num, reserved0, reserved1 = _HEADER.unpack_from(data, 0)
        if ver != RSC_TABLE_VERSION:
            raise FirmwareError(
                f"resource table header: field ver = {ver}, only version {RSC_TABLE_VERSION} "
                "is supported (at byte 0x0)"
            )
        for pos, value in ((8, reserved0), (12, reserved1)):
            if value:
                raise FirmwareError(
                    f"resource table header: field reserved = 0x{value:x} must be zero "
                    f"(at byte 0x{pos:x})"
                )
        # num is checked against the real size before any list is built from it.
        header_end = RSC_TABLE_HEADER_SIZE + 4 * num
        if header_end > size:
            raise FirmwareError(
                f"resource table header: field num = {num} needs {header_end} bytes of header "
                f"and offsets, the table has {size} (at byte 0x4)"
            )
        offsets = [o for (o,) in _U32.iter_unpack(data[RSC_TABLE_HEADER_SIZE:header_end])]
        first_use: dict[int, int] = {}
        for i, off in enumerate(offsets):
            pos = RSC_TABLE_HEADER_SIZE + 4 * i
            if off < header_end:
                problem = f"points into the header, which ends at 0x{header_end:x}"
            elif off + RSC_ENTRY_HEADER_SIZE > size:
                problem = f"leaves no room for a type word in a table of 0x{size:x} bytes"
            elif off in first_use:
                problem = f"repeats offset[{first_use[off]}]"
            else:
                first_use[off] = i
                continue
            raise FirmwareError(
                f"resource entry {i}: field offset[{i}] = 0x{off:x} {problem} (at byte 0x{pos:x})"
            )
        # Each entry must end before the next one starts; vendor and unknown bodies, whose
        # size is not encoded, run up to it.
        ordered = sorted(first_use)
        next_start = dict(itertools.pairwise([*ordered, size]))
        entries: list[Resource] = []
        for i, off in enumerate(offsets):
            (rtype,) = _U32.unpack_from(data, off)
            body = off + RSC_ENTRY_HEADER_SIZE
            limit = next_start[off]
            entry: Resource
            if rtype in _FIXED_DECODERS:
                entry = _FIXED_DECODERS[rtype].unpack(data, body, size - body, index=i)
            elif rtype == RSC_VDEV:
                entry = VdevEntry.unpack(data, body, size - body, index=i, max_vrings=max_vrings)
            elif RSC_VENDOR_START <= rtype <= RSC_VENDOR_END:
                entry = VendorResource(rtype, data[body:limit])
            else:
                logger.warning(
                    "resource entry %d: unknown type %d at byte 0x%x, skipped", i, rtype, off
                )
                entry = UnknownResource(rtype, data[body:limit])
            if body + entry.size > limit:
                raise _fail(
                    i, rtype,
                    f"field body ({entry.size} bytes) overlaps the entry at byte 0x{limit:x}", body,
                )
            entries.append(entry)
        return cls(entries, offsets, size)

    def build(self) -> bytes:
        """Encode the table: header, offsets, then the entries in order.

        Records the new layout in :attr:`entry_offsets`. ``parse(t.build()).build()``
        equals ``t.build()``.
        """
        num = len(self.entries)
        out = bytearray(RSC_TABLE_HEADER_SIZE + 4 * num)
        offsets: list[int] = []
        for entry in self.entries:
            out += bytes(-len(out) % _ENTRY_ALIGN)
            offsets.append(len(out))
            out += _pack(_U32, "resource type", entry.type)
            out += entry.pack()
        out += bytes(max(0, self.min_size - len(out)))
        _HEADER.pack_into(out, 0, RSC_TABLE_VERSION, num, 0, 0)
        for i, off in enumerate(offsets):
            _U32.pack_into(out, RSC_TABLE_HEADER_SIZE + 4 * i, off)
        self.entry_offsets = offsets
        return bytes(out)

    def body_offset(self, index: int) -> int:
        """Byte offset of entry ``index``'s body (after its type word) in the table."""
        return self.entry_offsets[index] + RSC_ENTRY_HEADER_SIZE

    def items(self, kind: type[R]) -> list[tuple[int, R]]:
        """``(index, entry)`` for every entry of class ``kind``, in table order."""
        return [(i, e) for i, e in enumerate(self.entries) if isinstance(e, kind)]

    def patch_entry(self, buf: bytearray | memoryview, index: int) -> None:
        """Write entry ``index`` back into ``buf`` (the table bytes) at its recorded offset.

        Used after processing (e.g. allocated addresses, vring notify ids) to update the
        cached table in place; the new body must not reach into the next entry.
        """
        start = self.entry_offsets[index]
        body = self.body_offset(index)
        packed = self.entries[index].pack()
        limit = min((o for o in self.entry_offsets if o > start), default=len(buf))
        if body + len(packed) > min(limit, len(buf)):
            raise ValueError(
                f"entry {index} ({len(packed)} bytes at 0x{body:x}) does not fit before 0x{limit:x}"
            )
        buf[body:body + len(packed)] = packed


class VendorHookResult(enum.Enum):
    """What a platform hook did with a vendor resource."""

    HANDLED = "handled"
    IGNORED = "ignored"
    ERROR = "error"


VendorHook = Callable[[VendorResource], VendorHookResult]


def process_vendor(
    entry: VendorResource,
    hook: VendorHook | None,
    *,
    index: int | None = None,
    offset: int | None = None,
) -> VendorHookResult:
    """Hand a vendor resource to the platform ``hook`` (no hook: ignored).

    IGNORED logs a warning; ERROR raises :class:`FirmwareError`. ``index`` and
    ``offset`` (the body's byte offset in the table) name the entry in messages.
    """
    result = hook(entry) if hook is not None else VendorHookResult.IGNORED
    if not isinstance(result, VendorHookResult):
        raise TypeError(f"vendor hook returned {result!r}, not a VendorHookResult")
    where = _where(index, entry.type)
    at = "" if offset is None else f" (at byte 0x{offset:x})"
    if result is VendorHookResult.ERROR:
        raise FirmwareError(f"{where}: field body rejected by the platform hook{at}")
    if result is VendorHookResult.IGNORED:
        logger.warning("%s: ignored by the platform%s", where, at)
    return result
