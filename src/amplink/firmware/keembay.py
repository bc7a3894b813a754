"""The firmware side of Keem Bay IPC: the VPU node.

Keem Bay firmware declares its IPC area in its resource table, and gets the VPU's link
from :func:`amplink.firmware.connect` (``python -m amplink.firmware`` does it) like any
firmware::

    from amplink.firmware.keembay import resource_table

    RESOURCE_TABLE = resource_table(heap_size=8 << 20)

    def main(link):
        control = link.create_endpoint(addr=0)       # an HS channel: open it first
        frames = link.create_endpoint(addr=10, hold=True)
        ...

Channels are static: open them before the host sends on them (messages for a channel
that is not open are dropped), or let the host wait for them
(:func:`amplink.transports.keembay.wait_peer_channel`).
"""

from __future__ import annotations

from ..errors import AddressError, RemoteProtocolError
from ..link.runtime import Link
from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell
from ..platforms.sim_abi import KEEMBAY_CARVEOUT
from ..remoteproc.constants import FW_RSC_ADDR_ANY
from ..remoteproc.rsc_table import Carveout, Resource, ResourceTable, Trace, VdevEntry
from ..transports.keembay.layout import KmbLayout
from ..transports.keembay.link import KmbConfig, vpu_link
from ..virtio.vdev import VIRTIO_ID_RPMSG
from .device import Device

#: how long the firmware waits for the host to bring the IPC area up
HOST_UP_TIMEOUT = 20.0


def resource_table(*, heap_size: int = 1 << 20, headers: int = KmbConfig.headers,
                   slot_size: int = KmbConfig.slot_size, trace: int = 0) -> ResourceTable:
    """A table with the IPC area (the Keem Bay carveout), sized for heaps of at least
    ``heap_size`` bytes per node with the host's ``headers`` and ``slot_size``, and a
    trace buffer of ``trace`` bytes if not 0."""
    size = KmbLayout.needed(headers, slot_size, heap_size)
    entries: list[Resource] = [
        Carveout(FW_RSC_ADDR_ANY, FW_RSC_ADDR_ANY, size, name=KEEMBAY_CARVEOUT)]
    if trace:
        entries.append(Trace(FW_RSC_ADDR_ANY, trace, name="trace0"))
    return ResourceTable(entries)


def ipc_area(table: ResourceTable) -> Carveout | None:
    """The Keem Bay carveout of a processed table (None: this firmware is not Keem Bay's)."""
    for _, entry in table.items(Carveout):
        if entry.name == KEEMBAY_CARVEOUT:
            return entry
    return None


def doorbell_index(table: ResourceTable) -> int:
    """Which doorbell pair serves the IPC: the one after the rpmsg vdevs' pairs."""
    return sum(1 for _, entry in table.items(VdevEntry) if entry.id == VIRTIO_ID_RPMSG)


def vpu_connect(region: SharedRegion, dev: Device, area: Carveout, doorbell: Doorbell, *,
                name: str, poll_mode: bool, spin: float) -> Link:
    """The VPU's link over the IPC area ``area`` (its da and size the host processed: an
    area outside the memory is a RemoteProtocolError from the region's checks)."""
    try:
        offset = region.da_to_offset(area.da, area.len)
    except AddressError as exc:
        doorbell.close()
        raise RemoteProtocolError(f"carveout {KEEMBAY_CARVEOUT!r}: {exc}") from None
    return vpu_link(region, area.da, area.len, doorbell, offset=offset, name=name,
                    timeout=HOST_UP_TIMEOUT, owned=[dev], poll_mode=poll_mode, spin=spin,
                    dispatch="caller")
