"""A remote processor whose lifecycle a test drives: the settings every
:class:`~amplink.remoteproc.api.RemoteProcessor` has, kept as set, and its events sent
to its subscribers (the shared subscriber list of the real processors). The fakes of
the platform and service tests (FakeHardware, LoopProcessor) add what they boot."""

from __future__ import annotations

import logging
from collections.abc import Callable

from amplink._subscribers import Subscribers
from amplink.remoteproc.api import RemoteProcessor, RprocEvent
from amplink.remoteproc.coredump import CoredumpMode
from amplink.remoteproc.states import RprocState

log = logging.getLogger(__name__)


class FakeProcessor(RemoteProcessor):
    """Offline at first; ``_set`` changes the state and tells the subscribers."""

    def __init__(self, name: str, firmware: str, *, recovery: bool = False) -> None:
        self.name = name
        self._firmware = firmware
        self._state = RprocState.OFFLINE
        self._recovery = recovery
        self._coredump = CoredumpMode.DISABLED
        self.users = 0
        self._subscribers: Subscribers[RprocEvent] = Subscribers(f"fake {name}", log)

    @property
    def state(self) -> RprocState:
        return self._state

    @property
    def firmware(self) -> str:
        return self._firmware

    @firmware.setter
    def firmware(self, value: str) -> None:
        self._firmware = value

    @property
    def recovery(self) -> bool:
        return self._recovery

    @recovery.setter
    def recovery(self, enabled: bool) -> None:
        self._recovery = enabled

    @property
    def coredump(self) -> CoredumpMode:
        return self._coredump

    @coredump.setter
    def coredump(self, mode: CoredumpMode) -> None:
        self._coredump = mode

    def subscribe(self, callback: Callable[[RprocEvent], object]) -> Callable[[], None]:
        return self._subscribers.subscribe(callback)

    def _set(self, state: RprocState, kind: str = "state") -> None:
        self._state = state
        self._subscribers.emit(RprocEvent(kind, state))
