"""A platform for the lifecycle engine that runs the remote in this process.

:class:`FakeOps` gives the processor a pool (and optionally an internal memory), and on
start brings up a device-side rpmsg bus over the processed table in a thread: an echo
service, as firmware would announce it. Crashes are reported by the test through
:meth:`FakeOps.report`. Every call is recorded so tests can check the order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from amplink.link import Link
from amplink.memory.region import SharedRegion
from amplink.notify.doorbell import Doorbell, EventfdDoorbell
from amplink.notify.waiter import Waiter
from amplink.remoteproc.addrmap import DeviceAddressMap
from amplink.remoteproc.api import CrashReason
from amplink.remoteproc.devmem import DeviceMemory
from amplink.remoteproc.image import LoadableImage
from amplink.remoteproc.ops import CrashReport, PlatformOps, StartInfo
from amplink.remoteproc.resources import VdevResource
from amplink.remoteproc.rsc_table import ResourceTable, VendorHookResult, VendorResource
from amplink.transports.virtio import DeviceRpmsgBackend
from amplink.transports.virtio_link import driver_link
from amplink.virtio.vdev import VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_ID_RPMSG, VdevEntry, VringEntry

ANY = 0xFFFF_FFFF
POOL_DA = 0x1000_0000
POOL_SIZE = 1 << 20
SERVICE = "rpmsg-echo"


def rpmsg_vdev(num: int = 16, align: int = 0x1000, da: int = ANY) -> VdevEntry:
    """An rpmsg vdev whose two vrings the host places (unless ``da`` is given)."""
    return VdevEntry(VIRTIO_ID_RPMSG, dfeatures=1,
                     vrings=[VringEntry(da, align, num, ANY),
                             VringEntry(ANY if da == ANY else da + 0x10000, align, num, ANY)])


class FakeImage(LoadableImage):
    """An image that is just a resource table (and counts its loads)."""

    def __init__(self, table: ResourceTable | bytes | None, name: str = "fake") -> None:
        self.name = name
        self._table = table.build() if isinstance(table, ResourceTable) else table
        self.loads = 0

    def resource_table(self) -> bytes | None:
        return self._table

    def load(self, addr_map: DeviceAddressMap) -> None:
        self.loads += 1


@dataclass
class Remote:
    """The device side of one run: its bus and the thread serving it."""

    bus: Link
    thread: threading.Thread
    stop: threading.Event = field(default_factory=threading.Event)


class FakeOps(PlatformOps):
    """See the module docstring. ``images`` maps firmware names to images."""

    vdev_drivers = {VIRTIO_ID_RPMSG: driver_link}

    def __init__(self, images: dict[str, LoadableImage], *, internal: tuple[int, int] | None = None,
                 serve: bool = True) -> None:
        self.images = images
        self.internal = internal
        self.serve = serve
        self.calls: list[str] = []
        self.memories: list[DeviceMemory] = []
        self.vendor_seen: list[VendorResource] = []
        self.status_at_start: list[int] = []
        self._report: CrashReport | None = None
        self._device_bells: list[Doorbell] = []
        self._info: StartInfo | None = None
        self.remote: Remote | None = None
        self.fail_start: Exception | None = None

    # -- PlatformOps --------------------------------------------------------------------------
    def load_image(self, firmware: str) -> LoadableImage:
        self.calls.append("load_image")
        return self.images[firmware]

    def allocate_memory(self) -> DeviceMemory:
        self.calls.append("allocate_memory")
        internal = ()
        if self.internal is not None:
            da, size = self.internal
            internal = (SharedRegion.memfd(size, "fake-internal", da_base=da),)
        memory = DeviceMemory(SharedRegion.memfd(POOL_SIZE, "fake-pool", da_base=POOL_DA),
                              internal)
        self.memories.append(memory)
        return memory

    def release_memory(self, memory: DeviceMemory) -> None:
        self.calls.append("release_memory")
        memory.close()

    def handle_vendor(self, entry: VendorResource) -> VendorHookResult:
        self.vendor_seen.append(entry)
        return VendorHookResult.HANDLED

    def start(self, info: StartInfo) -> None:
        self.calls.append("start")
        if self.fail_start is not None:
            raise self.fail_start
        self._info = info
        self.status_at_start = [info.resources.vdev_control(v).status
                                for v in info.resources.vdevs]

    def doorbell(self, vdev: VdevResource) -> Doorbell:
        self.calls.append("doorbell")
        host, device = EventfdDoorbell.pair()
        self._device_bells.append(device)
        return host

    def wait_started(self) -> None:
        self.calls.append("wait_started")
        info = self._info
        assert info is not None
        vdev = next(v for v in info.resources.vdevs if v.is_rpmsg) if self.serve else None
        if vdev is None:
            return
        control = info.resources.vdev_control(vdev)
        assert control.status & VIRTIO_CONFIG_S_DRIVER_OK, "the host must set DRIVER_OK first"
        bell = self._device_bells.pop(0)
        entry = VdevEntry.unpack(control.region.mm, control.entry_offset,
                                 control.region.size - control.entry_offset)
        assert vdev.buffers is not None
        backend = DeviceRpmsgBackend(vdev.buffers.region, control, entry, bell, Waiter(bell))
        bus = Link(backend, name="fake-remote", dispatch="caller")  # _serve dispatches
        bus.create_endpoint(SERVICE, announce=True,
                            callback=lambda ep, payload, src: ep.sendto(payload, src))
        stop = threading.Event()
        thread = threading.Thread(target=self._serve, args=(bus, stop), daemon=True)
        self.remote = Remote(bus, thread, stop)
        thread.start()

    @staticmethod
    def _serve(bus: Link, stop: threading.Event) -> None:
        try:
            bus.run(stop.is_set)
        except (OSError, ValueError):
            pass  # the host is gone: LinkDown / EndpointClosed

    def watch(self, report: CrashReport) -> None:
        self.calls.append("watch")
        self._report = report

    def stop(self, *, crashed: bool) -> None:
        self.calls.append(f"stop(crashed={crashed})")
        remote, self.remote = self.remote, None
        if remote is not None:
            remote.stop.set()
            remote.bus.backend.waiter.wake()
            remote.thread.join(5.0)
            assert not remote.thread.is_alive()
            remote.bus.close()
        for bell in self._device_bells:
            bell.close()
        self._device_bells.clear()
        self._report = None

    # -- for tests ----------------------------------------------------------------------------
    @property
    def reporter(self) -> Callable[[CrashReason, str], None]:
        """The report function of the current run (it stays callable after the run ends)."""
        assert self._report is not None
        return self._report

    def report(self, reason: CrashReason = CrashReason.WATCHDOG, detail: str = "test") -> None:
        self.reporter(reason, detail)
