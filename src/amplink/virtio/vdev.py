"""The RSC_VDEV entry of the remoteproc resource table: a virtio device and its vrings.

The entry body (the bytes after the resource type word) is, little-endian and packed::

    id u32 @0, notifyid u32 @4, dfeatures u32 @8, gfeatures u32 @12, config_len u32 @16,
    status u8 @20, num_of_vrings u8 @21, reserved[2] @22, vring[num_of_vrings] @24
    (20 B each: da @0, align @4, num @8, notifyid @12, pa @16), then config_len bytes.

The table lives in memory both sides see, so the driver negotiates through it: the device
publishes ``dfeatures``, the driver writes the accepted ``gfeatures`` and then ``status``.
:class:`VdevControl` does those live accesses; :class:`VdevEntry` is the codec.
Every value read from the table is untrusted and checked before use.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from ..errors import FirmwareError
from ..memory.region import SharedRegion

# Virtio device id and feature bit of rpmsg.
VIRTIO_ID_RPMSG = 7
VIRTIO_RPMSG_F_NS = 0  # bit number: the device announces channels by name service

# Virtio status bits.
VIRTIO_CONFIG_S_ACKNOWLEDGE = 0x01
VIRTIO_CONFIG_S_DRIVER = 0x02
VIRTIO_CONFIG_S_DRIVER_OK = 0x04
VIRTIO_CONFIG_S_FEATURES_OK = 0x08
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# Field offsets relative to the entry body.
VDEV_ID_OFFSET = 0
VDEV_NOTIFYID_OFFSET = 4
VDEV_DFEATURES_OFFSET = 8
VDEV_GFEATURES_OFFSET = 12
VDEV_CONFIG_LEN_OFFSET = 16
VDEV_STATUS_OFFSET = 20
VDEV_NUM_VRINGS_OFFSET = 21
VDEV_RESERVED_OFFSET = 22
VDEV_VRINGS_OFFSET = 24
VDEV_HEADER_SIZE = 24

# Field offsets relative to one vring entry.
VRING_DA_OFFSET = 0
VRING_ALIGN_OFFSET = 4
VRING_NUM_OFFSET = 8
VRING_NOTIFYID_OFFSET = 12
VRING_PA_OFFSET = 16
VRING_ENTRY_SIZE = 20

VRING_MAX_NUM = 32768  # the largest split-virtqueue size
VDEV_MAX_VRINGS = 2  # rpmsg uses exactly two (RX and TX)
FEATURES_MASK = 0xFFFF_FFFF  # remoteproc vdevs carry 32 feature bits

BufferLike = bytes | bytearray | memoryview | mmap.mmap

_HEADER = struct.Struct("<IIIIIBBH")
_VRING = struct.Struct("<IIIII")


def vring_entry_offset(index: int) -> int:
    """Offset of vring ``index``'s entry relative to the vdev entry body."""
    return VDEV_VRINGS_OFFSET + index * VRING_ENTRY_SIZE


def negotiate_features(device_features: int, driver_supported: int) -> int:
    """The features both sides support, limited to the 32 bits a vdev entry holds."""
    return device_features & driver_supported & FEATURES_MASK


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _where(entry_index: int | None, vring: int | None = None) -> str:
    where = "RSC_VDEV entry" if entry_index is None else f"resource entry {entry_index} (RSC_VDEV)"
    return where if vring is None else f"{where} vring {vring}"


def _check_span(buf: BufferLike, offset: int, available: int) -> None:
    # Caller mistakes, not firmware faults: the span must lie inside the buffer.
    if offset < 0 or available < 0 or offset + available > len(buf):
        raise ValueError(
            f"span 0x{offset:x}+0x{available:x} is outside a buffer of 0x{len(buf):x} bytes"
        )


def _pack(st: struct.Struct, what: str, *values: int) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise ValueError(f"{what}: a field does not fit its width: {exc}") from None


@dataclass
class VringEntry:
    """One vring of a vdev: device address, alignment, size, notify id, physical address."""

    da: int
    align: int
    num: int
    notifyid: int = 0
    pa: int = 0

    def pack(self) -> bytes:
        """The 20-byte encoding (no semantic checks, so tests can build bad tables)."""
        return _pack(_VRING, "vring entry", self.da, self.align, self.num, self.notifyid, self.pa)

    @classmethod
    def unpack(
        cls,
        buf: BufferLike,
        offset: int,
        available: int,
        *,
        index: int = 0,
        entry_index: int | None = None,
    ) -> Self:
        """Decode and validate the vring entry at ``buf[offset:offset + available]``.

        ``index`` is the vring's position in its vdev and ``entry_index`` the vdev's
        position in the resource table; both only name the entry in error messages,
        whose byte offsets are positions in ``buf``.
        """
        _check_span(buf, offset, available)
        where = _where(entry_index, index)
        if available < VRING_ENTRY_SIZE:
            raise FirmwareError(
                f"{where}: truncated: needs {VRING_ENTRY_SIZE} bytes, {available} available "
                f"(at byte 0x{offset:x})"
            )
        da, align, num, notifyid, pa = _VRING.unpack_from(buf, offset)
        if not _is_pow2(num) or num > VRING_MAX_NUM:
            raise FirmwareError(
                f"{where}: field num = {num} must be a power of two in 1..{VRING_MAX_NUM} "
                f"(at byte 0x{offset + VRING_NUM_OFFSET:x})"
            )
        if not _is_pow2(align):
            raise FirmwareError(
                f"{where}: field align = {align} must be a nonzero power of two "
                f"(at byte 0x{offset + VRING_ALIGN_OFFSET:x})"
            )
        return cls(da, align, num, notifyid, pa)


