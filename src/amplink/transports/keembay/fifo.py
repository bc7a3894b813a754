"""A node's hardware FIFO, modelled in shared memory: 128 entries of 32 bits, one writer
(the peer) and one reader (the owner).

The control block holds the write index (the writer's), the read index (the reader's),
the overflow flag (set by a writer whose write found the FIFO full, cleared by the
reader), the "not empty" interrupt enable (the reader's: set while it sleeps) and "room
wanted" (set by a writer that waits for room, cleared by the reader, which then rings
it). Both indices run free over 32 bits; each side keeps its own in a private shadow and
reads the other's as untrusted: a distance of more than 128 is a fault, never an index.

"Room wanted" is amplink's: the driver's sender was never told and retried; here a
sender waiting for room in the FIFO is rung as soon as the reader took entries out
(freed headers it still finds by looking).
"""

from __future__ import annotations

from ...memory.fence import full_fence
from ...memory.region import SharedRegion
from .layout import FIFO_ENTRIES, FIFO_IRQ, FIFO_OVERFLOW, FIFO_RD, FIFO_ROOM, FIFO_WR
from .wire import KMB_IPC_FIFO_DEPTH, KMB_IPC_NUM_TX_QUEUES

_MASK = 0xFFFF_FFFF
_DEPTH = KMB_IPC_FIFO_DEPTH


class _Fifo:
    def __init__(self, region: SharedRegion, offset: int) -> None:
        region.check(offset, FIFO_ENTRIES + 4 * _DEPTH)
        if offset % 4:
            raise ValueError(f"a FIFO must be 4-byte aligned, got offset 0x{offset:x}")
        self._u32 = region.u32
        base = offset // 4
        self._wr = base + FIFO_WR // 4
        self._rd = base + FIFO_RD // 4
        self._overflow = base + FIFO_OVERFLOW // 4
        self._irq = base + FIFO_IRQ // 4
        self._room = base + FIFO_ROOM // 4
        self._entries = base + FIFO_ENTRIES // 4


class FifoWriter(_Fifo):
    """The peer's FIFO as its writer sees it. Remembers which transmit queue each entry
    it wrote came from, to tell how many entries of each queue are still in the FIFO."""

    def __init__(self, region: SharedRegion, offset: int) -> None:
        super().__init__(region, offset)
        self._w = self._u32[self._wr]  # ours: the reset FIFO's, or where a restart left it
        self._seen_r = self._w  # the read index as last seen
        self._queue_of = bytearray(_DEPTH)  # per FIFO position
        self.in_fifo = [0] * KMB_IPC_NUM_TX_QUEUES  # entries of each queue not yet read
        #: the reader's index was found more than a FIFO away from ours
        self.bad_read_index = 0

    def room(self) -> int:
        """Free entries now (0 while the reader's index makes no sense)."""
        r = self._u32[self._rd]
        if r != self._seen_r:
            popped = (r - self._seen_r) & _MASK
            if popped > ((self._w - self._seen_r) & _MASK):
                self.bad_read_index += 1
                return 0  # ahead of what was written: trust nothing of it
            queue_of, in_fifo = self._queue_of, self.in_fifo
            seen = self._seen_r
            for k in range(popped):
                in_fifo[queue_of[(seen + k) % _DEPTH]] -= 1
            self._seen_r = r
        return _DEPTH - ((self._w - r) & _MASK)

    def put(self, entry: int, queue: int) -> None:
        """Write one entry (from transmit queue ``queue``); the caller saw :meth:`room`."""
        w = self._w
        self._u32[self._entries + w % _DEPTH] = entry
        self._queue_of[w % _DEPTH] = queue
        self.in_fifo[queue] += 1
        self._w = w = (w + 1) & _MASK
        self._u32[self._wr] = w  # the entry is visible before the index (x86 store order)

    def overflow(self) -> None:
        """A write found the FIFO full: the hardware drops it and sets the overflow flag."""
        self._u32[self._overflow] = 1

    def irq_enabled(self) -> bool:
        """Whether the reader asked for the "not empty" interrupt (after a full fence:
        our index store must be visible before we read its flag)."""
        full_fence()
        return self._u32[self._irq] != 0

    def want_room(self) -> None:
        """Ask the reader to ring us when it has taken entries out."""
        self._u32[self._room] = 1
        full_fence()  # the request is visible before we look at the read index again


class FifoReader(_Fifo):
    """A node's own FIFO as its reader sees it."""

    def __init__(self, region: SharedRegion, offset: int) -> None:
        super().__init__(region, offset)
        self._r = self._u32[self._rd]
        #: the writer's index was found more than a FIFO ahead (the entries were skipped)
        self.bad_write_index = 0
        #: times the overflow flag was found set (writes the hardware dropped)
        self.overflows = 0

    def pending(self) -> bool:
        return self._u32[self._wr] != self._r

    def pop(self, budget: int) -> list[int]:
        """Up to ``budget`` entries, oldest first, taken out of the FIFO."""
        u32 = self._u32
        if u32[self._overflow]:
            u32[self._overflow] = 0
            self.overflows += 1
        w = u32[self._wr]
        r = self._r
        count = (w - r) & _MASK
        if count > _DEPTH:
            self.bad_write_index += 1
            self._r = w  # what lies between is no sequence of entries: skip it
            u32[self._rd] = w
            return []
        count = min(count, budget)
        if not count:
            return []
        start = self._entries + r % _DEPTH
        first = min(count, _DEPTH - r % _DEPTH)
        entries = u32[start:start + first].tolist()
        if first < count:
            entries += u32[self._entries:self._entries + count - first].tolist()
        self._r = (r + count) & _MASK
        u32[self._rd] = self._r
        return entries

    def room_wanted(self) -> bool:
        """Whether the writer waits for room (the request is cleared: ring it once)."""
        if not self._u32[self._room]:
            return False
        self._u32[self._room] = 0
        return True

    def arm(self) -> bool:
        """Ask for the "not empty" interrupt; True if entries are waiting already."""
        self._u32[self._irq] = 1
        full_fence()  # the request is visible before we look again
        return self.pending()

    def disarm(self) -> None:
        self._u32[self._irq] = 0
