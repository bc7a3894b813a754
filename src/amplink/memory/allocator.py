"""A first-fit allocator that carves aligned blocks (vrings, buffer pools) out of a region."""

from __future__ import annotations

from ..errors import AddressError


def align_up(value: int, align: int) -> int:
    """Round ``value`` up to a multiple of ``align`` (a power of two)."""
    if align <= 0 or align & (align - 1):
        raise ValueError(f"alignment must be a power of two, got {align}")
    return (value + align - 1) & -align


class RegionAllocator:
    """Hands out non-overlapping ``[offset, offset + size)`` blocks of ``[base, base + size)``.

    Blocks are taken first fit (:meth:`alloc`: the lowest aligned free range) or at a
    fixed place (:meth:`reserve`). ``what`` names the managed range in error messages.
    """

    def __init__(self, size: int, base: int = 0, *, what: str = "the region") -> None:
        if size <= 0 or base < 0:
            raise ValueError("allocator needs a positive size and a non-negative base")
        self.base = base
        self.size = size
        self.what = what
        self._free: list[tuple[int, int]] = [(base, size)]  # sorted (start, length)
        self._used: dict[int, int] = {}

    def alloc(self, size: int, align: int = 8) -> int:
        """Return the offset of a new block; raises MemoryError when nothing fits."""
        if size <= 0:
            raise ValueError(f"allocation size must be positive, got {size}")
        for i, (start, length) in enumerate(self._free):
            offset = align_up(start, align)
            if offset + size <= start + length:
                self._split(i, offset, size)
                return offset
        raise MemoryError(
            f"no room for 0x{size:x} bytes aligned to 0x{align:x} in {self.what} "
            f"(0x{self.size:x} bytes, 0x{self.used_bytes:x} in use)"
        )

    def reserve(self, offset: int, size: int) -> int:
        """Take ``[offset, offset + size)``, which must be free; returns ``offset``.

        Raises :class:`AddressError` when the range is outside the managed one or
        overlaps a block in use.
        """
        if size <= 0:
            raise ValueError(f"allocation size must be positive, got {size}")
        if offset < self.base or offset + size > self.base + self.size:
            raise AddressError(
                f"0x{offset:x}+0x{size:x} is outside {self.what} "
                f"[0x{self.base:x}, 0x{self.base + self.size:x})"
            )
        for i, (start, length) in enumerate(self._free):
            if start <= offset and offset + size <= start + length:
                self._split(i, offset, size)
                return offset
        start = min(s for s, n in self._used.items() if s < offset + size and offset < s + n)
        raise AddressError(
            f"0x{offset:x}+0x{size:x} overlaps memory already in use at "
            f"0x{start:x}+0x{self._used[start]:x}"
        )

    def _split(self, index: int, offset: int, size: int) -> None:
        """Take ``[offset, offset + size)`` out of free block ``index``, which holds it."""
        start, length = self._free[index]
        end = offset + size
        pieces = []
        if offset > start:
            pieces.append((start, offset - start))
        if end < start + length:
            pieces.append((end, start + length - end))
        self._free[index:index + 1] = pieces
        self._used[offset] = size

    def free(self, offset: int) -> None:
        """Return a block obtained from :meth:`alloc` or :meth:`reserve`."""
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
