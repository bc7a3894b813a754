"""Keem Bay IPC for the conformance suite (branch conformance): registration file.

Not a test module: the suite picks it up once ``"backend_keembay"`` is in
``BACKEND_MODULES`` (backends.py). Until that suite is on main, the cases that apply run
from test_endpoint_conformance.py (its ``keembay-*`` factories).

* In this process (:class:`KeemBayPair`): either node can be the side under test, the
  other is a :class:`LocalPeer`; per doorbell kind, a pool smaller than the FIFO, and
  GP channels allowed the whole FIFO. A peer's death can be played only where the
  doorbell is a socket: shutting it down is what the other side sees when a process dies.
* ``keembay-sim``: the VPU is a simulated processor running the suite's peer agent
  (``peer_agent_keembay.py``: the same agent, with the Keem Bay carveout in its table).

Keem Bay has no name service (its channels are static) and "channel" addressing: a
channel is both ends of its messages, so a case that sends to another address than the
endpoint's own, or from a source other than the destination, does not apply (the link
refuses it with InvalidArgument); the suite's cases marked ``addressing("rpmsg")`` skip.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from backends import RUN_PREFIX, BackendCase, Harness, Side, other_side
from peers import AgentPeer, ControlListener, LocalPeer

from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.notify.doorbell import SocketDoorbell
from amplink.platforms.inprocess import Notify
from amplink.platforms.sim.keembay import KeemBayProcessor
from amplink.transports.keembay import KeemBayPair, KmbConfig
from amplink.transports.keembay.wire import KMB_IPC_FIFO_DEPTH, KMB_IPC_MAX_CHANNELS

AGENT = str(Path(__file__).resolve().parent / "peer_agent_keembay.py")
BOOT_TIMEOUT = 15.0
NO_HANGUP = ("{notify} doorbells carry no hang-up: a peer's death cannot be played in "
             "one process")
NO_GARBAGE = ("the suite's garbage writer (peer_garbage.py) speaks virtio; a hostile Keem Bay "
              "VPU is tests/hostile/test_hostile_keembay.py (in this process) and "
              "tests/integration/test_keembay_sim.py (a firmware writing garbage)")


def keembay_capabilities(config: KmbConfig) -> Capabilities:
    """What both nodes of a Keem Bay link with ``config`` declare."""
    return Capabilities(
        max_payload=config.slot_size, name_service=False, tx_loan=True, rx_hold=True,
        send_by_reference=True, addressing="channel",
        address_range=(0, KMB_IPC_MAX_CHANNELS - 1), dynamic_base=None,
        rx_buffers=min(config.fifo_share, config.headers), tx_ready=True)


def _pair_factory(config: KmbConfig, notify: Notify,
                  poll_mode: bool) -> Callable[[Side, DispatchMode], object]:
    @contextmanager
    def factory(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
        pair = KeemBayPair.create(config, notify=notify, poll_mode=poll_mode,
                                  dispatch=dispatch)
        local, far = (pair.cpu, pair.vpu) if side == "host" else (pair.vpu, pair.cpu)
        kill = None
        doorbell = far.backend.doorbell  # type: ignore[attr-defined]
        if isinstance(doorbell, SocketDoorbell):
            def kill() -> None:
                doorbell.sock.shutdown(socket.SHUT_RDWR)
        peer = LocalPeer(far, role=other_side(side), dispatch=dispatch, kill=kill,
                         kill_note=NO_HANGUP.format(notify=notify))
        try:
            yield Harness(local=local, peer=peer, side=side, dispatch=dispatch)
        finally:
            peer.ops.shutdown()
            pair.close()
            peer.close()

    return factory


def _case(id: str, config: KmbConfig | None = None, notify: Notify = "eventfd",
          poll_mode: bool = False) -> BackendCase:
    config = config or KmbConfig()
    killable = notify == "socket"
    return BackendCase(
        id=id, factory=_pair_factory(config, notify, poll_mode),  # type: ignore[arg-type]
        capabilities=keembay_capabilities(config),
        can_kill_peer=killable, kill_note="" if killable else NO_HANGUP.format(notify=notify),
        hostile=False, hostile_note=NO_GARBAGE,
        expect={"backend": {"kind": "keembay", "fifo_share": config.fifo_share,
                            "headers": config.headers},
                "link": {"poll_mode": poll_mode}},
    )


@contextmanager
def _sim(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
    assert side == "host" and dispatch == "thread", (side, dispatch)
    listener = ControlListener(RUN_PREFIX + "kmb-ctl-")
    proc = KeemBayProcessor(AGENT, name="conformance-kmb", args=[listener.path],
                            boot_timeout=BOOT_TIMEOUT)
    peer = None
    try:
        proc.start()
        peer = AgentPeer(listener.accept(BOOT_TIMEOUT), proc.kill)
        yield Harness(local=proc.link, peer=peer, side=side, dispatch=dispatch)
    finally:
        if peer is not None:
            peer.close()
        try:
            proc.stop(5.0)
        finally:
            child = proc.process
            if child is not None and child.poll() is None:
                child.kill()
                try:
                    child.wait(5.0)
                except subprocess.TimeoutExpired:
                    pass
            listener.close()


CASES = [
    _case("keembay-eventfd"),
    _case("keembay-socket", notify="socket"),
    _case("keembay-poll", notify="poll", poll_mode=True),
    # fewer headers than FIFO entries: the pool runs out first (ENOMEM, not EBUSY)
    _case("keembay-small-pool", KmbConfig(headers=8, slot_size=64, heap_size=0)),
    # GP channels may fill the whole FIFO, as in the driver
    _case("keembay-whole-fifo", KmbConfig(fifo_share=KMB_IPC_FIFO_DEPTH)),
    BackendCase(
        id="keembay-sim", factory=_sim, capabilities=keembay_capabilities(KmbConfig()),
        sides=("host",),
        sides_note="the VPU is the firmware in the child process; the peer agent drives it, "
                   "and the VPU node's API is covered by the in-process cases",
        dispatch_modes=("thread",),
        dispatch_note="KeemBayProcessor builds its host link with dispatcher threads (no "
                      "dispatch option)",
        can_kill_peer=True, hostile=False, hostile_note=NO_GARBAGE, cross_process=True,
        expect={"backend": {"kind": "keembay", "node": "CPU"}},
    ),
]
