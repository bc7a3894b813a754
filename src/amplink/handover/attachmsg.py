"""The messages of the buffer socket (see :mod:`amplink.platforms.sim_abi`): a codec."""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..memory.errors import PeerBufferError
from ..platforms import sim_abi as L
from .wire import HandoverFault

_MSG = struct.Struct(L.ATTACH_MSG)
assert _MSG.size == L.ATTACH_MSG_SIZE


class AttachMsg(NamedTuple):
    """One message of the buffer socket."""

    op: int
    id: int
    seq: int = 0
    da: int = 0
    offset: int = 0
    length: int = 0
    access: int = 0
    status: int = 0

    def pack(self) -> bytes:
        return _MSG.pack(L.ATTACH_MAGIC, L.ATTACH_VERSION, self.op, self.access, self.status,
                         self.id, self.seq, self.da, self.offset, self.length)

    @classmethod
    def unpack(cls, data: bytes) -> AttachMsg:
        """Decode one message (:class:`PeerBufferError` unless it is exactly one, valid)."""
        if len(data) != _MSG.size:
            raise PeerBufferError(HandoverFault.MALFORMED,
                                  f"buffer socket message of {len(data)} bytes")
        magic, version, op, access, status, id, seq, da, offset, length = _MSG.unpack(data)
        if (magic != L.ATTACH_MAGIC or version != L.ATTACH_VERSION
                or not L.ATTACH_OP_ATTACH <= op <= L.ATTACH_OP_FAULT or access > 3):
            raise PeerBufferError(HandoverFault.MALFORMED,
                                  f"buffer socket message magic {magic!r} version {version} "
                                  f"op {op} access {access}")
        return cls(op, id, seq, da, offset, length, access, status)


SIZE = _MSG.size
