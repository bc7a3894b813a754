"""Simulated Apple RTKit co-processors under the remoteproc lifecycle.

:class:`RtkitRemoteProc` is the lifecycle engine (:class:`~amplink.remoteproc.core.
RemoteProc`: power references, state, events, crash handling with back-off, recovery,
coredumps) with :class:`RtkitOps`: starting the processor spawns the firmware child
(``python -m amplink.firmware.rtkit SPEC``) with a mailbox, its memory bus and its own
memory (:mod:`.layout`), and "started" means the RTKit boot completed (HELLO, endpoint
map, IOP ON, AP ON). A crash is the crashlog message (parsed into a report), the
process dying, or the co-processor breaking the mailbox; recovery resets it (a new
process) and boots again. Stopping is RTKit's shutdown (AP QUIESCED, IOP SLEEP, reinit)
before the process is stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..._args import finite_seconds_arg, int_arg, str_arg
from ...errors import AmplinkError
from ...link.runtime import Link
from ...memory.iommu import Iommu
from ...memory.region import SharedRegion
from ...notify.doorbell import Doorbell
from ...remoteproc.addrmap import DeviceAddressMap
from ...remoteproc.api import CrashReason
from ...remoteproc.core import RemoteProc, RestartPolicy
from ...remoteproc.coredump import CoredumpMode
from ...remoteproc.devmem import PAGE_SIZE, DeviceMemory
from ...remoteproc.image import LoadableImage
from ...remoteproc.ops import CrashReport, PlatformOps, StartInfo
from ...remoteproc.resources import ProcessedResources, VdevResource
from ...remoteproc.states import InvalidTransition, RprocState
from ...rtkit import messages as m
from ...rtkit.errors import RtkitNotRunning
from ...transports.mailbox import (
    DEFAULT_DEPTH,
    SEND_TIMEOUT,
    Mailbox,
    Role,
    create_mailbox_region,
    host_doorbells,
)
from ..sim.monitor import CrashMonitor
from ..sim.process import FirmwareProcess, Output
from .backend import rtkit_link
from .buffers import IovaHook, map_at_iova
from .dma import DmaServer
from .endpoints import EndpointCallback, RtkitEndpoint, SyslogRing
from .layout import RtkitEnv
from .runtime import ACK_TIMEOUT, RtkitHost, RtkitStatistics

log = logging.getLogger(__name__)

#: the co-processor's own memory (its SRAM; MMIO to the host)
DEFAULT_SRAM_SIZE = 64 << 10
DEFAULT_SRAM_BASE = 0x2_0000_0000
#: the IOVA window of its IOMMU (IOVAs of buffer requests have 44 bits)
DEFAULT_IOVA_BASE = 0x1_0000_0000
DEFAULT_IOVA_SIZE = 16 << 20
#: host memory its buffers may take in all
DEFAULT_BUFFER_BUDGET = 1 << 20
DEFAULT_BOOT_TIMEOUT = 20.0
DEFAULT_STOP_TIMEOUT = 5.0
_IOVA_LIMIT = 1 << m.IOVA_BITS


@dataclass(frozen=True, kw_only=True)
class RtkitOptions:
    """How a simulated RTKit co-processor runs (see :class:`RtkitRemoteProc`)."""

    name: str
    args: tuple[str, ...] = ()
    ack_timeout: float = ACK_TIMEOUT
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    sram_size: int = DEFAULT_SRAM_SIZE
    sram_base: int = DEFAULT_SRAM_BASE
    iova_base: int = DEFAULT_IOVA_BASE
    iova_size: int = DEFAULT_IOVA_SIZE
    mailbox_depth: int = DEFAULT_DEPTH
    buffer_budget: int = DEFAULT_BUFFER_BUDGET
    map_iova: IovaHook = map_at_iova
    stdout: Output = None
    stderr: Output = None

    def __post_init__(self) -> None:
        str_arg(self.name, "name")
        for arg in self.args:
            str_arg(arg, "args[]")
        finite_seconds_arg(self.ack_timeout, "ack_timeout", positive=True)
        finite_seconds_arg(self.boot_timeout, "boot_timeout", positive=True)
        finite_seconds_arg(self.stop_timeout, "stop_timeout")
        int_arg(self.sram_size, "sram_size", minimum=PAGE_SIZE)
        int_arg(self.sram_base, "sram_base", minimum=0, maximum=_IOVA_LIMIT - self.sram_size)
        int_arg(self.iova_size, "iova_size", minimum=PAGE_SIZE)
        int_arg(self.iova_base, "iova_base", minimum=PAGE_SIZE,
                maximum=_IOVA_LIMIT - self.iova_size)
        int_arg(self.mailbox_depth, "mailbox_depth", minimum=1, maximum=4096)
        int_arg(self.buffer_budget, "buffer_budget", minimum=0)


class RtkitImage(LoadableImage):
    """Python RTKit firmware, run by ``python -m amplink.firmware.rtkit``; nothing is
    loaded into device memory (the child imports the module)."""

    def __init__(self, spec: str) -> None:
        self.name = spec
        self.spec = spec

    @classmethod
    def from_spec(cls, spec: str) -> RtkitImage:
        """A ``.py`` path must exist (FileNotFoundError); a module name is found by the child."""
        target = spec.partition(":")[0]
        if target.endswith(".py") or os.sep in target:
            os.stat(target)
        return cls(spec)

    def resource_table(self) -> bytes | None:
        return None

    def load(self, addr_map: DeviceAddressMap) -> None:
        """Nothing to copy."""

    def argv(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "amplink.firmware.rtkit", self.spec, *args]


class RtkitOps(PlatformOps):
    """The platform half of a simulated RTKit co-processor (see the module docstring)."""

    def __init__(self, options: RtkitOptions, syslog: SyslogRing) -> None:
        self.options = options
        self.syslog = syslog
        #: the co-processor's IOMMU (the simulated DART/SART); its faults are the host's
        self.iommu = Iommu(f"{options.name}-dart", options.iova_base, options.iova_size)
        #: the current run's runtime, link and firmware process (None between runs)
        self.host: RtkitHost | None = None
        self.link: Link | None = None
        self.process: FirmwareProcess | None = None
        #: the report of the last crash (kept after recovery)
        self.last_crash_report = ""
        self._image: RtkitImage | None = None
        self._monitor: CrashMonitor | None = None

    def load_image(self, firmware: str) -> RtkitImage:
        return RtkitImage.from_spec(firmware)

    def allocate_memory(self) -> DeviceMemory:
        o = self.options
        sram = SharedRegion.memfd(o.sram_size, f"amplink-{o.name}-sram", da_base=o.sram_base)
        # The SRAM is the co-processor's internal memory (dumped by coredumps); nothing is
        # allocated from a pool, so the pool is that same region.
        return DeviceMemory(sram, internal=(sram,))

    def start(self, info: StartInfo) -> None:
        assert isinstance(info.image, RtkitImage), info.image
        o = self.options
        self._image = info.image
        sram = info.memory.pool
        region = create_mailbox_region(o.mailbox_depth, f"amplink-{o.name}-mailbox")
        owned: list[object] = [region]
        try:
            data, space, peer = host_doorbells()
            owned += [data, space]
            dma, dma_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            lifeline, lifeline_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            owned += [dma, lifeline]
            env = RtkitEnv(mbox_fd=region.fd, mbox_size=region.size, data_rx_fd=peer.data_rx,
                           data_tx_fd=peer.data_tx, space_rx_fd=peer.space_rx,
                           space_tx_fd=peer.space_tx, dma_fd=dma_child.fileno(),
                           sram_fd=sram.fd, sram_size=sram.size, sram_base=sram.da_base,
                           lifeline_fd=lifeline_child.fileno(), name=o.name)
            try:
                # its own process group: Ctrl-C is the host's, which stops it in order
                popen = subprocess.Popen(
                    info.image.argv(o.args), env={**os.environ, **env.to_env()},
                    pass_fds=env.pass_fds(), stdin=subprocess.DEVNULL, stdout=o.stdout,
                    stderr=o.stderr, process_group=0)
            finally:
                dma_child.close()
                lifeline_child.close()
        except BaseException:
            for thing in reversed(owned):
                thing.close()  # type: ignore[attr-defined]
            raise
        self.process = FirmwareProcess(popen, lifeline, [], o.name)  # stop() ends it
        try:
            self.host = RtkitHost(
                Mailbox(region, Role.AP, data, space), iommu=self.iommu, name=o.name,
                dma=DmaServer(dma, self.iommu), mmio=sram, syslog=self.syslog,
                ack_timeout=o.ack_timeout, buffer_budget=o.buffer_budget,
                map_iova=o.map_iova)
        except BaseException:
            for thing in (region, data, space, dma):
                thing.close()
            raise
        self.host.start()
        self.link = rtkit_link(self.host, name=o.name)

    def links(self, resources: ProcessedResources, *, name: str) -> list[Link]:
        return [] if self.link is None else [self.link]

    def doorbell(self, vdev: VdevResource) -> Doorbell:
        raise RuntimeError("an RTKit co-processor has no virtio devices")

    def wait_started(self) -> None:
        assert self.process is not None and self.host is not None and self._image is not None
        self.process.wait_ready(self.options.boot_timeout, repr(self._image.name))
        self.host.boot()

    def watch(self, report: CrashReport) -> None:
        assert self.process is not None and self.host is not None
        host = self.host

        def crashed(_crashlog: object, summary: str) -> None:
            self.last_crash_report = host.crash_report or f"{summary}\n"
            report(CrashReason.FATAL_ERROR, summary)

        self._monitor = CrashMonitor(self.process, report)
        self._monitor.start()
        host.watch_crash(crashed)

    def stop(self, *, crashed: bool) -> None:
        host, self.host = self.host, None
        link, self.link = self.link, None
        monitor, self._monitor = self._monitor, None
        process, self.process = self.process, None
        if link is not None:  # the engine closed it, unless the start failed before
            link.close("the co-processor crashed" if crashed else None)
        if host is not None and not crashed and host.running:
            try:
                host.shutdown()  # AP QUIESCED, IOP SLEEP, reinit: the co-processor's goodbye
            except (AmplinkError, OSError) as exc:
                log.warning("%s: RTKit shutdown: %s", self.options.name, exc)
        if monitor is not None:
            monitor.cancel()
            if process is not None:
                with contextlib.suppress(OSError):
                    process.lifeline.shutdown(socket.SHUT_RDWR)
            monitor.stop()
        if host is not None:
            if host.crash_report:
                self.last_crash_report = host.crash_report
            host.close("the co-processor was stopped")
        if process is not None:
            process.stop(0.0 if crashed else self.options.stop_timeout)


class RtkitRemoteProc(RemoteProc):
    """A simulated Apple RTKit co-processor with the remoteproc lifecycle.

    ``firmware`` is RTKit firmware for :mod:`amplink.firmware.rtkit` (a module name or
    ``.py`` path, optionally ``:function``). ``ack_timeout`` bounds every wait for the
    co-processor (Linux: 1 s); its memory is an SRAM of ``sram_size`` bytes at
    ``sram_base``, its IOMMU window ``[iova_base, iova_base + iova_size)``, and its
    buffers may take ``buffer_budget`` bytes of host memory; ``map_iova`` maps a buffer
    at an IOVA the co-processor chose (:data:`~.buffers.IovaHook`). See
    :class:`~amplink.remoteproc.core.RemoteProc` for the lifecycle::

        rproc = RtkitRemoteProc("amplink.firmware.examples.rtkit_echo")
        with rproc.acquire():
            ep = rproc.open_endpoint(0x20)
            ep.send(0x1234)
            print(hex(ep.recv(timeout=1)))
    """

    def __init__(
        self,
        firmware: str,
        *,
        name: str = "rtkit0",
        args: Sequence[str] = (),
        recovery: bool = True,
        restart: RestartPolicy | None = None,
        coredump: CoredumpMode | str = CoredumpMode.DISABLED,
        coredump_dir: str | os.PathLike[str] | None = None,
        coredump_keep: int = 20,
        ack_timeout: float = ACK_TIMEOUT,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        sram_size: int = DEFAULT_SRAM_SIZE,
        sram_base: int = DEFAULT_SRAM_BASE,
        iova_base: int = DEFAULT_IOVA_BASE,
        iova_size: int = DEFAULT_IOVA_SIZE,
        mailbox_depth: int = DEFAULT_DEPTH,
        buffer_budget: int = DEFAULT_BUFFER_BUDGET,
        map_iova: IovaHook = map_at_iova,
        stdout: Output = None,
        stderr: Output = None,
    ) -> None:
        options = RtkitOptions(
            name=name, args=tuple(args), ack_timeout=ack_timeout, boot_timeout=boot_timeout,
            stop_timeout=stop_timeout, sram_size=sram_size, sram_base=sram_base,
            iova_base=iova_base, iova_size=iova_size, mailbox_depth=mailbox_depth,
            buffer_budget=buffer_budget, map_iova=map_iova, stdout=stdout, stderr=stderr)
        #: the co-processor's syslog lines, across runs (what trace() shows)
        self.syslog = SyslogRing()
        self.ops = RtkitOps(options, self.syslog)
        super().__init__(self.ops, firmware, name=name, recovery=recovery, restart=restart,
                         coredump=coredump, coredump_dir=coredump_dir,
                         coredump_keep=coredump_keep)

    # -- the current run -------------------------------------------------------------------------
    @property
    def host(self) -> RtkitHost:
        """The RTKit runtime of the current run (RtkitNotRunning between runs)."""
        host = self.ops.host
        if host is None:
            raise RtkitNotRunning(f"{self.name} is {self.state}: no RTKit link now")
        return host

    @property
    def iommu(self) -> Iommu:
        """The co-processor's IOMMU: its attachments and faults."""
        return self.ops.iommu

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The current firmware process (None unless a run is active)."""
        child = self.ops.process
        return None if child is None else child.popen

    def kill(self) -> None:
        """Kill the firmware process at once: a crash, handled as any other."""
        child = self.ops.process
        if child is not None and child.popen.poll() is None:
            child.popen.kill()

    def open_endpoint(self, ep: int, callback: EndpointCallback | None = None) -> RtkitEndpoint:
        """Start application endpoint ``ep`` (0x20..0xff) and return it (see
        :meth:`RtkitHost.open_endpoint`); a new run needs a new endpoint."""
        return self.host.open_endpoint(ep, callback)

    def send(self, ep: int, msg: int, timeout: float | None = SEND_TIMEOUT) -> None:
        """Send a 64-bit message to endpoint ``ep`` (RtkitCrashed after a crash)."""
        self.host.send(ep, msg, timeout)

    def ping(self) -> float:
        """The round-trip time (s) of a management PING."""
        return self.host.ping()

    def rtkit_statistics(self) -> RtkitStatistics | None:
        """The RTKit state and counters of the current run (None between runs)."""
        host = self.ops.host
        return None if host is None else host.statistics()

    # -- power states ---------------------------------------------------------------------------
    def quiesce(self) -> None:
        """AP and IOP QUIESCED and reinit; the processor is ``suspended`` until :meth:`wake`."""
        self._sleep(RtkitHost.quiesce)

    def idle(self) -> None:
        """AP and IOP IDLE (state retained); ``suspended`` until :meth:`wake`."""
        self._sleep(RtkitHost.idle)

    def _sleep(self, how: Callable[[RtkitHost], None]) -> None:
        with self._op_lock:
            if self.state is not RprocState.RUNNING:
                raise InvalidTransition(f"{self.name} is {self.state}: only a running "
                                        "co-processor can sleep")
            how(self.host)
            self._set_state(RprocState.SUSPENDED)

    def wake(self) -> None:
        """IOP ON and boot again (the co-processor says HELLO again after QUIESCED)."""
        with self._op_lock:
            if self.state is not RprocState.SUSPENDED:
                raise InvalidTransition(f"{self.name} is {self.state}: only a suspended "
                                        "co-processor can wake")
            self.host.wake()
            self._set_state(RprocState.RUNNING)

    # -- what remoteproc shows ------------------------------------------------------------------
    def trace(self, index: int = 0) -> str:
        """The co-processor's syslog (its newest 64 KiB), across restarts."""
        int_arg(index, "index", minimum=0)
        return self.syslog.text() if index == 0 else ""

    def crashlog(self) -> str:
        """The report of the last crash ("" if it never crashed)."""
        return self.ops.last_crash_report

    def crash(self, reason: CrashReason = CrashReason.INJECTED) -> None:
        """Make the co-processor crash: ask it to (it writes its crashlog and says so, as
        m1n1's "crash_soft"); if it does not within ``ack_timeout``, report the crash."""
        host = self.ops.host
        with self._state_changed:
            before = self._crash_count
        if host is not None:
            try:
                host.request_crash()
            except (AmplinkError, OSError) as exc:
                log.info("%s: cannot ask the co-processor to crash (%s): reporting it", self.name,
                         exc)
            else:
                with self._state_changed:
                    if self._state_changed.wait_for(lambda: self._crash_count > before,
                                                    self.ops.options.ack_timeout):
                        return
        super().crash(reason)
