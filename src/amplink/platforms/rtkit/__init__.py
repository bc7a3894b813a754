"""Simulated Apple RTKit co-processors: firmware behind a 64-bit mailbox, as child processes.

* :class:`RtkitRemoteProc`: the remoteproc lifecycle (boot, shutdown, crash, recovery,
  trace = syslog) over the RTKit protocol, with application endpoints.
* :class:`RtkitHost`: the host's RTKit runtime of one run (what the lifecycle drives).

The protocol itself is sans-IO in :mod:`amplink.rtkit`; the mailbox is
:mod:`amplink.transports.mailbox`; the firmware runtime :mod:`amplink.firmware.rtkit`.
See docs/rtkit.md.
"""

from .buffers import BufferService, HostBuffer, IovaHook, map_at_iova
from .dma import DmaClient, DmaFault, DmaServer
from .endpoints import RtkitEndpoint, SyslogRing
from .rproc import RtkitImage, RtkitOps, RtkitOptions, RtkitRemoteProc
from .runtime import ACK_TIMEOUT, RtkitHost, RtkitStatistics

__all__ = [
    "ACK_TIMEOUT", "BufferService", "DmaClient", "DmaFault", "DmaServer", "HostBuffer",
    "IovaHook", "RtkitEndpoint", "RtkitHost", "RtkitImage", "RtkitOps", "RtkitOptions",
    "RtkitRemoteProc", "RtkitStatistics", "SyslogRing", "map_at_iova",
]
