"""A first-fit allocator that carves aligned blocks (vrings, buffer pools) out of a region."""

from __future__ import annotations

from ..errors import AddressError


def align_up(value: int, align: int) -> int:
    """Round ``value`` up to a multiple of ``align`` (a power of two)."""
    if align <= 0 or align & (align - 1):
        raise ValueError(f"alignment must be a power of two, got {align}")
    return (value + align - 1) & -align


class RegionAllocator:
    """Hands out non-overlapping ``[offset, offset + size)`` blocks of ``[base, base + size)``."""

    def __init__(self, size: int, base: int = 0) -> None:
        if size <= 0 or base < 0:
            raise ValueError("allocator needs a positive size and a non-negative base")
        self.base = base
        self.size = size
        self._free: list[tuple[int, int]] = [(base, size)]  # sorted (start, length)
        self._used: dict[int, int] = {}

    def alloc(self, size: int, align: int = 8) -> int:
        """Return the offset of a new block; raises MemoryError when nothing fits."""
        if size <= 0:
            raise ValueError(f"allocation size must be positive, got {size}")
        for i, (start, length) in enumerate(self._free):
            offset = align_up(start, align)
            end = offset + size
            if end <= start + length:
                pieces = []
                if offset > start:
                    pieces.append((start, offset - start))
                if end < start + length:
                    pieces.append((end, start + length - end))
                self._free[i:i + 1] = pieces
                self._used[offset] = size
                return offset
        raise MemoryError(f"no free block of {size} bytes aligned to {align} in the region")

    def free(self, offset: int) -> None:
        """Return a block obtained from :meth:`alloc`."""
        try:
            size = self._used.pop(offset)
        except KeyError:
            raise AddressError(f"0x{offset:x} is not an allocated block") from None
        self._free.append((offset, size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for start, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self._free = merged

    @property
    def used_bytes(self) -> int:
        return sum(self._used.values())
