"""ADAPTER TO REPLACE: a minimal RemoteProcessor over today's :class:`SimProcessor`.

The supervisor creates its processors with :func:`make_sim_processor` and speaks only
the :class:`~amplink.remoteproc.api.RemoteProcessor` API (plus the optional
:class:`~amplink.service.supervisor.ReportsChannels`). When the full simulated
lifecycle (``SimRemoteProc``: firmware loading, crash recovery, coredump, trace
buffer) lands, :func:`make_sim_processor` returns it instead and this module goes.

What the adapter does: boot/shutdown reference count; start/stop/kill of the firmware
process; state offline/running/crashed from that process (a process that exits on its
own is a crash, noticed when the state is read); recovery = stop + start again;
recovery and coredump are stored settings (no dump is written); the "trace" is the
tail of the firmware's stdout and stderr.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..platforms.linux.errors import ProcessorBusy
from ..platforms.sim import FirmwareStartError, SimProcessor
from ..remoteproc.api import CrashReason, RemoteProcessor, RprocEvent
from ..remoteproc.coredump import CoredumpMode
from ..remoteproc.states import InvalidTransition, RprocState
from ..rpmsg.wire import RPMSG_ADDR_ANY

log = logging.getLogger(__name__)

TRACE_LIMIT = 16 * 1024  # like a small RSC_TRACE buffer: the tail of the output


def make_sim_processor(name: str, firmware: str) -> RemoteProcessor:
    """The supervisor's processor factory (the one line to change for SimRemoteProc)."""
    return SimProcessAdapter(name, firmware)


def check_firmware(spec: str) -> None:
    """FileNotFoundError (ENOENT, like the kernel's request_firmware) unless ``spec``
    names an existing ``.py`` file or an importable module (``:function`` allowed)."""
    target = spec.partition(":")[0]
    if target.endswith(".py") or os.sep in target:
        found = Path(target).is_file()
    else:
        try:
            found = importlib.util.find_spec(target) is not None
        except (ImportError, ValueError):
            found = False
    if not found:
        raise FileNotFoundError(errno.ENOENT, f"firmware {spec!r}: no such Python module or "
                                ".py file (modules must be importable by the supervisor)")


