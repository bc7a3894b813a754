"""Doorbells: how one side tells the other "look at the rings".

A doorbell has a :meth:`fileno` that becomes readable when the peer rang, so a waiter
can sleep in ``poll``/``epoll`` (or an asyncio loop) instead of spinning.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from typing import Literal

from ..errors import LinkDown

_EVENTFD_ONE = (1).to_bytes(8, "little")
_KICK_BYTE = b"\x01"


class Doorbell(ABC):
    """One side's view of a bidirectional notification channel."""

    #: True if every kick makes the fd report readiness anew (epoll edge-triggered),
    #: so a waiter never has to consume kicks with a read
    edge_triggered: bool = False

    @abstractmethod
    def kick(self) -> None:
        """Notify the peer (never blocks; kicks may coalesce)."""

    @abstractmethod
    def fileno(self) -> int:
        """An fd that is readable while a kick from the peer is pending; -1 if none."""

    @abstractmethod
    def clear(self) -> None:
        """Consume pending kicks without blocking; raise LinkDown if the peer hung up."""

    @abstractmethod
    def close(self) -> None:
        """Release the fds this doorbell owns."""


class EventfdDoorbell(Doorbell):
    """A pair of eventfds: ``rx_fd`` is rung by the peer, ``tx_fd`` rings the peer.

    The default for simulation: one ``write`` per kick, and the counter coalesces kicks.
    Every write signals an edge-triggered epoll, so the waiter needs no ``read`` to
    re-arm (the 64-bit counter cannot realistically overflow).
    """

    edge_triggered = True

    def __init__(self, rx_fd: int, tx_fd: int) -> None:
        os.set_blocking(rx_fd, False)
        self.rx_fd = rx_fd
        self.tx_fd = tx_fd
        self.kicks_sent = 0

    @classmethod
    def pair(cls) -> tuple[EventfdDoorbell, EventfdDoorbell]:
        """Two connected doorbells (one per side) in this process."""
        a = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        b = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return cls(a, b), cls(os.dup(b), os.dup(a))

    def kick(self) -> None:
        self.kicks_sent += 1
        os.write(self.tx_fd, _EVENTFD_ONE)

    def fileno(self) -> int:
        return self.rx_fd

    def clear(self) -> None:
        try:
            os.read(self.rx_fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self.rx_fd, self.tx_fd):
            if fd >= 0:
                os.close(fd)
        self.rx_fd = self.tx_fd = -1


class SocketDoorbell(Doorbell):
    """OpenAMP's Linux style: one byte per kick over an AF_UNIX stream socket.

    Kicks carry no queue id and coalesce; the socket closing means the peer is gone.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.kicks_sent = 0
        self.peer_closed = False

    def kick(self) -> None:
        self.kicks_sent += 1
        try:
            self.sock.send(_KICK_BYTE)
        except BlockingIOError:
            pass  # the peer has unread kicks already; kicks coalesce
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.peer_closed = True
            raise LinkDown("the peer closed the notification socket") from exc

    def fileno(self) -> int:
        return self.sock.fileno()

    def clear(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            except ConnectionResetError as exc:
                self.peer_closed = True
                raise LinkDown("the peer reset the notification socket") from exc
            if not data:
                self.peer_closed = True
                raise LinkDown("the peer closed the notification socket")

    def close(self) -> None:
        self.sock.close()


class PollingDoorbell(Doorbell):
    """No notifications at all: both sides poll the rings."""

    def kick(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def clear(self) -> None:
        pass

    def close(self) -> None:
        pass


#: the kinds of :func:`doorbell_pair`
Notify = Literal["eventfd", "socket", "poll"]


def doorbell_pair(notify: Notify) -> tuple[Doorbell, Doorbell]:
    """Two connected doorbells of the given kind (both ends of a link in one process)."""
    if notify == "eventfd":
        return EventfdDoorbell.pair()
    if notify == "socket":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return SocketDoorbell(a), SocketDoorbell(b)
    if notify == "poll":
        return PollingDoorbell(), PollingDoorbell()
    raise ValueError(f"notify must be 'eventfd', 'socket' or 'poll', got {notify!r}")
