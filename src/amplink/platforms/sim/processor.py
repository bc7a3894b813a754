"""The simple simulated processor: a firmware child process and one rpmsg link.

The host side is the virtio driver; the child gets the shared memory, two eventfd
doorbells and a lifeline socket by inheritance (see :mod:`..sim_layout`). The lifeline
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
from ...notify.waiter import Waiter
from ...rpmsg.bus import RpmsgBus
from ...transports.virtio import DriverRpmsgTransport, read_vdev_entry
from ...virtio.vdev import VdevControl
from .. import sim_layout as L
from ..sim_layout import LinkConfig, SimLayout
from .process import FirmwareProcess, Output

DEFAULT_BOOT_TIMEOUT = 20.0


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
        self.layout = SimLayout.plan(self.config)
        self.region: SharedRegion | None = None
        #: the firmware's process (kept after :meth:`stop` for its exit status)
        self.process: subprocess.Popen[bytes] | None = None
        self._child: FirmwareProcess | None = None
        self._link: RpmsgBus | None = None
        self._transport: DriverRpmsgTransport | None = None

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
            self.region = region = SharedRegion.memfd(self.layout.size, f"amplink-{self.name}")
            region.write(L.RSC_TABLE_OFFSET, self.layout.table)
            if self.native:
                argv = [self.firmware, *self.args]
            else:
                argv = [sys.executable, "-m", "amplink.firmware", self.firmware, *self.args]
            self._child = child = FirmwareProcess.spawn(
                argv, name=self.name, region=region, table_offset=L.RSC_TABLE_OFFSET,
                table_size=L.RSC_TABLE_SPACE, buf_size=self.config.buf_size,
                poll_mode=self.poll_mode, spin=self.spin, stdout=self._stdout,
                stderr=self._stderr,
            )
            self.process = child.popen
            doorbell = child.take_doorbell(0)
            try:
                waiter = Waiter(doorbell)
            except BaseException:
                doorbell.close()
                raise
            body = self.layout.vdev_body_offset
            try:
                self._transport = DriverRpmsgTransport(
                    region, VdevControl(region, body), read_vdev_entry(region, body),
                    self.layout.pool_offset, doorbell, waiter, buf_size=self.config.buf_size,
                )
            except BaseException:
                waiter.close()
                doorbell.close()
                raise
            child.wait_ready(self.boot_timeout, repr(self.firmware))
            self._link = RpmsgBus(self._transport, name=self.name, poll_mode=self.poll_mode,
                                  spin=self.spin)
            waiter.watch(child.lifeline.fileno(), self._on_lifeline)
        except BaseException:
            self.stop()
            raise
        return self._link

    def _on_lifeline(self) -> None:
        child = self._child
        assert child is not None
        try:
            data = child.lifeline.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return
        link = self._link
        if link is not None:
            link.transport.waiter.unwatch(child.lifeline.fileno())
            link.mark_down(f"{self.name}: the firmware process is gone "
                           f"({child.exit_description(0.5)})")

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
        elif self._transport is not None:
            self._transport.close()
        self._link = self._transport = None
        code = None
        if self._child is not None:
            code = self._child.stop(timeout)
            self._child = None
        if self.region is not None:
            self.region.close()
            self.region = None
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
