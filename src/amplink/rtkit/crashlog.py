"""The crashlog a co-processor writes into its crashlog buffer before it says "I crashed".

Layout (little-endian), as Linux's rtkit-crashlog.c reads it:

* a 0x20-byte header: fourcc ``CLHE``, version, total size, flags, 16 unknown bytes;
* sections of ``{u32 fourcc; u32 unknown; u32 flags; u32 size}`` followed by
  ``size - 16`` bytes (``size`` counts the 16-byte section header):

  ===== ==========================================================================
  Cstr  u32 id, then text (lines)
  Cver  16-byte UUID, then the version text
  Ctim  u64 time
  Cmbx  mailbox history: type at +16, index at +24, from +28 entries of
        ``{u64 msg0; u64 msg1; u32 timestamp; u32 unknown}`` (Linux's order; m1n1 calls
        the first word the endpoint)
  Crg8  register dump (0x350 bytes): x0..x30, sp, pc, psr, cpacr, fpsr, fpcr, ...,
        far, ..., esr
  ===== ==========================================================================

* and a trailing section with fourcc ``CLHE``, where parsing stops.

A fourcc is packed big-endian into a u32 and stored little-endian, so ``CLHE`` reads
``EHLC`` in memory. The co-processor is untrusted: :func:`parse_crashlog` never raises
for what the buffer holds; every problem (a bad header, a size past the end or below
16, no terminator) becomes a :class:`~.errors.CrashlogError` in ``Crashlog.errors`` and
parsing stops there, so a size of 0 cannot loop (it does in Linux).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import CrashlogError

HEADER_SIZE = 0x20
SECTION_HEADER_SIZE = 16
REGS_SIZE = 0x350
MBOX_ENTRIES_AT = 28
MBOX_ENTRY = struct.Struct("<QQI4x")
#: sections beyond this many are not parsed (the report would be unreadable anyway)
MAX_SECTIONS = 1024
#: bytes of an unknown section shown in a report
RAW_SHOWN = 64

_HEADER = struct.Struct("<IIII16x")
_SECTION = struct.Struct("<IIII")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# Crg8: u32 unk_0, u32 unk_4, u64 x[31], sp, pc, psr, cpacr, fpsr, fpcr, u64 unk[64],
# far, unk_X, esr, unk_Z
_REGS = struct.Struct("<II31Q6Q512x4Q")
assert _REGS.size == REGS_SIZE

_PSR_MODES = {0x0: "EL0t", 0x4: "EL1t", 0x5: "EL1h", 0x8: "EL2t", 0x9: "EL2h"}


def fourcc(text: str) -> int:
    """The u32 of a four-character code (packed big-endian)."""
    raw = text.encode("ascii")
    if len(raw) != 4:
        raise ValueError(f"a fourcc has 4 characters, got {text!r}")
    return int.from_bytes(raw, "big")


def fourcc_text(value: int) -> str:
    """``Cstr`` for its u32; non-printable bytes as ``\\xNN``."""
    raw = value.to_bytes(4, "big")
    return "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in raw)


CLHE = fourcc("CLHE")
CSTR = fourcc("Cstr")
CVER = fourcc("Cver")
CTIM = fourcc("Ctim")
CMBX = fourcc("Cmbx")
CRG8 = fourcc("Crg8")


def _c_text(raw: bytes) -> str:
    end = raw.find(b"\0")
    text = (raw if end < 0 else raw[:end]).decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() or c == "\n" else "?" for c in text)


@dataclass(frozen=True, slots=True)
class MailboxRecord:
    """One message of the mailbox history."""

    msg0: int
    msg1: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class Registers:
    """The register dump of a Crg8 section (the fields Linux prints)."""

    x: tuple[int, ...]
    sp: int
    pc: int
    psr: int
    far: int
    esr: int
    cpacr: int = 0
    fpsr: int = 0
    fpcr: int = 0

    @property
    def exception_level(self) -> str:
        return _PSR_MODES.get(self.psr & 0xF, "unknown")

    def pack(self) -> bytes:
        """The 0x350-byte section payload."""
        if len(self.x) != 31:
            raise ValueError(f"x0..x30 are 31 registers, got {len(self.x)}")
        return _REGS.pack(0, 0, *self.x, self.sp, self.pc, self.psr, self.cpacr, self.fpsr,
                          self.fpcr, self.far, 0, self.esr, 0)

    @classmethod
    def unpack(cls, payload: bytes) -> Registers:
        values = _REGS.unpack_from(payload)
        x = values[2:33]
        sp, pc, psr, cpacr, fpsr, fpcr, far, _unk_x, esr, _unk_z = values[33:]
        return cls(tuple(x), sp, pc, psr, far, esr, cpacr, fpsr, fpcr)


@dataclass(frozen=True, slots=True)
class Section:
    """One section: its fourcc, flags, where it starts, its payload and what it says.

    ``value`` is ``(id, text)`` for Cstr, ``(uuid, version)`` for Cver, the time for
    Ctim, ``(type, index, records)`` for Cmbx, :class:`Registers` for Crg8, and None for
    an unknown fourcc (or one whose payload could not be decoded: see ``Crashlog.errors``).
    """

    fourcc: int
    flags: int
    offset: int
    payload: bytes
    value: object = None

    @property
    def name(self) -> str:
        return fourcc_text(self.fourcc)


@dataclass(frozen=True, slots=True)
class Crashlog:
    """A parsed crashlog: the header, the sections in order, and what went wrong."""

    version: int
    size: int
    flags: int
    sections: tuple[Section, ...]
    terminated: bool
    errors: tuple[CrashlogError, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.errors

    def messages(self) -> list[str]:
        """The Cstr texts."""
        return [s.value[1] for s in self.sections
                if s.fourcc == CSTR and isinstance(s.value, tuple)]

    def report(self) -> str:
        """A readable report (see the module docstring for what each section means)."""
        lines = [f"RTKit crashlog: version {self.version}, 0x{self.size:x} bytes, "
                 f"flags 0x{self.flags:x}, {len(self.sections)} sections"]
        for section in self.sections:
            lines += _describe(section)
        if not self.terminated and not self.errors:
            lines.append("(no terminator)")
        lines += [f"problem: {error}" for error in self.errors]
        return "\n".join(lines) + "\n"


def _describe(section: Section) -> list[str]:
    value = section.value
    if section.fourcc == CSTR and isinstance(value, tuple):
        ident, text = value
        return [f"Message (id=0x{ident:x}): {line}" for line in text.split("\n") if line] or [
            f"Message (id=0x{ident:x}):"]
    if section.fourcc == CVER and isinstance(value, tuple):
        uuid, version = value
        return [f"Version: {version} (UUID {uuid.hex()})"]
    if section.fourcc == CTIM and isinstance(value, int):
        return [f"Crash time: {value} (0x{value:x})"]
    if section.fourcc == CMBX and isinstance(value, tuple):
        kind, index, records = value
        lines = [f"Mailbox history (type {kind}, index {index}):"]
        lines += [f"  #{i:03d} @{r.timestamp:08x}: {r.msg0:016x} {r.msg1:016x}"
                  for i, r in enumerate(records)]
        return lines
    if section.fourcc == CRG8 and isinstance(value, Registers):
        r = value
        lines = [f"Exception taken from {r.exception_level}",
                 f"  PSR = 0x{r.psr:x}  PC = 0x{r.pc:x}  ESR = 0x{r.esr:x}  "
                 f"FAR = 0x{r.far:x}  SP = 0x{r.sp:x}"]
        for i in range(0, 31, 4):
            regs = " ".join(f"{v:016x}" for v in r.x[i:i + 4])
            lines.append(f"  x{i:02d}-x{min(i + 3, 30):02d} = {regs}")
        return lines
    shown = section.payload[:RAW_SHOWN].hex()
    more = "..." if len(section.payload) > RAW_SHOWN else ""
    return [f"Section {section.name} (flags 0x{section.flags:x}, {len(section.payload)} "
            f"bytes): {shown}{more}"]


def _decode(kind: int, payload: bytes) -> object:
    """What a known section says; ValueError if its payload is too short."""
    if kind == CSTR:
        if len(payload) < 4:
            raise ValueError(f"Cstr of {len(payload)} bytes has no id")
        return _U32.unpack_from(payload)[0], _c_text(payload[4:])
    if kind == CVER:
        if len(payload) < 16:
            raise ValueError(f"Cver of {len(payload)} bytes has no UUID")
        return payload[:16], _c_text(payload[16:])
    if kind == CTIM:
        if len(payload) < 8:
            raise ValueError(f"Ctim of {len(payload)} bytes has no time")
        return _U64.unpack_from(payload)[0]
    if kind == CMBX:
        if len(payload) < MBOX_ENTRIES_AT:
            raise ValueError(f"Cmbx of {len(payload)} bytes is shorter than its header")
        count = (len(payload) - MBOX_ENTRIES_AT) // MBOX_ENTRY.size
        records = tuple(MailboxRecord(*MBOX_ENTRY.unpack_from(
            payload, MBOX_ENTRIES_AT + i * MBOX_ENTRY.size)) for i in range(count))
        return _U32.unpack_from(payload, 16)[0], _U32.unpack_from(payload, 24)[0], records
    if kind == CRG8:
        if len(payload) < REGS_SIZE:
            raise ValueError(f"Crg8 of {len(payload)} bytes is smaller than 0x{REGS_SIZE:x}")
        return Registers.unpack(payload)
    return None


def parse_crashlog(data: bytes | bytearray | memoryview) -> Crashlog:
    """Parse a copy of a crashlog buffer; problems are collected, never raised."""
    data = bytes(data)
    errors: list[CrashlogError] = []
    if len(data) < HEADER_SIZE:
        errors.append(CrashlogError(f"a crashlog of {len(data)} bytes has no header"))
        return Crashlog(0, 0, 0, (), False, tuple(errors))
    magic, version, size, flags = _HEADER.unpack_from(data)
    if magic != CLHE:
        errors.append(CrashlogError(f"offset 0x0: header fourcc {fourcc_text(magic)!r}, "
                                    "not 'CLHE'"))
        return Crashlog(version, size, flags, (), False, tuple(errors))
    limit = size
    if size > len(data):
        errors.append(CrashlogError(f"offset 0x8: total size 0x{size:x} exceeds the buffer "
                                    f"of 0x{len(data):x} bytes; parsed up to the buffer's end"))
        limit = len(data)
    sections: list[Section] = []
    offset = HEADER_SIZE
    terminated = False
    while offset < limit:
        if len(sections) >= MAX_SECTIONS:
            errors.append(CrashlogError(f"offset 0x{offset:x}: more than {MAX_SECTIONS} "
                                        "sections; the rest is not parsed"))
            break
        if offset + SECTION_HEADER_SIZE > limit:
            errors.append(CrashlogError(f"offset 0x{offset:x}: a section header runs past the "
                                        f"end (0x{limit:x})"))
            break
        kind, _unk, sflags, ssize = _SECTION.unpack_from(data, offset)
        if kind == CLHE:
            terminated = True
            break
        if ssize < SECTION_HEADER_SIZE:
            errors.append(CrashlogError(f"offset 0x{offset:x}: section {fourcc_text(kind)!r} "
                                        f"has size {ssize}, less than its 16-byte header"))
            break
        if ssize > limit - offset:
            errors.append(CrashlogError(f"offset 0x{offset:x}: section {fourcc_text(kind)!r} "
                                        f"of 0x{ssize:x} bytes runs past the end (0x{limit:x})"))
            break
        payload = data[offset + SECTION_HEADER_SIZE:offset + ssize]
        try:
            value = _decode(kind, payload)
        except ValueError as exc:
            errors.append(CrashlogError(f"offset 0x{offset:x}: {exc}"))
            value = None
        sections.append(Section(kind, sflags, offset, payload, value))
        offset += ssize
    if not terminated and not errors:
        errors.append(CrashlogError(f"offset 0x{offset:x}: the crashlog ends without its "
                                    "'CLHE' terminator"))
    return Crashlog(version, size, flags, tuple(sections), terminated, tuple(errors))


# -- writing (the co-processor side, and tests) ----------------------------------------------
def section(name: str, payload: bytes, flags: int = 0) -> bytes:
    """One section: its 16-byte header and ``payload``."""
    return _SECTION.pack(fourcc(name), 0, flags, SECTION_HEADER_SIZE + len(payload)) + payload


def cstr(ident: int, text: str) -> bytes:
    return section("Cstr", _U32.pack(ident) + text.encode("utf-8") + b"\0")


def cver(uuid: bytes, version: str) -> bytes:
    if len(uuid) != 16:
        raise ValueError("a UUID is 16 bytes")
    return section("Cver", uuid + version.encode("utf-8") + b"\0")


def ctim(time: int) -> bytes:
    return section("Ctim", _U64.pack(time))


def cmbx(kind: int, index: int, records: Sequence[MailboxRecord]) -> bytes:
    head = bytearray(MBOX_ENTRIES_AT)
    _U32.pack_into(head, 16, kind)
    _U32.pack_into(head, 24, index)
    body = b"".join(MBOX_ENTRY.pack(r.msg0, r.msg1, r.timestamp) for r in records)
    return section("Cmbx", bytes(head) + body)


def crg8(registers: Registers) -> bytes:
    return section("Crg8", registers.pack())


def build_crashlog(sections: Sequence[bytes], *, version: int = 1, flags: int = 0,
                   size: int | None = None) -> bytes:
    """A crashlog of the header, ``sections`` (built with the functions above) and the
    terminator; ``size`` overrides the header's total size (to build broken ones)."""
    body = b"".join(sections) + _SECTION.pack(CLHE, 0, 0, SECTION_HEADER_SIZE)
    total = HEADER_SIZE + len(body)
    return _HEADER.pack(CLHE, version, total if size is None else size, flags) + body
