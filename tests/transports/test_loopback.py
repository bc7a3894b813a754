"""The loopback backend: the worked example of docs/architecture.md, run as written."""

from __future__ import annotations

import asyncio

import pytest

from amplink import MessageTooLarge, NoBufferAvailable, NotSupported
from amplink.transports.loopback import loopback_pair


@pytest.fixture
def links():
    a, b = loopback_pair(depth=4)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_channels_messages_and_callbacks_over_two_queues(links):
    a, b = links
    server = b.create_endpoint("echo", announce=True,
                               callback=lambda ep, data, src: ep.sendto(data.upper(), src))
    client = a.open_channel("echo", timeout=2)
    assert client.dst == server.addr
    client.send(b"hello", timeout=1)
    assert client.recv(timeout=2) == b"HELLO"

    async def main() -> bytes:
        await client.asend(b"async", timeout=1)
        return await client.arecv(timeout=2)

    assert asyncio.run(main()) == b"ASYNC"


def test_a_full_queue_pushes_back_and_the_mtu_holds(links):
    a, b = links
    rx = b.create_endpoint()
    tx = a.create_endpoint(dst=rx.addr)
    for i in range(4):
        tx.try_send(b"%d" % i)
    with pytest.raises(NoBufferAvailable):
        tx.try_send(b"more")
    assert not tx.wait_writable(timeout=0.05)
    assert rx.recv(timeout=1) == b"0"
    assert tx.wait_writable(timeout=1)
    with pytest.raises(MessageTooLarge):
        tx.send(bytes(497), timeout=1)


def test_missing_capabilities_are_clear_errors(links):
    a, _b = links
    ep = a.create_endpoint(dst=1024)
    with pytest.raises(NotSupported, match="tx_loan"):
        ep.loan(timeout=0)
    with pytest.raises(NotSupported, match="rx_hold"):
        a.create_endpoint(hold=True)
