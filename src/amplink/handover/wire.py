"""The hand-over wire format: small records that travel in the messages of an endpoint.

Every message of a buffer channel is one or more 24-byte records, little-endian and
packed (documented in ``docs/large-data.md``, so that firmware in any language can
speak it)::

    struct amplink_handover_record {
        uint8_t  version;   /* HANDOVER_VERSION (1) */
        uint8_t  type;      /* RecordType */
        uint8_t  access;    /* SEND: what the receiver may do (1 read, 2 write, 3 both); else 0 */
        uint8_t  flags;     /* MSG: 1 = the last fragment of a message; else 0 */
        uint32_t id;        /* the buffer's id (its attachment id); pool id for MSG/FREE */
        uint64_t offset;    /* byte offset in the buffer */
        uint64_t length;    /* bytes */
    };

``INLINE`` is the one record followed by data: its ``length`` bytes of payload come right
after it, and it is the last record of its message. Decoding is sans-IO and trusts
nothing: a message that is not a whole number of records (or an INLINE whose payload
does not match), a wrong version, an unknown type, access or flag is refused whole as a
:class:`HandoverFault`; values are checked against buffers by whoever resolves them.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from typing import NamedTuple

from ..errors import InvalidArgument
from ..memory.errors import PeerBufferError

HANDOVER_VERSION = 1
RECORD = struct.Struct("<BBBBIQQ")
RECORD_SIZE = RECORD.size  # 24
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
#: MSG flags: the last fragment of a message
FLAG_LAST = 1


class RecordType(enum.IntEnum):
    """What a record says."""

    SEND = 1    #: here is ``length`` bytes of buffer ``id`` from ``offset``, yours (``access``)
    DONE = 2    #: I am done with buffer ``id``; ``offset``/``length``: the result range
    MSG = 3     #: a fragment of a message in pool ``id`` at ``offset``, ``length`` bytes
    FREE = 4    #: those pool bytes are free again (echoes a MSG record's id/offset/length)
    HEAD = 5    #: a message of ``length`` bytes follows in MSG fragments
    INLINE = 6  #: a whole message of ``length`` bytes follows this record in the same message
    POOL = 7    #: pool ``id`` (an attached buffer) is yours to put MSG fragments in


class HandoverFault(enum.StrEnum):
    """Why a peer's hand-over message or record was refused."""

    MALFORMED = "malformed hand-over message"
    VERSION = "unsupported hand-over version"
    UNEXPECTED = "record this side does not accept"


class Record(NamedTuple):
    """One decoded record (values as the peer sent them, within their widths)."""

    type: int
    id: int
    offset: int
    length: int
    access: int = 0
    flags: int = 0


_VALID_TYPES = frozenset(int(t) for t in RecordType)
_SEND, _DONE, _MSG, _FREE, _HEAD, _INLINE, _POOL = (int(t) for t in RecordType)


def pack(type: int, id: int, offset: int, length: int, access: int = 0, flags: int = 0) -> bytes:
    """One record; :class:`InvalidArgument` if a field does not fit its width."""
    if not (0 <= id <= U32_MAX and 0 <= offset <= U64_MAX and 0 <= length <= U64_MAX
            and 0 <= access <= 3 and 0 <= flags <= 255 and int(type) in _VALID_TYPES):
        raise InvalidArgument(f"record type {type!r} id {id!r} offset {offset!r} length "
                              f"{length!r} access {access!r} does not fit the wire format")
    return RECORD.pack(HANDOVER_VERSION, type, access, flags, id, offset, length)


def pack_inline(data: bytes | bytearray | memoryview) -> bytes:
    """An INLINE record with its payload."""
    return RECORD.pack(HANDOVER_VERSION, _INLINE, 0, 0, 0, 0, len(data)) + bytes(data)


def _bad(reason: HandoverFault, detail: str) -> PeerBufferError:
    return PeerBufferError(reason, detail)


#: one record as :data:`RECORD` unpacks it: version, type, access, flags, id, offset, length
RawRecord = tuple[int, int, int, int, int, int, int]


def plain_records(message: bytes | bytearray | memoryview) -> list[RawRecord] | None:
    """The records of a message made only of well-formed SEND and DONE records (the hot
    path of a buffer channel: one pass, no objects); None for any other message, which
    :func:`unpack` then decodes (or refuses, saying why)."""
    size = len(message)
    if not size or size % RECORD_SIZE:
        return None
    records = list(RECORD.iter_unpack(message))
    for version, type, access, flags, _id, _offset, _length in records:
        if version != HANDOVER_VERSION or flags or (
                access if type == _DONE else type != _SEND or not 1 <= access <= 3):
            return None
    return records


def unpack(message: bytes | bytearray | memoryview) -> Iterator[tuple[Record, memoryview | None]]:
    """The records of one message, each with its INLINE payload (else None).

    The whole message is checked before the first record is yielded, so a refused
    message (:class:`PeerBufferError`, ``reason`` a :class:`HandoverFault`) has no effect.
    """
    view = memoryview(message).cast("B") if not isinstance(message, bytes) else memoryview(message)
    size = len(view)
    if size < RECORD_SIZE:
        raise _bad(HandoverFault.MALFORMED, f"{size} bytes, a record is {RECORD_SIZE}")
    records: list[tuple[Record, memoryview | None]] = []
    pos = 0
    while pos < size:
        if size - pos < RECORD_SIZE:
            raise _bad(HandoverFault.MALFORMED, f"{size - pos} trailing bytes at {pos}")
        version, type, access, flags, id, offset, length = RECORD.unpack_from(view, pos)
        pos += RECORD_SIZE
        if version != HANDOVER_VERSION:
            raise _bad(HandoverFault.VERSION, f"version {version} at byte {pos - RECORD_SIZE}")
        if type not in _VALID_TYPES:
            raise _bad(HandoverFault.MALFORMED, f"record type {type}")
        if (access > 3 or (access == 0) == (type == _SEND)
                or flags & ~(FLAG_LAST if type == _MSG else 0)):
            raise _bad(HandoverFault.MALFORMED, f"type {type} access {access} flags 0x{flags:x}")
        payload = None
        if type == _INLINE:
            if length != size - pos:
                raise _bad(HandoverFault.MALFORMED, f"INLINE of {length} bytes with "
                                                    f"{size - pos} after it")
            payload = view[pos:]
            pos = size
        records.append((Record(type, id, offset, length, access, flags), payload))
    return iter(records)
