"""RTKit co-processors: the link over their application endpoints (RtkitBackend).

Two registrations, both with the co-processor's firmware as the far side
(:class:`rtkit_peer_ops.RtkitPeerOps`: 8-byte messages, endpoints 0x20..0x2f announced
at boot, read only when a command wants a message):

* ``rtkit``: the host runtime (RtkitHost) and amplink's firmware runtime in this
  process, joined by a mailbox in shared memory, the firmware's memory bus served by the
  host's thread; the firmware runs in a thread of its own (:class:`FirmwarePeer`). Its
  death is a crash: it writes its crashlog and says so, the only death an RTKit host
  sees without a process to watch. Both dispatch modes.
* ``rtkit-proc``: an RtkitRemoteProc whose firmware is ``rtkit_agent.py`` in a child
  process, driven over a control socket (:class:`peers.AgentPeer`); its link is
  ``rproc.link``. Killing it is a crash the lifecycle engine handles (no recovery here).
  Processors are pooled as the simulator's: after a clean case both sides are reset
  (endpoints closed, the mailbox drained) and the next case reuses the run.

The addressing is "endpoint" (one number is both ends) and every message is exactly 8
bytes: the cases written for rpmsg's any-to-any addresses skip it, naming the
capability; the generic ones run with payloads fitted to 8 bytes.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backends import RUN_PREFIX, BackendCase, Harness, Side
from peers import AgentPeer, ControlListener, Peer
from rtkit_peer_ops import COMMANDS, ECHO_ENDPOINT, RtkitPeerOps

from amplink.errors import AmplinkError, NotSupported
from amplink.firmware.rtkit import Halted, RtkitFirmware
from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.platforms.rtkit import RtkitRemoteProc
from amplink.platforms.rtkit.backend import channel_name, rtkit_link

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rtkit"))
from rtkit_kit import Rig  # noqa: E402

log = logging.getLogger(__name__)

AGENT = str(Path(__file__).resolve().parent / "rtkit_agent.py")
BOOT_TIMEOUT = 15.0
#: how long a pooled co-processor's reset may take (s)
RESET_TIMEOUT = 5.0
#: how long the firmware thread may take to end
JOIN_TIMEOUT = 5.0


class FirmwarePeer(Peer):
    """The firmware runtime in a thread of this process, driven by :class:`RtkitPeerOps`."""

    role: Side = "device"

    def __init__(self, ops: RtkitPeerOps) -> None:
        self.ops = ops
        self.error: BaseException | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="conformance-rtkit")
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="conformance-rtkit-firmware")
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.ops.serve()
        except Halted:
            pass  # it died: the host saw its crash
        except BaseException as exc:  # noqa: BLE001 - the harness reports it
            self.error = exc

    def start(self, op: str, **kwargs: Any) -> Future[Any]:
        return self._pool.submit(self._method(op), **kwargs)

    def call(self, op: str, **kwargs: Any) -> Any:
        return self._method(op)(**kwargs)

    def _method(self, op: str) -> Callable[..., Any]:
        if op not in COMMANDS:
            raise NotSupported(f"an RTKit co-processor has no counterpart of {op!r}")
        return getattr(self.ops, op)  # type: ignore[no-any-return]

    def die(self) -> float:
        t0 = time.monotonic()
        self.ops.die()
        return t0

    def close(self) -> None:
        self.ops.stop()
        self._thread.join(JOIN_TIMEOUT)
        self._pool.shutdown(wait=True, cancel_futures=True)
        assert not self._thread.is_alive(), "the firmware thread did not end"
        assert self.error is None, f"the firmware failed: {self.error!r}"


@contextmanager
def _in_process(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
    rig = Rig()
    try:
        fw = RtkitFirmware(rig.peer, dma=rig.dma(), sram=rig.peer_sram, name="conf-rtkit")
        peer = FirmwarePeer(RtkitPeerOps(fw))
        try:
            rig.host.boot()
            assert peer.ops.wait_idle(), "the firmware did not settle after the boot"
            link = rtkit_link(rig.host, name="conf-rtkit", dispatch=dispatch)
            try:
                yield Harness(local=link, peer=peer, side=side, dispatch=dispatch)
            finally:
                link.close()
        finally:
            peer.close()
    finally:
        rig.close()


class ProcRig:
    """An RtkitRemoteProc running ``rtkit_agent.py``, and the agent's control connection."""

    booted = 0

    def __init__(self) -> None:
        ProcRig.booted += 1
        self.listener = ControlListener(RUN_PREFIX + "rtkit-ctl-")
        self.rproc = RtkitRemoteProc(AGENT, name="conf-rtkit", args=[self.listener.path],
                                     recovery=False, boot_timeout=BOOT_TIMEOUT)
        self.peer: AgentPeer | None = None
        try:
            self.rproc.boot()
            self.peer = AgentPeer(self.listener.accept(BOOT_TIMEOUT), self.rproc.kill)
            assert self.peer.call("wait_idle"), "the agent did not settle after the boot"
        except BaseException:
            self.close()
            raise

    def reset(self) -> bool:
        """Bring both sides back to a fresh run's state; False if that failed (stop it
        then)."""
        peer = self.peer
        try:
            link = self.rproc.link
            if peer is None or not peer.alive or not link.is_up:
                return False
            # a link that ran callbacks keeps its dispatcher threads: not a fresh one
            dispatchers = f"amplink-{link.name}-dispatch"
            if any(t.name.startswith(dispatchers) for t in threading.enumerate()):
                return False
            # the peer's endpoints first: an echo one keeps the firmware reading, so a
            # drain would wait for it to stop until its timeout
            if not peer.call("reset", timeout=RESET_TIMEOUT):
                return False
            peer.call("drain")  # the firmware takes what the host sent: the mailbox empties
            for ep in link.endpoints():
                ep.close()
            peer.call("drain")  # and whatever those closes sent
            link.poll(dispatch=False)
            stats = link.statistics()
            return (link.is_up and not link.endpoints() and stats.backend["queued_in"] == 0
                    and link.backend.in_flight() == 0 and link.writable())
        except (AmplinkError, TimeoutError) as exc:
            log.info("rtkit-proc reset failed: %s", exc)
            return False

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()  # the agent serves the host's shutdown from now on
        try:
            while self.rproc.power:
                self.rproc.shutdown()
        finally:
            self.listener.close()


