"""Large data by reference on any endpoint: hand-over of shared buffers (SEND / DONE),
large messages through a shared block pool, and the buffer socket that attaches buffers
to a simulated processor. The wire format is in :mod:`.wire` and ``docs/large-data.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .channel import (
        BufferChannel,
        BufferChannelStatistics,
        BufferImporter,
        ReceivedBuffer,
        Returned,
    )
    from .mapped import DeviceBuffers
    from .port import AttachedBuffer, BufferPort
    from .wire import HandoverFault, RecordType

_EXPORTS = {
    "BufferChannel": ".channel",
    "BufferChannelStatistics": ".channel",
    "BufferImporter": ".channel",
    "ReceivedBuffer": ".channel",
    "Returned": ".channel",
    "DeviceBuffers": ".mapped",
    "AttachedBuffer": ".port",
    "BufferPort": ".port",
    "HandoverFault": ".wire",
    "RecordType": ".wire",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "AttachedBuffer", "BufferChannel", "BufferChannelStatistics", "BufferImporter",
    "BufferPort", "DeviceBuffers", "HandoverFault", "ReceivedBuffer", "RecordType", "Returned",
]
