"""The rpmsg wire formats: the 16-byte message header and the 40-byte name-service message."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .._args import str_arg
from ..errors import InvalidArgument, RemoteProtocolError

RPMSG_ADDR_ANY = 0xFFFFFFFF
RPMSG_NS_ADDR = 53
RPMSG_RESERVED_ADDRESSES = 1024
RPMSG_NAME_SIZE = 32
RPMSG_BUF_SIZE = 512
RPMSG_HDR_SIZE = 16
RPMSG_NS_CREATE = 0
RPMSG_NS_DESTROY = 1

RPMSG_HDR = struct.Struct("<IIIHH")  # src, dst, reserved, len, flags
RPMSG_NS_MSG = struct.Struct("<32sII")  # name, addr, flags
RPMSG_NS_SIZE = RPMSG_NS_MSG.size


def encode_header(src: int, dst: int, length: int) -> bytes:
    """A header as senders write it (reserved = 0, flags = 0)."""
    return RPMSG_HDR.pack(src, dst, 0, length, 0)


def decode_header(raw: bytes | memoryview) -> tuple[int, int, int]:
    """Return ``(src, dst, len)`` of a 16-byte header."""
    if len(raw) < RPMSG_HDR_SIZE:
        raise RemoteProtocolError(f"rpmsg header needs 16 bytes, got {len(raw)}")
    src, dst, _reserved, length, _flags = RPMSG_HDR.unpack_from(raw)
    return src, dst, length


def check_name(name: str) -> bytes:
    """Encode a channel name: ASCII/UTF-8, at most 31 bytes so the NUL fits."""
    raw = str_arg(name, "name").encode()
    if not raw or len(raw) >= RPMSG_NAME_SIZE or b"\0" in raw:
        raise InvalidArgument(f"name: rpmsg names are 1..31 bytes without NUL, got {name!r}")
    return raw


def decode_name(raw: bytes) -> str:
    """Decode a name field: up to the first NUL (the bytes after it may be garbage)."""
    end = raw.find(b"\0")
    if end < 0:
        raise RemoteProtocolError("name is not NUL-terminated within 32 bytes")
    return raw[:end].decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class NameServiceMessage:
    """A name-service announcement: create or destroy channel ``name`` at ``addr``."""

    name: str
    addr: int
    flags: int = RPMSG_NS_CREATE

    @property
    def is_destroy(self) -> bool:
        return self.flags == RPMSG_NS_DESTROY

    def encode(self) -> bytes:
        return RPMSG_NS_MSG.pack(check_name(self.name), self.addr, self.flags)

    @classmethod
    def decode(cls, raw: bytes) -> NameServiceMessage:
        """Parse and validate a message from the peer (exactly 40 bytes, known flag)."""
        if len(raw) != RPMSG_NS_SIZE:
            raise RemoteProtocolError(f"name-service message must be 40 bytes, got {len(raw)}")
        name_raw, addr, flags = RPMSG_NS_MSG.unpack(raw)
        name = decode_name(name_raw)
        if not name:
            raise RemoteProtocolError("name-service message with an empty name")
        if addr == RPMSG_ADDR_ANY:
            raise RemoteProtocolError(f"name-service message for {name!r} with address ANY")
        if flags not in (RPMSG_NS_CREATE, RPMSG_NS_DESTROY):
            raise RemoteProtocolError(f"name-service message for {name!r} with flags {flags}")
        return cls(name, addr, flags)
