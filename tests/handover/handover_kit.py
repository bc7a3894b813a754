"""Both ends of a buffer channel in one process: a LinkPair, a port and DeviceBuffers,
and a carveout of the "processor's" own memory (the host's port sees it, the device side
allocates from it)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from amplink.handover import BufferPort, DeviceBuffers
from amplink.link.endpoint import Endpoint
from amplink.memory import CarveoutProvider, Iommu, SharedRegion
from amplink.platforms.inprocess import LinkPair
from amplink.remoteproc.devmem import Allocation

WINDOW = 0x1_0000_0000
#: the device address of the carveout, and its size
CARVEOUT_DA = 0x9000_0000
CARVEOUT_SIZE = 1 << 20


@dataclass
class Pair:
    links: LinkPair
    port: BufferPort
    device: DeviceBuffers
    host_ep: Endpoint
    device_ep: Endpoint
    faults: list
    #: the device side's own memory (a carveout the port knows)
    carveout: CarveoutProvider


@contextmanager
def pair(service: str = "buffers") -> Iterator[Pair]:
    links = LinkPair.create()
    host_sock, device_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    faults: list = []
    iommu = Iommu("dev0", WINDOW, 1 << 32)
    own = SharedRegion.memfd(CARVEOUT_SIZE, "handover-carveout", da_base=CARVEOUT_DA)
    port = BufferPort("dev0", host_sock, iommu, on_fault=faults.append,
                      memory=[Allocation("own", CARVEOUT_DA, own, 0, CARVEOUT_SIZE)])
    device = DeviceBuffers(device_sock, "dev0")
    carveout = CarveoutProvider(own, 0, CARVEOUT_SIZE, da=CARVEOUT_DA, name="own")
    try:
        device_ep = links.device.create_endpoint(service, announce=True)
        host_ep = links.host.open_channel(service, timeout=5)
        yield Pair(links, port, device, host_ep, device_ep, faults, carveout)
    finally:
        device.close()
        port.close()
        links.close()
        own.close()
