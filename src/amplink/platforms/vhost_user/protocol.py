"""The vhost-user wire, sans I/O: message header, request codes, payload codecs.

A message is a 12-byte little-endian header ``request u32, flags u32, size u32`` and
``size`` payload bytes; file descriptors travel beside it as SCM_RIGHTS. Everything
here decodes bytes from the front end (the VMM), a peer amplink does not trust: sizes
are exact, counts bounded, and a violation is a :class:`VhostUserError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Self

from ...errors import RemoteProtocolError

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size

VHOST_USER_VERSION = 0x1
VHOST_USER_VERSION_MASK = 0x3
VHOST_USER_FLAG_REPLY = 0x4
VHOST_USER_FLAG_NEED_REPLY = 0x8
_KNOWN_FLAGS = VHOST_USER_VERSION_MASK | VHOST_USER_FLAG_REPLY | VHOST_USER_FLAG_NEED_REPLY

#: virtio feature bit: the back end speaks vhost-user protocol features
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32

# protocol feature bits
VHOST_USER_PROTOCOL_F_MQ = 0
VHOST_USER_PROTOCOL_F_REPLY_ACK = 3
VHOST_USER_PROTOCOL_F_BACKEND_REQ = 5  # "SLAVE_REQ" in older texts and Linux 6.1
VHOST_USER_PROTOCOL_F_CONFIG = 9

#: in the u64 of SET_VRING_KICK/CALL/ERR: the queue index, and "no fd follows"
VRING_INDEX_MASK = 0xFF
VRING_NOFD_MASK = 0x100

#: SET_MEM_TABLE carries at most this many regions (one fd each)
MAX_MEM_REGIONS = 8
MEM_REGION = struct.Struct("<QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
_MEM_TABLE_HEAD = struct.Struct("<II")  # nregions, padding
_U64 = struct.Struct("<Q")
_VRING_STATE = struct.Struct("<II")  # index, num
_VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log (user addresses)

#: the largest payload of any request this back end handles (SET_MEM_TABLE with 8 regions)
MAX_PAYLOAD = _MEM_TABLE_HEAD.size + MAX_MEM_REGIONS * MEM_REGION.size
#: most fds one message may carry
MAX_FDS = MAX_MEM_REGIONS


class VhostUserError(RemoteProtocolError):
    """The front end broke the vhost-user protocol; the connection is closed."""


class Request(IntEnum):
    """Front-end requests (``VHOST_USER_*``)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SET_BACKEND_REQ_FD = 21  # "SET_SLAVE_REQ_FD"
    GET_CONFIG = 24
    SET_CONFIG = 25


@dataclass(frozen=True, slots=True)
class Header:
    request: int
    flags: int
    size: int

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & VHOST_USER_FLAG_NEED_REPLY)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode and check a request header from the front end."""
        if len(data) != HEADER_SIZE:
            raise VhostUserError(f"header of {len(data)} bytes, not {HEADER_SIZE}")
        request, flags, size = HEADER.unpack(data)
        if flags & VHOST_USER_VERSION_MASK != VHOST_USER_VERSION:
            raise VhostUserError(f"request {request}: protocol version "
                                 f"{flags & VHOST_USER_VERSION_MASK}, only 1 is known")
        if flags & ~_KNOWN_FLAGS:
            raise VhostUserError(f"request {request}: unknown flags 0x{flags:x}")
        if flags & VHOST_USER_FLAG_REPLY:
            raise VhostUserError(f"request {request}: the front end sent a reply")
        if size > MAX_PAYLOAD:
            raise VhostUserError(f"request {request}: payload of {size} bytes "
                                 f"(at most {MAX_PAYLOAD})")
        return cls(request, flags, size)

    def pack(self) -> bytes:
        return HEADER.pack(self.request, self.flags, self.size)


def encode_request(request: int, payload: bytes = b"", *, need_reply: bool = False) -> bytes:
    """A front-end request (what a VMM sends; used by tests and tools)."""
    flags = VHOST_USER_VERSION | (VHOST_USER_FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes) -> bytes:
    """The back end's reply to ``request``."""
    return HEADER.pack(request, VHOST_USER_VERSION | VHOST_USER_FLAG_REPLY,
                       len(payload)) + payload


def _exact(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise VhostUserError(f"{what}: payload of {len(payload)} bytes, expected {size}")


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(payload: bytes, what: str) -> int:
    _exact(payload, _U64.size, what)
    value: int = _U64.unpack(payload)[0]
    return value


@dataclass(frozen=True, slots=True)
class VringState:
    """``struct vhost_vring_state``: a queue index and a number (size, base, enable)."""

    index: int
    num: int

    def pack(self) -> bytes:
        return _VRING_STATE.pack(self.index, self.num)

    @classmethod
    def unpack(cls, payload: bytes, what: str = "vring state") -> Self:
        _exact(payload, _VRING_STATE.size, what)
        return cls(*_VRING_STATE.unpack(payload))


@dataclass(frozen=True, slots=True)
class VringAddr:
    """``struct vhost_vring_addr``: where a queue's parts are, as front-end user addresses."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int

    def pack(self) -> bytes:
        return _VRING_ADDR.pack(self.index, self.flags, self.desc, self.used, self.avail,
                                self.log)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        _exact(payload, _VRING_ADDR.size, "SET_VRING_ADDR")
        return cls(*_VRING_ADDR.unpack(payload))


@dataclass(frozen=True, slots=True)
class MemRegion:
    """One region of the guest's memory: guest-physical and front-end user addresses,
    and where it lies in the file whose fd comes with the table."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int

    def pack(self) -> bytes:
        return MEM_REGION.pack(self.guest_phys_addr, self.memory_size, self.userspace_addr,
                               self.mmap_offset)


def pack_mem_table(regions: list[MemRegion]) -> bytes:
    return _MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(r.pack() for r in regions)


def unpack_mem_table(payload: bytes) -> list[MemRegion]:
    """Decode SET_MEM_TABLE (the regions' bounds are checked when they are mapped)."""
    if len(payload) < _MEM_TABLE_HEAD.size:
        raise VhostUserError(f"SET_MEM_TABLE: payload of {len(payload)} bytes")
    count, _padding = _MEM_TABLE_HEAD.unpack_from(payload)
    if not 1 <= count <= MAX_MEM_REGIONS:
        raise VhostUserError(f"SET_MEM_TABLE: {count} regions (1..{MAX_MEM_REGIONS})")
    # QEMU sends exactly ``count`` regions; Linux's virtio_uml always sends room for two
    # (72 bytes) with ``count`` 1. Unused whole region slots are accepted and ignored.
    slots, partial = divmod(len(payload) - _MEM_TABLE_HEAD.size, MEM_REGION.size)
    if partial or slots < count:
        raise VhostUserError(f"SET_MEM_TABLE of {count} regions: payload of {len(payload)} "
                             f"bytes (8 + 32 per region slot)")
    return [MemRegion(*MEM_REGION.unpack_from(payload, _MEM_TABLE_HEAD.size + i * MEM_REGION.size))
            for i in range(count)]


def unpack_vring_fd(payload: bytes, what: str) -> tuple[int, bool]:
    """The u64 of SET_VRING_KICK/CALL/ERR: ``(queue index, an fd comes with it)``."""
    value = unpack_u64(payload, what)
    if value & ~(VRING_INDEX_MASK | VRING_NOFD_MASK):
        raise VhostUserError(f"{what}: unknown bits in 0x{value:x}")
    return value & VRING_INDEX_MASK, not value & VRING_NOFD_MASK
