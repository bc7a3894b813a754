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

from collections.abc import Sequence
from dataclasses import dataclass

from ..memory.allocator import RegionAllocator
from ..memory.region import SharedRegion

#: carveouts, pools and tables start on a page, as Linux's DMA allocations do
PAGE_SIZE = 0x1000


@dataclass(frozen=True)
class Allocation:
    """A named range of device memory: ``length`` bytes at device address ``da``, held by
    ``region`` at ``offset``: what is taken from the pool, a window of the address map
    (:class:`~.addrmap.DeviceAddressMap`), a trace buffer, a coredump segment."""

    name: str
    da: int
    region: SharedRegion
    offset: int
    length: int

    @property
    def end(self) -> int:
        """The first device address past the range."""
        return self.da + self.length

    def read(self) -> bytes:
        """A copy of the current contents (e.g. for a coredump)."""
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
        # in device addresses, so that alignment is of the device address
        self._allocator = RegionAllocator(pool.size, pool.da_base,
                                          what="the processor's memory")

    def alloc(self, name: str, size: int, align: int = PAGE_SIZE) -> Allocation:
        """Take the lowest free ``size`` bytes of the pool aligned to ``align`` (device address)."""
        try:
            return self._allocation(name, self._allocator.alloc(size, align), size)
        except (MemoryError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None

    def reserve(self, name: str, da: int, size: int) -> Allocation:
        """Take ``[da, da + size)`` of the pool, which must be free."""
        try:
            return self._allocation(name, self._allocator.reserve(da, size), size)
        except ValueError as exc:
            raise type(exc)(f"{name}: {exc}") from None

    def _allocation(self, name: str, da: int, size: int) -> Allocation:
        return Allocation(name, da, self.pool, da - self.pool.da_base, size)

    def internal_range(self, da: int, size: int) -> tuple[SharedRegion, int] | None:
        """The internal memory holding all of ``[da, da + size)``, and the offset there."""
        for region in self.internal:
            offset = da - region.da_base
            if 0 <= offset and offset + size <= region.size:
                return region, offset
        return None

    def close(self) -> None:
        """Release the pool and the internal memories."""
        for region in (self.pool, *self.internal):
            region.close()
