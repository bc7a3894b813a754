"""Simulated remote processors under the remoteproc lifecycle.

:class:`SimRemoteProc` is the engine (:class:`~amplink.remoteproc.core.RemoteProc`) with
:class:`SimOps`: the processor's memory is one memfd (device addresses from
``da_base``), starting it spawns the firmware child by the convention of
:mod:`..sim_abi`, kicks are eventfds, and crashes are watched by a
:class:`.monitor.CrashMonitor`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..._args import finite_seconds_arg, int_arg, str_arg
from ...errors import InvalidArgument, InvalidArgumentType
from ...handover.port import AttachedBuffer, BufferPort
from ...link.runtime import Link
from ...link.waiting import DEFAULT_SPIN
from ...memory.access import Access
from ...memory.buffers import BufferSlice, SharedBuffer
from ...memory.iommu import Attachment, Fault, Iommu
from ...memory.region import SharedRegion
from ...notify.doorbell import Doorbell
from ...remoteproc.api import CrashReason, RprocEvent
from ...remoteproc.core import RemoteProc, RestartPolicy
from ...remoteproc.coredump import CoredumpMode
from ...remoteproc.devmem import PAGE_SIZE, DeviceMemory
from ...remoteproc.errors import NotBooted
from ...remoteproc.ops import CrashReport, PlatformOps, StartInfo
from ...remoteproc.resources import VdevResource
from ...transports.virtio_link import driver_link
from ...virtio.vdev import VIRTIO_ID_RPMSG, VdevControl
from ..sim_abi import DEFAULT_BOOT_TIMEOUT
from .images import NativeImage, PythonImage, SimImage, is_native
from .layout import LinkConfig
from .monitor import CrashMonitor
from .process import FirmwareProcess, Output

#: the simulated processor's memory: sparse, so only what is used costs anything
DEFAULT_MEMORY_SIZE = 4 << 20
#: its first device address; away from where executables are mapped, below 4 GiB
DEFAULT_DA_BASE = 0x8000_0000
#: the device-address window of its IOMMU (attached buffers): above 4 GiB, 1 TiB
DEFAULT_IOMMU_BASE = 0x1_0000_0000
DEFAULT_IOMMU_SIZE = 1 << 40
#: what a firmware access outside its attached buffers does: "report" (an event, counted)
#: or "crash" (also a crash, reason MMUFAULT)
MMU_FAULT_POLICIES = ("report", "crash")
DEFAULT_STOP_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True)
class SimOptions:
    """How a simulated processor runs (see :class:`SimRemoteProc` for their meaning)."""

    name: str
    native: bool | None = None
    args: tuple[str, ...] = ()
    config: LinkConfig = field(default_factory=LinkConfig)
    poll_mode: bool = False
    spin: float = DEFAULT_SPIN
    memory_size: int = DEFAULT_MEMORY_SIZE
    da_base: int = DEFAULT_DA_BASE
    watchdog: float | None = None
    iommu_base: int = DEFAULT_IOMMU_BASE
    iommu_size: int = DEFAULT_IOMMU_SIZE
    mmu_faults: str = "report"
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    stdout: Output = None
    stderr: Output = None

    def __post_init__(self) -> None:
        str_arg(self.name, "name")
        if self.native is not None and not isinstance(self.native, bool):
            raise InvalidArgumentType(f"native must be True, False or None, got {self.native!r}")
        for arg in self.args:
            str_arg(arg, "args[]")
        if not isinstance(self.config, LinkConfig):
            raise InvalidArgumentType(f"config must be a LinkConfig, got {self.config!r}")
        finite_seconds_arg(self.spin, "spin")
        int_arg(self.memory_size, "memory_size", minimum=PAGE_SIZE)
        int_arg(self.da_base, "da_base", minimum=0, maximum=(1 << 64) - self.memory_size)
        if self.watchdog is not None:
            finite_seconds_arg(self.watchdog, "watchdog", positive=True)
        int_arg(self.iommu_base, "iommu_base", minimum=0)
        int_arg(self.iommu_size, "iommu_size", minimum=PAGE_SIZE)
        if (self.iommu_base < self.da_base + self.memory_size
                and self.da_base < self.iommu_base + self.iommu_size):
            raise InvalidArgument(
                f"iommu_base/iommu_size: the IOMMU window 0x{self.iommu_base:x}+"
                f"0x{self.iommu_size:x} overlaps the memory at 0x{self.da_base:x}")
        if self.mmu_faults not in MMU_FAULT_POLICIES:
            raise InvalidArgument(f"mmu_faults must be one of {MMU_FAULT_POLICIES}, got "
                                  f"{self.mmu_faults!r}")
        finite_seconds_arg(self.boot_timeout, "boot_timeout", positive=True)
        finite_seconds_arg(self.stop_timeout, "stop_timeout")


class SimOps(PlatformOps):
    """The simulator's platform operations (see the module docstring)."""

    #: doorbell pairs the firmware gets after those of its rpmsg vdevs (a platform that
    #: builds links of its own needs theirs)
    extra_doorbells = 0

    def __init__(self, options: SimOptions) -> None:
        # per instance: the rpmsg driver hands buffers over through this run's port
        self.vdev_drivers = {VIRTIO_ID_RPMSG: self._rpmsg_link}
        self.options = options
        self.poll_mode = options.poll_mode
        self.spin = options.spin
        #: the current run's firmware process
        self.process: FirmwareProcess | None = None
        #: the last firmware process started (kept after it stopped, for its exit status)
        self.last_process: subprocess.Popen[bytes] | None = None
        #: exit status of the last firmware process that was stopped
        self.last_exit_status: int | None = None
        #: how long a stopped firmware may take to exit before it is killed
        self.stop_timeout = options.stop_timeout
        self._image: SimImage | None = None
        self._rpmsg_order: list[int] = []
        self._monitor: CrashMonitor | None = None
        #: the processor's IOMMU: what its firmware may reach of the host's buffers
        self.iommu = Iommu(options.name, options.iommu_base, options.iommu_size)
        #: the current run's buffer socket (None unless a run is active)
        self.port: BufferPort | None = None
        #: called with each fault the firmware causes (set by SimRemoteProc)
        self.on_fault: Callable[[Fault], object] | None = None

    def load_image(self, firmware: str) -> SimImage:
        o = self.options
        native = is_native(firmware) if o.native is None else o.native
        if native:
            return NativeImage.from_path(firmware, o.config)
        return PythonImage.from_spec(firmware, o.config, timeout=o.boot_timeout)

    def allocate_memory(self) -> DeviceMemory:
        o = self.options
        return DeviceMemory(SharedRegion.memfd(o.memory_size, f"amplink-{o.name}",
                                               da_base=o.da_base))

    def start(self, info: StartInfo) -> None:
        assert isinstance(info.image, SimImage), info.image
        table = info.resources.table_location
        region = info.memory.pool
        # The child learns the table's place as an offset in the one memory it gets.
        assert table is None or table.region is region, "the sim's table lives in its memory"
        self._image = info.image
        self._rpmsg_order = [v.index for v in info.resources.vdevs if v.is_rpmsg]
        o = self.options
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = FirmwareProcess.spawn(
                info.image.argv(o.args), name=o.name, region=region,
                table_offset=0 if table is None else table.offset,
                table_size=0 if table is None else table.length,
                buf_size=o.config.buf_size, poll_mode=o.poll_mode, spin=o.spin,
                vdevs=len(self._rpmsg_order) + self.extra_doorbells, watchdog=o.watchdog,
                buffers=child_end,
                stdout=o.stdout, stderr=o.stderr,
            )
        except BaseException:
            host_end.close()
            raise
        finally:
            child_end.close()
        self.last_process = self.process.popen
        self.port = BufferPort(o.name, host_end, self.iommu, on_fault=self._fault,
                               memory=info.resources.carveouts)

    def _rpmsg_link(self, region: SharedRegion, vdev: VdevControl, pool_offset: int,
                    doorbell: Doorbell, **options: Any) -> Link:
        """The rpmsg vdev driver: the host's link, which hands buffers over by reference
        through the run's buffer port (the ``send_by_reference`` capability)."""
        return driver_link(region, vdev, pool_offset, doorbell, buffers=self.port, **options)

    def _fault(self, fault: Fault) -> None:
        if self.on_fault is not None:
            self.on_fault(fault)

    def revoke_buffers(self) -> None:
        """The processor crashed: if it has buffers attached, kill its firmware (a crashed
        processor must not go on touching them) and take every buffer back at once."""
        port = self.port
        if port is None or not (port.attached() or len(port.table)):
            return
        process = self.process
        if process is not None and process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()
        self.port = None
        port.close()

    def doorbell(self, vdev: VdevResource) -> Doorbell:
        assert self.process is not None
        return self.process.take_doorbell(self._rpmsg_order.index(vdev.index))

    def wait_started(self) -> None:
        assert self.process is not None and self._image is not None
        self.process.wait_ready(self.options.boot_timeout, repr(self._image.name))

    def watch(self, report: CrashReport) -> None:
        assert self.process is not None
        self._monitor = CrashMonitor(self.process, report, watchdog=self.options.watchdog)
        self._monitor.start()

    def stop(self, *, crashed: bool) -> None:
        monitor, self._monitor = self._monitor, None
        process = self.process
        if monitor is not None:
            monitor.cancel()  # no report about this run from now on
            if process is not None:
                # Hang up before waiting for the watch: a firmware flooding its lifeline
                # gets EPIPE, and the watch, which reads a bounded amount per wake-up,
                # sees the stop request (and the hang-up) at its next poll. A shutdown,
                # not a close: the watch may be using the fd right now.
                with contextlib.suppress(OSError):
                    process.lifeline.shutdown(socket.SHUT_RDWR)
            monitor.stop()  # joins with a timeout
        if process is not None:
            self.last_exit_status = process.stop(0.0 if crashed else self.stop_timeout)
            self.process = None
        port, self.port = self.port, None
        if port is not None:
            port.close()  # the firmware is gone: every buffer it held is the CPU's again


