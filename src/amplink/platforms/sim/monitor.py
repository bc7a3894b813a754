"""The crash watch of a simulated processor: one small thread per run, off the message path.

It sleeps in ``poll`` on the firmware's lifeline, a pidfd of its process and a stop
eventfd, with the watchdog deadline as timeout, and reports the first of:

* a fatal-error message on the lifeline (FATAL_ERROR, with the firmware's reason);
* the process exiting or the lifeline closing (PROCESS_EXIT, with the exit status);
* no heartbeat within the watchdog period (WATCHDOG), when a period is set.

After one report it ends: the run is over, and the next run gets a new watch.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

from ...remoteproc.api import CrashReason
from ...remoteproc.ops import CrashReport
from .process import FirmwareProcess, LifelineParser

log = logging.getLogger(__name__)

_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


class CrashMonitor:
    """Watches one firmware process; :meth:`stop` ends the watch without a report."""

    def __init__(self, process: FirmwareProcess, report: CrashReport, *,
                 watchdog: float | None = None) -> None:
        self.process = process
        self.report = report
        self.watchdog = watchdog
        self.parser = LifelineParser()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._pidfd: int | None = os.pidfd_open(process.pid)
        except OSError:  # no pidfd (old kernel): the lifeline closing is the only sign
            self._pidfd = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"amplink-{process.name}-monitor")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the watch (from any thread, the watch's own included) and free its fds."""
        if self._wake < 0:
            return
        os.eventfd_write(self._wake, 1)
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join()
        for fd in (self._wake, self._pidfd):
            if fd is not None:
                os.close(fd)
        self._wake = -1
        self._pidfd = None

    def _run(self) -> None:
        try:
            verdict = self._watch()
        except Exception:  # noqa: BLE001 - a broken watch must not go unnoticed
            log.exception("%s: the crash watch failed", self.process.name)
            verdict = (CrashReason.UNKNOWN, "the crash watch failed")
        if verdict is not None:
            self.report(*verdict)

    def _watch(self) -> tuple[CrashReason, str] | None:
        lifeline = self.process.lifeline.fileno()
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        poller.register(lifeline, _READABLE)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        period = self.watchdog
        deadline = None if not period else time.monotonic() + period
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = {fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)}
            if self._wake in ready:
                return None
            if lifeline in ready or self._pidfd in ready:
                eof, verdict, fed = self._read_lifeline()
                if verdict is not None:
                    return verdict
                if fed and period:
                    deadline = time.monotonic() + period
                if eof or self._pidfd in ready:
                    return CrashReason.PROCESS_EXIT, self._exit_detail()
            if deadline is not None and time.monotonic() >= deadline:
                return CrashReason.WATCHDOG, f"no heartbeat for {period} s"

    def _read_lifeline(self) -> tuple[bool, tuple[CrashReason, str] | None, bool]:
        """Drain the lifeline: (hung up, a fatal report, heartbeat seen)."""
        fed = False
        while True:
            try:
                data = self.process.lifeline.recv(4096)
            except BlockingIOError:
                return False, None, fed
            except OSError:
                data = b""
            if not data:
                return True, None, fed
            for kind, reason in self.parser.feed(data):
                if kind == "fatal":
                    return False, (CrashReason.FATAL_ERROR, reason), fed
                fed = fed or kind == "heartbeat"

    def _exit_detail(self) -> str:
        how = self.process.exit_description(1.0)
        if how == "still running":
            return "the firmware closed its lifeline"
        return f"the firmware process ended ({how})"
