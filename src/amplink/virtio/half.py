"""What the driver and device halves of a split ring share: field indices, breaking."""

from __future__ import annotations

from collections.abc import Callable

from ..memory.region import SharedRegion
from .faults import FaultCounter
from .ring import VringLayout


class RingHalf:
    """One side's view of a ring in ``region``: typed views and indices of its fields.

    Fields the peer reads while we write them go through the region's u16/u32 views
    (one machine store each); the indices below address those views.
    """

    def __init__(self, region: SharedRegion, layout: VringLayout, where: str) -> None:
        region.check(layout.base, layout.size)
        if layout.desc % 4 or layout.used % 4:
            raise ValueError(f"vring at 0x{layout.base:x}: its fields are read as aligned u16 "
                             "and u32: the descriptor table and the used ring must be 4-byte "
                             "aligned")
        self.region = region
        self.layout = layout
        self.num = layout.num
        self.faults = FaultCounter(where)
        self._mm = region.mm
        self._u16 = region.u16
        self._u32 = region.u32
        self._mask = layout.num - 1
        self._desc = layout.desc
        # every offset is suitably aligned (checked where a peer's layout is accepted)
        self._avail_flags = layout.avail >> 1
        self._avail_idx = layout.avail + 2 >> 1
        self._avail_ring = layout.avail_ring >> 1
        self._used_event = layout.used_event >> 1
        self._used_flags = layout.used >> 1
        self._used_idx = layout.used + 2 >> 1
        self._used_ring = layout.used_ring >> 2
        self._avail_event = layout.avail_event >> 1
        #: why the ring is unusable (the peer broke the protocol beyond repair), or None
        self.broken: str | None = None
        #: called once with the reason when the ring breaks
        self.on_broken: Callable[[str], None] | None = None

    def _break(self, reason: str) -> None:
        self.faults(reason)
        self.broken = reason
        if self.on_broken is not None:
            self.on_broken(reason)
