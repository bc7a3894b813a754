"""Simulated remote processors: firmware running as a child process over shared memory.

The host side is the virtio driver; the child gets the shared memory, two eventfd
doorbells and a lifeline socket by inheritance (see :mod:`.sim_layout`). The lifeline
tells each side when the other is gone, without a thread: it sits in the same epoll
set as the doorbell.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Self

from ..errors import LinkDown
from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell, EventfdDoorbell, PollingDoorbell
from ..notify.waiter import Waiter
from ..rpmsg.bus import RpmsgBus
from ..transports.virtio import DriverRpmsgTransport, read_vdev_entry
from ..virtio.vdev import VdevControl
from . import sim_layout as L
from .sim_layout import LinkConfig, SimLayout

log = logging.getLogger(__name__)

DEFAULT_BOOT_TIMEOUT = 20.0
READY_BYTE = b"R"


class FirmwareStartError(LinkDown):
    """The firmware process exited or stayed silent before it came up."""


class SimProcessor:
    """A remote processor simulated by a child process running ``firmware``.

    ``firmware`` is a Python module name or ``.py`` path (optionally ``:function``,
    default ``main``), run by :mod:`amplink.firmware`; or, with ``native=True``, an
    executable following the convention of :mod:`.sim_layout`. After :meth:`start`,
    :attr:`link` is the host's rpmsg bus.
    """

    def __init__(
        self,
        firmware: str,
        *,
        name: str = "sim0",
        config: LinkConfig | None = None,
        poll_mode: bool = False,
        native: bool = False,
        args: Sequence[str] = (),
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        stdout: int | IO[bytes] | None = None,
        stderr: int | IO[bytes] | None = None,
    ) -> None:
        self.firmware = firmware
        self.name = name
        self.config = config or LinkConfig()
        self.poll_mode = poll_mode
        self.native = native
        self.args = list(args)
        self.boot_timeout = boot_timeout
        self._stdout = stdout
        self._stderr = stderr
        self.layout = SimLayout.plan(self.config)
        self.region: SharedRegion | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._link: RpmsgBus | None = None
        self._lifeline: socket.socket | None = None
        self._doorbell: Doorbell | None = None
        self._waiter: Waiter | None = None
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
            self._doorbell = doorbell = self._spawn()
            self._waiter = waiter = Waiter(doorbell)
            region = self.region
            assert region is not None
            vdev = VdevControl(region, self.layout.vdev_body_offset)
            entry = read_vdev_entry(region, self.layout.vdev_body_offset)
            self._transport = transport = DriverRpmsgTransport(
                region, vdev, entry, self.layout.pool_offset, doorbell, waiter,
                buf_size=self.config.buf_size,
            )
            self._wait_ready()
            self._link = RpmsgBus(transport, name=self.name, poll_mode=self.poll_mode)
            assert self._lifeline is not None
            waiter.watch(self._lifeline.fileno(), self._on_lifeline)
        except BaseException:
            self.stop()
            raise
        return self._link

    def _spawn(self) -> Doorbell:
        layout = self.layout
        self.region = region = SharedRegion.memfd(layout.size, f"amplink-{self.name}")
        region.write(L.RSC_TABLE_OFFSET, layout.table)
        host_rx = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fw_rx = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lifeline, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ)
            env.update({
                L.ENV_SHM_FD: str(region.fd), L.ENV_SHM_SIZE: str(region.size),
                L.ENV_DA_BASE: str(region.da_base), L.ENV_RSC_TABLE: str(L.RSC_TABLE_OFFSET),
                L.ENV_RSC_SIZE: str(L.RSC_TABLE_SPACE), L.ENV_KICK_RX_FD: str(fw_rx),
                L.ENV_KICK_TX_FD: str(host_rx), L.ENV_LIFELINE_FD: str(child_end.fileno()),
                L.ENV_BUF_SIZE: str(self.config.buf_size),
                L.ENV_POLL: "1" if self.poll_mode else "0", L.ENV_NAME: self.name,
            })
            if self.native:
                argv = [self.firmware, *self.args]
            else:
                argv = [sys.executable, "-m", "amplink.firmware", self.firmware, *self.args]
            self.process = subprocess.Popen(
                argv, env=env, pass_fds=(region.fd, fw_rx, host_rx, child_end.fileno()),
                stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr,
            )
        except BaseException:
            os.close(host_rx)
            os.close(fw_rx)
            raise
        finally:
            child_end.close()
        if self.poll_mode:
            os.close(host_rx)
            os.close(fw_rx)
            return PollingDoorbell()
        return EventfdDoorbell(host_rx, fw_rx)

    def _wait_ready(self) -> None:
        assert self._lifeline is not None and self.process is not None
        ready, _, _ = select.select([self._lifeline], [], [], self.boot_timeout)
        data = self._lifeline.recv(1) if ready else None
        if data == READY_BYTE:
            self._lifeline.setblocking(False)
            return
        if data is None:
            raise FirmwareStartError(
                f"{self.name}: firmware {self.firmware!r} did not come up within "
                f"{self.boot_timeout} s"
            )
        raise FirmwareStartError(
            f"{self.name}: firmware {self.firmware!r} exited before coming up "
            f"({self._exit_description()})"
        )

    def _exit_description(self, wait: float = 2.0) -> str:
        assert self.process is not None
        try:
            code = self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit status {code}"

    def _on_lifeline(self) -> None:
        assert self._lifeline is not None
        try:
            data = self._lifeline.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return
        link = self._link
        if link is not None:
            link.transport.waiter.unwatch(self._lifeline.fileno())
            link.mark_down(f"{self.name}: the firmware process is gone "
                           f"({self._exit_description(0.5)})")

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
        else:
            if self._waiter is not None:
                self._waiter.close()
            if self._doorbell is not None:
                self._doorbell.close()
        self._link = self._transport = self._waiter = self._doorbell = None
        if self._lifeline is not None:
            self._lifeline.close()  # the firmware sees EOF: the host is gone
            self._lifeline = None
        code = None
        if self.process is not None:
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s: firmware did not exit within %s s; killing it", self.name,
                            timeout)
                self.process.kill()
                code = self.process.wait()
        if self.region is not None:
            self.region.close()
            self.region = None
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
