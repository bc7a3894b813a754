"""Simulated Apple RTKit co-processors: firmware behind a 64-bit mailbox, as child processes.

* :class:`RtkitRemoteProc`: the remoteproc lifecycle (boot, shutdown, crash, recovery,
  trace = syslog) over the RTKit protocol, with application endpoints.
* :class:`RtkitHost`: the host's RTKit runtime of one run (what the lifecycle drives).

The protocol itself is sans-IO in :mod:`amplink.rtkit`; the mailbox is
:mod:`amplink.transports.mailbox`; the firmware runtime :mod:`amplink.firmware.rtkit`
(which imports :mod:`.dma` and :mod:`.layout` from here, and nothing of the host side:
names are imported on first use). See docs/rtkit.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from .buffers import BufferService, HostBuffer, IovaHook, map_at_iova
    from .dma import DmaClient, DmaFault, DmaServer
    from .endpoints import RtkitEndpoint, SyslogRing
    from .rproc import RtkitImage, RtkitOps, RtkitOptions, RtkitRemoteProc
    from .runtime import ACK_TIMEOUT, RtkitHost, RtkitStatistics

_EXPORTS = {
    "BufferService": ".buffers",
    "HostBuffer": ".buffers",
    "IovaHook": ".buffers",
    "map_at_iova": ".buffers",
    "DmaClient": ".dma",
    "DmaFault": ".dma",
    "DmaServer": ".dma",
    "RtkitEndpoint": ".endpoints",
    "SyslogRing": ".endpoints",
    "RtkitImage": ".rproc",
    "RtkitOps": ".rproc",
    "RtkitOptions": ".rproc",
    "RtkitRemoteProc": ".rproc",
    "ACK_TIMEOUT": ".runtime",
    "RtkitHost": ".runtime",
    "RtkitStatistics": ".runtime",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ACK_TIMEOUT", "BufferService", "DmaClient", "DmaFault", "DmaServer", "HostBuffer",
    "IovaHook", "RtkitEndpoint", "RtkitHost", "RtkitImage", "RtkitOps", "RtkitOptions",
    "RtkitRemoteProc", "RtkitStatistics", "SyslogRing", "map_at_iova",
]