class ProcPool:
    """Booted co-processors waiting for the next case (a boot is most of a case's time)."""

    def __init__(self) -> None:
        self._idle: list[ProcRig] = []
        self._lock = threading.Lock()

    def take(self) -> ProcRig:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ProcRig()

    def give_back(self, rig: ProcRig, reusable: bool) -> None:
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


POOL = ProcPool()


@contextmanager
def _remoteproc(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
    rig = POOL.take()
    assert rig.peer is not None
    harness = Harness(local=rig.rproc.link, peer=rig.peer, side=side, dispatch=dispatch)
    clean = False
    try:
        yield harness
        clean = not harness.tainted
    finally:
        POOL.give_back(rig, clean)


CAPABILITIES = Capabilities(
    max_payload=8, min_payload=8, addressing="endpoint", address_range=(0x20, 0xFF),
    dynamic_base=None, rx_buffers=1024, tx_ready=True, channel_discovery=True)
SIDES_NOTE = ("the device side is RTKit firmware (RtkitFirmware, a single-threaded runtime "
              "of 64-bit messages), not a link: the peer drives it")
HOSTILE_NOTE = ("the garbage kinds are virtio rings'; a hostile co-processor (messages, "
                "mailbox indices, buffers, crashlogs) is tested in tests/rtkit/test_hostile_*")
EXTRA = {
    "echo_channel": channel_name(ECHO_ENDPOINT),
    # what the peer sent is in the mailbox; the runtime's dispatcher thread (which serves
    # the system endpoints too) hands it to the link: "queued_in" of its statistics
    "rx_hop": "the RTKit runtime's dispatcher thread",
}

CASES = [
    BackendCase(
        id="rtkit", factory=_in_process, capabilities=CAPABILITIES,
        sides=("host",), sides_note=SIDES_NOTE,
        can_kill_peer=True, hostile=False, hostile_note=HOSTILE_NOTE,
        expect={"backend": {"kind": "rtkit"}}, extra=EXTRA,
    ),
    BackendCase(
        id="rtkit-proc", factory=_remoteproc, capabilities=CAPABILITIES,
        sides=("host",), sides_note=SIDES_NOTE,
        dispatch_modes=("thread",),
        dispatch_note="RtkitRemoteProc builds its link with dispatcher threads (no dispatch "
                      "option); the in-process 'rtkit' case runs both modes",
        can_kill_peer=True, hostile=False, hostile_note=HOSTILE_NOTE, cross_process=True,
        cleanup=POOL.close_all,
        summary=lambda: f"{ProcRig.booted} RTKit co-processors booted" if ProcRig.booted
        else None,
        expect={"backend": {"kind": "rtkit"}}, extra=EXTRA,
    ),
]
