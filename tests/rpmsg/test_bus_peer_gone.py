"""A peer that goes away: what was sent but never consumed is reported, never silent."""

from __future__ import annotations

import pytest

from amplink import EndpointClosed, LinkConfig, LinkDown
from amplink.platforms.inprocess import LinkPair


@pytest.fixture
def pair():
    # socket doorbells: a closed peer is a hang-up the other side notices
    p = LinkPair.create(LinkConfig(num_buffers=16), notify="socket")
    try:
        yield p
    finally:
        p.close()


def _gone(bus, ep) -> LinkDown:
    with pytest.raises(LinkDown) as info:
        ep.recv(timeout=2)
    assert bus.statistics().state == "down"
    return info.value


@pytest.mark.parametrize("sender", ["host", "device"])
def test_link_down_counts_messages_the_peer_never_consumed(pair, sender):
    tx_bus, rx_bus = (pair.host, pair.device) if sender == "host" else (pair.device, pair.host)
    rx = rx_bus.create_endpoint()
    tx = tx_bus.create_endpoint(dst=rx.addr)
    for i in range(3):
        tx.send(b"read %d" % i, timeout=1)
        assert rx.recv(timeout=1) == b"read %d" % i
    for i in range(7):
        tx.send(b"never read %d" % i, timeout=1)  # "succeeds": rpmsg has no acknowledgement
    rx_bus.close()
    error = _gone(tx_bus, tx)
    assert "7 messages sent before were never consumed by the peer" in str(error)
    assert tx_bus.statistics().backend["unconsumed_at_down"] == 7
    with pytest.raises(LinkDown, match="7 messages"):
        tx.send(b"after", timeout=1)


def test_nothing_unconsumed_is_not_mentioned(pair):
    rx = pair.device.create_endpoint()
    tx = pair.host.create_endpoint(dst=rx.addr)
    tx.send(b"x", timeout=1)
    assert rx.recv(timeout=1) == b"x"
    pair.device.close()
    assert "never consumed" not in str(_gone(pair.host, tx))
    assert pair.host.statistics().backend["unconsumed_at_down"] == 0


def test_a_link_closed_because_the_peer_is_gone_raises_link_down_not_endpoint_closed(pair):
    """close(reason) means the peer went away: trio's broken, never closed."""
    ep = pair.host.create_endpoint(dst=1024)
    pair.host.close("the processor crashed")
    for call in (lambda: ep.send(b"x", timeout=1), lambda: ep.recv(timeout=1),
                 lambda: ep.try_send(b"x"), lambda: pair.host.create_endpoint(),
                 lambda: pair.host.wait_channel("svc", timeout=1)):
        with pytest.raises(LinkDown, match="crashed"):
            call()


def test_a_link_closed_by_this_side_raises_endpoint_closed(pair):
    ep = pair.host.create_endpoint(dst=1024)
    pair.host.close()
    for call in (lambda: ep.send(b"x", timeout=1), lambda: ep.recv(timeout=1),
                 lambda: pair.host.create_endpoint()):
        with pytest.raises(EndpointClosed):
            call()


def test_tx_buffers_free_counts_every_idle_buffer():
    """Item 15 of issue 7: not only the never-used ones."""
    p = LinkPair.create(LinkConfig(num_buffers=8), dispatch="caller")
    try:
        rx = p.device.create_endpoint()
        tx = p.host.create_endpoint(dst=rx.addr)
        stats = p.host.statistics().backend
        assert stats["tx_buffers_free"] == stats["tx_buffers"] == 8
        for round_ in range(3):  # every buffer used, returned, reused
            for i in range(8):
                tx.send(b"%d" % i, timeout=1)
            assert p.host.statistics().backend["tx_buffers_free"] == 0, round_
            assert [rx.recv(timeout=1) for _ in range(8)] == [b"%d" % i for i in range(8)]
            stats = p.host.statistics().backend
            assert stats["tx_buffers_free"] == 8 and stats["tx_buffers_never_used"] == 0
    finally:
        p.close()
