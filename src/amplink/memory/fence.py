"""A full memory fence (store-load barrier) reachable from pure Python.

Publishing "I am about to sleep" and then re-checking the ring needs the store to be
visible before the load; x86's total store order does not give that and CPython has no
fence primitive. Acquiring and releasing an uncontended ``threading.Lock`` executes
atomic read-modify-write instructions (``lock``-prefixed on x86), each a full fence.
"""

from __future__ import annotations

import threading

_fence_lock = threading.Lock()
_acquire = _fence_lock.acquire
_release = _fence_lock.release


def full_fence() -> None:
    """Order every earlier load and store before every later one (x86: a locked RMW)."""
    _acquire()
    _release()
