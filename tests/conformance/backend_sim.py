"""The simulator: the host link in this process, the far side a child process.

The child runs the peer agent firmware (``peer_agent.py``), driven over a control
socket of its own (see :class:`peers.AgentPeer`). Booting a processor costs two Python
start-ups (the resource-table reader and the firmware), so a processor whose case left
it clean is reset and reused by the next case; one that a case damaged (killed peer,
garbage, closed link) or that does not reset cleanly is stopped, and the next case
boots a fresh one; so is one whose host link started dispatcher threads (they drain the
rings unasked: the link no longer behaves as a fresh one). The pool is emptied after
the folder's last case.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backends import RUN_PREFIX, BackendCase, Harness, Side
from peers import AgentPeer, ControlListener

from amplink import SimProcessor
from amplink.errors import AmplinkError
from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.platforms.sim.layout import LinkConfig

log = logging.getLogger(__name__)

AGENT = str(Path(__file__).resolve().parent / "peer_agent.py")
BOOT_TIMEOUT = 15.0
#: how long a reset may wait for either side to see the other's channels go
RESET_TIMEOUT = 2.0


class SimRig:
    """One simulated processor running the agent, and the agent's peer."""

    #: processors booted in this run (for the suite's own statistics)
    booted = 0

    def __init__(self, config: LinkConfig) -> None:
        type(self).booted += 1
        self.listener = ControlListener(RUN_PREFIX + "ctl-")
        self.proc = self.processor(config, self.listener.path)
        self.peer: AgentPeer | None = None
        try:
            self.proc.start()
            sock = self.listener.accept(BOOT_TIMEOUT)
            self.peer = AgentPeer(sock, self.proc.kill)
        except BaseException:
            self.close()
            raise

    def processor(self, config: LinkConfig, control: str) -> SimProcessor:
        """The processor running the agent, which connects to ``control``."""
        return SimProcessor(AGENT, name="conformance", config=config, args=[control],
                            boot_timeout=BOOT_TIMEOUT)

    def idle(self, backend: Mapping[str, Any]) -> bool:
        """Whether the host link's transmit side is as a fresh one's (its statistics)."""
        return bool(backend["tx_buffers_free"] == backend["tx_buffers"])

    def reset(self) -> bool:
        """Bring both sides back to a fresh link; False if that failed (stop it then)."""
        link = self.proc.link
        peer = self.peer
        try:
            if peer is None or not peer.alive or not self.proc.running or not link.is_up:
                return False
            # A link that ran callbacks keeps its dispatcher threads, which drain the rings
            # without being asked: it no longer behaves as a fresh one would.
            dispatchers = f"amplink-{link.name}-dispatch"
            if any(t.name.startswith(dispatchers) for t in threading.enumerate()):
                return False
            # first the agent takes what waits in its rings: the host's end-of-service
            # announcements need free buffers
            peer.call("drain")
            for ep in link.endpoints():
                ep.close()
            if not peer.call("reset", timeout=RESET_TIMEOUT):
                return False
            if not link.wait_channels(lambda channels: not channels, RESET_TIMEOUT):
                return False
            link.poll(dispatch=False)
            stats = link.statistics()
            backend = stats.backend
            return (link.is_up and not link.endpoints() and stats.rx_held == 0
                    and self.idle(backend))
        except (AmplinkError, TimeoutError) as exc:
            log.info("sim reset failed: %s", exc)
            return False

    def close(self) -> None:
        """Hang up the agent, stop the processor, remove the control socket."""
        if self.peer is not None:
            self.peer.close()
        try:
            self.proc.stop(5.0)
        finally:
            child = self.proc.process
            if child is not None and child.poll() is None:
                child.kill()
                try:
                    child.wait(5.0)
                except subprocess.TimeoutExpired:
                    log.warning("the agent process %d did not die", child.pid)
            self.listener.close()


class SimPool:
    """Clean processors waiting for the next case."""

    def __init__(self, config: LinkConfig, rig: type[SimRig] = SimRig) -> None:
        self.config = config
        self._rig = rig
        self._idle: list[SimRig] = []
        self._lock = threading.Lock()

    def take(self) -> SimRig:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._rig(self.config)

    def give_back(self, rig: SimRig, reusable: bool) -> None:
        if reusable and rig.reset():
            with self._lock:
                self._idle.append(rig)
        else:
            rig.close()

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for rig in idle:
            rig.close()


POOL = SimPool(LinkConfig())


@contextmanager
def _sim(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
    assert side == "host" and dispatch == "thread", (side, dispatch)
    rig = POOL.take()
    assert rig.peer is not None
    harness = Harness(local=rig.proc.link, peer=rig.peer, side=side, dispatch=dispatch)
    clean = False
    try:
        yield harness
        clean = not harness.tainted
    finally:
        POOL.give_back(rig, clean)


CASES = [
    BackendCase(
        id="sim", factory=_sim,
        capabilities=Capabilities(
            max_payload=496, name_service=True, tx_loan=True, rx_hold=True,
            send_by_reference=True, addressing="rpmsg", address_range=(0, 0xFFFF_FFFE),
            dynamic_base=1024, rx_buffers=256, tx_ready=True),
        sides=("host",),
        sides_note="the device side is the firmware in the child process; the peer agent "
                   "drives it, and the device role's API is covered by the in-process cases",
        dispatch_modes=("thread",),
        dispatch_note="SimProcessor builds its host link with dispatcher threads (no "
                      "dispatch option)",
        can_kill_peer=True, hostile=True, cross_process=True, cleanup=POOL.close_all,
        summary=lambda: f"{SimRig.booted} simulated processors booted" if SimRig.booted
        else None,
        expect={"backend": {"role": "driver", "profile": "linux"}},
        # send_by_reference through a buffer port beside the link (BufferChannel)
        extra={"buffer_port": True},
    ),
]