@dataclass
class VdevEntry:
    """The body of an RSC_VDEV resource entry.

    ``config_len`` must equal ``len(config)``; it is kept as a field because it is one on
    the wire. ``num_of_vrings`` is ``len(vrings)``.
    """

    id: int
    notifyid: int = 0
    dfeatures: int = 0
    gfeatures: int = 0
    config_len: int = 0
    status: int = 0
    vrings: list[VringEntry] = field(default_factory=list)
    config: bytes = b""

    type: ClassVar[int] = 3  # RSC_VDEV in the remoteproc resource table

    @property
    def size(self) -> int:
        """Bytes of the encoded body."""
        return VDEV_HEADER_SIZE + VRING_ENTRY_SIZE * len(self.vrings) + len(self.config)

    def pack(self) -> bytes:
        """The body encoding (no semantic checks, so tests can build bad tables)."""
        if self.config_len != len(self.config):
            raise ValueError(
                f"vdev config_len {self.config_len} differs from len(config) {len(self.config)}"
            )
        if len(self.vrings) > 0xFF:
            raise ValueError(f"a vdev holds at most 255 vrings, got {len(self.vrings)}")
        header = _pack(
            _HEADER, "vdev entry", self.id, self.notifyid, self.dfeatures, self.gfeatures,
            self.config_len, self.status, len(self.vrings), 0,
        )
        return b"".join([header, *(v.pack() for v in self.vrings), bytes(self.config)])

    @classmethod
    def unpack(
        cls,
        buf: BufferLike,
        offset: int,
        available: int,
        *,
        index: int | None = None,
        max_vrings: int = VDEV_MAX_VRINGS,
    ) -> Self:
        """Decode and validate the vdev body at ``buf[offset:offset + available]``.

        ``available`` is the number of bytes up to the end of the table. ``index`` (the
        entry's position in the table) only names the entry in error messages, whose byte
        offsets are positions in ``buf``.
        """
        _check_span(buf, offset, available)
        where = _where(index)
        if available < VDEV_HEADER_SIZE:
            raise FirmwareError(
                f"{where}: truncated: header needs {VDEV_HEADER_SIZE} bytes, {available} "
                f"available (at byte 0x{offset:x})"
            )
        vid, notifyid, dfeatures, gfeatures, config_len, status, nvrings, reserved = (
            _HEADER.unpack_from(buf, offset)
        )
        if reserved:
            raise FirmwareError(
                f"{where}: field reserved = 0x{reserved:04x} must be zero "
                f"(at byte 0x{offset + VDEV_RESERVED_OFFSET:x})"
            )
        if nvrings > max_vrings:
            raise FirmwareError(
                f"{where}: field num_of_vrings = {nvrings} exceeds the maximum {max_vrings} "
                f"(at byte 0x{offset + VDEV_NUM_VRINGS_OFFSET:x})"
            )
        # Both counts are checked against the real bytes before anything is sliced.
        need = VDEV_HEADER_SIZE + VRING_ENTRY_SIZE * nvrings + config_len
        if need > available:
            raise FirmwareError(
                f"{where}: truncated: {nvrings} vrings and field config_len = {config_len} "
                f"need {need} bytes, {available} available (at byte 0x{offset:x})"
            )
        vrings = [
            VringEntry.unpack(
                buf, offset + vring_entry_offset(i), VRING_ENTRY_SIZE, index=i, entry_index=index
            )
            for i in range(nvrings)
        ]
        config_at = offset + vring_entry_offset(nvrings)
        config = bytes(buf[config_at:config_at + config_len])
        return cls(vid, notifyid, dfeatures, gfeatures, config_len, status, vrings, config)


class VdevControl:
    """Live access to the negotiation fields of an RSC_VDEV entry in shared memory.

    ``entry_offset`` is the region offset of the entry *body* (the byte after its type
    word), e.g. ``table_base + ResourceTable.body_offset(i)``. Every access goes through
    the region's bounds-checked accessors.
    """

    def __init__(self, region: SharedRegion, entry_offset: int) -> None:
        region.check(entry_offset, VDEV_HEADER_SIZE)
        self.region = region
        self.entry_offset = entry_offset

    @property
    def status(self) -> int:
        """The virtio status byte."""
        return self.region.read_u8(self.entry_offset + VDEV_STATUS_OFFSET)

    @status.setter
    def status(self, value: int) -> None:
        if not 0 <= value <= 0xFF:
            raise ValueError(f"virtio status is one byte, got {value}")
        self.region.write_u8(self.entry_offset + VDEV_STATUS_OFFSET, value)

    def add_status(self, bits: int) -> int:
        """Set ``bits`` in the status byte (as a driver does step by step); returns it."""
        value = self.status | bits
        self.status = value
        return value

    @property
    def dfeatures(self) -> int:
        """The features the device offers."""
        return self.region.read_u32(self.entry_offset + VDEV_DFEATURES_OFFSET)

    @dfeatures.setter
    def dfeatures(self, value: int) -> None:
        self.region.write_u32(self.entry_offset + VDEV_DFEATURES_OFFSET, _features(value))

    @property
    def gfeatures(self) -> int:
        """The features the driver accepted."""
        return self.region.read_u32(self.entry_offset + VDEV_GFEATURES_OFFSET)

    @gfeatures.setter
    def gfeatures(self, value: int) -> None:
        self.region.write_u32(self.entry_offset + VDEV_GFEATURES_OFFSET, _features(value))

    def __repr__(self) -> str:
        return f"VdevControl(region={self.region!r}, entry_offset=0x{self.entry_offset:x})"


def _features(value: int) -> int:
    if not 0 <= value <= FEATURES_MASK:
        raise ValueError(f"vdev feature bits are 32 bits wide, got 0x{value:x}")
    return value
