"""Batches through the endpoint API: send_many / sendto_many and recv_many (and their
asyncio forms), on rpmsg over virtio (whichever rings run) and on the loopback backend
(the Backend interface's portable send_many / receive_copies)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from amplink import EndpointClosed, InvalidArgument, LinkDown, MessageTooLarge, ReceiveTimeout
from amplink.platforms.inprocess import LinkPair
from amplink.platforms.sim.layout import LinkConfig
from amplink.transports.loopback import loopback_pair

NUM = 8  # transmit buffers (virtio) / queue depth (loopback) per direction


@pytest.fixture(params=["virtio", "loopback"])
def links(request: pytest.FixtureRequest) -> Iterator[tuple]:
    if request.param == "virtio":
        pair = LinkPair.create(LinkConfig(num_buffers=NUM))
        try:
            yield pair.host, pair.device
        finally:
            pair.close()
    else:
        a, b = loopback_pair(depth=NUM)
        try:
            yield a, b
        finally:
            a.close()
            b.close()


def _connect(a, b):
    rx = b.create_endpoint()
    tx = a.create_endpoint(dst=rx.addr)
    return tx, rx


def test_a_batch_arrives_whole_and_in_order(links) -> None:
    tx, rx = _connect(*links)
    batch = [b"m%d" % i for i in range(NUM)]
    assert tx.send_many(batch, timeout=1) == NUM
    assert rx.recv_many(100, timeout=1) == batch
    assert tx.statistics().messages_sent == NUM
    assert rx.statistics().messages_received == NUM


def test_recv_many_takes_at_most_n_and_waits_only_for_the_first(links) -> None:
    tx, rx = _connect(*links)
    tx.send_many([b"a", b"b", b"c"], timeout=1)
    assert rx.recvfrom_many(2, timeout=1) == [(b"a", tx.addr), (b"b", tx.addr)]
    assert rx.recv_many(5, timeout=1) == [b"c"]
    with pytest.raises(ReceiveTimeout):
        rx.recv_many(5, timeout=0.05)


def test_a_batch_larger_than_the_ring_waits_for_buffers(links) -> None:
    tx, rx = _connect(*links)
    batch = [b"%d" % i for i in range(5 * NUM)]
    got: list[bytes] = []

    def reader() -> None:
        while len(got) < len(batch):
            got.extend(rx.recv_many(NUM, timeout=5))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert tx.send_many(batch, timeout=5) == len(batch)
    finally:
        thread.join(10)
    assert got == batch


def test_without_waiting_a_batch_sends_what_fits_and_says_how_much(links) -> None:
    tx, rx = _connect(*links)
    assert tx.send_many([b"x"] * (NUM + 3), timeout=0) == NUM
    assert tx.send_many([b"y"], timeout=0.05) == 0  # nobody reads: the timeout expires
    assert len(rx.recv_many(100, timeout=1)) == NUM


def test_every_payload_is_checked_before_the_first_is_sent(links) -> None:
    tx, rx = _connect(*links)
    with pytest.raises(MessageTooLarge):
        tx.send_many([b"fine", bytes(tx.mtu + 1)], timeout=1)
    with pytest.raises(TypeError):
        tx.send_many([b"fine", "text"], timeout=1)  # type: ignore[list-item]
    with pytest.raises(ReceiveTimeout):
        rx.recv(timeout=0.05)  # nothing went
    assert tx.sendto_many([bytearray(b"ba"), memoryview(b"mv")], rx.addr, timeout=1) == 2
    assert rx.recv_many(5, timeout=1) == [b"ba", b"mv"]
    with pytest.raises(InvalidArgument):
        rx.recv_many(0, timeout=1)


def test_recv_many_after_the_peer_left_returns_what_was_queued_then_raises(links) -> None:
    tx, rx = _connect(*links)
    tx.send_many([b"1", b"2"], timeout=1)
    assert rx.recv(timeout=1) == b"1"  # the rest is queued by now
    links[1].close("the peer is gone")
    assert rx.recv_many(5, timeout=1) == [b"2"]
    with pytest.raises(LinkDown):
        rx.recv_many(5, timeout=1)
    rx2 = links[0].create_endpoint()
    rx2.close()
    with pytest.raises(EndpointClosed):
        rx2.recv_many(5, timeout=1)


def test_async_recv_many(links) -> None:
    tx, rx = _connect(*links)

    async def main() -> list[bytes]:
        got = await rx.arecv_many(10, timeout=1)  # waits: nothing is there yet
        while len(got) < 2:
            got += await rx.arecv_many(10, timeout=1)
        return got

    def later() -> None:
        tx.send_many([b"p", b"q"], timeout=1)

    timer = threading.Timer(0.05, later)
    timer.start()
    try:
        got = asyncio.run(main())
    finally:
        timer.join()
    assert got == [b"p", b"q"]


def test_callbacks_get_a_batch_in_order(links) -> None:
    a, b = links
    seen: list[bytes] = []
    done = threading.Event()

    def callback(ep, payload, src) -> None:
        seen.append(payload)
        if len(seen) == 3 * NUM:
            done.set()

    rx = b.create_endpoint(callback=callback)
    tx = a.create_endpoint(dst=rx.addr)
    batch = [b"%d" % i for i in range(3 * NUM)]
    thread = threading.Thread(target=b.run, kwargs={"until": done.is_set, "timeout": 10})
    thread.start()
    try:
        assert tx.send_many(batch, timeout=5) == len(batch)
        assert done.wait(10)
    finally:
        thread.join(10)
    assert seen == batch


def test_batches_through_a_backend_that_queues_blocked_sends() -> None:
    """Keem Bay queues blocked single sends in its own order (Backend.enqueue); a batch
    goes through try_send, after what is queued, whole and in order, also when it is far
    larger than the FIFO and the header pool."""
    from amplink.transports.keembay import KeemBayPair

    with KeemBayPair.create() as pair:
        rx = pair.vpu.create_endpoint(addr=12)  # general-purpose channel 12, both ends
        tx = pair.cpu.create_endpoint(addr=12)
        fits = tx.send_many([b"f"] * 1000, timeout=0)
        assert 0 < fits < 1000  # without waiting: what the FIFO and the pool took
        first: list[bytes] = []
        while len(first) < fits:
            first += rx.recv_many(1000, timeout=1)
        assert first == [b"f"] * fits
        batch = [b"%d" % i for i in range(1000)]
        got: list[bytes] = []

        def reader() -> None:
            while len(got) < len(batch):
                got.extend(rx.recv_many(50, timeout=5))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            assert tx.send_many(batch, timeout=5) == len(batch)
        finally:
            thread.join(10)
        assert got == batch