class SimRemoteProc(RemoteProc):
    #: the platform operations (a subclass for firmware with links of another kind)
    ops_class: type[SimOps] = SimOps

    """A simulated remote processor with the remoteproc lifecycle.

    ``firmware`` is Python firmware (a module name or ``.py`` path, optionally
    ``:function``) or a native executable (detected by its ELF magic unless ``native``
    says so). ``watchdog`` is the heartbeat period in seconds the firmware must keep
    (None: no watchdog); ``config`` sizes the default resource table and the rpmsg
    buffers; ``spin`` (seconds) lets the firmware spin that long before each sleep;
    ``restart`` (a :class:`~amplink.remoteproc.core.RestartPolicy`) is how recovery backs
    off and when it gives up; :meth:`kill` crashes the firmware on purpose.

    Shared buffers: :meth:`attach` maps a buffer (or slice) into the processor's
    :attr:`iommu` window (``iommu_base``, ``iommu_size``; outside its memory) and into the
    firmware, which sees it at the device address returned and sees nothing else;
    :attr:`buffers` is the run's :class:`~amplink.handover.port.BufferPort` (its table
    says who holds what). A firmware access outside its attachments is a fault: counted,
    an ``mmufault`` event, and with ``mmu_faults="crash"`` a crash (reason MMUFAULT). A
    stop takes every buffer back and detaches them all; so does a crash, which also kills
    the firmware process at once if it had buffers attached. See
    :class:`~amplink.remoteproc.core.RemoteProc` for the lifecycle::

        rproc = SimRemoteProc("amplink.firmware.examples.echo")
        with rproc.acquire():
            ep = rproc.link.open_channel("rpmsg-echo", timeout=5)
    """

    def __init__(
        self,
        firmware: str,
        *,
        name: str = "sim0",
        native: bool | None = None,
        args: Sequence[str] = (),
        config: LinkConfig | None = None,
        poll_mode: bool = False,
        spin: float = DEFAULT_SPIN,
        memory_size: int = DEFAULT_MEMORY_SIZE,
        da_base: int = DEFAULT_DA_BASE,
        watchdog: float | None = None,
        iommu_base: int = DEFAULT_IOMMU_BASE,
        iommu_size: int = DEFAULT_IOMMU_SIZE,
        mmu_faults: str = "report",
        recovery: bool = True,
        restart: RestartPolicy | None = None,
        coredump: CoredumpMode | str = CoredumpMode.DISABLED,
        coredump_dir: str | os.PathLike[str] | None = None,
        coredump_keep: int = 20,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        stdout: Output = None,
        stderr: Output = None,
    ) -> None:
        options = SimOptions(
            name=name, native=native, args=tuple(args), config=config or LinkConfig(),
            poll_mode=poll_mode, spin=spin, memory_size=memory_size, da_base=da_base,
            watchdog=watchdog, iommu_base=iommu_base, iommu_size=iommu_size,
            mmu_faults=mmu_faults, boot_timeout=boot_timeout, stop_timeout=stop_timeout,
            stdout=stdout, stderr=stderr,
        )
        self.ops = self.ops_class(options)
        self.ops.on_fault = self._mmu_fault
        self.mmu_faults = options.mmu_faults
        self._mmu_fault_count = 0
        super().__init__(self.ops, firmware, name=name, recovery=recovery, restart=restart,
                         coredump=coredump, coredump_dir=coredump_dir,
                         coredump_keep=coredump_keep, buf_size=options.config.buf_size)
        self.subscribe(self._on_event)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The current firmware process (None unless a run is active)."""
        child = self.ops.process
        return None if child is None else child.popen

    def kill(self) -> None:
        """Kill the firmware process at once: a crash, handled as any other (no-op unless a
        run is active)."""
        child = self.ops.process
        if child is not None and child.popen.poll() is None:
            child.popen.kill()

    # -- shared buffers ----------------------------------------------------------------------
    @property
    def iommu(self) -> Iommu:
        """The processor's IOMMU (its attachments and faults; kept across runs)."""
        return self.ops.iommu

    @property
    def buffers(self) -> BufferPort:
        """The current run's buffer port (:class:`NotBooted` unless a run is active)."""
        port = self.ops.port
        if port is None:
            raise NotBooted(errno.EINVAL, f"{self.name} is not running: attach buffers to a "
                                          f"running processor")
        return port

    def attach(self, target: SharedBuffer | BufferSlice,
               access: Access | int = Access.READ_WRITE, da: int | None = None) -> Attachment:
        """Attach a buffer or slice to the running firmware; returns the attachment
        (its device address ``da``). Undone by :meth:`detach` or by the end of the run."""
        return self.buffers.attach(target, access, da)

    def detach(self, attachment: Attachment) -> None:
        """Detach: the firmware's mapping goes (this returns once it is gone)."""
        self.buffers.detach(attachment)

    def attached(self) -> list[AttachedBuffer]:
        """The current run's attachments (empty unless a run is active)."""
        port = self.ops.port
        return [] if port is None else port.attached()

    @property
    def mmu_fault_count(self) -> int:
        """Faults of this processor's firmware so far (all runs)."""
        return self._mmu_fault_count

    def _on_event(self, event: RprocEvent) -> None:
        if event.kind == "crash":  # in the crash handler, before any recovery
            self.ops.revoke_buffers()

    def _mmu_fault(self, fault: Fault) -> None:
        """The firmware touched what is not attached (from the port's reader thread)."""
        self._mmu_fault_count += 1
        self._emit("mmufault", str(fault))
        if self.mmu_faults == "crash":
            with self._state_lock:
                run = self._run
            self._report(run, CrashReason.MMUFAULT, str(fault))

    @property
    def pid(self) -> int | None:
        """The current firmware process's pid (None unless a run is active)."""
        child = self.ops.process
        return None if child is None else child.pid
