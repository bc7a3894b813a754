"""The remote-side runtime for Python firmware (the virtio device role).

Firmware is a module (or ``.py`` file) with a ``main(link)`` function; the simulator
runs it as ``python -m amplink.firmware SPEC``. :func:`connect` builds the device-role
link from what the host passed (see :mod:`amplink.platforms.sim_abi`)::

    def main(link):
        ep = link.create_endpoint("rpmsg-echo", announce=True)
        while True:  # until the host goes away: LinkDown ends the firmware normally
            payload, src = ep.recvfrom()
            ep.sendto(payload, src)

A module may declare its resource table (every way of starting firmware uses it;
without one it gets a single rpmsg vdev)::

    RESOURCE_TABLE = ResourceTable([
        Carveout(FW_RSC_ADDR_ANY, FW_RSC_ADDR_ANY, 0x10000, name="data"),
        Trace(FW_RSC_ADDR_ANY, 1024, name="trace0"),
        VdevEntry(VIRTIO_ID_RPMSG, dfeatures=1, vrings=[...two VringEntry...]),
    ])

Once connected, the firmware reaches its processor through :func:`trace` (write the
RSC_TRACE log), :func:`carveout` (its memory by name), :func:`dma` (the host's buffers
attached to it, by device address), :func:`buffers` (all of them, for a
:class:`~amplink.handover.BufferChannel`), :func:`feed_watchdog` and :func:`serve` (keep
the host's watchdog fed) and :func:`report_fatal`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import NoReturn

from .._args import str_arg
from ..errors import RemoteProtocolError
from ..handover.mapped import DeviceBuffers
from ..link.runtime import Link
from ..memory.access import Access
from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell, EventfdDoorbell, PollingDoorbell
from ..platforms import sim_abi as L
from ..platforms.sim_abi import SimEnv
from ..remoteproc.rsc_table import ResourceTable
from ..transports.virtio import wait_for_driver_ok
from ..transports.virtio_link import device_link, watch_lifeline
from ..virtio.vdev import VIRTIO_ID_RPMSG, VdevControl, VdevEntry
from . import keembay
from .device import Device, TraceWriter, fatal_message

__all__ = [
    "Device", "DeviceBuffers", "TraceWriter", "buffers", "carveout", "connect", "device", "dma",
    "feed_watchdog", "report_failure", "report_fatal", "serve", "trace",
]

DRIVER_OK_TIMEOUT = 20.0

log = logging.getLogger(__name__)

_device: Device | None = None
_trace_missing_warned = False


def _find_rpmsg_vdev(table: ResourceTable, table_offset: int, index: int
                     ) -> tuple[VdevEntry, int]:
    found = [(entry, table_offset + table.body_offset(i))
             for i, entry in table.items(VdevEntry) if entry.id == VIRTIO_ID_RPMSG]
    if index >= len(found):
        raise RemoteProtocolError(f"the resource table has no rpmsg vdev {index} "
                                  f"({len(found)} in all)")
    return found[index]


def _doorbell(sim: SimEnv, vdev: int, poll_mode: bool) -> Doorbell:
    rx_fd, tx_fd = sim.kick_fds(vdev)
    if poll_mode:
        for fd in (rx_fd, tx_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        return PollingDoorbell()
    return EventfdDoorbell(rx_fd, tx_fd)


#: the firmware spins at most this long before each sleep, whatever the host asks
SPIN_MAX = 0.01


def connect(env: Mapping[str, str] | None = None, *, poll_mode: bool | None = None,
            vdev: int = 0) -> Link:
    """Attach to the host as the virtio device of rpmsg vdev ``vdev``; return the link.

    Waits for the host's DRIVER_OK, then tells the host the firmware is up. Firmware
    whose table has the Keem Bay carveout gets the VPU's Keem Bay link instead (see
    :mod:`.keembay`).
    """
    global _device
    sim = SimEnv.from_env(os.environ if env is None else env)
    region = SharedRegion.from_fd(sim.shm_fd, sim.shm_size, da_base=sim.da_base)
    dev = Device.attach(sim, region)
    if poll_mode is None:
        poll_mode = sim.poll_mode
    area = keembay.ipc_area(dev.table)
    if area is not None:  # Keem Bay firmware: the VPU node of the IPC in that carveout
        bus = keembay.vpu_connect(
            region, dev, area, _doorbell(sim, keembay.doorbell_index(dev.table), poll_mode),
            name=sim.name, poll_mode=poll_mode, spin=min(sim.spin, SPIN_MAX))
    else:
        doorbell = _doorbell(sim, vdev, poll_mode)
        entry, body = _find_rpmsg_vdev(dev.table, dev.table_offset, vdev)
        bus = device_link(
            region, VdevControl(region, body), doorbell, entry=entry, name=sim.name,
            poll_mode=poll_mode, spin=min(sim.spin, SPIN_MAX), buf_size=sim.buf_size,
            wait_driver_ok=lambda control, waiter: wait_for_driver_ok(control, waiter,
                                                                      DRIVER_OK_TIMEOUT),
            owned=[dev],  # closes the lifeline and the memory with the link
            dispatch="caller",  # the firmware's main loop (link.run(), serve()) dispatches
            buffers=dev.buffers,  # the host's buffers attached to us: send_by_reference
        )
    watch_lifeline(bus, dev.lifeline, lambda: "the host is gone")
    _device = dev
    dev.send(L.LIFELINE_READY)
    return bus


def device() -> Device:
    """This firmware's view of its processor (after :func:`connect`)."""
    if _device is None:
        raise RuntimeError("the firmware is not connected: call amplink.firmware.connect() "
                           "(python -m amplink.firmware does it before main)")
    return _device


