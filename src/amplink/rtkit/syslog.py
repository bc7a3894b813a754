"""The syslog buffer: ``entries`` slots of ``u32 hdr; u32 unk; char context[24];
char msg[msg_size]`` (stride ``0x20 + msg_size``), little-endian.

The co-processor says INIT (entry count, message size), fills a slot and sends LOG with
its index; the host reads the slot and echoes the LOG message as the ack. Linux checks
the index with ``idx > n_entries`` (one past the end is read); here an index must be
below the count, and the whole slot must lie inside the buffer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .._args import int_arg

ENTRY_HEADER = 0x20
CONTEXT_SIZE = 24
_HEADER = struct.Struct("<II24s")
#: bytes trimmed from the end of a message, as Linux does
_TRIM = b"\n\r \0"


@dataclass(frozen=True, slots=True)
class SyslogLayout:
    """The shape the co-processor announced with INIT."""

    entries: int
    msg_size: int

    @property
    def stride(self) -> int:
        """Bytes per slot."""
        return ENTRY_HEADER + self.msg_size

    @property
    def size(self) -> int:
        """Bytes of all slots."""
        return self.entries * self.stride

    def offset(self, index: int) -> int:
        """Where slot ``index`` starts (the caller checked the index)."""
        return index * self.stride


@dataclass(frozen=True, slots=True)
class SyslogEntry:
    """One decoded syslog message."""

    index: int
    context: str
    message: str
    header: int = 0

    def __str__(self) -> str:
        return f"{self.context}: {self.message}" if self.context else self.message


def _text(raw: bytes) -> str:
    end = raw.find(b"\0")
    text = (raw if end < 0 else raw[:end]).rstrip(_TRIM).decode("utf-8", errors="replace")
    # one log line per message: control characters from the co-processor are shown, not obeyed
    return "".join(c if c.isprintable() else "?" for c in text)


def decode_entry(raw: bytes, layout: SyslogLayout, index: int) -> SyslogEntry:
    """Decode one slot (``raw`` is a copy of exactly ``layout.stride`` bytes)."""
    if len(raw) != layout.stride:
        raise ValueError(f"a syslog slot is {layout.stride} bytes, got {len(raw)}")
    header, _unk, context = _HEADER.unpack_from(raw)
    return SyslogEntry(index, _text(context), _text(raw[ENTRY_HEADER:]), header)


def encode_entry(layout: SyslogLayout, message: str, context: str = "", header: int = 0) -> bytes:
    """One slot holding ``message`` (cut to fit with its NUL) and ``context``."""
    int_arg(header, "header", minimum=0, maximum=0xFFFFFFFF)
    text = message.encode("utf-8")[:max(0, layout.msg_size - 1)]
    ctx = context.encode("utf-8")[:CONTEXT_SIZE - 1]
    return _HEADER.pack(header, 0, ctx) + text.ljust(layout.msg_size, b"\0")
