"""What a send accepts as payload, and that a refused one never costs a ring buffer."""

from __future__ import annotations

import array
import asyncio

import pytest

from amplink import AmplinkError, LinkConfig, MessageTooLarge
from amplink.errors import InvalidArgumentType
from amplink.platforms.inprocess import LinkPair

NUM = 8  # ring size: a leak of one buffer per refused call shows within a ring's worth


@pytest.fixture(params=["host-sends", "device-sends"])
def ends(request):
    pair = LinkPair.create(LinkConfig(num_buffers=NUM))
    try:
        a, b = pair.host, pair.device
        if request.param == "device-sends":
            a, b = b, a
        rx = b.create_endpoint()
        tx = a.create_endpoint(dst=rx.addr)
        yield tx, rx
    finally:
        pair.close()


NOT_BYTES = ["text", [1, 2, 3], 42, None, memoryview(b"abcdefgh")[::2]]


@pytest.mark.parametrize("bad", NOT_BYTES, ids=["str", "list", "int", "None", "strided"])
def test_a_payload_that_is_not_contiguous_bytes_is_refused_before_a_buffer_is_taken(ends, bad):
    tx, rx = ends
    calls = [lambda: tx.send(bad, timeout=0.5), lambda: tx.try_send(bad),
             lambda: tx.sendto(bad, rx.addr, timeout=0.5), lambda: tx.try_sendto(bad, rx.addr),
             lambda: tx.send_offchannel(tx.addr, rx.addr, bad, timeout=0.5),
             lambda: asyncio.run(tx.asend(bad, timeout=0.5))]
    for _ in range(2 * NUM):  # two rings' worth of refusals
        for call in calls:
            with pytest.raises(InvalidArgumentType, match="data") as info:
                call()
            assert isinstance(info.value, TypeError) and isinstance(info.value, AmplinkError)
    assert rx.try_recvfrom() is None  # nothing went out
    for i in range(NUM):  # every buffer is still there
        tx.try_send(b"ok %d" % i)
    assert [rx.recv(timeout=1) for _ in range(NUM)] == [b"ok %d" % i for i in range(NUM)]


def test_wide_item_buffers_are_sent_as_their_bytes(ends):
    tx, rx = ends
    words = array.array("I", [0x01020304, 0xA0B0C0D0])
    tx.send(memoryview(words), timeout=1)
    tx.send(words, timeout=1)
    tx.send(memoryview(bytearray(b"2d-matrix!!!")).cast("B", (3, 4)), timeout=1)
    assert rx.recv(timeout=1) == words.tobytes()
    assert rx.recv(timeout=1) == words.tobytes()
    assert rx.recv(timeout=1) == b"2d-matrix!!!"


def test_the_mtu_counts_bytes_not_items(ends):
    tx, rx = ends
    too_big = array.array("I", bytes(tx.mtu // 4 * 4 + 4))  # fewer items than the MTU
    assert len(too_big) < tx.mtu
    with pytest.raises(MessageTooLarge):
        tx.send(too_big, timeout=1)
    tx.send(array.array("I", bytes(tx.mtu // 4 * 4)), timeout=1)
    assert len(rx.recv(timeout=1)) == tx.mtu // 4 * 4
