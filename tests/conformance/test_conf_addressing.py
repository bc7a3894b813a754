"""Addresses: explicit, dynamic, reused after close, learnt from the first message; the
broadcast address ANY is never a source or destination."""

from __future__ import annotations

import pytest
from backends import Harness
from conformance_kit import connect

from amplink.errors import AddressError, InvalidArgument
from amplink.rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NS_ADDR

pytestmark = [pytest.mark.timeout(30), pytest.mark.addressing("rpmsg")]


def test_explicit_address(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    ep = local.create_endpoint(addr=0x4321)
    assert ep.addr == 0x4321
    p = peer.create(dst=0x4321)
    peer.send(p, b"to 0x4321")
    assert ep.recvfrom(timeout=5) == (b"to 0x4321", p)
    # a reserved address below the dynamic range may be taken explicitly too
    low = local.create_endpoint(addr=700)
    peer.send(p, b"to 700", dst=700)
    assert low.recvfrom(timeout=5) == (b"to 700", p)


def test_explicit_address_in_use_refused(harness: Harness) -> None:
    local = harness.local
    ep = local.create_endpoint(addr=0x4000)
    with pytest.raises(AddressError):
        local.create_endpoint(addr=0x4000)
    assert [e.addr for e in local.endpoints()] == [ep.addr]
    if local.capabilities.name_service:  # the name service's own address is taken
        with pytest.raises(AddressError):
            local.create_endpoint(addr=RPMSG_NS_ADDR)


@pytest.mark.addressing("rpmsg", "channel")
def test_address_outside_the_range_refused(harness: Harness) -> None:
    first, last = harness.local.capabilities.address_range
    for bad in (-1, 0x1_0000_0000, "5"):
        with pytest.raises((InvalidArgument, TypeError)):
            harness.local.create_endpoint(addr=bad)  # type: ignore[arg-type]
    if first > 0:
        with pytest.raises(AddressError):
            harness.local.create_endpoint(addr=first - 1)
    if last < RPMSG_ADDR_ANY - 1:
        with pytest.raises(AddressError):
            harness.local.create_endpoint(addr=last + 1)


def test_dynamic_addresses_lowest_free_first(harness: Harness) -> None:
    local = harness.local
    base = local.capabilities.dynamic_base
    assert base is not None
    eps = [local.create_endpoint() for _ in range(4)]
    assert [e.addr for e in eps] == [base, base + 1, base + 2, base + 3]
    eps[1].close()
    again = local.create_endpoint()
    assert again.addr == base + 1  # the lowest free one, as Linux's idr
    explicit = local.create_endpoint(addr=base + 4)
    assert local.create_endpoint().addr == base + 5  # skips the explicit one
    assert explicit.addr == base + 4


def test_closed_address_is_reused_and_drops_meanwhile(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    ep = local.create_endpoint(addr=0x4100)
    p = peer.create(dst=0x4100)
    ep.close()
    ep.close()  # idempotent
    dropped = local.statistics().dropped_unknown_dst
    peer.send(p, b"to nobody")
    # the message to the closed address is dropped and counted, and blocks nothing
    sentinel = local.create_endpoint(addr=0x4101)
    peer.send(p, b"sentinel", dst=0x4101)
    assert sentinel.recv(timeout=5) == b"sentinel"
    assert local.statistics().dropped_unknown_dst == dropped + 1
    again = local.create_endpoint(addr=0x4100)
    peer.send(p, b"to the new one")
    assert again.recvfrom(timeout=5) == (b"to the new one", p)


def test_destination_learnt_from_the_first_message(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    ep = local.create_endpoint()
    assert ep.dst == RPMSG_ADDR_ANY
    with pytest.raises(AddressError):  # nowhere to send yet
        ep.send(b"x", timeout=1)
    p = peer.create(dst=ep.addr)
    peer.send(p, b"hello")
    assert ep.recvfrom(timeout=5) == (b"hello", p)
    assert ep.dst == p
    ep.send(b"reply", timeout=5)
    assert peer.recv(p) == (b"reply", ep.addr)


@pytest.mark.addressing("rpmsg", "channel")
def test_any_is_never_a_source_or_destination(harness: Harness) -> None:
    ep, p = connect(harness)
    for call in (lambda: ep.sendto(b"x", RPMSG_ADDR_ANY, timeout=1),
                 lambda: ep.try_sendto(b"x", RPMSG_ADDR_ANY),
                 lambda: ep.send_offchannel(RPMSG_ADDR_ANY, p, b"x", timeout=1),
                 lambda: ep.send_offchannel(ep.addr, RPMSG_ADDR_ANY, b"x", timeout=1),
                 lambda: ep.try_send_offchannel(RPMSG_ADDR_ANY, p, b"x")):
        with pytest.raises(InvalidArgument):
            call()
    if harness.local.capabilities.tx_loan:
        with ep.loan(timeout=5) as loan:
            with pytest.raises(InvalidArgument):
                loan.send(1, dst=RPMSG_ADDR_ANY)
    # nothing of it was sent, and the endpoint goes on
    ep.send(b"after", timeout=5)
    assert harness.peer.recv(p) == (b"after", ep.addr)
    assert ep.statistics().messages_sent == 1