class SimProcessAdapter(RemoteProcessor):
    """A simulated processor: one firmware child process per boot."""

    def __init__(self, name: str, firmware: str, *, boot_timeout: float = 20.0) -> None:
        self.name = name
        self._firmware = firmware
        self.boot_timeout = boot_timeout
        self._state = RprocState.OFFLINE
        self._users = 0
        self._recovery = True
        self._coredump = CoredumpMode.DISABLED
        self._sim: SimProcessor | None = None
        self._output: IO[bytes] | None = None
        self._subscribers: list[Callable[[RprocEvent], None]] = []
        self.crash_count = 0

    # -- settings -----------------------------------------------------------------------
    @property
    def state(self) -> RprocState:
        if self._state is RprocState.RUNNING and self._sim is not None and not self._sim.running:
            self._crashed(CrashReason.PROCESS_EXIT)
        return self._state

    @property
    def firmware(self) -> str:
        return self._firmware

    @firmware.setter
    def firmware(self, value: str) -> None:
        if self._state is not RprocState.OFFLINE:
            raise ProcessorBusy(errno.EBUSY, f"{self.name}: cannot change the firmware while "
                                f"{self._state}")
        self._firmware = value

    @property
    def recovery(self) -> bool:
        return self._recovery

    @recovery.setter
    def recovery(self, enabled: bool) -> None:
        self._recovery = bool(enabled)

    @property
    def coredump(self) -> CoredumpMode:
        return self._coredump

    @coredump.setter
    def coredump(self, mode: CoredumpMode) -> None:
        if self._state is RprocState.CRASHED:
            raise ProcessorBusy(errno.EBUSY, f"{self.name}: cannot change the coredump setting "
                                "while crashed")
        self._coredump = CoredumpMode(mode)

    # -- lifecycle ----------------------------------------------------------------------
    def boot(self) -> None:
        if self._users == 0:
            self._start()
            self._set_state(RprocState.RUNNING, "booted")
        self._users += 1

    def shutdown(self) -> None:
        if self._users == 0:
            raise InvalidTransition(f"{self.name}: shutdown() without boot()")
        self._users -= 1
        if self._users == 0:
            self._stop()
            if self._output is not None:
                self._output.close()
                self._output = None
            self._set_state(RprocState.OFFLINE, "shut down")

    def crash(self, reason: CrashReason = CrashReason.INJECTED) -> None:
        state = self.state
        if state is RprocState.CRASHED:
            return  # handled once
        if state is not RprocState.RUNNING:
            raise InvalidTransition(f"{self.name} is {state}: only a running processor can crash")
        if self._sim is not None:
            self._sim.kill()
        self._crashed(CrashReason(reason))

    def _crashed(self, reason: CrashReason) -> None:
        self.crash_count += 1
        log.warning("%s: crash #%d (%s)", self.name, self.crash_count, reason)
        self._set_state(RprocState.CRASHED, str(reason), kind="crash")
        if self._recovery:
            try:
                self.recover()
            except Exception:  # reported, not raised: a crash is noticed inside `state`
                log.exception("%s: recovery failed; the processor stays crashed", self.name)

    def recover(self) -> None:
        if self._state is RprocState.OFFLINE:
            raise InvalidTransition(f"{self.name} is offline: boot it instead of recovering")
        self._stop()
        self._start()
        self._set_state(RprocState.RUNNING, "recovered", kind="recovered")

    def _start(self) -> None:
        check_firmware(self._firmware)
        output = tempfile.TemporaryFile(prefix=f"amplink-{self.name}-")
        sim = SimProcessor(self._firmware, name=self.name, boot_timeout=self.boot_timeout,
                           stdout=output, stderr=output)
        try:
            sim.start()
        except FirmwareStartError as exc:
            last = _last_line(_tail(output))
            output.close()
            raise FirmwareStartError(f"{exc}{'; it said: ' + last if last else ''}") from None
        except BaseException:
            output.close()
            raise
        if self._output is not None:
            self._output.close()
        self._sim, self._output = sim, output

    def _stop(self) -> None:
        sim, self._sim = self._sim, None
        if sim is not None:
            code = sim.stop()
            log.info("%s: firmware exit status %s", self.name, code)

    def _set_state(self, state: RprocState, detail: str, *, kind: str = "state") -> None:
        self._state = state
        self._emit(RprocEvent(kind, state, detail))

    # -- trace, channels, events --------------------------------------------------------
    def trace(self) -> str:
        if self._output is None:
            return ""
        return _tail(self._output).decode("utf-8", errors="replace")

    def channels(self) -> list[tuple[str, int, int]]:
        """The link's channels as (name, local address, remote address); [] when down."""
        sim = self._sim
        if sim is None or self.state is not RprocState.RUNNING:
            return []
        try:
            link = sim.link
            link.poll()  # take in announcements made since the last look
        except (RuntimeError, OSError) as exc:
            log.debug("%s: no channels: %s", self.name, exc)
            return []
        return [(c.name, c.endpoint.addr if c.endpoint is not None else RPMSG_ADDR_ANY, c.dst)
                for c in link.channels()]

    def subscribe(self, callback: Callable[[RprocEvent], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)
        return unsubscribe

    def _emit(self, event: RprocEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not break the lifecycle
                log.exception("%s: event callback %r raised", self.name, callback)


def _tail(output: IO[bytes]) -> bytes:
    size = os.fstat(output.fileno()).st_size
    return os.pread(output.fileno(), TRACE_LIMIT, max(0, size - TRACE_LIMIT))


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""
