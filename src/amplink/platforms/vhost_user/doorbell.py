"""The doorbell of a vhost-user device: two kick eventfds in, two call fds out.

amplink's transports ring one doorbell with no queue index, and sleep on one fd. Here
:meth:`fileno` is an epoll set over both queues' kick fds (an epoll fd is itself
pollable, so the link's waiter sleeps on both at once), and :meth:`kick` signals the
call fd of each queue whose used index moved since its last signal: the guest gets an
interrupt only for the queue that has news, never a spurious one for the other (each
costs a guest work item under UML). A queue whose index did not move is skipped, so a
kick can never go unsignalled: the transport kicks only after it returned buffers.

The doorbell owns duplicates of the fds, so the back end may replace a queue's call or
kick fd (SET_VRING_CALL/KICK while running) without racing a kick in another thread.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Sequence

from ...errors import LinkDown
from ...notify.doorbell import Doorbell

_SIGNAL = (1).to_bytes(8, "little")


class VhostUserDoorbell(Doorbell):
    """Kick fds (the guest rings us) and call fds (we interrupt the guest), per queue."""

    edge_triggered = False  # the waiter reads the kick counters (clear) after each wake

    def __init__(self, kick_fds: Sequence[int], call_fds: Sequence[int | None]) -> None:
        """Takes duplicates of the fds; the caller keeps its own."""
        self._lock = threading.Lock()
        self._epoll = select.epoll()
        self._kicks: list[int] = []
        self._calls: list[int | None] = []
        self._used: Sequence[Callable[[], int]] | None = None
        self._signalled = [-1] * len(call_fds)
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

    def track_used(self, readers: Sequence[Callable[[], int]]) -> None:
        """Give each queue's used index (a reader per queue); until then kicks signal all."""
        with self._lock:
            self._used = readers
            self._signalled = [read() for read in readers]

    def replace_call(self, queue: int, fd: int | None) -> None:
        """SET_VRING_CALL while running: signal ``fd`` (None: no interrupts) from now on."""
        with self._lock:
            if self._epoll.closed:  # the run already ended: nothing to signal any more
                return
            old = self._calls[queue]
            self._calls[queue] = None if fd is None else self._own(fd)
            self._signalled[queue] = -1
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
                if self._used is not None:
                    idx = self._used[queue]()
                    if idx == self._signalled[queue]:
                        continue
                    self._signalled[queue] = idx
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
