"""Both ends of an rpmsg-over-virtio link in one process: for tests and for trying firmware.

The host (driver) and device buses share one memfd region and a pair of doorbells, just
as a simulated processor does, but without a child process: the memory is placed the
same way (:func:`.sim.layout.place_link`) and the host's link registered the same way.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Self

from ..link.runtime import Link
from ..memory.region import SharedRegion
from ..notify.doorbell import Notify, doorbell_pair
from ..remoteproc.resources import ProcessedResources
from ..transports.virtio_link import device_link, driver_link
from .sim.layout import LinkConfig, place_link

__all__ = ["LinkPair", "Notify", "doorbell_pair"]


@dataclass
class LinkPair:
    """``host`` (virtio driver) and ``device`` links over one shared region.

    ``resources`` tells where everything lies in ``region``: ``resources.vdevs[0]`` is
    the rpmsg vdev, its ``vrings[i].offset`` the region offset of vring ``i`` and its
    ``buffers.offset`` that of the buffer pool (for tests that play a hostile peer).
    """

    host: Link
    device: Link
    region: SharedRegion
    resources: ProcessedResources

    @classmethod
    def create(cls, config: LinkConfig | None = None, *, notify: Notify = "eventfd",
               poll_mode: bool = False, **link_options: Any) -> Self:
        config = config or LinkConfig()
        host_bell, device_bell = doorbell_pair(notify)
        with ExitStack() as undo:
            undo.callback(device_bell.close)
            undo.callback(host_bell.close)
            memory, resources = place_link(config, "amplink-pair")
            undo.callback(memory.close)
            vdev = resources.vdevs[0]
            assert vdev.buffers is not None
            host = driver_link(vdev.buffers.region, resources.vdev_control(vdev),
                               vdev.buffers.offset, host_bell, entry=vdev.entry, name="host",
                               buf_size=config.buf_size, poll_mode=poll_mode, **link_options)
            undo.callback(host.close)
            device = device_link(vdev.buffers.region, resources.vdev_control(vdev),
                                 device_bell, name="device", poll_mode=poll_mode,
                                 buf_size=config.buf_size, **link_options)
            undo.pop_all()
        return cls(host, device, memory.pool, resources)

    def close(self) -> None:
        self.host.close()
        self.device.close()
        self.region.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
