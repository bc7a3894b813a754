"""The host side of a processor's rpmsg vdevs: one rpmsg link per vdev.

Registering a vdev builds the virtio driver (:class:`DriverRpmsgTransport`, which
resets the vrings, posts the receive buffers and only then sets DRIVER_OK) and an
:class:`RpmsgBus` over it. Removing it takes every channel away: drivers' ``remove``
callbacks run, endpoints report closed, the bus and its doorbell are closed.

A recovery reuses the vrings' memory for the next run, so a removed link must never
touch it again, even from a thread that was waiting in the bus and wakes up late:
the transport goes inert when it is closed (:class:`RprocDriverTransport`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..notify.doorbell import Doorbell
from ..rpmsg.bus import RpmsgBus
from ..transports.virtio import DriverRpmsgTransport
from ..transports.virtio_link import driver_link
from .resources import ProcessedResources, VdevResource

log = logging.getLogger(__name__)


def _no_messages(deliver: object, budget: int) -> int:
    return 0


def _no_buffer(src: int, dst: int, payload: object) -> bool:
    return False


def _look_again(*, rx: bool = False, tx: bool = False) -> bool:
    return True  # "work is pending": the caller re-checks, sees the link closed, raises


def _nothing() -> None:
    return None


def _yes() -> bool:
    return True


class RprocDriverTransport(DriverRpmsgTransport):
    """The host's virtio driver of a processor's vdev; inert once closed.

    Closing rebinds the ring accessors on the instance, so the message path pays nothing
    for the guard while the link is up.
    """

    def close(self) -> None:
        super().close()
        self.receive = _no_messages  # type: ignore[method-assign]
        self.try_send = _no_buffer  # type: ignore[method-assign]
        self.arm = _look_again  # type: ignore[method-assign]
        self.disarm = _nothing  # type: ignore[method-assign]
        self.rx_pending = self.tx_available = _yes  # type: ignore[method-assign]


def register_vdev(
    resources: ProcessedResources,
    vdev: VdevResource,
    doorbell: Doorbell,
    *,
    name: str,
    buf_size: int,
    poll_mode: bool,
    **bus_options: Any,
) -> RpmsgBus:
    """Build the host's rpmsg link for ``vdev`` (owns ``doorbell`` from here on).

    ``bus_options`` (e.g. ``spin``) go to :class:`RpmsgBus`.
    """
    assert vdev.buffers is not None, "only rpmsg vdevs have a link"
    return driver_link(
        vdev.buffers.region, resources.vdev_control(vdev), vdev.buffers.offset, doorbell,
        entry=vdev.entry, name=name, poll_mode=poll_mode, buf_size=buf_size,
        transport_class=RprocDriverTransport, **bus_options,
    )


def register_vdevs(
    resources: ProcessedResources,
    doorbell_for: Callable[[VdevResource], Doorbell],
    *,
    name: str,
    buf_size: int,
    poll_mode: bool,
    spin: float = 0.0,
) -> list[RpmsgBus]:
    """Links for every rpmsg vdev, in table order (all or none)."""
    links: list[RpmsgBus] = []
    try:
        for vdev in resources.vdevs:
            if not vdev.is_rpmsg:
                log.warning("%s: vdev %d has virtio id %d: no driver for it, left alone", name,
                            vdev.index, vdev.entry.id)
                continue
            link_name = name if not links else f"{name}.vdev{vdev.index}"
            links.append(register_vdev(resources, vdev, doorbell_for(vdev), name=link_name,
                                       buf_size=buf_size, poll_mode=poll_mode, spin=spin))
    except BaseException:
        remove_vdevs(links, "registration failed")
        raise
    return links


def remove_vdevs(links: list[RpmsgBus], reason: str, *, crashed: bool = False) -> None:
    """Remove the links: channels unbound (drivers' remove runs), endpoints closed, bus closed.

    ``crashed``: the peer is gone, so blocked callers get LinkDown(``reason``) first and no
    end-of-service announcement is attempted.
    """
    for bus in links:
        if crashed:
            bus.mark_down(reason)
        bus.remove_channels(reason, lost=crashed)
        # close() returns once no thread touches the rings; after a crash, endpoints
        # report LinkDown with the reason
        bus.close(reason if crashed else None)
