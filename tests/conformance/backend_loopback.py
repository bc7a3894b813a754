"""The loopback backend: two links in this process joined by two bounded queues.

Its two ends run the same code (there are no host and device roles), so the test
process drives one end and the other is the peer. It has no shared memory and no
zero copy: the cases of loans, held messages and hostile bytes are skipped by its
capabilities, and those that check the errors of a backend without them run here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from backends import BackendCase, Harness, Side
from peers import LocalPeer

from amplink.link import Capabilities
from amplink.link.dispatch import DispatchMode
from amplink.transports.loopback import loopback_pair

DEPTH = 16  # small, so that the cases that fill the queues are quick


@contextmanager
def _loopback(side: Side, dispatch: DispatchMode) -> Iterator[Harness]:
    local, far = loopback_pair(depth=DEPTH, dispatch=dispatch)
    peer = LocalPeer(far, role="device", dispatch=dispatch)
    try:
        yield Harness(local=local, peer=peer, side=side, dispatch=dispatch)
    finally:
        peer.ops.shutdown()
        local.close()
        far.close()
        peer.close()


CASES = [
    BackendCase(
        id="loopback", factory=_loopback,
        capabilities=Capabilities(max_payload=496, name_service=True, dynamic_base=1024,
                                  rx_buffers=DEPTH),
        sides=("host",), sides_note="both ends of a loopback pair run the same code: it has "
                                    "no host and device roles",
        can_kill_peer=False, kill_note="its eventfd doorbells carry no hang-up",
        hostile=False, hostile_note="no shared memory: the peer hands over Python objects, "
                                    "there are no bytes to damage",
        expect={"backend": {"kind": "loopback"}},
    ),
]
