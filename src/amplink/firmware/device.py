"""What Python firmware knows of its processor: memory, resource table, trace, lifeline.

Everything here reads the table the host processed, so it is checked like any other
value from shared memory: addresses are translated through the region's bounds checks.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import NoReturn, Self

from ..errors import AddressError, RemoteProtocolError
from ..handover.mapped import DeviceBuffers
from ..memory.region import SharedRegion
from ..notify.waiter import wait_readable
from ..platforms import sim_abi as L
from ..platforms.sim_abi import SimEnv
from ..remoteproc.rsc_table import Carveout, ResourceTable, Trace

#: the exit status of firmware that reported a fatal error and was not stopped in time
FATAL_EXIT_STATUS = 70
#: how long report_fatal() waits for the host to stop the processor
FATAL_HALT_TIMEOUT = 60.0


def fatal_message(reason: str) -> bytes:
    """The lifeline message that reports a fatal error: one line, cut to the limit."""
    text = reason.replace("\n", " ").encode("utf-8")[:L.FATAL_REASON_MAX]
    return L.LIFELINE_FATAL + text + L.LIFELINE_FATAL_END


class TraceWriter:
    """Appends text to an RSC_TRACE buffer, NUL-terminated, starting over when it is full.

    The terminator is written before the text, and the text's first byte last, so a
    reader never sees text that runs into stale bytes.
    """

    def __init__(self, view: memoryview) -> None:
        if len(view) < 2:
            raise ValueError("a trace buffer needs room for text and its NUL")
        self._view = view
        self._pos = 0
        self._lock = threading.Lock()
        view[0] = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        room = len(self._view) - 1
        if len(data) > room:
            data = data[-room:]
        if not data:
            return
        with self._lock:
            view, n = self._view, len(data)
            if self._pos + n > room:
                view[0] = 0
                self._pos = 0
            pos = self._pos
            view[pos + n] = 0
            view[pos + 1:pos + n] = data[1:]
            view[pos] = data[0]
            self._pos = pos + n

    def release(self) -> None:
        """Let go of the buffer (before its memory is unmapped)."""
        self._view.release()


class Device:
    """The firmware's processor: its memory, processed resource table and lifeline."""

    def __init__(self, region: SharedRegion, table: ResourceTable, table_offset: int,
                 lifeline: socket.socket, watchdog: float | None,
                 buffers: DeviceBuffers | None = None) -> None:
        self.region = region
        #: the host's buffers attached to this processor (None: the host passed no socket)
        self.buffers = buffers
        self.table = table
        self.table_offset = table_offset
        self.lifeline = lifeline
        self.watchdog = watchdog
        #: how often :meth:`feed_watchdog` really sends (None: no watchdog)
        self.feed_interval = None if watchdog is None else watchdog / 4
        self._last_feed = float("-inf")
        self._send_lock = threading.Lock()
        self._traces: dict[int, TraceWriter] = {}

    @classmethod
    def attach(cls, sim: SimEnv, region: SharedRegion) -> Self:
        """Read the table the host placed in ``region`` and take the lifeline."""
        try:
            raw = region.read(sim.table_offset, sim.table_size)
        except AddressError as exc:
            raise RemoteProtocolError(f"the host's resource table: {exc}") from None
        table = ResourceTable.parse(raw)
        lifeline = socket.socket(fileno=sim.lifeline_fd)
        buffers = None
        if sim.buffers_fd is not None:
            buffers = DeviceBuffers(socket.socket(fileno=sim.buffers_fd), sim.name)
        return cls(region, table, sim.table_offset, lifeline, sim.watchdog, buffers)

    # -- memory ------------------------------------------------------------------------------
    def _view(self, da: int, length: int, what: str) -> memoryview:
        try:
            return self.region.view(self.region.da_to_offset(da, length), length)
        except AddressError as exc:
            raise RemoteProtocolError(f"{what} at 0x{da:x}+0x{length:x}: {exc}") from None

    def carveout(self, name: str) -> memoryview:
        """A writable view of the carveout called ``name`` (KeyError if there is none)."""
        for _, entry in self.table.items(Carveout):
            if entry.name == name:
                return self._view(entry.da, entry.len, f"carveout {name!r}")
        raise KeyError(f"the resource table has no carveout {name!r}")

    def trace(self, index: int = 0) -> TraceWriter | None:
        """The writer of trace buffer ``index`` (None if the resource table has none)."""
        writer = self._traces.get(index)
        if writer is None:
            traces = self.table.items(Trace)
            if not 0 <= index < len(traces):
                return None
            entry = traces[index][1]
            writer = TraceWriter(self._view(entry.da, entry.len, f"trace buffer {index}"))
            self._traces[index] = writer
        return writer

    def close(self) -> None:
        """Release the trace buffers, the memory and the lifeline."""
        for writer in self._traces.values():
            writer.release()
        self._traces.clear()
        if self.buffers is not None:
            self.buffers.close()
        self.lifeline.close()
        try:
            self.region.close()
        except BufferError:
            pass  # the firmware still holds a carveout view: the mapping ends with the process

    # -- lifeline ----------------------------------------------------------------------------
    def send(self, message: bytes) -> None:
        """Send ``message`` to the host on the lifeline (dropped if the host is gone)."""
        with self._send_lock:
            try:
                self.lifeline.sendall(message)
            except BlockingIOError:
                pass  # the host is not reading: it will not miss one heartbeat
            except OSError:
                pass  # the host is gone; the link reports that

    def feed_watchdog(self) -> None:
        """Send a heartbeat if the last one is a quarter period old (no-op without a watchdog)."""
        if self.feed_interval is None:
            return
        now = time.monotonic()
        if now - self._last_feed >= self.feed_interval:
            self._last_feed = now
            self.send(L.LIFELINE_HEARTBEAT)

    def report_fatal(self, reason: str) -> NoReturn:
        """Tell the host about a fatal error, then halt until it stops the processor."""
        self.lifeline.settimeout(1.0)
        self.send(fatal_message(reason))
        deadline = time.monotonic() + FATAL_HALT_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            if wait_readable(self.lifeline, left):
                try:
                    if not self.lifeline.recv(64):
                        break  # EOF: the host stopped us
                except OSError:
                    break
        os._exit(FATAL_EXIT_STATUS)
