"""A firmware child process started by the convention of :mod:`..sim_abi`.

The child inherits the shared memory, one eventfd pair per rpmsg vdev and its end of
the lifeline; the host keeps the other end of the lifeline and the doorbells.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import IO, Self

from ...errors import LinkDown
from ...link.waiting import DEFAULT_SPIN
from ...memory.region import SharedRegion
from ...notify.doorbell import Doorbell, EventfdDoorbell, PollingDoorbell
from ...notify.waiter import wait_readable
from .. import sim_abi as L

log = logging.getLogger(__name__)

Output = int | IO[bytes] | None


class FirmwareStartError(LinkDown):
    """The firmware process exited or stayed silent before it came up."""


class LifelineParser:
    """Splits the firmware's lifeline bytes into events (see :mod:`..sim_abi`).

    :meth:`feed` returns ``("ready" | "heartbeat" | "fatal", reason)`` tuples in order;
    between two fatal messages, a run of ready and heartbeat bytes gives at most one event
    of each kind (a flood of heartbeats is one heartbeat). A fatal reason longer than
    FATAL_REASON_MAX bytes is cut, and unknown bytes are counted in :attr:`ignored`.
    The bytes are scanned with bytes methods, not one by one: a firmware that floods its
    lifeline costs the host little.
    """

    def __init__(self) -> None:
        self._reason: bytearray | None = None  # inside an F ... \n message
        self.ignored = 0

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._reason is not None:
                stop = data.find(L.LIFELINE_FATAL_END, pos)
                cut = end if stop < 0 else stop
                room = L.FATAL_REASON_MAX - len(self._reason)
                if room > 0:
                    self._reason += data[pos:min(cut, pos + room)]
                if stop < 0:
                    break
                events.append(("fatal", _printable(bytes(self._reason))))
                self._reason = None
                pos = stop + 1
                continue
            fatal = data.find(L.LIFELINE_FATAL, pos)
            cut = end if fatal < 0 else fatal
            ready = data.count(L.LIFELINE_READY, pos, cut)
            heartbeats = data.count(L.LIFELINE_HEARTBEAT, pos, cut)
            self.ignored += cut - pos - ready - heartbeats
            if ready:
                events.append(("ready", ""))
            if heartbeats:
                events.append(("heartbeat", ""))
            if fatal < 0:
                break
            self._reason = bytearray()
            pos = fatal + 1
        return events


def _printable(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in text) or "(no reason given)"


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


class FirmwareProcess:
    """A running firmware child: its process, its lifeline and the host's doorbells."""

    def __init__(self, popen: subprocess.Popen[bytes], lifeline: socket.socket,
                 doorbells: list[Doorbell], name: str) -> None:
        self.popen = popen
        self.lifeline = lifeline
        self.name = name
        self._doorbells: list[Doorbell | None] = list(doorbells)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        name: str,
        region: SharedRegion,
        table_offset: int,
        table_size: int,
        buf_size: int,
        poll_mode: bool = False,
        spin: float = DEFAULT_SPIN,
        vdevs: int = 1,
        watchdog: float | None = None,
        buffers: socket.socket | None = None,
        stdout: Output = None,
        stderr: Output = None,
    ) -> Self:
        """Start ``argv`` with the memory, ``vdevs`` doorbell pairs and a lifeline (and
        ``buffers``, the child's end of its buffer socket, if given: the caller closes it)."""
        pairs: list[tuple[int, int]] = []  # (host reads, firmware reads)
        lifeline = child_end = None
        try:
            for _ in range(vdevs):
                pairs.append((_eventfd(), _eventfd()))
            lifeline, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            env = dict(os.environ)
            env.update(L.SimEnv(
                shm_fd=region.fd, shm_size=region.size, da_base=region.da_base,
                table_offset=table_offset, table_size=table_size,
                lifeline_fd=child_end.fileno(), buf_size=buf_size,
                kicks=tuple((fw_rx, host_rx) for host_rx, fw_rx in pairs), name=name,
                poll_mode=poll_mode, spin=spin, watchdog=watchdog,
                buffers_fd=None if buffers is None else buffers.fileno(),
            ).to_env())
            fds = (region.fd, child_end.fileno(), *(fd for pair in pairs for fd in pair),
                   *(() if buffers is None else (buffers.fileno(),)))
            # Its own process group: the terminal's Ctrl-C (SIGINT to the foreground group)
            # is the host's to handle, which then stops the firmware in order. A host that
            # dies any other way hangs up the lifeline, and the firmware exits.
            popen = subprocess.Popen(list(argv), env=env, pass_fds=fds, stdin=subprocess.DEVNULL,
                                     stdout=stdout, stderr=stderr, process_group=0)
        except BaseException:
            for fd in (fd for pair in pairs for fd in pair):
                os.close(fd)
            if lifeline is not None:
                lifeline.close()
            raise
        finally:
            if child_end is not None:
                child_end.close()
        doorbells: list[Doorbell] = []
        for host_rx, fw_rx in pairs:
            if poll_mode:  # the child polls the rings; its copies of the fds stay unused
                os.close(host_rx)
                os.close(fw_rx)
                doorbells.append(PollingDoorbell())
            else:
                doorbells.append(EventfdDoorbell(host_rx, fw_rx))
        return cls(popen, lifeline, doorbells, name)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def take_doorbell(self, index: int) -> Doorbell:
        """The host's doorbell of rpmsg vdev ``index``; the caller owns it from now on."""
        doorbell = self._doorbells[index]
        if doorbell is None:
            raise RuntimeError(f"the doorbell of vdev {index} was taken already")
        self._doorbells[index] = None
        return doorbell

    def wait_ready(self, timeout: float, what: str) -> None:
        """Wait for the ready byte; FirmwareStartError if the firmware dies or stays silent.

        Bytes after it stay in the socket for whoever watches the lifeline next.
        """
        parser = LifelineParser()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FirmwareStartError(f"{self.name}: firmware {what} did not come up within "
                                         f"{timeout} s")
            if not wait_readable(self.lifeline, remaining):
                continue
            try:
                data = self.lifeline.recv(1)
            except OSError:
                data = b""
            if not data:
                raise FirmwareStartError(f"{self.name}: firmware {what} exited before coming "
                                         f"up ({self.exit_description()})")
            for kind, reason in parser.feed(data):
                if kind == "ready":
                    self.lifeline.setblocking(False)
                    return
                if kind == "fatal":
                    raise FirmwareStartError(f"{self.name}: firmware {what} reported a fatal "
                                             f"error before coming up: {reason}")

    def exit_description(self, wait: float = 2.0) -> str:
        """How the process ended ("still running" if it did not within ``wait`` s)."""
        try:
            code = self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit status {code}"

    def stop(self, timeout: float) -> int:
        """Hang up the lifeline, give the firmware ``timeout`` s to exit, then kill it.

        Also closes the doorbells nobody took. Returns the exit status.
        """
        for i, doorbell in enumerate(self._doorbells):
            if doorbell is not None:
                doorbell.close()
                self._doorbells[i] = None
        self.lifeline.close()  # the firmware sees EOF: the host is gone
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            if timeout:
                log.warning("%s: firmware did not exit within %s s; killing it", self.name,
                            timeout)
            self.popen.kill()
            return self.popen.wait()
