"""The endpoint service in one process, fast: processors whose firmware is the test.

:class:`LoopProcessor` is a :class:`~amplink.remoteproc.api.RemoteProcessor` whose
boot makes a loopback link pair: the host end is what the service serves
(``links``), the device end (``device``) is the test's, to announce channels and
answer as firmware would. :func:`loop_service` serves such processors with a real
:class:`~amplink.service.supervisor.Supervisor` in a thread (both sockets, the policy,
the relay threads); clients connect through the real sockets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common_kit import wait_for
from fake_rproc import FakeProcessor

from amplink.link import Endpoint, Link
from amplink.platforms.linux import LinuxRemoteProc
from amplink.remoteproc.api import CrashReason
from amplink.remoteproc.states import RprocState
from amplink.service.policy import Policy
from amplink.service.supervisor import PID_FILE, Supervisor, SupervisorClient, prepare_runtime_dir
from amplink.transports.loopback import loopback_pair
from amplink.transports.service import connect_link, service_status

TIMEOUT = 5.0


class LoopProcessor(FakeProcessor):
    """A processor whose firmware is the test (see the module docstring); it recovers
    only when told to (``recover``), whatever its recovery setting says.

    ``boot_delay`` makes every boot take that long (a slow processor).
    """

    def __init__(self, name: str, firmware: str, boot_delay: float = 0.0) -> None:
        super().__init__(name, firmware)
        self.boot_delay = boot_delay
        self._links: list[Link] = []
        self.device: Link | None = None

    @property
    def links(self) -> list[Link]:
        return list(self._links)

    def boot(self) -> None:
        if self.users == 0:
            time.sleep(self.boot_delay)
            host, self.device = loopback_pair()
            self._links = [host]
            self._set(RprocState.RUNNING)
        self.users += 1

    def shutdown(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._stop("shut down")
            self._set(RprocState.OFFLINE)

    def _stop(self, reason: str | None) -> None:
        links, self._links = self._links, []
        for link in links:
            link.close(reason)
        if self.device is not None:
            self.device.close()
            self.device = None

    def crash(self, reason: CrashReason = CrashReason.INJECTED) -> None:
        """The firmware dies: the host's link goes down (LinkDown), as a real crash."""
        for link in self._links:
            link.mark_down(f"{self.name} crashed ({reason})")
        self._set(RprocState.CRASHED)

    def recover(self) -> None:
        self._stop("recovered")
        host, self.device = loopback_pair()
        self._links = [host]
        self._set(RprocState.RUNNING)

    def trace(self) -> str:
        return ""

    # -- the firmware's side ------------------------------------------------------------------
    def serve_echo(self, name: str = "rpmsg-echo", *,
                   reply: Callable[[bytes], bytes] = lambda b: b) -> Endpoint:
        """Announce ``name`` and answer each message to its sender with ``reply(payload)``."""
        assert self.device is not None

        def echo(ep: Endpoint, payload: bytes, src: int) -> None:
            ep.sendto(reply(payload), src)

        return self.device.create_endpoint(name, announce=True, callback=echo)

    def announce(self, name: str) -> Endpoint:
        """Announce ``name`` with an endpoint whose messages queue (the test reads them)."""
        assert self.device is not None
        return self.device.create_endpoint(name, announce=True)


@dataclass
class LoopService:
    """A supervisor in a thread serving LoopProcessors (see the module docstring)."""

    root: Path
    supervisor: Supervisor
    thread: threading.Thread
    made: dict[str, LoopProcessor] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)

    @property
    def control(self) -> SupervisorClient:
        return SupervisorClient(self.root, timeout=TIMEOUT)

    def boot(self, name: str = "loop0", *, echo: bool = True,
             reply: Callable[[bytes], bytes] = lambda b: b) -> LoopProcessor:
        """Add and boot processor ``name`` (through the control socket); with ``echo`` its
        firmware serves rpmsg-echo, answering ``reply(payload)``."""
        client = self.control
        dev, _ = client.add("loop-firmware", name)
        LinuxRemoteProc(dev, client.tree).boot()
        rproc = self.made[name]
        if echo:
            rproc.serve_echo(reply=reply)
        assert wait_for(lambda: self.serves(name, "rpmsg-echo" if echo else None), TIMEOUT)
        return rproc

    def serves(self, processor: str, channel: str | None = None) -> bool:
        """Whether the service serves a link of ``processor`` (with ``channel``)."""
        for p in service_status(self.root):
            if p.name == processor and p.links:
                return channel is None or any(c.name == channel for c in p.links[0].channels)
        return False

    def link(self, processor: str = "loop0", **options: Any) -> Link:
        """A client link (closed at the end of the test)."""
        options.setdefault("timeout", TIMEOUT)
        link = connect_link(processor, root=self.root, **options)
        self.links.append(link)
        return link

    def stop(self) -> None:
        for link in self.links:
            link.close()
        self.supervisor.stop()
        self.thread.join(TIMEOUT * 2)
        assert not self.thread.is_alive(), "the supervisor did not stop"


@contextmanager
def loop_service(tmp_path: Path, *, policy: Policy | None = None, boot_delay: float = 0.0,
                 root: Path | None = None) -> Iterator[LoopService]:
    """Serve LoopProcessors from ``root`` (default: ``tmp_path``/rt)."""
    root = prepare_runtime_dir(root if root is not None else tmp_path / "rt")
    made: dict[str, LoopProcessor] = {}

    def factory(name: str, firmware: str) -> LoopProcessor:
        made[name] = LoopProcessor(name, firmware, boot_delay)
        return made[name]

    supervisor = Supervisor(root, factory, idle_grace=60.0, tick=0.02, policy=policy)
    thread = threading.Thread(target=supervisor.serve, daemon=True, name="test-supervisor")
    thread.start()
    assert wait_for(lambda: (root / PID_FILE).exists(), TIMEOUT)
    service = LoopService(root, supervisor, thread, made)
    try:
        yield service
    finally:
        service.stop()
