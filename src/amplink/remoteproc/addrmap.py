"""Device address -> host memory translation through the carveouts of a remote processor.

Each window (an :class:`~.devmem.Allocation`) maps ``[da, da + length)`` of the remote's
address space onto ``[offset, offset + length)`` of a :class:`SharedRegion`. Windows
never overlap; a range translates only if it lies entirely inside one window.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from ..errors import AddressError, FirmwareError
from ..memory.region import SharedRegion
from .constants import FW_RSC_ADDR_ANY
from .devmem import Allocation
from .rsc_table import Carveout

_DA_LIMIT = 1 << 64


class DeviceAddressMap:
    """The set of device-address windows of one remote processor."""

    def __init__(self, windows: Iterable[Allocation] = ()) -> None:
        self._windows: list[Allocation] = []  # sorted by da
        for w in windows:
            self.add(w.da, w.length, w.region, w.offset, name=w.name)

    def add(
        self, da: int, length: int, region: SharedRegion, region_offset: int = 0, *, name: str = ""
    ) -> Allocation:
        """Map ``[da, da + length)`` to ``region`` at ``region_offset``.

        Raises :class:`AddressError` when the range is empty, exceeds 64 bits, is not
        inside the region, or overlaps an existing window.
        """
        if length <= 0 or da < 0 or da + length > _DA_LIMIT:
            raise AddressError(f"window 0x{da:x}+0x{length:x} is empty or exceeds 64 bits")
        region.check(region_offset, length)
        at = bisect.bisect_left([w.da for w in self._windows], da)
        for neighbour in self._windows[max(0, at - 1):at + 1]:
            if da < neighbour.end and neighbour.da < da + length:
                raise AddressError(
                    f"window 0x{da:x}+0x{length:x} overlaps "
                    f"0x{neighbour.da:x}+0x{neighbour.length:x}"
                )
        window = Allocation(name, da, region, region_offset, length)
        self._windows.insert(at, window)
        return window

    def add_carveout(
        self,
        carveout: Carveout,
        region: SharedRegion,
        region_offset: int | None = None,
        *,
        index: int | None = None,
    ) -> Allocation:
        """Map a carveout whose da (and pa, unless ``region_offset`` is given) are assigned.

        Without ``region_offset`` the carveout's pa is taken as an address in the region's
        own address space (``region.da_base + offset``). Raises :class:`FirmwareError`
        (naming the entry ``index`` if given) when the carveout cannot be mapped.
        """
        where = "carveout" if index is None else f"resource entry {index} (RSC_CARVEOUT)"
        where += f" {carveout.name!r}"
        if carveout.da == FW_RSC_ADDR_ANY:
            raise FirmwareError(f"{where}: field da is FW_RSC_ADDR_ANY; assign it before mapping")
        try:
            if region_offset is None:
                if carveout.pa == FW_RSC_ADDR_ANY:
                    raise AddressError("field pa is FW_RSC_ADDR_ANY; pass region_offset")
                region_offset = region.da_to_offset(carveout.pa, carveout.len)
            return self.add(carveout.da, carveout.len, region, region_offset, name=carveout.name)
        except AddressError as exc:
            raise FirmwareError(f"{where}: cannot map da 0x{carveout.da:x}: {exc}") from None

    def translate(self, da: int, length: int = 1) -> tuple[SharedRegion, int]:
        """The region and offset holding ``[da, da + length)``.

        Raises :class:`AddressError` unless the whole range lies inside one window.
        """
        if da < 0 or length < 0:
            raise AddressError(f"device range 0x{da:x}+0x{length:x} is negative")
        at = bisect.bisect_right([w.da for w in self._windows], da) - 1
        if at >= 0:
            w = self._windows[at]
            if da + length <= w.end:
                return w.region, w.offset + (da - w.da)
        raise AddressError(f"device range 0x{da:x}+0x{length:x} is not inside one carveout")

    @property
    def windows(self) -> tuple[Allocation, ...]:
        """All windows, sorted by device address."""
        return tuple(self._windows)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(self.windows)

    def __len__(self) -> int:
        return len(self._windows)
