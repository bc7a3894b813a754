"""The amplink service: the side under test is a client's link (``connect_link``).

A real :class:`~amplink.service.supervisor.Supervisor` runs in a thread of this process
with both of its sockets, its policy and its relay threads (tests/loop_kit.py); it serves
one processor whose firmware is a loopback link in this process, driven as the peer.
Every message goes client link -> endpoint socket -> the service's session -> the
processor's host link -> the firmware's link, and back. Addressing is "pair" (a
client's endpoint talks to one channel of the processor), so the cases written for
rpmsg's any-to-any addresses skip it, naming the capability.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backends import RUN_PREFIX, BackendCase, Harness, Side
from loop_kit import loop_service
from peers import LocalPeer

from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.remoteproc.api import CrashReason
from amplink.transports.service import connect_link

#: the processor's name in the service
PROCESSOR = "loop0"


@contextmanager
def _served(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
    tmp = Path(tempfile.mkdtemp(prefix=RUN_PREFIX + "service-"))
    try:
        with loop_service(tmp, root=tmp / "rt") as service:
            rproc = service.boot(PROCESSOR, echo=False)
            assert rproc.device is not None
            firmware = rproc.device
            local = connect_link(PROCESSOR, root=service.root, dispatch=dispatch)
            service.links.append(local)  # closed by the service's stop, before the supervisor
            peer = LocalPeer(firmware, role="device", dispatch=dispatch,
                             kill=lambda: rproc.crash(CrashReason.WATCHDOG))
            try:
                yield Harness(local=local, peer=peer, side=side, dispatch=dispatch)
            finally:
                peer.ops.shutdown()
                local.close()
                peer.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CASES = [
    BackendCase(
        id="service", factory=_served,
        capabilities=Capabilities(
            max_payload=496, name_service=True, addressing="pair",
            address_range=(0, 0xFFFF_FFFE), dynamic_base=None, tx_ready=True),
        sides=("host",), sides_note="a client of the service is always the host's side; "
                                    "the firmware is the peer",
        can_kill_peer=True, hostile=False,
        hostile_note="the service's relay owns the transport: a client sees whole messages; "
                     "the service's own hostile-client tests are in tests/service",
        expect={"backend": {"kind": "service"}},
        # the service returns credits for what it passed on to the processor's link (whose
        # transmit buffers the peer has not freed) a moment after the send
        extra={"tx_settle": 0.2},
    ),
]
