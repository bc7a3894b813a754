"""Keem Bay IPC: both nodes in this process (:class:`KeemBayPair`), and a simulated VPU.

* In this process: either node can be the side under test, the other is a
  :class:`LocalPeer`; per doorbell kind, a pool smaller than the FIFO, and GP channels
  allowed the whole FIFO. A peer's death can be played only where the doorbell is a
  socket: shutting it down is what the other side sees when a process dies.
* ``keembay-sim``: the VPU is a simulated processor running the suite's peer agent
  (``peer_agent_keembay.py``: the same agent, with the Keem Bay carveout in its table),
  pooled as the simulator's are (backend_sim.py).

Keem Bay has no name service (its channels are static) and "channel" addressing: a
channel is both ends of its messages, so the cases that send to another address than
the endpoint's own, from a source other than the destination, to explicit addresses
beyond 1023 or to dynamic ones from 1024 are for "rpmsg" addressing and skip. Its
channels are discovered (the peer's open-channel bitmap, ``kmb-N``): the echo-channel
cases open the peer's channel 10 as ``kmb-10``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backend_sim import BOOT_TIMEOUT, SimPool, SimRig
from backends import BackendCase, Harness, Side, other_side
from peers import LocalPeer

from amplink import SimProcessor
from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.notify.doorbell import SocketDoorbell
from amplink.platforms.inprocess import Notify
from amplink.platforms.sim.keembay import KeemBayProcessor
from amplink.platforms.sim.layout import LinkConfig
from amplink.transports.keembay import KeemBayPair, KmbConfig
from amplink.transports.keembay.wire import (
    KMB_IPC_FIFO_DEPTH,
    KMB_IPC_MAX_CHANNELS,
    channel_name,
)

AGENT = str(Path(__file__).resolve().parent / "peer_agent_keembay.py")
NO_HANGUP = ("{notify} doorbells carry no hang-up: a peer's death cannot be played in "
             "one process")
NO_GARBAGE = ("the suite's garbage writer (peer_garbage.py) speaks virtio; a hostile Keem Bay "
              "VPU is tests/hostile/test_hostile_keembay.py (in this process) and "
              "tests/integration/test_keembay_sim.py (a firmware writing garbage)")


#: the echo-channel cases' channel (test_conf_echo_channel.py): a GP channel the peer opens,
#: which the side under test finds in the peer's open-channel bitmap
ECHO_CHANNEL = {"echo_channel": channel_name(10), "echo_channel_addr": 10}


def keembay_capabilities(config: KmbConfig) -> Capabilities:
    """What both nodes of a Keem Bay link with ``config`` declare."""
    return Capabilities(
        max_payload=config.slot_size, name_service=False, tx_loan=True, rx_hold=True,
        send_by_reference=True, addressing="channel",
        address_range=(0, KMB_IPC_MAX_CHANNELS - 1), dynamic_base=None,
        channel_discovery=True, rx_buffers=min(config.fifo_share, config.headers), tx_ready=True)


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
        extra=ECHO_CHANNEL,
    )


class KeemBayRig(SimRig):
    """A simulated Keem Bay VPU running the agent."""

    booted = 0

    def processor(self, config: LinkConfig, control: str) -> SimProcessor:
        return KeemBayProcessor(AGENT, name="conformance-kmb", args=[control],
                                boot_timeout=BOOT_TIMEOUT)

    def idle(self, backend: Mapping[str, Any]) -> bool:
        """Every header back, nothing loaned, queued or taken in but not handed over."""
        return all(backend[key] == 0 for key in ("headers_allocated", "loaned", "tx_waiting",
                                                 "rx_backlog"))


POOL = SimPool(LinkConfig(), KeemBayRig)


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
        cleanup=POOL.close_all,
        summary=lambda: (f"{KeemBayRig.booted} simulated Keem Bay VPUs booted"
                         if KeemBayRig.booted else None),
        expect={"backend": {"kind": "keembay", "node": "CPU"}},
        extra=ECHO_CHANNEL,
    ),
]
