"""The smallest backend: two links in one process, joined by two bounded queues.

It carries messages between addresses and nothing else (no shared memory, no zero
copy), which makes it the worked example of docs/architecture.md and a quick way to
unit-test firmware logic: :func:`loopback_pair` gives two :class:`~amplink.link.Link`
objects with the whole endpoint API, name service included.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from ..link.backend import Backend, Capabilities, Deliver
from ..link.runtime import Link
from ..notify.doorbell import EventfdDoorbell
from ..notify.waiter import Waiter
from ..rpmsg.wire import RPMSG_RESERVED_ADDRESSES

#: messages in flight one way before a send has to wait
DEFAULT_DEPTH = 64


class LoopbackBackend(Backend):
    """One end: receives from ``inbox``, sends into the peer's inbox (see
    :func:`loopback_pair`)."""

    def __init__(self, inbox: deque[tuple[int, int, bytes]],
                 outbox: deque[tuple[int, int, bytes]], doorbell: EventfdDoorbell,
                 depth: int, mtu: int) -> None:
        self.capabilities = Capabilities(
            max_payload=mtu, name_service=True, dynamic_base=RPMSG_RESERVED_ADDRESSES,
            rx_buffers=depth)
        self.waiter = Waiter(doorbell)
        self._doorbell = doorbell
        self._inbox = inbox
        self._outbox = outbox
        self._depth = depth

    def receive(self, deliver: Deliver, budget: int) -> int:
        taken = 0
        inbox = self._inbox
        while taken < budget and inbox:
            src, dst, payload = inbox.popleft()
            taken += 1
            deliver(src, dst, payload, None)  # bytes: never kept
        if taken:
            self._doorbell.kick()  # room again: a sender may wait for it
        return taken

    def rx_pending(self) -> bool:
        return bool(self._inbox)

    def try_send(self, src: int, dst: int, payload: bytes | bytearray | memoryview) -> bool:
        if len(self._outbox) >= self._depth:
            return False
        self._outbox.append((src, dst, bytes(payload)))  # the copy the peer will own
        self._doorbell.kick()
        return True

    def tx_available(self) -> bool:
        return len(self._outbox) < self._depth

    def in_flight(self) -> int:
        return len(self._outbox)

    def arm(self, *, rx: bool, tx: bool) -> bool:
        # the peer kicks on every change: only say whether there is work already
        return (rx and self.rx_pending()) or (tx and self.tx_available())

    def disarm(self) -> None:
        pass

    def statistics(self) -> Mapping[str, Any]:
        return {"kind": "loopback", "queued_in": len(self._inbox),
                "queued_out": len(self._outbox), "kicks_sent": self._doorbell.kicks_sent}

    def close(self) -> None:
        self.waiter.close()
        self._doorbell.close()


def loopback_pair(*, depth: int = DEFAULT_DEPTH, mtu: int = 496,
                  **link_options: Any) -> tuple[Link, Link]:
    """Two connected links (``link_options`` go to both :class:`Link` objects)."""
    a_to_b: deque[tuple[int, int, bytes]] = deque()
    b_to_a: deque[tuple[int, int, bytes]] = deque()
    bell_a, bell_b = EventfdDoorbell.pair()
    a = Link(LoopbackBackend(b_to_a, a_to_b, bell_a, depth, mtu), name="loop-a",
             **link_options)
    b = Link(LoopbackBackend(a_to_b, b_to_a, bell_b, depth, mtu), name="loop-b",
             **link_options)
    return a, b
