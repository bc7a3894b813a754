"""One device run: firmware ``main(link)`` on the guest's rings, from driver OK to stop.

The run builds amplink's device-role rpmsg link (:func:`device_link`, the same
transport the simulator's firmware uses) over the region of guest memory that holds the
rings, and calls the firmware in a thread of its own. Stopping closes the link with a
reason (blocked calls raise LinkDown, the firmware's ``link.run()`` returns) and joins
the thread; the memory stays mapped until then.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import EndpointClosed, LinkDown
from ...link.runtime import Link
from ...memory.region import SharedRegion
from ...rpmsg.wire import RPMSG_BUF_SIZE
from ...transports.virtio import DeviceRpmsgBackend
from ...transports.virtio_link import device_link
from ...virtio.ring import VRING_AVAIL_F_NO_INTERRUPT, VringLayout, need_event
from ...virtio.vdev import (
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_ID_RPMSG,
    VdevControl,
    VdevEntry,
)
from .doorbell import VhostUserDoorbell
from .rings import RingPlacement

log = logging.getLogger(__name__)

#: what firmware is: ``main(link)`` or ``main(link, args)``
FirmwareEntry = Callable[..., Any]
#: how long a stop waits for the firmware thread to leave
STOP_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What the back end negotiated and set up, handed to a run."""

    placement: RingPlacement
    features: int  # the rpmsg/ring feature bits both sides accepted (32-bit virtio bits)
    bases: tuple[int, int]  # SET_VRING_BASE per queue
    kick_fds: tuple[int, int]
    call_fds: tuple[int | None, int | None]


def _negotiation_record(features: int) -> tuple[SharedRegion, VdevControl, VdevEntry]:
    """A private vdev entry carrying the negotiated features, as the transport reads them.

    vhost-user negotiates by messages, not through a resource table in shared memory;
    the device transport reads the driver's accepted features from a vdev entry, so the
    run writes the result of the negotiation into one of its own.
    """
    entry = VdevEntry(VIRTIO_ID_RPMSG, dfeatures=features, gfeatures=features,
                      status=VIRTIO_CONFIG_S_DRIVER_OK)
    record = SharedRegion.memfd(len(entry.pack()), "amplink-vhost-user-vdev")
    record.write(0, entry.pack())
    return record, VdevControl(record, 0), entry


class _QueueInterrupts:
    """One queue's used index and the driver's interrupt request, read from the guest's
    ring (virtio 1.x 2.7.7.2 and 2.7.10): its used-event index with EVENT_IDX, else the
    NO_INTERRUPT bit of its avail flags."""

    def __init__(self, region: SharedRegion, layout: VringLayout, event_idx: bool) -> None:
        self._u16 = region.u16
        self._used_idx = (layout.used + 2) >> 1
        self._used_event = layout.used_event >> 1
        self._avail_flags = layout.avail >> 1
        self._event_idx = event_idx

    def used(self) -> int:
        return self._u16[self._used_idx]

    def wanted(self, old: int, new: int) -> bool:
        if self._event_idx:
            return need_event(self._u16[self._used_event], new, old)
        return not self._u16[self._avail_flags] & VRING_AVAIL_F_NO_INTERRUPT


class DeviceRun:
    """Firmware running as the rpmsg device on the guest's rings (a thread)."""

    def __init__(self, firmware: FirmwareEntry, config: RunConfig, *, name: str,
                 args: Sequence[str] = ()) -> None:
        self.firmware = firmware
        self.args = list(args)
        self.name = name
        #: the exception the firmware ended with (None: it ended normally or still runs)
        self.error: BaseException | None = None
        placement = config.placement
        region = placement.region.region
        doorbell = VhostUserDoorbell(config.kick_fds, config.call_fds)
        try:
            record, vdev, entry = _negotiation_record(config.features)
        except BaseException:
            doorbell.close()
            raise
        entry.vrings = list(placement.vrings)
        try:
            self.link: Link = device_link(region, vdev, doorbell, entry=entry, name=name,
                                          buf_size=RPMSG_BUF_SIZE, owned=[record],
                                          dispatch="caller")  # the firmware's main dispatches
        except BaseException:
            record.close()
            raise
        backend = self.link.backend
        assert isinstance(backend, DeviceRpmsgBackend)
        self.backend = backend
        self.queues = (backend.tx, backend.rx)  # vring 0: device -> driver, vring 1
        for queue, base in zip(self.queues, config.bases, strict=True):
            if base:
                queue.start_at(base)
        doorbell.track_used([_QueueInterrupts(region, q.layout, backend.event_idx)
                             for q in self.queues])
        self.doorbell = doorbell
        self._thread = threading.Thread(target=self._main, name=f"firmware {name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            if len(inspect.signature(self.firmware).parameters) >= 2:
                self.firmware(self.link, self.args)
            else:
                self.firmware(self.link)
        except (LinkDown, EndpointClosed):
            pass  # the guest went away or the run was stopped: a normal end
        except BaseException as exc:  # noqa: BLE001 - firmware bugs end the run, not the server
            self.error = exc
            log.exception("%s: the firmware raised; the device stops answering", self.name)
        finally:
            self.link.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def last_avail(self, queue: int) -> int:
        return self.queues[queue].last_avail

    def stop(self, reason: str) -> bool:
        """Close the link with ``reason`` and wait for the firmware; False if it hangs on."""
        self.link.close(reason)
        if self._thread.ident is not None:
            self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            log.error("%s: the firmware did not return within %s s of the link closing",
                      self.name, STOP_TIMEOUT)
            return False
        return True

    def statistics(self) -> dict[str, Any]:
        stats = self.link.statistics()
        return {"link": stats, "calls_dropped": self.doorbell.calls_dropped}
