"""Both ends of an rpmsg-over-virtio link in one process: for tests and for trying firmware.

The host (driver) and device buses share one memfd region and a pair of doorbells, just
as a simulated processor does, but without a child process.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal, Self

from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell, EventfdDoorbell, PollingDoorbell, SocketDoorbell
from ..notify.waiter import Waiter
from ..rpmsg.bus import RpmsgBus
from ..transports.virtio import DeviceRpmsgTransport, DriverRpmsgTransport, read_vdev_entry
from ..virtio.vdev import VdevControl
from . import sim_layout as L
from .sim_layout import LinkConfig, SimLayout

Notify = Literal["eventfd", "socket", "poll"]


def doorbell_pair(notify: Notify) -> tuple[Doorbell, Doorbell]:
    """Two connected doorbells of the given kind."""
    if notify == "eventfd":
        return EventfdDoorbell.pair()
    if notify == "socket":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return SocketDoorbell(a), SocketDoorbell(b)
    if notify == "poll":
        return PollingDoorbell(), PollingDoorbell()
    raise ValueError(f"notify must be 'eventfd', 'socket' or 'poll', got {notify!r}")


@dataclass
class LinkPair:
    """``host`` (virtio driver) and ``device`` buses over one shared region."""

    host: RpmsgBus
    device: RpmsgBus
    region: SharedRegion

    @classmethod
    def create(cls, config: LinkConfig | None = None, *, notify: Notify = "eventfd",
               poll_mode: bool = False, **bus_options: object) -> Self:
        config = config or LinkConfig()
        layout = SimLayout.plan(config)
        region = SharedRegion.memfd(layout.size, "amplink-pair")
        region.write(L.RSC_TABLE_OFFSET, layout.table)
        host_bell, device_bell = doorbell_pair(notify)
        vdev = VdevControl(region, layout.vdev_body_offset)
        entry = read_vdev_entry(region, layout.vdev_body_offset)
        host_t = DriverRpmsgTransport(region, vdev, entry, layout.pool_offset, host_bell,
                                      Waiter(host_bell), buf_size=config.buf_size)
        device_t = DeviceRpmsgTransport(region, vdev, read_vdev_entry(region,
                                                                      layout.vdev_body_offset),
                                        device_bell, Waiter(device_bell),
                                        buf_size=config.buf_size)
        host = RpmsgBus(host_t, name="host", poll_mode=poll_mode, **bus_options)  # type: ignore[arg-type]
        device = RpmsgBus(device_t, name="device", poll_mode=poll_mode, **bus_options)  # type: ignore[arg-type]
        return cls(host, device, region)

    def close(self) -> None:
        self.host.close()
        self.device.close()
        self.region.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
