"""Building an rpmsg link over virtio: doorbell -> waiter -> backend -> link, in either role.

Every platform assembles the same stack; :func:`driver_link` (the host) and
:func:`device_link` (the remote) do it once, and own the cleanup: from the call on they
own the doorbell, and if any step fails they close what they built and the doorbell
before the error propagates. The wire dialect is a :class:`VirtioProfile` (LINUX by
default, or OPENAMP), passed once. The vdev is given as its live :class:`VdevControl` in the
resource table and, optionally, its decoded entry; without one the entry is read from
the table in shared memory (untrusted, checked), as the peer wrote it.

:func:`watch_lifeline` marks a link down when the peer's lifeline socket hangs up.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

from ..link.runtime import Link
from ..link.waiting import DEFAULT_SPIN
from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell
from ..notify.waiter import Waiter
from ..rpmsg.wire import RPMSG_BUF_SIZE
from ..virtio.vdev import VdevControl, VdevEntry
from .virtio import (
    LINUX,
    SUPPORTED_FEATURES,
    DeviceRpmsgBackend,
    DriverRpmsgBackend,
    VirtioProfile,
    read_vdev_entry,
)


def _assemble(
    doorbell: Doorbell,
    make_backend: Callable[[Waiter], DriverRpmsgBackend | DeviceRpmsgBackend],
    owned: Iterable[Any],
    profile: VirtioProfile,
    link_options: dict[str, Any],
) -> Link:
    waiter = None
    try:
        waiter = Waiter(doorbell)
        backend = make_backend(waiter)
    except BaseException:
        if waiter is not None:
            waiter.close()
        doorbell.close()
        raise
    try:
        link = Link(backend, rules=profile.ns_rules, **link_options)
    except BaseException:
        backend.close()  # closes the waiter and the doorbell too
        raise
    backend.owned.extend(owned)
    return link


def _entry(vdev: VdevControl, entry: VdevEntry | None) -> VdevEntry:
    return read_vdev_entry(vdev.region, vdev.entry_offset) if entry is None else entry


def driver_link(
    region: SharedRegion,
    vdev: VdevControl,
    pool_offset: int,
    doorbell: Doorbell,
    *,
    entry: VdevEntry | None = None,
    name: str,
    poll_mode: bool = False,
    spin: float = DEFAULT_SPIN,
    buf_size: int = RPMSG_BUF_SIZE,
    features: int = SUPPORTED_FEATURES,
    profile: VirtioProfile = LINUX,
    tx_offset: int | None = None,
    owned: Iterable[Any] = (),
    **link_options: Any,
) -> Link:
    """The host's link: a virtio driver (rings and buffers in ``region``) and its link.

    Building the driver sets the vdev up (see :class:`DriverRpmsgBackend`: RX buffers
    at ``pool_offset``, TX buffers after them or at ``tx_offset``). ``owned`` objects
    are closed with the link once it is built (on failure they stay the caller's);
    ``link_options`` go to :class:`Link`.
    """
    return _assemble(
        doorbell,
        lambda waiter: DriverRpmsgBackend(
            region, vdev, _entry(vdev, entry), pool_offset, doorbell, waiter,
            buf_size=buf_size, features=features, tx_offset=tx_offset, profile=profile),
        owned, profile, dict(name=name, poll_mode=poll_mode, spin=spin, **link_options),
    )


def device_link(
    region: SharedRegion,
    vdev: VdevControl,
    doorbell: Doorbell,
    *,
    entry: VdevEntry | None = None,
    name: str,
    poll_mode: bool = False,
    spin: float = DEFAULT_SPIN,
    buf_size: int = RPMSG_BUF_SIZE,
    profile: VirtioProfile = LINUX,
    wait_driver_ok: Callable[[VdevControl, Waiter], None] | None = None,
    owned: Iterable[Any] = (),
    **link_options: Any,
) -> Link:
    """The remote's link: a virtio device on the driver's rings in ``region`` and its link.

    ``wait_driver_ok`` (e.g. a :func:`wait_for_driver_ok` with a timeout) is called
    before the rings are touched; leave it out when the driver is known to be ready.
    ``owned`` and ``link_options`` as for :func:`driver_link`.
    """
    def make_backend(waiter: Waiter) -> DeviceRpmsgBackend:
        if wait_driver_ok is not None:
            wait_driver_ok(vdev, waiter)
        return DeviceRpmsgBackend(region, vdev, _entry(vdev, entry), doorbell, waiter,
                                  buf_size=buf_size, profile=profile)

    return _assemble(doorbell, make_backend, owned, profile,
                     dict(name=name, poll_mode=poll_mode, spin=spin, **link_options))


def watch_lifeline(link: Link, lifeline: socket.socket, reason: Callable[[], str]) -> None:
    """Mark ``link`` down with ``reason()`` once the peer hangs up ``lifeline`` (end of file).

    The watch runs in whichever thread waits on the link's doorbell; bytes the peer
    sends on the lifeline are dropped. The socket is made non-blocking.
    """
    waiter = link.backend.waiter
    fd = lifeline.fileno()

    def on_ready() -> None:
        try:
            if lifeline.recv(64):
                return
        except BlockingIOError:
            return
        except OSError:
            pass  # reset or closed: the peer is gone as well
        waiter.unwatch(fd)
        link.mark_down(reason())

    lifeline.setblocking(False)
    waiter.watch(fd, on_ready)
