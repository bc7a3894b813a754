"""A peer of OpenAMP's Linux-userspace profile as a remote processor (for the service).

OpenAMP runs its remote as a Linux process of its own. :class:`OpenAmpRemoteProc` lets
a supervisor hold such a peer like any processor: booting opens the host's side of the
profile and waits for the peer program (started separately) to connect; its link is
then served to clients (``amplink send/listen``) like a simulated processor's. The
"firmware" is a spec, :data:`SPEC_PREFIX` followed by the shared memory name and the
socket path (``openamp:`` alone: OpenAMP's defaults)::

    amplink boot openamp:amplink-demo.shm:/tmp/amplink-demo.sock --name peer

The peer's lifetime is its own: when it exits the link goes down (clients get
LinkDown) and the processor reads "crashed"; there is no automatic recovery (recover()
waits for the peer again) and nothing to dump.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable

from ..._subscribers import Subscribers
from ...errors import InvalidArgument
from ...link.runtime import Link
from ...remoteproc.api import CrashReason, RemoteProcessor, RprocEvent
from ...remoteproc.coredump import CoredumpMode
from ...remoteproc.errors import NotBooted
from ...remoteproc.states import InvalidTransition, RprocState
from .link import OpenAmpLink
from .profile import OpenAmpConfig

log = logging.getLogger(__name__)

#: what a firmware name starts with to mean an OpenAMP-profile peer
SPEC_PREFIX = "openamp:"
#: how long a boot waits for the peer (less than a control request may take)
BOOT_TIMEOUT = 25.0


def config_from_spec(spec: str) -> OpenAmpConfig:
    """``openamp:[SHM[:SOCKET]]`` as a config (InvalidArgument if it is not one)."""
    if not spec.startswith(SPEC_PREFIX):
        raise InvalidArgument(f"{spec!r} is not an OpenAMP peer spec ({SPEC_PREFIX}SHM:SOCKET)")
    shm, _, socket_path = spec[len(SPEC_PREFIX):].partition(":")
    defaults = OpenAmpConfig()
    try:
        return OpenAmpConfig(shm_name=shm or defaults.shm_name,
                             socket_path=socket_path or defaults.socket_path)
    except ValueError as exc:
        raise InvalidArgument(f"{spec!r}: {exc}") from None


class OpenAmpRemoteProc(RemoteProcessor):
    """An OpenAMP-profile peer held as a remote processor (see the module docstring).

    The host side is the socket server (the peer connects, as OpenAMP's remote demo
    does by default); ``timeout`` bounds the wait for it at boot.
    """

    def __init__(self, firmware: str, *, name: str = "openamp0",
                 timeout: float = BOOT_TIMEOUT) -> None:
        self.name = name
        self.timeout = timeout
        self._spec = firmware
        self._config = config_from_spec(firmware)
        self._link: OpenAmpLink | None = None
        self._crashed = False
        self._recovery = False
        self._coredump = CoredumpMode.DISABLED
        self._users = 0
        self._lock = threading.RLock()
        self._subscribers: Subscribers[RprocEvent] = Subscribers(f"{self.name} events", log)

    @property
    def state(self) -> RprocState:
        link = self._link
        if link is None:
            return RprocState.OFFLINE
        return RprocState.CRASHED if self._crashed or not link.bus.is_up else RprocState.RUNNING

    @property
    def firmware(self) -> str:
        return self._spec

    @firmware.setter
    def firmware(self, value: str) -> None:
        with self._lock:
            if self._link is not None:
                raise InvalidTransition(f"{self.name} is {self.state}: the peer spec can only "
                                        "change while offline")
            self._config = config_from_spec(value)
            self._spec = value

    @property
    def recovery(self) -> bool:
        return self._recovery

    @recovery.setter
    def recovery(self, enabled: bool) -> None:
        self._recovery = bool(enabled)  # kept for the files; the peer recovers itself

    @property
    def coredump(self) -> CoredumpMode:
        return self._coredump

    @coredump.setter
    def coredump(self, mode: CoredumpMode) -> None:
        self._coredump = CoredumpMode(mode)  # kept for the files; there is nothing to dump

    @property
    def links(self) -> list[Link]:
        """The host's link to the peer (empty while offline)."""
        link = self._link
        return [] if link is None else [link.bus]

    def boot(self) -> None:
        with self._lock:
            if self._users == 0:
                self._open()
            self._users += 1

    def _open(self) -> None:
        self._link = OpenAmpLink.open("host", server=True, config=self._config,
                                      timeout=self.timeout, name=self.name)
        self._crashed = False
        self._emit("state")

    def shutdown(self) -> None:
        with self._lock:
            if self._users == 0:
                raise NotBooted(errno.EINVAL,
                                f"{self.name}: shutdown() without a matching boot()")
            self._users -= 1
            if self._users == 0:
                self._close()
                self._emit("state")

    def _close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def recover(self) -> None:
        """Wait for the peer again (a crashed processor; no-op while running)."""
        with self._lock:
            if self.state is RprocState.RUNNING:
                return
            if self._link is None:
                raise InvalidTransition(f"{self.name} is offline: boot it")
            self._close()
            self._open()
            self._emit("recovered")

    def crash(self, reason: CrashReason = CrashReason.INJECTED) -> None:
        """The link goes down (as when the peer dies); the peer process is not touched."""
        link = self._link
        if link is None or self._crashed:
            return
        self._crashed = True
        link.bus.mark_down(f"{self.name} crashed ({reason})")
        self._emit("crash", str(reason))

    def trace(self) -> str:
        return ""

    def subscribe(self, callback: Callable[[RprocEvent], object]) -> Callable[[], None]:
        return self._subscribers.subscribe(callback)

    def _emit(self, kind: str, detail: str = "") -> None:
        self._subscribers.emit(RprocEvent(kind, self.state, detail))
