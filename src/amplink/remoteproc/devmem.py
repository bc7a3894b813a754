"""The memory of one remote processor, as the lifecycle engine sees it.

A platform hands the engine a :class:`DeviceMemory`:

* the **pool**: one shared region the host allocates from (carveouts and trace buffers
  the firmware leaves to the host, vrings, rpmsg buffers, the resource table when the
  image has no loaded copy), and in which fixed-address carveouts are honoured;
* optional **internal** memories: fixed device memories (an MCU's TCM or SRAM) that are
  always mapped, so that segments and tables may be placed there without a carveout.

There is no IOMMU: a device address is the physical address, ``region.da_base +
offset``, in every region. That keeps one address space for the vrings and buffers,
which the virtio transport translates with the pool region's ``da_base``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from ..memory.allocator import align_up
from ..memory.region import SharedRegion

#: carveouts, pools and tables start on a page, as Linux's DMA allocations do
PAGE_SIZE = 0x1000


@dataclass(frozen=True)
class Allocation:
    """A named range of device memory: ``length`` bytes at device address ``da``."""

    name: str
    da: int
    region: SharedRegion
    offset: int
    length: int

    def read(self) -> bytes:
        """A copy of the current contents."""
        return self.region.read(self.offset, self.length)


class DeviceMemory:
    """The pool and the internal memories of one processor, and what is taken from the pool.

    Raises ``MemoryError`` when an allocation does not fit and ``ValueError`` when a fixed
    range is outside the pool or overlaps a range already taken; callers turn those into
    :class:`FirmwareError` naming the resource entry.
    """

    def __init__(self, pool: SharedRegion, internal: Sequence[SharedRegion] = ()) -> None:
        self.pool = pool
        self.internal = tuple(internal)
        self._taken: list[tuple[int, int]] = []  # sorted (offset, end) in the pool

    def alloc(self, name: str, size: int, align: int = PAGE_SIZE) -> Allocation:
        """Take the lowest free ``size`` bytes of the pool aligned to ``align`` (device address)."""
        if size <= 0:
            raise ValueError(f"{name}: size {size} must be positive")
        base = self.pool.da_base
        cursor = 0
        for start, end in [*self._taken, (self.pool.size, self.pool.size)]:
            offset = align_up(base + cursor, align) - base
            if offset + size <= start:
                return self._take(name, offset, size)
            cursor = max(cursor, end)
        raise MemoryError(
            f"{name}: no room for 0x{size:x} bytes aligned to 0x{align:x} in the processor's "
            f"memory (0x{self.pool.size:x} bytes, 0x{self.used_bytes:x} in use)"
        )

    def reserve(self, name: str, da: int, size: int) -> Allocation:
        """Take ``[da, da + size)`` of the pool, which must be free."""
        if size <= 0:
            raise ValueError(f"{name}: size {size} must be positive")
        offset = da - self.pool.da_base
        if offset < 0 or offset + size > self.pool.size:
            raise ValueError(
                f"{name}: 0x{da:x}+0x{size:x} is outside the processor's memory "
                f"[0x{self.pool.da_base:x}, 0x{self.pool.da_base + self.pool.size:x})"
            )
        at = bisect.bisect_left(self._taken, (offset, offset))
        for start, end in self._taken[max(0, at - 1):at + 1]:
            if offset < end and start < offset + size:
                raise ValueError(
                    f"{name}: 0x{da:x}+0x{size:x} overlaps memory already in use at "
                    f"0x{self.pool.da_base + start:x}+0x{end - start:x}"
                )
        return self._take(name, offset, size)

    def _take(self, name: str, offset: int, size: int) -> Allocation:
        bisect.insort(self._taken, (offset, offset + size))
        return Allocation(name, self.pool.da_base + offset, self.pool, offset, size)

    def internal_range(self, da: int, size: int) -> tuple[SharedRegion, int] | None:
        """The internal memory holding all of ``[da, da + size)``, and the offset there."""
        for region in self.internal:
            offset = da - region.da_base
            if 0 <= offset and offset + size <= region.size:
                return region, offset
        return None

    @property
    def used_bytes(self) -> int:
        """Bytes of the pool taken so far."""
        return sum(end - start for start, end in self._taken)

    def close(self) -> None:
        """Release the pool and the internal memories."""
        for region in (self.pool, *self.internal):
            region.close()
