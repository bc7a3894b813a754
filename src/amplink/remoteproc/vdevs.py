"""The host side of a processor's vdevs: the drivers that platforms register for them.

remoteproc processes a vdev's resources (vrings, buffers) and leaves the rest to the
*vdev driver* registered for its virtio id: for rpmsg (id 7) the platform registers
:func:`amplink.transports.virtio_link.driver_link`, which builds the virtio driver
(resetting the vrings, posting the receive buffers, setting DRIVER_OK) and a link over
it. remoteproc itself builds nothing: it calls the driver after the processor started
and removes the link when it stops.

Removing a vdev takes every channel away: drivers' ``remove`` callbacks run, endpoints
report closed (LinkDown after a crash), and the link is closed: from then on no thread
touches its rings, whose memory a recovery reuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..link.runtime import Link
from ..link.waiting import DEFAULT_SPIN
from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell
from ..virtio.vdev import VdevControl, VdevEntry
from .resources import ProcessedResources, VdevResource

log = logging.getLogger(__name__)


class VdevDriver(Protocol):
    """Builds the host's link over one vdev (its rings and buffers in ``region``)."""

    def __call__(self, region: SharedRegion, vdev: VdevControl, pool_offset: int,
                 doorbell: Doorbell, *, entry: VdevEntry, name: str, buf_size: int,
                 poll_mode: bool, spin: float) -> Link: ...


#: virtio device id -> the driver of such vdevs
VdevDrivers = Mapping[int, VdevDriver]


def register_vdev(resources: ProcessedResources, vdev: VdevResource, driver: VdevDriver,
                  doorbell: Doorbell, *, name: str, buf_size: int, poll_mode: bool,
                  spin: float = DEFAULT_SPIN) -> Link:
    """Build the host's link for ``vdev`` with ``driver`` (which owns ``doorbell`` from
    here on)."""
    assert vdev.buffers is not None, "a vdev with a driver has its buffers placed"
    return driver(vdev.buffers.region, resources.vdev_control(vdev), vdev.buffers.offset,
                  doorbell, entry=vdev.entry, name=name, buf_size=buf_size,
                  poll_mode=poll_mode, spin=spin)


def register_vdevs(
    resources: ProcessedResources,
    drivers: VdevDrivers,
    doorbell_for: Callable[[VdevResource], Doorbell],
    *,
    name: str,
    **options: Any,
) -> list[Link]:
    """Links for every vdev that has a driver, in table order (all or none)."""
    links: list[Link] = []
    try:
        for vdev in resources.vdevs:
            driver = drivers.get(vdev.entry.id)
            if driver is None or vdev.buffers is None:
                log.warning("%s: vdev %d has virtio id %d: no driver for it, left alone", name,
                            vdev.index, vdev.entry.id)
                continue
            link_name = name if not links else f"{name}.vdev{vdev.index}"
            links.append(register_vdev(resources, vdev, driver, doorbell_for(vdev),
                                       name=link_name, **options))
    except BaseException:
        remove_vdevs(links, "registration failed")
        raise
    return links


def remove_vdevs(links: list[Link], reason: str, *, crashed: bool = False) -> None:
    """Remove the links: channels unbound (drivers' remove runs), endpoints closed, link
    closed.

    ``crashed``: the peer is gone, so blocked callers get LinkDown(``reason``) first and no
    end-of-service announcement is attempted.
    """
    for link in links:
        if crashed:
            link.mark_down(reason)
        link.remove_channels(reason, lost=crashed)
        # close() returns once no thread touches the rings; after a crash, endpoints
        # report LinkDown with the reason
        link.close(reason if crashed else None)
