"""Doorbells: eventfd pair, AF_UNIX socket (coalescing, hang-up), polling."""

from __future__ import annotations

import os
import select
import socket

import pytest

from amplink.errors import LinkDown
from amplink.notify import EventfdDoorbell, PollingDoorbell, SocketDoorbell


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture
def eventfd_pair():
    a, b = EventfdDoorbell.pair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def socket_pair():
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a, b = SocketDoorbell(s1), SocketDoorbell(s2)
    yield a, b
    a.close()
    b.close()


# -- eventfd --
def test_eventfd_kick_reaches_the_peer_only(eventfd_pair):
    a, b = eventfd_pair
    assert not readable(a.fileno()) and not readable(b.fileno())
    a.kick()
    assert readable(b.fileno())
    assert not readable(a.fileno()), "a kick must not ring the kicker's own fd"
    b.clear()
    assert not readable(b.fileno())


def test_eventfd_both_directions(eventfd_pair):
    a, b = eventfd_pair
    b.kick()
    assert readable(a.fileno())
    assert not readable(b.fileno())
    a.clear()
    assert not readable(a.fileno())


def test_eventfd_kicks_coalesce_and_are_counted(eventfd_pair):
    a, b = eventfd_pair
    for _ in range(5):
        a.kick()
    assert a.kicks_sent == 5
    b.clear()  # one clear consumes all of them
    assert not readable(b.fileno())


def test_eventfd_clear_without_kick_does_not_block(eventfd_pair):
    _a, b = eventfd_pair
    b.clear()
    b.clear()
    assert not readable(b.fileno())


def test_eventfd_close_is_idempotent():
    a, b = EventfdDoorbell.pair()
    fds = (a.rx_fd, a.tx_fd)
    a.close()
    a.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    # the other side's fds are its own (dups) and still work
    b.kick()
    b.clear()
    b.close()


# -- AF_UNIX socket --
def test_socket_kick_and_clear(socket_pair):
    a, b = socket_pair
    a.kick()
    assert readable(b.fileno())
    b.clear()
    assert not readable(b.fileno())
    assert not b.peer_closed


@pytest.mark.timeout(10)
def test_socket_kicks_coalesce_without_blocking(socket_pair):
    a, b = socket_pair
    # far more kicks than the socket buffer holds: a full buffer must not block or raise
    for _ in range(20000):
        a.kick()
    assert a.kicks_sent == 20000
    b.clear()  # consumes every pending byte in one call
    assert not readable(b.fileno())
    a.kick()
    assert readable(b.fileno())


def test_socket_peer_close_is_link_down_on_clear(socket_pair):
    a, b = socket_pair
    a.kick()
    a.sock.close()
    with pytest.raises(LinkDown):
        b.clear()
    assert b.peer_closed
    assert isinstance(LinkDown("x"), ConnectionError)


def test_socket_kick_after_peer_close_is_link_down(socket_pair):
    a, b = socket_pair
    b.sock.close()
    with pytest.raises(LinkDown):
        for _ in range(3):  # the first send may still be accepted by the kernel
            a.kick()
    assert a.peer_closed


# -- polling --
def test_polling_doorbell_is_inert():
    d = PollingDoorbell()
    d.kick()
    d.clear()
    assert d.fileno() == -1
    d.close()
