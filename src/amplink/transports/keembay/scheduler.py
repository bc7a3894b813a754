"""The driver's transmit scheduling: 11 queues, one per high-speed channel and one all
general-purpose channels share, served round-robin by one transmitter.

Served round-robin, each HS channel gets the share of the link that all GP traffic
together gets. Here the queues hold messages whose senders wait for them (see
:meth:`amplink.link.backend.Backend.enqueue`); whoever calls into the backend plays the
transmitter. Sans-IO: it orders messages and knows nothing of FIFOs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .wire import GP_QUEUE, KMB_IPC_NUM_TX_QUEUES


class Queued:
    """A message waiting in a transmit queue (the ticket its sender waits on)."""

    __slots__ = ("src", "dst", "payload", "queue", "sent")

    def __init__(self, src: int, dst: int, payload: Any, queue: int) -> None:
        self.src = src
        self.dst = dst
        self.payload = payload
        self.queue = queue
        self.sent = False


class TxScheduler:
    """The transmit queues and the round-robin turn."""

    def __init__(self) -> None:
        self.queues: list[deque[Queued]] = [deque() for _ in range(KMB_IPC_NUM_TX_QUEUES)]
        self._last = GP_QUEUE  # so that the first turn is queue 0's
        self._before = GP_QUEUE  # the turn before the last :meth:`next` (for put_back)
        self.waiting = 0  # messages in all queues

    def push(self, item: Queued) -> None:
        self.queues[item.queue].append(item)
        self.waiting += 1

    def next(self, ready: Callable[[int], bool]) -> Queued | None:
        """Take the head of the next non-empty queue after the last served (round-robin)
        for which ``ready(queue)`` holds; None if there is none."""
        if not self.waiting:
            return None
        queues = self.queues
        for step in range(1, KMB_IPC_NUM_TX_QUEUES + 1):
            q = (self._last + step) % KMB_IPC_NUM_TX_QUEUES
            if queues[q] and ready(q):
                self._before, self._last = self._last, q
                self.waiting -= 1
                return queues[q].popleft()
        return None

    def put_back(self, item: Queued) -> None:
        """Return the message the last :meth:`next` gave out, which could not go after
        all, to the head of its queue; the turn is its again."""
        self.queues[item.queue].appendleft(item)
        self.waiting += 1
        self._last = self._before

    def remove(self, item: Queued) -> bool:
        """Take a waiting message out (its sender gave up); False if it is not queued."""
        try:
            self.queues[item.queue].remove(item)
        except ValueError:
            return False
        self.waiting -= 1
        return True

    def clear(self) -> list[Queued]:
        """Every waiting message, taken out."""
        items = [item for q in self.queues for item in q]
        for q in self.queues:
            q.clear()
        self.waiting = 0
        return items
