"""Split virtqueue layout and constants (virtio 1.x legacy layout, native little-endian).

Offsets are relative to the start of the ring inside a :class:`SharedRegion`.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from ..memory.allocator import align_up

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VRING_MAX_SIZE = 32768

DESC_SIZE = 16
USED_ELEM_SIZE = 8

if sys.byteorder != "little":
    # remoteproc vrings are in the processors' native order, and every target is LE.
    raise ImportError("amplink's vrings need a little-endian host")

# Descriptors are written before they are published, so struct may write them; the
# indices and flags the peer reads concurrently go through the region's typed views.
DESC = struct.Struct("QIHH")  # addr, len, flags, next


def vring_size(num: int, align: int) -> int:
    """Bytes taken by a split ring of ``num`` entries whose used ring is ``align``-aligned."""
    check_ring_params(num, align)
    return align_up(DESC_SIZE * num + 2 * (3 + num), align) + 6 + USED_ELEM_SIZE * num


def check_ring_params(num: int, align: int) -> None:
    """Refuse sizes the split-ring format cannot describe."""
    if not (0 < num <= VRING_MAX_SIZE) or num & (num - 1):
        raise ValueError(f"vring size must be a power of two in 1..{VRING_MAX_SIZE}, got {num}")
    if align <= 0 or align & (align - 1):
        raise ValueError(f"vring alignment must be a power of two, got {align}")


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """virtio's vring_need_event: did ``[old, new)`` cross the peer's event index?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


@dataclass(frozen=True, slots=True)
class VringLayout:
    """Where each part of one split ring lies, as offsets in its region."""

    base: int
    num: int
    align: int

    def __post_init__(self) -> None:
        check_ring_params(self.num, self.align)

    @property
    def desc(self) -> int:
        return self.base

    @property
    def avail(self) -> int:
        return self.base + DESC_SIZE * self.num

    @property
    def avail_ring(self) -> int:
        return self.avail + 4

    @property
    def used_event(self) -> int:
        """Written by the driver: 'notify me when used.idx passes this'."""
        return self.avail + 4 + 2 * self.num

    @property
    def used(self) -> int:
        return self.base + align_up(DESC_SIZE * self.num + 2 * (3 + self.num), self.align)

    @property
    def used_ring(self) -> int:
        return self.used + 4

    @property
    def avail_event(self) -> int:
        """Written by the device: 'kick me when avail.idx passes this'."""
        return self.used + 4 + USED_ELEM_SIZE * self.num

    @property
    def size(self) -> int:
        return vring_size(self.num, self.align)

    @property
    def end(self) -> int:
        return self.base + self.size
