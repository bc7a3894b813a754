"""The doorbell of a vhost-user device: two kick eventfds in, two call fds out.

amplink's transports ring one doorbell with no queue index, and sleep on one fd. Here
:meth:`fileno` is an epoll set over both queues' kick fds (an epoll fd is itself
pollable, so the link's waiter sleeps on both at once), and :meth:`kick` signals the
call fd of each queue whose used index moved since its last check and whose driver asked
to hear of it (its used-event index, or its avail flags without EVENT_IDX: the rule the
transport applied to the queue it kicks for, applied to each queue as vhost does): the
guest gets an interrupt only for a queue that has news it wants, never one for the other
queue (each costs a guest work item under UML). The queue the transport kicked for
passes this check too, so a wanted interrupt is never lost.

The doorbell owns duplicates of the fds, so the back end may replace a queue's call or
kick fd (SET_VRING_CALL/KICK while running) without racing a kick in another thread.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Sequence
from typing import Protocol

from ...errors import LinkDown
from ...notify.doorbell import Doorbell

_SIGNAL = (1).to_bytes(8, "little")


class QueueInterrupts(Protocol):
    """What the guest's driver asked of one queue's interrupts (see :mod:`.run`)."""

    def used(self) -> int:
        """The queue's used index now."""

    def wanted(self, old: int, new: int) -> bool:
        """Whether the driver wants an interrupt for the used index moving ``old`` -> ``new``."""


class VhostUserDoorbell(Doorbell):
    """Kick fds (the guest rings us) and call fds (we interrupt the guest), per queue."""

    edge_triggered = False  # the waiter reads the kick counters (clear) after each wake

    def __init__(self, kick_fds: Sequence[int], call_fds: Sequence[int | None]) -> None:
        """Takes duplicates of the fds; the caller keeps its own."""
        self._lock = threading.Lock()
        self._epoll = select.epoll()
        self._kicks: list[int] = []
        self._calls: list[int | None] = []
        self._queues: Sequence[QueueInterrupts] | None = None
        self._checked = [-1] * len(call_fds)  # each queue's used index at the last kick
        self.kicks_sent = 0
        self.calls_dropped = 0
        try:
            for fd in kick_fds:
                self._kicks.append(self._own(fd))
                self._epoll.register(self._kicks[-1], select.EPOLLIN)
            for call in call_fds:
                self._calls.append(None if call is None else self._own(call))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _own(fd: int) -> int:
        dup = os.dup(fd)
        os.set_blocking(dup, False)  # a full call pipe drops the signal, never blocks
        return dup

    def track_used(self, queues: Sequence[QueueInterrupts]) -> None:
        """Signal each queue as its driver asks (until then kicks signal both)."""
        with self._lock:
            self._queues = queues
            self._checked = [queue.used() for queue in queues]

    def replace_call(self, queue: int, fd: int | None) -> None:
        """SET_VRING_CALL while running: signal ``fd`` (None: no interrupts) from now on."""
        with self._lock:
            if self._epoll.closed:  # the run already ended: nothing to signal any more
                return
            old = self._calls[queue]
            self._calls[queue] = None if fd is None else self._own(fd)
            self._checked[queue] = -1  # a new call fd gets the next kick
        if old is not None:
            os.close(old)

    def replace_kick(self, queue: int, fd: int) -> None:
        """SET_VRING_KICK while running: wait on ``fd`` for this queue from now on."""
        with self._lock:
            if self._epoll.closed:
                return
            new = self._own(fd)
            old = self._kicks[queue]
            self._epoll.unregister(old)
            self._kicks[queue] = new
            self._epoll.register(new, select.EPOLLIN)
        os.close(old)

    def kick(self) -> None:
        with self._lock:
            for queue, fd in enumerate(self._calls):
                if fd is None:
                    continue
                if self._queues is not None:
                    interrupts = self._queues[queue]
                    new, old = interrupts.used(), self._checked[queue]
                    if new == old:
                        continue
                    self._checked[queue] = new
                    if old >= 0 and not interrupts.wanted(old, new):
                        continue
                self.kicks_sent += 1
                try:
                    os.write(fd, _SIGNAL)
                except BlockingIOError:
                    self.calls_dropped += 1  # the guest has unread signals: they coalesce
                except OSError as exc:  # EPIPE: the guest closed its end
                    raise LinkDown(f"call fd of queue {queue}: {exc.strerror}") from None

    def fileno(self) -> int:
        return self._epoll.fileno()

    def clear(self) -> None:
        with self._lock:
            for queue, fd in enumerate(self._kicks):
                try:
                    if not os.read(fd, 8):
                        raise LinkDown(f"the front end closed the kick fd of queue {queue}")
                except BlockingIOError:
                    pass

    def close(self) -> None:
        with self._lock:
            fds = [*self._kicks, *(fd for fd in self._calls if fd is not None)]
            self._kicks, self._calls = [], []
            if not self._epoll.closed:
                self._epoll.close()
        for fd in fds:
            os.close(fd)
