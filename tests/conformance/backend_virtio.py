"""rpmsg over virtio rings with both ends in this process (:class:`LinkPair`).

One case per notification scheme and ring configuration. Either end can be the side
under test; the other is a :class:`LocalPeer`. A peer's death can be played only where
the doorbell is a socket: closing it is what the other side sees when a process dies.
Eventfds (and polling) carry no hang-up, so those cases declare ``can_kill_peer=False``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from backends import BackendCase, Harness, Side, other_side
from peers import LocalPeer

from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.notify.doorbell import SocketDoorbell
from amplink.platforms.inprocess import LinkPair, Notify
from amplink.platforms.sim.layout import LinkConfig
from amplink.rpmsg.wire import RPMSG_HDR_SIZE

NO_HANGUP = ("{notify} doorbells carry no hang-up: a peer's death cannot be played in "
             "one process")


def virtio_capabilities(config: LinkConfig) -> Capabilities:
    """What both ends of a virtio link with ``config`` declare."""
    return Capabilities(
        max_payload=config.buf_size - RPMSG_HDR_SIZE, name_service=True, tx_loan=True,
        rx_hold=True, send_by_reference=False, addressing="rpmsg",
        address_range=(0, 0xFFFF_FFFE), dynamic_base=1024, rx_buffers=config.num_buffers,
        tx_ready=True)


def _pair_factory(config: LinkConfig, notify: Notify, poll_mode: bool
                  ) -> Callable[[Side, DispatchMode], object]:
    @contextmanager
    def factory(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
        pair = LinkPair.create(config, notify=notify, poll_mode=poll_mode, dispatch=dispatch)
        local, far = (pair.host, pair.device) if side == "host" else (pair.device, pair.host)
        kill = None
        doorbell = far.backend.doorbell  # type: ignore[attr-defined]
        if isinstance(doorbell, SocketDoorbell):
            def kill() -> None:
                # what a dying process's kernel does: the other end reads end-of-file
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


def _case(id: str, config: LinkConfig | None = None, notify: Notify = "eventfd",
          poll_mode: bool = False) -> BackendCase:
    config = config or LinkConfig()
    killable = notify == "socket"
    return BackendCase(
        id=id, factory=_pair_factory(config, notify, poll_mode),  # type: ignore[arg-type]
        capabilities=virtio_capabilities(config),
        can_kill_peer=killable, kill_note="" if killable else NO_HANGUP.format(notify=notify),
        hostile=True, extra={"config": config, "notify": notify},
        expect={"backend": {"kind": "virtio", "profile": "linux", "event_idx": config.event_idx,
                            "buf_size": config.buf_size},
                "link": {"poll_mode": poll_mode}},
    )


CASES = [
    _case("virtio-eventfd"),
    _case("virtio-socket", notify="socket"),
    _case("virtio-poll", notify="poll", poll_mode=True),
    _case("virtio-event-idx", LinkConfig(event_idx=True)),
    _case("virtio-small", LinkConfig(num_buffers=4, buf_size=128)),
]
