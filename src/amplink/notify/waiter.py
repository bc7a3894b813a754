"""Sleeping on a doorbell, the peer's lifeline and in-process wake-ups with one epoll."""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Callable

from ..errors import LinkDown
from .doorbell import Doorbell


def wait_readable(fd: int | socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``fd`` to be readable or hung up.

    poll(2) rather than select(2), which refuses fd numbers from 1024 on.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)  # POLLHUP and POLLERR are always reported
    return bool(poller.poll(max(0.0, timeout) * 1000))


class Waiter:
    """One epoll set: the doorbell, watched fds (e.g. a lifeline), and a wake-up eventfd.

    Several threads may sleep in :meth:`wait` at once; :meth:`wake` rouses all of them
    (used when one thread delivered a message another waits for, and at close).
    """

    def __init__(self, doorbell: Doorbell) -> None:
        self.doorbell = doorbell
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._door_fd = doorbell.fileno()
        self._door_clear = not doorbell.edge_triggered
        if self._door_fd >= 0:
            mask = select.EPOLLIN if self._door_clear else select.EPOLLIN | select.EPOLLET
            self._epoll.register(self._door_fd, mask)
        self._watches: dict[int, Callable[[], None]] = {}
        self.closed = False
        self.woken = False
        self._wake_lock = threading.Lock()
        #: called with the reason when the doorbell reports that the peer hung up;
        #: without it the LinkDown propagates to the waiting caller
        self.on_hangup: Callable[[str], None] | None = None

    def watch(self, fd: int, on_ready: Callable[[], None]) -> None:
        """Call ``on_ready`` (from a waiting thread) when ``fd`` becomes readable or hangs up."""
        self._watches[fd] = on_ready
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLHUP | select.EPOLLRDHUP)

    def unwatch(self, fd: int) -> None:
        if self._watches.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def fileno(self) -> int:
        """The epoll fd: readable when any source is ready (for asyncio's add_reader)."""
        return self._epoll.fileno()

    def wake(self) -> None:
        """Rouse every thread sleeping in :meth:`wait`; the flag stays until :meth:`reset_wake`."""
        with self._wake_lock:  # never write to a closed (perhaps reused) fd number
            if not self.closed:
                self.woken = True
                os.eventfd_write(self._wake_fd, 1)

    def reset_wake(self) -> None:
        """Clear a wake-up after the woken threads re-checked their conditions."""
        if not self.woken:
            return
        with self._wake_lock:
            if self.woken and not self.closed:
                self.woken = False
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True if any source signalled, False on timeout.

        Doorbell kicks are consumed here; watch callbacks run here; a wake-up is left
        pending so that every sleeping thread sees it (the caller resets it).
        """
        if self.closed:
            return True
        try:
            events = self._epoll.poll(timeout)
        except (ValueError, OSError):
            if self.closed:  # closed by another thread meanwhile: the link is gone
                return True
            raise
        for fd, _mask in events:
            if fd == self._door_fd:
                if not self._door_clear:
                    continue
                hangup = self._clear_doorbell()
                if hangup is not None:
                    if self.on_hangup is None:
                        raise hangup
                    self._epoll.unregister(fd)  # a hung-up fd stays readable forever
                    self._door_fd = -1
                    self.on_hangup(str(hangup))
            elif fd != self._wake_fd:
                callback = self._watches.get(fd)
                if callback is not None:
                    callback()
        return bool(events)

    def _clear_doorbell(self) -> LinkDown | None:
        """Consume the doorbell's kicks; the peer's hang-up is returned, not raised."""
        # Under the lock that close() takes: the owner closes the doorbell only after
        # this waiter, so a link closed meanwhile never has its doorbell read closed.
        with self._wake_lock:
            if self.closed:
                return None
            try:
                self.doorbell.clear()
            except LinkDown as exc:
                return exc
        return None

    def poll_sources(self) -> bool:
        """Run :meth:`wait` without sleeping (consume kicks, notice hang-ups).

        Returns True if anything was pending (a kick another thread may wait for).
        """
        return self.wait(0)

    def close(self) -> None:
        with self._wake_lock:
            if self.closed:
                return
            self.closed = True
            self._epoll.close()
            os.close(self._wake_fd)
            self._wake_fd = -1
