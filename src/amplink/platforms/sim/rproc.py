"""Simulated remote processors under the remoteproc lifecycle.

:class:`SimRemoteProc` is the engine (:class:`~amplink.remoteproc.core.RemoteProc`) with
:class:`SimOps`: the processor's memory is one memfd (device addresses from
``da_base``), starting it spawns the firmware child by the convention of
:mod:`..sim_abi`, kicks are eventfds, and crashes are watched by a
:class:`.monitor.CrashMonitor`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..._args import finite_seconds_arg, int_arg, str_arg
from ...errors import InvalidArgumentType
from ...memory.region import SharedRegion
from ...notify.doorbell import Doorbell
from ...remoteproc.core import RemoteProc, RestartPolicy
from ...remoteproc.coredump import CoredumpMode
from ...remoteproc.devmem import PAGE_SIZE, DeviceMemory
from ...remoteproc.ops import CrashReport, PlatformOps, StartInfo
from ...remoteproc.resources import VdevResource
from ...transports.virtio_link import driver_link
from ...virtio.vdev import VIRTIO_ID_RPMSG
from .images import NativeImage, PythonImage, SimImage, is_native
from .layout import LinkConfig
from .monitor import CrashMonitor
from .process import FirmwareProcess, Output

#: the simulated processor's memory: sparse, so only what is used costs anything
DEFAULT_MEMORY_SIZE = 4 << 20
#: its first device address; away from where executables are mapped, below 4 GiB
DEFAULT_DA_BASE = 0x8000_0000
DEFAULT_BOOT_TIMEOUT = 20.0
DEFAULT_STOP_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True)
class SimOptions:
    """How a simulated processor runs (see :class:`SimRemoteProc` for their meaning)."""

    name: str
    native: bool | None = None
    args: tuple[str, ...] = ()
    config: LinkConfig = field(default_factory=LinkConfig)
    poll_mode: bool = False
    spin: float = 0.0
    memory_size: int = DEFAULT_MEMORY_SIZE
    da_base: int = DEFAULT_DA_BASE
    watchdog: float | None = None
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
        finite_seconds_arg(self.boot_timeout, "boot_timeout", positive=True)
        finite_seconds_arg(self.stop_timeout, "stop_timeout")


class SimOps(PlatformOps):
    """The simulator's platform operations (see the module docstring)."""

    vdev_drivers = {VIRTIO_ID_RPMSG: driver_link}

    def __init__(self, options: SimOptions) -> None:
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
        self.process = FirmwareProcess.spawn(
            info.image.argv(o.args), name=o.name, region=region,
            table_offset=0 if table is None else table.offset,
            table_size=0 if table is None else table.length,
            buf_size=o.config.buf_size, poll_mode=o.poll_mode, spin=o.spin,
            vdevs=len(self._rpmsg_order), watchdog=o.watchdog,
            stdout=o.stdout, stderr=o.stderr,
        )
        self.last_process = self.process.popen

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


class SimRemoteProc(RemoteProc):
    """A simulated remote processor with the remoteproc lifecycle.

    ``firmware`` is Python firmware (a module name or ``.py`` path, optionally
    ``:function``) or a native executable (detected by its ELF magic unless ``native``
    says so). ``watchdog`` is the heartbeat period in seconds the firmware must keep
    (None: no watchdog); ``config`` sizes the default resource table and the rpmsg
    buffers; ``spin`` (seconds) lets the firmware spin that long before each sleep;
    ``restart`` (a :class:`~amplink.remoteproc.core.RestartPolicy`) is how recovery backs
    off and when it gives up; :meth:`kill` crashes the firmware on purpose. See
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
        spin: float = 0.0,
        memory_size: int = DEFAULT_MEMORY_SIZE,
        da_base: int = DEFAULT_DA_BASE,
        watchdog: float | None = None,
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
            watchdog=watchdog, boot_timeout=boot_timeout, stop_timeout=stop_timeout,
            stdout=stdout, stderr=stderr,
        )
        self.ops = SimOps(options)
        super().__init__(self.ops, firmware, name=name, recovery=recovery, restart=restart,
                         coredump=coredump, coredump_dir=coredump_dir,
                         coredump_keep=coredump_keep, buf_size=options.config.buf_size)

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

    @property
    def pid(self) -> int | None:
        """The current firmware process's pid (None unless a run is active)."""
        child = self.ops.process
        return None if child is None else child.pid
