"""OpenAMP's Linux-userspace profile: amplink host against amplink remote in this process.

Each harness has a shared memory object and a socket path of its own, named under the
run's prefix (:data:`RUN_PREFIX`) and removed at teardown. The side under test is the
socket server (its ``open()`` runs in a thread while the peer connects as the client),
so the two sides cover both ends of the socket between them. The kick socket closing
is how a process's death shows: the peer dies by shutting its end down.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from backends import RUN_PREFIX, BackendCase, Harness, Side, other_side
from peers import LocalPeer

from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.platforms.openamp import OpenAmpConfig, OpenAmpLink
from amplink.platforms.openamp.link import Role

#: every shared memory object and socket of this run starts with this
OPEN_TIMEOUT = 10.0
_serial = itertools.count()


def _role(side: Side) -> Role:
    return "host" if side == "host" else "remote"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def _openamp_pair(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
    key = f"{RUN_PREFIX}oa{next(_serial)}"
    config = OpenAmpConfig(shm_name=f"{key}.shm", socket_path=f"/tmp/{key}.sock")
    opened: list[OpenAmpLink] = []
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            opened.append(OpenAmpLink.open(_role(side), server=True, config=config,
                                           timeout=OPEN_TIMEOUT))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failed.append(exc)

    peer: LocalPeer | None = None
    far: OpenAmpLink | None = None
    server = threading.Thread(target=serve, name="conformance-openamp-server")
    server.start()
    try:
        try:
            far = OpenAmpLink.open(_role(other_side(side)), server=False, config=config,
                                   timeout=OPEN_TIMEOUT)
        finally:
            server.join(OPEN_TIMEOUT + 5)
        if failed:
            raise failed[0]
        assert opened, "the OpenAMP server side neither opened nor failed"
        sock = far.bus.backend.doorbell.sock  # type: ignore[attr-defined]

        def kill() -> None:
            sock.shutdown(socket.SHUT_RDWR)  # the other side reads end-of-file

        peer = LocalPeer(far.bus, role=other_side(side), dispatch=dispatch, kill=kill)
        yield Harness(local=opened[0].bus, peer=peer, side=side, dispatch=dispatch)
    finally:
        if peer is not None:
            peer.ops.shutdown()
        if far is not None:
            far.close()
        for link in opened:
            link.close()
        if peer is not None:
            peer.close()
        _remove(config.shm_path)  # OpenAMP never removes it
        _remove(config.socket_path)


CASES = [
    BackendCase(
        id="openamp", factory=_openamp_pair,
        capabilities=Capabilities(
            max_payload=496, name_service=True, tx_loan=True, rx_hold=True,
            addressing="rpmsg", address_range=(0, 0xFFFF_FFFE), dynamic_base=1024,
            rx_buffers=256, tx_ready=True),
        dispatch_modes=("thread",),
        dispatch_note="OpenAmpLink.open() takes no dispatch option: its links run "
                      "dispatcher threads",
        can_kill_peer=True, hostile=True,
        expect={"backend": {"profile": "openamp", "buf_size": 512}},
    ),
]
