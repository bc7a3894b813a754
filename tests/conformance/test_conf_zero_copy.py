"""Zero copy: loaned transmit buffers (fill, send, drop, collected) and held receive
buffers (valid until released, released buffers go back, a link holding ``max_held``
stops receiving until one is released); and the errors of a backend without them."""

from __future__ import annotations

import asyncio

import pytest
from backends import Harness
from conformance_kit import Recorder, connect, drive_until, exhaust

from amplink.errors import (
    EndpointClosed,
    MessageTooLarge,
    NoBufferAvailable,
    NotSupported,
    ReceiveTimeout,
)
from amplink.link import HeldMessage, TxLoan

pytestmark = [pytest.mark.timeout(30), pytest.mark.addressing("rpmsg", "channel")]


def loans_until_exhausted(ep) -> list[TxLoan]:  # noqa: ANN001
    loans = []
    while True:
        try:
            loans.append(ep.loan(timeout=0))
        except NoBufferAvailable:
            assert loans, "not even one buffer could be loaned"
            return loans


# -- transmit loans ---------------------------------------------------------------------------
@pytest.mark.addressing("rpmsg")  # sends to another address than its own
@pytest.mark.needs("tx_loan")
def test_loan_fill_send(harness: Harness) -> None:
    ep, p = connect(harness)
    loan = ep.loan(timeout=5)
    assert len(loan.view) == ep.mtu
    assert not loan.view.readonly
    loan.view[:5] = b"hello"
    loan.send(5)
    assert loan.done
    assert harness.peer.recv(p) == (b"hello", ep.addr)
    other = harness.peer.create()
    with ep.loan(timeout=5) as loan:
        loan.view[:ep.mtu] = bytes(range(256)) * (ep.mtu // 256) + bytes(range(ep.mtu % 256))
        loan.send(ep.mtu, dst=other)  # the whole buffer, to another address
    got, src = harness.peer.recv(other)
    assert (len(got), src) == (ep.mtu, ep.addr)
    assert got[:256] == bytes(range(min(256, ep.mtu)))
    with ep.loan(timeout=5) as loan:
        loan.send(0)  # an empty message
    assert harness.peer.recv(p) == (b"", ep.addr)
    assert ep.statistics().messages_sent == 3


@pytest.mark.needs("tx_loan")
def test_loan_send_past_the_view_refused(harness: Harness) -> None:
    ep, p = connect(harness)
    loan = ep.loan(timeout=5)
    loan.view[:4] = b"kept"
    for bad in (len(loan.view) + 1, -1):
        with pytest.raises(MessageTooLarge):
            loan.send(bad)
    with pytest.raises(IndexError):
        loan.view[len(loan.view)] = 0  # the view ends at the MTU
    loan.send(4)  # refusals cost nothing: the loan is still good
    assert harness.peer.recv(p) == (b"kept", ep.addr)
    with pytest.raises(EndpointClosed):
        loan.send(4)  # sent already
    with pytest.raises(ValueError):
        loan.view[0]  # noqa: B018 - the view is void once sent


@pytest.mark.needs("tx_loan")
def test_dropped_and_collected_loans_return_their_buffer(harness: Harness) -> None:
    ep, p = connect(harness)
    loans = loans_until_exhausted(ep)
    count = len(loans)
    with pytest.raises(NoBufferAvailable):
        ep.try_send(b"none left")
    loans.pop().drop()
    loans[-1].drop()
    loans[-1].drop()  # idempotent
    loans.pop()
    assert len(loans_until_exhausted(ep)) == 2  # both came back (and are collected now)
    del loans[-1]  # an unsent loan nobody holds: collected, its buffer goes back
    again = ep.loan(timeout=5)
    again.view[:5] = b"reuse"
    again.send(5)
    assert harness.peer.recv(p) == (b"reuse", ep.addr)
    for loan in loans:
        loan.drop()
    assert len(loans_until_exhausted(ep)) == count  # every buffer is back


@pytest.mark.needs("tx_loan")
def test_aloan(harness: Harness) -> None:
    ep, p = connect(harness)

    async def main() -> None:
        loan = await ep.aloan(timeout=5)
        loan.view[:6] = b"async!"
        loan.send(6)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert harness.peer.recv(p) == (b"async!", ep.addr)


@pytest.mark.needs("tx_loan")
def test_loan_waits_for_a_buffer_the_peer_frees(harness: Harness) -> None:
    ep, p = connect(harness)
    sent = exhaust(ep)
    reading = harness.peer.start("recv_many", addr=p, count=len(sent) + 1, timeout=10)
    loan = ep.loan(timeout=10)  # a buffer frees as the peer reads
    loan.view[:4] = b"last"
    loan.send(4)
    assert [m for m, _ in reading.result(20)] == sent + [b"last"]


@pytest.mark.lacks("tx_loan")
def test_loan_without_the_capability_is_not_supported(harness: Harness) -> None:
    ep, p = connect(harness)
    with pytest.raises(NotSupported):
        ep.loan(timeout=1)
    with pytest.raises(NotSupported):
        asyncio.run(ep.aloan(timeout=1))
    ep.send(b"send works", timeout=5)
    assert harness.peer.recv(p) == (b"send works", ep.addr)


# -- held receive buffers ---------------------------------------------------------------------
@pytest.mark.needs("rx_hold")
def test_held_message_valid_until_released(harness: Harness) -> None:
    local = harness.local
    ep = local.create_endpoint(hold=True)
    p = harness.peer.create(dst=ep.addr)
    harness.peer.send(p, b"held one")
    msg = ep.recv_held(timeout=5)
    assert isinstance(msg, HeldMessage)
    assert (bytes(msg.view), msg.src, len(msg)) == (b"held one", p, 8)
    assert msg.view.readonly
    assert local.statistics().rx_held == 1
    # more traffic meanwhile does not touch it
    harness.peer.send(p, b"held two")
    second = ep.recv_held(timeout=5)
    assert local.statistics().rx_held == 2
    assert bytes(msg.view) == b"held one" and bytes(second) == b"held two"
    msg.release()
    msg.release()  # idempotent
    assert msg.released
    with pytest.raises(ValueError):
        bytes(msg.view)
    assert local.statistics().rx_held == 1
    with second:
        pass  # leaving the block releases it
    assert local.statistics().rx_held == 0


@pytest.mark.needs("rx_hold")
def test_collected_held_message_returns_its_buffer(harness: Harness) -> None:
    local = harness.local
    ep = local.create_endpoint(hold=True)
    p = harness.peer.create(dst=ep.addr)
    harness.peer.send(p, b"dropped on the floor")
    msg = ep.recv_held(timeout=5)
    assert local.statistics().rx_held == 1
    del msg  # nobody holds it: collected (CPython frees it at once), its buffer goes back
    local.poll()
    assert local.statistics().rx_held == 0


@pytest.mark.addressing("rpmsg")  # sends to another address than its own
@pytest.mark.needs("rx_hold")
def test_a_link_holding_max_held_stops_receiving_until_a_release(harness: Harness) -> None:
    local = harness.local
    max_held = local.statistics().max_held
    rx_buffers = local.capabilities.rx_buffers
    assert 1 <= max_held < rx_buffers, "nothing left to receive into while at max_held"
    ep = local.create_endpoint(hold=True)
    plain = local.create_endpoint()
    p = harness.peer.create(dst=ep.addr)
    count = min(rx_buffers, max_held + 2)
    harness.peer.call("send_many", addr=p, dst=ep.addr,
                      items=[b"%d" % i for i in range(count - 1)])
    harness.peer.send(p, b"for plain", dst=plain.addr)
    held = [ep.recv_held(timeout=5) for _ in range(max_held)]
    assert [bytes(m) for m in held] == [b"%d" % i for i in range(max_held)]
    stats = local.statistics()
    assert stats.rx_held == max_held
    # receiving has stopped for the whole link: the rest stays in the rings
    with pytest.raises(ReceiveTimeout):
        ep.recv_held(timeout=0.05)
    with pytest.raises(ReceiveTimeout):
        plain.recv(timeout=0.05)
    assert local.statistics().rx_backpressure >= 1  # and it says why
    held[0].release()  # one buffer back: receiving resumes
    rest = [bytes(ep.recv_held(timeout=5)) for _ in range(count - 1 - max_held)]
    assert rest == [b"%d" % i for i in range(max_held, count - 1)]
    for m in held:
        m.release()
    assert plain.recv(timeout=5) == b"for plain"
    assert local.statistics().rx_held == 0


@pytest.mark.needs("rx_hold")
def test_held_messages_in_a_callback(harness: Harness, dispatch: str) -> None:
    local = harness.local
    kept: list[HeldMessage] = []

    def keep_second(ep, msg, src):  # noqa: ANN001
        assert isinstance(msg, HeldMessage)
        if bytes(msg) == b"keep":
            kept.append(msg.hold())  # valid past the callback until released

    rec = Recorder(keep_second)
    ep = local.create_endpoint(hold=True, callback=rec)
    p = harness.peer.create(dst=ep.addr)
    harness.peer.call("send_many", addr=p, dst=ep.addr, items=[b"drop", b"keep"])
    assert drive_until(harness, rec, lambda: rec.count() >= 2 and bool(kept), 10)
    first = rec.payloads[0]
    assert first.released  # not kept: released when its callback returned
    assert bytes(kept[0].view) == b"keep"
    assert local.statistics().rx_held == 1
    kept[0].release()
    assert local.statistics().rx_held == 0


def test_recv_held_without_hold_is_a_copy(harness: Harness) -> None:
    """On any backend: recv_held() of an ordinary endpoint gives a copy in the same shape."""
    ep, p = connect(harness)
    harness.peer.send(p, b"copied")
    msg = ep.recv_held(timeout=5)
    assert (bytes(msg.view), msg.src) == (b"copied", p)
    assert harness.local.statistics().rx_held == 0
    msg.release()


@pytest.mark.lacks("rx_hold")
def test_hold_without_the_capability_is_not_supported(harness: Harness) -> None:
    with pytest.raises(NotSupported):
        harness.local.create_endpoint(hold=True)
    assert harness.local.endpoints() == []
