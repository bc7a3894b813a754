"""A backend names the error types of its links (ErrorTypes, no_buffer_error): every
place that raises the generic error raises the backend's subclass instead."""

from __future__ import annotations

import errno
from collections import deque

import pytest

from amplink.errors import (
    AddressError,
    EndpointClosed,
    LinkDown,
    NoBufferAvailable,
    ReceiveTimeout,
)
from amplink.link import Link
from amplink.link.backend import ErrorTypes
from amplink.notify.doorbell import EventfdDoorbell
from amplink.transports.loopback import LoopbackBackend


class Closed(EndpointClosed):
    pass


class Down(LinkDown):
    def again(self) -> Down:
        return Down(str(self))


class Timeout(ReceiveTimeout):
    pass


class InUse(AddressError):
    pass


class Full(NoBufferAvailable):
    def __init__(self) -> None:
        BlockingIOError.__init__(self, errno.EBUSY, "full")


class Dialect(LoopbackBackend):
    errors = ErrorTypes(closed=Closed, down=Down, recv_timeout=Timeout, in_use=InUse)

    def no_buffer_error(self) -> NoBufferAvailable:
        return Full()


@pytest.fixture
def links():
    a_to_b: deque = deque()
    b_to_a: deque = deque()
    bell_a, bell_b = EventfdDoorbell.pair()
    a = Link(Dialect(b_to_a, a_to_b, bell_a, 2, 64), name="a")
    b = Link(Dialect(a_to_b, b_to_a, bell_b, 2, 64), name="b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_each_condition_raises_the_backends_type(links):
    a, b = links
    ep = a.create_endpoint(addr=2000, dst=3000)
    with pytest.raises(InUse):
        a.create_endpoint(addr=2000)
    with pytest.raises(Timeout):
        ep.recv(timeout=0)
    ep.try_send(b"1")
    ep.try_send(b"2")
    with pytest.raises(Full) as info:
        ep.try_send(b"3")
    assert info.value.errno == errno.EBUSY
    ep.close()
    with pytest.raises(Closed):
        ep.send(b"x", timeout=1)
    other = a.create_endpoint(dst=3000)
    a.mark_down("the peer left")
    with pytest.raises(Down, match="the peer left"):
        other.send(b"x", timeout=1)
    a.close("the peer left")
    with pytest.raises(Down):
        other.recv(timeout=1)
    with pytest.raises(Down):
        a.create_endpoint()
    b.close()
    with pytest.raises(Closed):
        b.create_endpoint()
