"""A node's pool of IPC headers, as its owner (the sender) uses it.

The sender takes the first FREE header round-robin from the one after its last, marks
it ALLOCATED and, once the message is on its way, leaves it to the peer, which marks it
FREE when it has processed the message. The sender is never told: it finds the header
FREE on a later scan. Statuses are read in one strided slice of the pool (one byte per
64), so a scan is one C-level copy and search, not a loop over headers.
"""

from __future__ import annotations

from ...memory.region import SharedRegion
from .layout import KmbLayout
from .wire import IPC_BUF_ALLOCATED, IPC_BUF_FREE, KMB_IPC_ALIGNMENT, STATUS_OFFSET

_FREE = bytes([IPC_BUF_FREE])


class HeaderPool:
    """``layout.headers`` headers of node ``node`` in ``region``."""

    def __init__(self, region: SharedRegion, layout: KmbLayout, node: int) -> None:
        self.count = layout.headers
        self._mm = region.mm
        self.base = layout.nodes[node].pool
        region.check(self.base, self.count * KMB_IPC_ALIGNMENT)
        self._status0 = self.base + STATUS_OFFSET
        self._status_end = self._status0 + self.count * KMB_IPC_ALIGNMENT
        self._next = 0
        #: headers this side holds although their status may read FREE (loaned ones: a
        #: peer that frees what it never got must not make us hand them out twice)
        self.held: set[int] = set()

    def statuses(self) -> bytes:
        """One status byte per header."""
        return self._mm[self._status0:self._status_end:KMB_IPC_ALIGNMENT]

    def status(self, index: int) -> int:
        return self._mm[self._status0 + index * KMB_IPC_ALIGNMENT]

    def take(self) -> int | None:
        """The first FREE header from the one after the last taken, marked ALLOCATED;
        None if there is none."""
        i = self._next
        mm = self._mm
        at = self._status0 + i * KMB_IPC_ALIGNMENT
        if mm[at] != IPC_BUF_FREE or i in self.held:  # the common case needs no scan
            found = self._scan(i)
            if found is None:
                return None
            i = found
            at = self._status0 + i * KMB_IPC_ALIGNMENT
        mm[at] = IPC_BUF_ALLOCATED
        self._next = i + 1 if i + 1 < self.count else 0
        return i

    def _scan(self, start: int) -> int | None:
        statuses = self.statuses()
        held = self.held
        for lo, hi in ((start, self.count), (0, start)):
            i = statuses.find(_FREE, lo, hi)
            while i >= 0:
                if i not in held:
                    return i
                i = statuses.find(_FREE, i + 1, hi)
        return None

    def free(self, index: int) -> None:
        """Give a header back unsent (a loan dropped, a send refused)."""
        self._mm[self._status0 + index * KMB_IPC_ALIGNMENT] = IPC_BUF_FREE

    def allocated(self) -> int:
        """Headers not FREE now."""
        return self.count - self.statuses().count(_FREE)
