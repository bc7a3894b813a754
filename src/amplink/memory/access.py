"""Access directions, shared by CPU access brackets and device attachments.

The values are both libmetal's shared-memory directions (device reads = 1, device
writes = 2, both = 3) and dma-buf's CPU sync flags (``DMA_BUF_SYNC_READ`` = 1,
``DMA_BUF_SYNC_WRITE`` = 2, ``DMA_BUF_SYNC_RW`` = 3): each says what the accessor, the
device or the CPU, does to the memory.
"""

from __future__ import annotations

import enum

from ..errors import InvalidArgument, InvalidArgumentType


class Access(enum.IntFlag):
    """What an accessor does to a buffer: read it, write it, or both."""

    READ = 1
    WRITE = 2
    READ_WRITE = 3


# by value: a lookup instead of an enum call (brackets are on the hot path)
_BY_VALUE = {a.value: a for a in (Access.READ, Access.WRITE, Access.READ_WRITE)}


def checked_access(value: object, name: str = "access") -> Access:
    """``value`` as an :class:`Access` if it is 1, 2 or 3; else :class:`InvalidArgument`
    (:class:`InvalidArgumentType` for a value that is not an int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{name} must be an Access (an int), got "
                                  f"{type(value).__name__} {value!r}")
    if 1 <= value <= 3:
        return _BY_VALUE[value]
    raise InvalidArgument(f"{name} must be READ (1), WRITE (2) or READ_WRITE (3), got {value!r}")
