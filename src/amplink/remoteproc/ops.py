"""What a platform provides to the lifecycle engine (Linux's ``struct rproc_ops``).

The engine (:class:`~amplink.remoteproc.core.RemoteProc`) does everything that is the
same on every platform: resource processing, loading, the state machine, the power
count, vdevs, crash handling, coredumps, trace. A platform only says how to get an
image, which memory the processor has, and how to start, stop, kick and watch it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from ..link.runtime import Link
from ..link.waiting import DEFAULT_SPIN
from ..notify.doorbell import Doorbell
from .api import CrashReason
from .devmem import DeviceMemory
from .image import LoadableImage
from .resources import ProcessedResources, VdevResource
from .rsc_table import VendorHookResult, VendorResource
from .vdevs import VdevDrivers

#: ``report(reason, detail)``: a platform's crash detector reports through this
CrashReport = Callable[[CrashReason, str], None]


@dataclass(frozen=True)
class StartInfo:
    """Everything the platform needs to start the processor."""

    image: LoadableImage
    memory: DeviceMemory
    resources: ProcessedResources

    @property
    def boot_addr(self) -> int:
        """Where execution starts."""
        return self.image.boot_addr


class PlatformOps(ABC):
    """The platform half of a remote processor. Called with the engine's lifecycle lock held.

    Order of calls for one run: :meth:`start`, :meth:`doorbell` once per rpmsg vdev,
    :meth:`links`, :meth:`wait_started`, :meth:`watch`; then :meth:`stop` (always, also
    after a failed start). :meth:`allocate_memory` and :meth:`release_memory` bracket the
    runs between the first boot and the last shutdown: memory survives a recovery, as in
    Linux.
    """

    #: the drivers of the vdevs this platform's processors may have, by virtio id (an
    #: rpmsg platform registers the virtio transport's ``driver_link`` for id 7)
    vdev_drivers: VdevDrivers = {}
    #: whether the host's links poll the rings instead of sleeping on the doorbell
    poll_mode: bool = False
    #: how long (s) the host's links spin on the rings before each sleep
    spin: float = DEFAULT_SPIN

    @abstractmethod
    def load_image(self, firmware: str) -> LoadableImage:
        """Find and validate the image named ``firmware`` (FirmwareError, OSError)."""

    @abstractmethod
    def allocate_memory(self) -> DeviceMemory:
        """The processor's memory for the runs to come."""

    def release_memory(self, memory: DeviceMemory) -> None:
        """Give the memory back (after the last run stopped)."""
        memory.close()

    def handle_vendor(self, entry: VendorResource) -> VendorHookResult:
        """Handle a vendor resource entry (types 128..512); default: ignored with a warning."""
        return VendorHookResult.IGNORED

    @abstractmethod
    def start(self, info: StartInfo) -> None:
        """Start the processor; the image is loaded and the processed table is in place."""

    @abstractmethod
    def doorbell(self, vdev: VdevResource) -> Doorbell:
        """The host's doorbell for ``vdev``'s vrings (Linux's kick); the link takes ownership."""

    def links(self, resources: ProcessedResources, *, name: str) -> list[Link]:
        """Links the platform builds itself, beyond the vdevs' (e.g. Keem Bay IPC in a
        carveout, RTKit's application endpoints); asked once per run, after :meth:`start`.
        They follow the vdevs' links: down at a crash, closed when the run stops.
        Default: none."""
        return []

    @abstractmethod
    def wait_started(self) -> None:
        """Return once the processor is up (its vdevs are registered); raise if it fails.

        A platform that cannot tell returns at once.
        """

    @abstractmethod
    def watch(self, report: CrashReport) -> None:
        """Start watching for crashes of this run; call ``report`` at most once, from any thread."""

    @abstractmethod
    def stop(self, *, crashed: bool) -> None:
        """Stop the processor and its crash watch; ``crashed``: no need to be gentle."""
