"""Both ends of a buffer channel in one process: a LinkPair, a port and DeviceBuffers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from amplink.handover import BufferPort, DeviceBuffers
from amplink.link.endpoint import Endpoint
from amplink.memory import Iommu
from amplink.platforms.inprocess import LinkPair

WINDOW = 0x1_0000_0000


@dataclass
class Pair:
    links: LinkPair
    port: BufferPort
    device: DeviceBuffers
    host_ep: Endpoint
    device_ep: Endpoint
    faults: list


@contextmanager
def pair(service: str = "buffers") -> Iterator[Pair]:
    links = LinkPair.create()
    host_sock, device_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    faults: list = []
    iommu = Iommu("dev0", WINDOW, 1 << 32)
    port = BufferPort("dev0", host_sock, iommu, on_fault=faults.append)
    device = DeviceBuffers(device_sock, "dev0")
    try:
        device_ep = links.device.create_endpoint(service, announce=True)
        host_ep = links.host.open_channel(service, timeout=5)
        yield Pair(links, port, device, host_ep, device_ep, faults)
    finally:
        device.close()
        port.close()
        links.close()
