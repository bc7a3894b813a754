"""The remote-side runtime for Python firmware (the virtio device role).

Firmware is a module (or ``.py`` file) with a ``main(link)`` function; the simulator
runs it as ``python -m amplink.firmware SPEC``. :func:`connect` builds the device-role
link from what the host passed (see :mod:`amplink.platforms.sim_layout`)::

    def main(link):
        ep = link.create_endpoint("rpmsg-echo", announce=True)
        for payload, src in iter(ep.recvfrom, None):
            ep.sendto(payload, src)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from ..errors import RemoteProtocolError
from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell, EventfdDoorbell, PollingDoorbell
from ..notify.waiter import Waiter
from ..platforms import sim_layout as L
from ..remoteproc.rsc_table import ResourceTable
from ..rpmsg.bus import RpmsgBus
from ..transports.virtio import DeviceRpmsgTransport, wait_for_driver_ok
from ..virtio.vdev import VIRTIO_ID_RPMSG, VdevControl, VdevEntry

__all__ = ["connect"]

DRIVER_OK_TIMEOUT = 20.0


def _env_int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key], 0)
    except KeyError:
        raise RuntimeError(
            f"{key} is not set: firmware must be started by an amplink host "
            "(e.g. `amplink run FIRMWARE`)"
        ) from None


def _find_rpmsg_vdev(table: ResourceTable, table_offset: int) -> tuple[VdevEntry, int]:
    for index, entry in table.items(VdevEntry):
        if entry.id == VIRTIO_ID_RPMSG:
            return entry, table_offset + table.body_offset(index)
    raise RemoteProtocolError("the resource table has no rpmsg vdev")


def connect(env: Mapping[str, str] | None = None, *, poll_mode: bool | None = None) -> RpmsgBus:
    """Attach to the host as the virtio device and return the firmware's rpmsg link.

    Waits for the host's DRIVER_OK, then tells the host the firmware is up.
    """
    env = os.environ if env is None else env
    size = _env_int(env, L.ENV_SHM_SIZE)
    region = SharedRegion.from_fd(_env_int(env, L.ENV_SHM_FD), size,
                                  da_base=_env_int(env, L.ENV_DA_BASE))
    lifeline = socket.socket(fileno=_env_int(env, L.ENV_LIFELINE_FD))
    if poll_mode is None:
        poll_mode = env.get(L.ENV_POLL) == "1"
    doorbell: Doorbell
    rx_fd, tx_fd = _env_int(env, L.ENV_KICK_RX_FD), _env_int(env, L.ENV_KICK_TX_FD)
    if poll_mode:
        for fd in (rx_fd, tx_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        doorbell = PollingDoorbell()
    else:
        doorbell = EventfdDoorbell(rx_fd, tx_fd)
    waiter = Waiter(doorbell)
    table_offset = _env_int(env, L.ENV_RSC_TABLE)
    table_size = min(_env_int(env, L.ENV_RSC_SIZE), size - table_offset)
    table = ResourceTable.parse(region.read(table_offset, table_size))
    entry, body = _find_rpmsg_vdev(table, table_offset)
    vdev = VdevControl(region, body)
    wait_for_driver_ok(vdev, waiter, DRIVER_OK_TIMEOUT)
    transport = DeviceRpmsgTransport(region, vdev, entry, doorbell, waiter,
                                     buf_size=_env_int(env, L.ENV_BUF_SIZE))
    transport.owned += [lifeline, region]
    bus = RpmsgBus(transport, name=env.get(L.ENV_NAME, "firmware"), poll_mode=poll_mode)

    def host_gone() -> None:
        try:
            if lifeline.recv(64):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        waiter.unwatch(lifeline.fileno())
        bus.mark_down("the host is gone")

    lifeline.setblocking(False)
    waiter.watch(lifeline.fileno(), host_gone)
    lifeline.send(b"R")
    return bus
