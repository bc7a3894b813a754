"""The simple simulated processor: a firmware child process and one rpmsg link.

The host side is the virtio driver; the child gets the shared memory, two eventfd
doorbells and a lifeline socket by inheritance (see :mod:`..sim_layout`). The memory
holds the default resource table, processed as :class:`.SimRemoteProc` processes one
(:func:`..sim_layout.place_link`), and the link is registered the same way. The lifeline
tells each side when the other is gone, without a thread: it sits in the same epoll
set as the doorbell. For the remoteproc lifecycle (firmware resource tables, power
references, crash recovery, coredumps, trace) use :class:`.SimRemoteProc`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import Self

from ...memory.region import SharedRegion
from ...remoteproc.devmem import DeviceMemory
from ...remoteproc.resources import ProcessedResources
from ...remoteproc.vdevs import register_vdev
from ...rpmsg.bus import RpmsgBus
from ...transports.virtio_link import watch_lifeline
from ..sim_layout import LinkConfig, place_link
from .process import FirmwareProcess, Output
from .rproc import DEFAULT_BOOT_TIMEOUT


class SimProcessor:
    """A remote processor simulated by a child process running ``firmware``.

    ``firmware`` is a Python module name or ``.py`` path (optionally ``:function``,
    default ``main``), run by :mod:`amplink.firmware`; or, with ``native=True``, an
    executable following the convention of :mod:`..sim_layout`. After :meth:`start`,
    :attr:`link` is the host's rpmsg bus. ``poll_mode`` makes both sides spin on the
    rings; ``spin`` (seconds) lets both sides spin that long before each sleep.
    """

    def __init__(
        self,
        firmware: str,
        *,
        name: str = "sim0",
        config: LinkConfig | None = None,
        poll_mode: bool = False,
        spin: float = 0.0,
        native: bool = False,
        args: Sequence[str] = (),
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        stdout: Output = None,
        stderr: Output = None,
    ) -> None:
        self.firmware = firmware
        self.name = name
        self.config = config or LinkConfig()
        self.poll_mode = poll_mode
        self.spin = spin
        self.native = native
        self.args = list(args)
        self.boot_timeout = boot_timeout
        self._stdout = stdout
        self._stderr = stderr
        self._memory: DeviceMemory | None = None
        #: where the table, vrings and buffers lie in :attr:`region` (after :meth:`start`)
        self.resources: ProcessedResources | None = None
        #: the firmware's process (kept after :meth:`stop` for its exit status)
        self.process: subprocess.Popen[bytes] | None = None
        self._child: FirmwareProcess | None = None
        self._link: RpmsgBus | None = None

    @property
    def region(self) -> SharedRegion | None:
        """The processor's memory, shared with the firmware (after :meth:`start`)."""
        return None if self._memory is None else self._memory.pool

    @property
    def link(self) -> RpmsgBus:
        """The host's rpmsg bus to the firmware (after :meth:`start`)."""
        if self._link is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._link

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> RpmsgBus:
        """Start the firmware, set up the link, and wait until the firmware is up."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} is already started")
        try:
            self._memory, self.resources = memory, res = place_link(
                self.config, f"amplink-{self.name}")
            table, vdev = res.table_location, res.vdevs[0]
            assert table is not None
            if self.native:
                argv = [self.firmware, *self.args]
            else:
                argv = [sys.executable, "-m", "amplink.firmware", self.firmware, *self.args]
            self._child = child = FirmwareProcess.spawn(
                argv, name=self.name, region=memory.pool, table_offset=table.offset,
                table_size=table.length, buf_size=self.config.buf_size,
                poll_mode=self.poll_mode, spin=self.spin, stdout=self._stdout,
                stderr=self._stderr,
            )
            self.process = child.popen
            self._link = register_vdev(res, vdev, child.take_doorbell(0), name=self.name,
                                       buf_size=self.config.buf_size,
                                       poll_mode=self.poll_mode, spin=self.spin)
            child.wait_ready(self.boot_timeout, repr(self.firmware))
            watch_lifeline(self._link, child.lifeline,
                           lambda: f"{self.name}: the firmware process is gone "
                                   f"({child.exit_description(0.5)})")
        except BaseException:
            self.stop()
            raise
        return self._link

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Kill the firmware process at once (a simulated crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def stop(self, timeout: float = 5.0) -> int | None:
        """Close the link, stop the firmware process and free the shared memory.

        Returns the firmware's exit status (None if it was never started).
        """
        if self._link is not None:
            self._link.close()  # closes the transport, its waiter and doorbell
            self._link = None
        code = None
        if self._child is not None:
            code = self._child.stop(timeout)
            self._child = None
        if self._memory is not None:
            self._memory.close()
            self._memory = self.resources = None
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
