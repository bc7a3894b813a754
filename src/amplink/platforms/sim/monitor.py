"""The crash watch of a simulated processor: one small thread per run, off the message path.

It sleeps in ``poll`` on the firmware's lifeline, a pidfd of its process and a stop
eventfd, with the watchdog deadline as timeout, and reports the first of:

* a fatal-error message on the lifeline (FATAL_ERROR, with the firmware's reason);
* the process exiting or the lifeline closing (PROCESS_EXIT, with the exit status);
* no heartbeat within the watchdog period (WATCHDOG), when a period is set.

After one report it ends: the run is over, and the next run gets a new watch.

The firmware is untrusted: each wake-up reads at most :data:`LIFELINE_READ_MAX` bytes of
the lifeline and goes back to ``poll``, so a firmware that floods its lifeline can
neither keep the watch from seeing a stop request or a missed watchdog, nor make it
hold more than one read's worth of bytes.
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

#: the most the watch reads of the lifeline per wake-up
LIFELINE_READ_MAX = 64 << 10
#: how long :meth:`CrashMonitor.stop` waits for the watch thread to end
STOP_JOIN_TIMEOUT = 5.0


class CrashMonitor:
    """Watches one firmware process; :meth:`stop` ends the watch without a report."""

    def __init__(self, process: FirmwareProcess, report: CrashReport, *,
                 watchdog: float | None = None) -> None:
        self.process = process
        self.report = report
        self.watchdog = watchdog
        self.parser = LifelineParser()
        self._lock = threading.Lock()  # guards the fds and the hand-over below
        self._cancelled = threading.Event()
        self._ended = False     # the watch thread is done with the fds
        self._orphaned = False  # stop() gave up waiting: the thread closes the fds itself
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._pidfd: int | None = os.pidfd_open(process.pid)
        except OSError:  # no pidfd (old kernel): the lifeline closing is the only sign
            self._pidfd = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"amplink-{process.name}-monitor")

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Tell the watch to end without a report; returns at once (any thread)."""
        with self._lock:
            self._cancelled.set()
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)

    def stop(self, timeout: float = STOP_JOIN_TIMEOUT) -> None:
        """End the watch (from any thread, the watch's own included) and free its fds.

        Waits at most ``timeout`` s for the watch thread; one that is still busy then
        frees the fds when it ends.
        """
        self.cancel()
        thread = self._thread
        if thread is not threading.current_thread() and thread.ident is not None:
            thread.join(timeout)
        with self._lock:
            if self._wake < 0 or self._orphaned:
                return  # stopped already
            if thread.ident is not None and not self._ended:
                log.warning("%s: the crash watch did not end within %s s", self.process.name,
                            timeout)
                self._orphaned = True
                return
            self._close_fds()

    def _close_fds(self) -> None:  # with self._lock held
        for fd in (self._wake, self._pidfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._wake = -1
        self._pidfd = None

    def _run(self) -> None:
        try:
            verdict = self._watch()
        except Exception:  # noqa: BLE001 - a broken watch must not go unnoticed
            log.exception("%s: the crash watch failed", self.process.name)
            verdict = (CrashReason.UNKNOWN, "the crash watch failed")
        finally:
            with self._lock:
                self._ended = True
                if self._orphaned:
                    self._close_fds()
        if verdict is not None and not self._cancelled.is_set():
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
        """Read what the lifeline holds, up to LIFELINE_READ_MAX bytes.

        Returns (hung up, a fatal report, heartbeat seen). More may be waiting: the
        caller polls again, so a flood cannot keep it here.
        """
        try:
            data = self.process.lifeline.recv(LIFELINE_READ_MAX)
        except BlockingIOError:
            return False, None, False
        except OSError:  # reset, or the host closed its end while stopping
            data = b""
        if not data:
            return True, None, False
        fed = False
        for kind, reason in self.parser.feed(data):
            if kind == "fatal":
                return False, (CrashReason.FATAL_ERROR, reason), fed
            fed = fed or kind == "heartbeat"
        return False, None, fed

    def _exit_detail(self) -> str:
        how = self.process.exit_description(1.0)
        if how == "still running":
            return "the firmware closed its lifeline"
        return f"the firmware process ended ({how})"
