"""The device half of a split virtqueue: take available buffers, return them used.

Everything the device reads was written by the driver, a peer it does not trust: each
head index, descriptor address, length and flag is checked before use, and a bad
buffer is handed straight back (used length 0) so the driver does not lose it.

:class:`PyDeviceQueue` is the pure-Python half; :data:`DeviceQueue` is the one in use:
the same state machine in C (``amplink._speedups``) when it is built, else that one.
"""

from __future__ import annotations

from .._accel import speedups
from ..errors import AddressError
from ..memory.fence import full_fence
from ..memory.region import SharedRegion
from .half import RingHalf
from .ring import (
    DESC,
    DESC_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    VringLayout,
    need_event,
)

_UNSUPPORTED_FLAGS = VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT


class PyDeviceQueue(RingHalf):
    """Device side of one split ring holding single-descriptor buffers (as rpmsg uses)."""

    def __init__(
        self,
        region: SharedRegion,
        layout: VringLayout,
        *,
        device_writes: bool,
        event_idx: bool = False,
        name: str = "vring",
    ) -> None:
        super().__init__(region, layout, f"{name} (device)")
        self.device_writes = device_writes
        self.event_idx = event_idx
        self._held = bytearray(layout.num)  # 1 while the device holds that head
        # 1 from a return with data until the driver offers that head again (consumed it)
        self._with_driver = bytearray(layout.num)
        self._last_avail = 0
        self._next_used = 0
        self._notify_checked_idx = 0
        self._notify_flags = 0

    def avail_pending(self) -> bool:
        return self._u16[self._avail_idx] != self._last_avail

    def pop_avail(self) -> tuple[int, int, int] | None:
        """Return ``(head, region_offset, length)`` of the next valid buffer, or None.

        Invalid entries are counted; those with a valid head go straight back as used
        with length 0, so a bounded number of entries (at most the ring size) is examined.
        """
        mm = self._mm
        u16 = self._u16
        avail_idx = u16[self._avail_idx]
        last = self._last_avail
        pending = (avail_idx - last) & 0xFFFF
        if not pending or self.broken is not None:
            return None
        if pending > self.num:
            # More buffers than descriptors: no working driver does this.
            self._break(f"avail.idx moved {pending} entries past a ring of {self.num}")
            return None
        held = self._held
        for _ in range(pending):
            head = u16[self._avail_ring + (last & self._mask)]
            last = (last + 1) & 0xFFFF
            self._last_avail = last
            if head >= self.num:
                self.faults("avail ring names a descriptor outside the table")
                continue
            if held[head]:
                self.faults("avail ring offers a descriptor the device already holds")
                continue
            held[head] = 1
            self._with_driver[head] = 0
            da, length, flags, _next = DESC.unpack_from(mm, self._desc + DESC_SIZE * head)
            if flags & _UNSUPPORTED_FLAGS:
                self.faults("chained or indirect descriptor (rpmsg uses single buffers)")
            elif bool(flags & VRING_DESC_F_WRITE) != self.device_writes:
                self.faults("descriptor WRITE flag does not match the queue direction")
            elif length == 0:
                self.faults("descriptor of length 0")
            else:
                try:
                    offset = self.region.da_to_offset(da, length)
                except AddressError:
                    self.faults("descriptor address outside shared memory")
                else:
                    return head, offset, length
            self.push_used(head, 0)
        return None

    def push_used(self, head: int, written: int) -> None:
        """Return a buffer taken with :meth:`pop_avail`; ``written`` = bytes the device wrote."""
        if not self._held[head]:
            raise ValueError(f"descriptor {head} is not held by the device")
        self._held[head] = 0
        if written:
            self._with_driver[head] = 1
        idx = self._next_used
        elem = self._used_ring + 2 * (idx & self._mask)
        self._u32[elem] = head
        self._u32[elem + 1] = written
        idx = (idx + 1) & 0xFFFF
        self._next_used = idx
        self._u16[self._used_idx] = idx  # after the entry (TSO keeps the order)

    def returned_unconsumed(self) -> int:
        """Buffers returned with data that the driver has not offered again (not consumed).

        Heads already offered again but not yet popped count as consumed.
        """
        with_driver = self._with_driver
        count = with_driver.count(1)
        last = self._last_avail
        pending = (self._u16[self._avail_idx] - last) & 0xFFFF
        if self.broken is not None or pending > self.num:
            return count
        offered = {self._u16[self._avail_ring + ((last + i) & self._mask)] for i in range(pending)}
        return count - sum(1 for head in offered if head < self.num and with_driver[head])

    def notify_needed(self) -> bool:
        """After returning buffers: True if the driver asked to be notified of them."""
        new = self._next_used
        old = self._notify_checked_idx
        if new == old:
            return False
        self._notify_checked_idx = new
        full_fence()  # our used.idx store must be visible before we read the driver's flag
        if self.event_idx:
            return need_event(self._u16[self._used_event], new, old)
        return not (self._u16[self._avail_flags] & VRING_AVAIL_F_NO_INTERRUPT)

    def enable_notify(self) -> bool:
        """Ask the driver to kick on new buffers; True if some arrived meanwhile."""
        if self.event_idx:
            self._u16[self._avail_event] = self._last_avail
        if self._notify_flags:
            self._notify_flags = 0
            self._u16[self._used_flags] = 0
        full_fence()  # publish the request before re-checking the ring
        return self.avail_pending()

    def disable_notify(self) -> None:
        """Tell the driver that kicks are not needed (a hint)."""
        if not self._notify_flags:
            self._notify_flags = VRING_USED_F_NO_NOTIFY
            self._u16[self._used_flags] = VRING_USED_F_NO_NOTIFY
        if self.event_idx:
            self._u16[self._avail_event] = (self._last_avail - 0x8000) & 0xFFFF

    @property
    def last_avail(self) -> int:
        """The free-running index of the next avail entry the device will read."""
        return self._last_avail

    def start_at(self, last_avail: int) -> None:
        """Continue a ring from a position another device instance reached.

        For vhost-user's SET_VRING_BASE: the device reads avail entries from
        ``last_avail`` on and continues the used ring from its index in memory. Call it
        before the first :meth:`pop_avail`.
        """
        if not 0 <= last_avail <= 0xFFFF:
            raise ValueError(f"a ring index is 16 bits, got {last_avail}")
        self._last_avail = last_avail
        self._next_used = self._notify_checked_idx = self._u16[self._used_idx]


#: the device half in use: C when ``amplink._speedups`` is there (see :mod:`amplink._accel`)
DeviceQueue: type[PyDeviceQueue] = PyDeviceQueue

if speedups is not None:
    from .._speedups import DeviceRing

    class CDeviceQueue(DeviceRing, PyDeviceQueue):
        """:class:`PyDeviceQueue` with its state and every operation in C."""

        def __init__(self, region: SharedRegion, layout: VringLayout, *, device_writes: bool,
                     event_idx: bool = False, name: str = "vring") -> None:
            RingHalf.__init__(self, region, layout, f"{name} (device)")
            DeviceRing.__init__(self, region.mm, layout.desc, layout.avail, layout.used,
                                layout.num, layout.end, region.da_base, region.size,
                                device_writes, event_idx)

    DeviceQueue = CDeviceQueue
