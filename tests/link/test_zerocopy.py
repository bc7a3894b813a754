"""Zero copy through the runtime: loaned transmit buffers, held receive buffers, and what
happens to them when they are dropped, collected, or the link goes."""

from __future__ import annotations

import asyncio
import gc

import pytest
from common_kit import wait_for

from amplink import (
    EndpointClosed,
    LinkConfig,
    MessageTooLarge,
    NoBufferAvailable,
    NotSupported,
    SendTimeout,
)
from amplink.platforms.inprocess import LinkPair

NUM = 8


@pytest.fixture(params=["host-sends", "device-sends"])
def ends(request):
    pair = LinkPair.create(LinkConfig(num_buffers=NUM), dispatch="caller")
    try:
        tx_link, rx_link = pair.host, pair.device
        if request.param == "device-sends":
            tx_link, rx_link = rx_link, tx_link
        rx = rx_link.create_endpoint(hold=True)
        tx = tx_link.create_endpoint(dst=rx.addr)
        yield tx, rx
    finally:
        pair.close()


def test_a_loan_is_filled_in_place_and_sent(ends):
    tx, rx = ends
    with tx.loan(timeout=1) as loan:
        assert len(loan.view) == tx.mtu and not loan.view.readonly
        loan.view[:5] = b"hello"
        loan.send(5)
    assert loan.done
    with rx.recv_held(timeout=1) as msg:
        assert bytes(msg) == b"hello" and msg.src == tx.addr and msg.view.readonly
    assert msg.released
    with pytest.raises(ValueError):
        msg.view[0]  # a released view raises instead of reading a reused buffer


def test_sending_past_the_loan_is_refused_and_the_loan_stays_usable(ends):
    tx, rx = ends
    loan = tx.loan(timeout=1)
    with pytest.raises(MessageTooLarge):
        loan.send(tx.mtu + 1)
    loan.send(0)
    assert rx.recv(timeout=1) == b""
    with pytest.raises(EndpointClosed, match="sent or dropped"):
        loan.send(0)


def test_dropped_and_collected_loans_give_their_buffers_back(ends):
    tx, rx = ends
    for _ in range(3 * NUM):  # a lost buffer per round would exhaust the ring
        tx.loan(timeout=1).drop()
        tx.loan(timeout=1)  # garbage at once: freed by its reference count
    gc.collect()
    for i in range(NUM):
        tx.try_send(b"%d" % i)
    assert [rx.recv(timeout=1) for _ in range(NUM)] == [b"%d" % i for i in range(NUM)]


def test_loans_exhaust_the_ring_like_sends(ends):
    tx, _rx = ends
    loans = []
    with pytest.raises(NoBufferAvailable):
        for _ in range(4 * NUM):
            loans.append(tx.loan(timeout=0))
    with pytest.raises(SendTimeout):
        tx.loan(timeout=0.05)
    with pytest.raises(NoBufferAvailable):
        tx.try_send(b"x")
    loans.pop().drop()
    tx.try_send(b"x")


def test_a_held_message_keeps_its_buffer_until_released(ends):
    tx, rx = ends
    tx.send(b"first", timeout=1)
    held = rx.recv_held(timeout=1)
    stats = rx.link.statistics()
    assert stats.rx_held == 1
    tx.send(b"second", timeout=1)
    assert rx.recv(timeout=1) == b"second"  # the copying receive of a holding endpoint
    assert bytes(held) == b"first"  # still the peer's buffer, untouched
    held.release()
    held.release()  # idempotent
    assert rx.link.statistics().rx_held == 0


def test_holding_too_many_stops_receiving_until_a_release(ends):
    tx, rx = ends
    link = rx.link
    limit = link.max_held
    assert limit == NUM // 2
    for i in range(NUM):
        tx.send(b"%d" % i, timeout=1)
    held = [rx.recv_held(timeout=1) for _ in range(limit)]
    with pytest.raises(Exception) as info:
        rx.recv_held(timeout=0.1)  # the rest stays in the ring: back-pressure
    assert "no message" in str(info.value)
    stats = link.statistics()
    assert stats.rx_held == limit and stats.rx_backpressure > 0
    held[0].release()
    assert bytes(rx.recv_held(timeout=1)) == b"%d" % limit
    for msg in held[1:]:
        msg.release()
    rest = [rx.recv(timeout=1) for _ in range(NUM - limit - 1)]
    assert rest == [b"%d" % i for i in range(limit + 1, NUM)]


def test_collected_held_messages_give_their_buffers_back(ends):
    tx, rx = ends
    for round_ in range(3):
        for i in range(NUM):
            tx.send(b"%d" % i, timeout=1)
        for _ in range(NUM):
            rx.recv_held(timeout=1)  # dropped at once: freed by its reference count
        assert wait_for(lambda: rx.link.statistics().rx_held == 0, 2), round_


def test_a_callback_gets_held_messages_and_may_keep_one(ends):
    tx, rx_unused = ends
    link = rx_unused.link
    kept = []

    def on_message(ep, msg, src):
        if bytes(msg) == b"keep":
            kept.append(msg.hold())

    cb = link.create_endpoint(callback=on_message, hold=True)
    tx.sendto(b"drop", cb.addr, timeout=1)
    tx.sendto(b"keep", cb.addr, timeout=1)
    link.poll()
    assert len(kept) == 1 and link.statistics().rx_held == 1
    assert bytes(kept[0]) == b"keep"
    kept[0].release()
    assert link.statistics().rx_held == 0


def test_closing_the_link_voids_held_messages_and_loans():
    pair = LinkPair.create(LinkConfig(num_buffers=NUM), dispatch="caller")
    rx = pair.device.create_endpoint(hold=True)
    tx = pair.host.create_endpoint(dst=rx.addr)
    tx.send(b"x", timeout=1)
    held = rx.recv_held(timeout=1)
    loan = tx.loan(timeout=1)
    pair.close()  # the memory goes: no view of it may outlive the link
    assert held.released and loan.done
    with pytest.raises(ValueError):
        bytes(held.view)
    held.release()
    loan.drop()


def test_asyncio_loan_and_held_receive(ends):
    tx, rx = ends

    async def main() -> bytes:
        loan = await tx.aloan(timeout=1)
        loan.view[:2] = b"hi"
        loan.send(2)
        with await rx.arecv_held(timeout=1) as msg:
            return bytes(msg)

    assert asyncio.run(main()) == b"hi"


def test_a_backend_without_the_capabilities_refuses_clearly(ends):
    tx, rx = ends
    link = tx.link
    caps = link.capabilities
    object.__setattr__(link, "capabilities", type(caps)(max_payload=caps.max_payload))
    try:
        with pytest.raises(NotSupported, match="tx_loan"):
            tx.loan(timeout=0)
        with pytest.raises(NotSupported, match="rx_hold"):
            link.create_endpoint(hold=True)
    finally:
        object.__setattr__(link, "capabilities", caps)


def test_writable_readiness(ends):
    tx, rx = ends
    assert tx.link.writable() and tx.wait_writable(timeout=0.1)
    for _ in range(NUM):
        tx.try_send(b"fill")
    assert not tx.link.writable()
    assert tx.wait_writable(timeout=0.1) is False

    async def drained_later() -> bool:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, lambda: [rx.recv(timeout=1) for _ in range(2)])
        return await tx.await_writable(timeout=3)

    assert asyncio.run(drained_later())
