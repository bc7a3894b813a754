"""Intel Keem Bay IPC over shared memory: header pools, FIFOs, HS/GP channels.

Two nodes (CPU 0, VPU 1) on one link; each owns a pool of 64-byte IPC headers, and a
128-entry FIFO receives header addresses. Channels 0..1023 (0..9 high-speed) are both
ends of a message. Payloads live in the link's shared memory: small ones inline in the
header's slot, any size by reference in a shared buffer of the link's heap.
See docs/keembay.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .backend import KeemBayBackend
    from .errors import (
        BadDataAddress,
        ChannelAlreadyOpen,
        ChannelClosed,
        FifoBusy,
        LinkTornDown,
        MisalignedData,
        NoFreeHeader,
        RecvTimeout,
    )
    from .layout import KmbLayout
    from .link import KeemBayPair, KmbConfig, cpu_link, heap, vpu_link, wait_peer_channel
    from .reference import KmbReference
    from .wire import KMB_IPC_NUM_HS_CHANNELS, NODE_CPU, NODE_VPU

_EXPORTS = {
    "KeemBayBackend": ".backend",
    "BadDataAddress": ".errors",
    "ChannelAlreadyOpen": ".errors",
    "ChannelClosed": ".errors",
    "FifoBusy": ".errors",
    "LinkTornDown": ".errors",
    "MisalignedData": ".errors",
    "NoFreeHeader": ".errors",
    "RecvTimeout": ".errors",
    "KmbLayout": ".layout",
    "KeemBayPair": ".link",
    "KmbConfig": ".link",
    "cpu_link": ".link",
    "heap": ".link",
    "vpu_link": ".link",
    "wait_peer_channel": ".link",
    "KmbReference": ".reference",
    "KMB_IPC_NUM_HS_CHANNELS": ".wire",
    "NODE_CPU": ".wire",
    "NODE_VPU": ".wire",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "BadDataAddress",
    "ChannelAlreadyOpen",
    "ChannelClosed",
    "FifoBusy",
    "KMB_IPC_NUM_HS_CHANNELS",
    "KeemBayBackend",
    "KeemBayPair",
    "KmbConfig",
    "KmbLayout",
    "KmbReference",
    "LinkTornDown",
    "MisalignedData",
    "NODE_CPU",
    "NODE_VPU",
    "NoFreeHeader",
    "RecvTimeout",
    "cpu_link",
    "heap",
    "vpu_link",
    "wait_peer_channel",
]