def trace(text: str) -> None:
    """Append ``text`` to the first RSC_TRACE buffer (the host reads it with rproc.trace()).

    Without a trace buffer in the resource table (the default table has none) this does
    nothing; the first call logs a warning saying so.
    """
    global _trace_missing_warned
    writer = device().trace()
    if writer is not None:
        writer.write(str_arg(text, "text"))
    elif not _trace_missing_warned:
        _trace_missing_warned = True
        log.warning("trace(): the resource table has no RSC_TRACE entry, so the trace text is "
                    "dropped (declare a Trace in RESOURCE_TABLE to keep it)")


def carveout(name: str) -> memoryview:
    """A writable view of the carveout called ``name`` in the resource table."""
    return device().carveout(name)


def buffers() -> DeviceBuffers:
    """The host's buffers attached to this processor (RuntimeError if the host passed no
    buffer socket)."""
    dev = device()
    if dev.buffers is None:
        raise RuntimeError("the host attached no buffer socket (AMPLINK_BUFFERS_FD)")
    return dev.buffers


def dma(da: int, length: int, access: Access | int = Access.READ) -> memoryview:
    """A view of ``length`` bytes at device address ``da`` of an attached buffer, for
    ``access`` (read-only unless it writes). Outside what the host attached (or against its
    direction) it is an :class:`~amplink.memory.IommuFault`, which the host sees too."""
    return buffers().dma(da, length, access)


def feed_watchdog() -> None:
    """Tell the host this firmware is alive (rate-limited; a no-op without a watchdog)."""
    device().feed_watchdog()


def report_fatal(reason: str) -> NoReturn:
    """Report a fatal error to the host and halt until the host stops this processor."""
    device().report_fatal(reason)


def report_failure(reason: str, env: Mapping[str, str] | None = None) -> None:
    """Tell the host, in one line on the lifeline, why this firmware fails (and return:
    the caller exits). Works before :func:`connect` too; a host that is gone is ignored."""
    if _device is not None:
        _device.send(fatal_message(reason))
        return
    try:
        fd = int((os.environ if env is None else env)[L.ENV_LIFELINE_FD])
        with socket.socket(fileno=os.dup(fd)) as lifeline:
            lifeline.settimeout(1.0)
            lifeline.sendall(fatal_message(reason))
    except (KeyError, ValueError, OSError):
        pass  # not started by a host, or the host is gone: nobody to tell


def serve(link: Link, until: Callable[[], bool] | None = None) -> None:
    """Like ``link.run(until)``, but feeding the host's watchdog while it dispatches."""
    dev = device()
    done = until or (lambda: False)
    while not done():
        dev.feed_watchdog()
        link.run(done, timeout=dev.feed_interval)
