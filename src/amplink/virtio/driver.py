"""The driver half of a split virtqueue: post buffers, reclaim the used ones.

The driver never trusts the shared copies of its own state: descriptor contents,
``avail.idx`` and the tokens of outstanding buffers live in private shadows, and every
``used`` entry is checked against them.

:class:`PyDriverQueue` is the pure-Python half; :data:`DriverQueue` is the one in use:
the same state machine in C (``amplink._speedups``) when it is built, else that one.
"""

from __future__ import annotations

from typing import Any

from .._accel import speedups
from ..memory.fence import full_fence
from ..memory.region import SharedRegion
from .half import RingHalf
from .ring import (
    DESC,
    DESC_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    VringLayout,
    need_event,
)


class PyDriverQueue(RingHalf):
    """Driver side of one split ring: ``add`` buffers, ``pop_used`` them back."""

    def __init__(
        self,
        region: SharedRegion,
        layout: VringLayout,
        *,
        event_idx: bool = False,
        name: str = "vring",
    ) -> None:
        super().__init__(region, layout, f"{name} (driver)")
        self.event_idx = event_idx
        self._free: list[int] = list(range(layout.num - 1, -1, -1))
        self._tokens: list[Any] = [None] * layout.num
        self._lengths: list[int] = [0] * layout.num
        # per head: 0 free, 1 added but not yet published, 2 published (the device's)
        self._state = bytearray(layout.num)
        self._unpublished: list[int] = []
        self._next_avail = 0
        self._kick_checked_idx = 0
        self._last_used = 0
        self._irq_flags = 0

    def reset(self) -> None:
        """Zero the whole ring in shared memory (the driver owns its initial state)."""
        self.region.fill(self.layout.base, self.layout.size)
        self._free = list(range(self.num - 1, -1, -1))
        self._tokens = [None] * self.num
        self._lengths = [0] * self.num
        self._state = bytearray(self.num)
        self._unpublished = []
        self._next_avail = self._kick_checked_idx = self._last_used = 0
        self._irq_flags = 0
        self.broken = None

    # -- posting --
    @property
    def free_count(self) -> int:
        return len(self._free)

    def add(self, da: int, length: int, token: Any, *, writable: bool = False) -> None:
        """Post one buffer; it becomes visible to the device only at :meth:`publish`.

        Raises IndexError when every descriptor is outstanding (check ``free_count``).
        """
        if token is None:
            raise ValueError("token must not be None")
        head = self._free.pop()
        DESC.pack_into(self._mm, self._desc + DESC_SIZE * head, da, length,
                       VRING_DESC_F_WRITE if writable else 0, 0)
        self._tokens[head] = token
        self._lengths[head] = length
        self._state[head] = 1
        self._unpublished.append(head)
        self._u16[self._avail_ring + (self._next_avail & self._mask)] = head
        self._next_avail = (self._next_avail + 1) & 0xFFFF

    def publish(self) -> bool:
        """Make added buffers visible; return True if the device asked to be kicked."""
        new = self._next_avail
        # Ring entries were stored before; the index store comes after them (TSO keeps order).
        self._u16[self._avail_idx] = new
        if self._unpublished:
            state = self._state
            for head in self._unpublished:
                state[head] = 2
            self._unpublished.clear()
        old = self._kick_checked_idx
        if new == old:
            return False
        self._kick_checked_idx = new
        full_fence()  # our index store must be visible before we read the device's flag
        if self.event_idx:
            return need_event(self._u16[self._avail_event], new, old)
        return not (self._u16[self._used_flags] & VRING_USED_F_NO_NOTIFY)

    # -- reclaiming --
    def used_pending(self) -> bool:
        return self._u16[self._used_idx] != self._last_used

    def pop_used(self) -> tuple[Any, int] | None:
        """Return ``(token, used_len)`` of the next used buffer, or None.

        Entries that name no buffer the device holds are counted as faults and skipped;
        the number examined per call is bounded by the ring size. A used index more than
        a ring ahead cannot happen in a working device: the ring is marked broken.
        """
        used_idx = self._u16[self._used_idx]
        last = self._last_used
        pending = (used_idx - last) & 0xFFFF
        if not pending or self.broken is not None:
            return None
        if pending > self.num:
            self._break(f"used.idx moved {pending} entries past a ring of {self.num}")
            return None
        tokens = self._tokens
        state = self._state
        u32 = self._u32
        for _ in range(pending):
            elem = self._used_ring + 2 * (last & self._mask)
            head = u32[elem]
            used_len = u32[elem + 1]
            last = (last + 1) & 0xFFFF
            self._last_used = last
            if head >= self.num or state[head] != 2:
                self.faults("used.id names no buffer the device holds")
                continue
            token = tokens[head]
            tokens[head] = None
            state[head] = 0
            self._free.append(head)
            if used_len > self._lengths[head]:
                self.faults("used.len exceeds the buffer's length")
                used_len = self._lengths[head]
            return token, used_len
        return None

    def outstanding(self) -> int:
        """Buffers published to the device that it has not returned.

        A buffer in the used ring counts as returned even before :meth:`pop_used` takes it.
        """
        held = self._state.count(2)
        pending = (self._u16[self._used_idx] - self._last_used) & 0xFFFF
        if self.broken is not None or pending > self.num:
            return held
        return max(0, held - pending)

    # -- notifications from the device --
    def enable_interrupts(self) -> bool:
        """Ask to be notified of new used buffers; True if some arrived meanwhile."""
        if self.event_idx:
            self._u16[self._used_event] = self._last_used
        if self._irq_flags:
            self._irq_flags = 0
            self._u16[self._avail_flags] = 0
        full_fence()  # publish the request before re-checking the ring
        return self.used_pending()

    def disable_interrupts(self) -> None:
        """Tell the device that notifications are not needed (a hint)."""
        if not self._irq_flags:
            self._irq_flags = VRING_AVAIL_F_NO_INTERRUPT
            self._u16[self._avail_flags] = VRING_AVAIL_F_NO_INTERRUPT
        if self.event_idx:
            # Park the event index half the index space away so the device's test stays false.
            self._u16[self._used_event] = (self._last_used - 0x8000) & 0xFFFF


#: the driver half in use: C when ``amplink._speedups`` is there (see :mod:`amplink._accel`)
DriverQueue: type[PyDriverQueue] = PyDriverQueue

if speedups is not None:
    from .._speedups import DriverRing

    class CDriverQueue(DriverRing, PyDriverQueue):
        """:class:`PyDriverQueue` with its state and every operation in C."""

        def __init__(self, region: SharedRegion, layout: VringLayout, *,
                     event_idx: bool = False, name: str = "vring") -> None:
            RingHalf.__init__(self, region, layout, f"{name} (driver)")
            DriverRing.__init__(self, region.mm, layout.desc, layout.avail, layout.used,
                                layout.num, layout.end, event_idx)

    DriverQueue = CDriverQueue
