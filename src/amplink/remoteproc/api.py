"""The remote-processor API shared by every platform (simulated and real hardware).

``platforms.sim`` and ``platforms.linux`` (and the CLI, which only speaks this API)
implement :class:`RemoteProcessor`. The power reference count follows the kernel's
rproc_boot()/rproc_shutdown(): the first boot really starts the processor, the last
shutdown really stops it; :meth:`RemoteProcessor.acquire` is the get/put style.
"""

from __future__ import annotations

import contextlib
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .coredump import CoredumpMode
from .states import RprocState


class CrashReason(enum.StrEnum):
    """Why a processor crashed (the kernel's rproc_crash_type, plus a dead process)."""

    MMUFAULT = "mmufault"
    WATCHDOG = "watchdog"
    FATAL_ERROR = "fatal error"
    PROCESS_EXIT = "process exit"  # a simulated processor's process died
    INJECTED = "injected"          # `amplink crash` / RemoteProcessor.crash()
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class RprocEvent:
    """Delivered to subscribers: a state change, a crash, a recovery, a coredump."""

    kind: str  # "state", "crash", "recovered", "coredump", "error" (a failed recovery/dump),
    #            "mmufault" (the firmware touched memory not attached to it)
    state: RprocState
    detail: str = ""


class RemoteProcessor(ABC):
    """One remote processor, whatever backs it."""

    name: str

    @property
    @abstractmethod
    def state(self) -> RprocState:
        """The current state."""

    @property
    @abstractmethod
    def firmware(self) -> str:
        """The firmware name (settable only while offline)."""

    @firmware.setter
    @abstractmethod
    def firmware(self, value: str) -> None: ...

    @property
    @abstractmethod
    def recovery(self) -> bool:
        """Whether a crash is followed by automatic recovery."""

    @recovery.setter
    @abstractmethod
    def recovery(self, enabled: bool) -> None: ...

    @property
    @abstractmethod
    def coredump(self) -> CoredumpMode:
        """What a crash dumps (settable except while crashed)."""

    @coredump.setter
    @abstractmethod
    def coredump(self, mode: CoredumpMode) -> None: ...

    @abstractmethod
    def boot(self) -> None:
        """Count one more user; the first one loads the firmware and starts the processor."""

    @abstractmethod
    def shutdown(self) -> None:
        """Count one user less; the last one stops the processor (vdevs and channels go)."""

    @abstractmethod
    def recover(self) -> None:
        """Recover now (stop, dump if enabled, reload, start) whatever the recovery setting."""

    @abstractmethod
    def crash(self, reason: CrashReason = CrashReason.INJECTED) -> None:
        """Report (or, on a simulator, inject) a crash; handled once."""

    @abstractmethod
    def trace(self) -> str:
        """The trace buffer's text (empty if the firmware has none)."""

    @abstractmethod
    def subscribe(self, callback: Callable[[RprocEvent], object]) -> Callable[[], None]:
        """Call ``callback`` on every event; returns a function that unsubscribes."""

    @contextlib.contextmanager
    def acquire(self) -> Iterator[RemoteProcessor]:
        """``with rproc.acquire():`` boots (one user more) and shuts down (one user less)."""
        self.boot()
        try:
            yield self
        finally:
            self.shutdown()
