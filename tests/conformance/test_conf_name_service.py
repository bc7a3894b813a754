"""The name service: channels announced by either side, opened, destroyed, opened twice."""

from __future__ import annotations

import time

import pytest
from backends import Harness
from conformance_kit import MARGIN, assert_within

from amplink.errors import EndpointClosed, InvalidArgument, PeerTimeout

pytestmark = [pytest.mark.timeout(30), pytest.mark.needs("name_service"),
              pytest.mark.addressing("rpmsg")]


def test_local_announcement_reaches_the_peer(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    svc = local.create_endpoint("conf-local-svc", announce=True)
    assert svc.announced
    assert peer.call("wait_channel", name="conf-local-svc", timeout=5) == svc.addr
    client, dst = peer.call("open_channel", name="conf-local-svc", timeout=5)
    assert dst == svc.addr
    peer.send(client, b"hello")
    assert svc.recvfrom(timeout=5) == (b"hello", client)
    svc.send(b"welcome", timeout=5)  # the service learnt its client's address
    assert peer.recv(client) == (b"welcome", svc.addr)


def test_local_destroy_reaches_the_peer(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    svc = local.create_endpoint("conf-gone-svc", announce=True)
    client, _ = peer.call("open_channel", name="conf-gone-svc", timeout=5)
    svc.close()
    assert peer.call("wait_channel_gone", name="conf-gone-svc", timeout=5)
    assert peer.call("info", addr=client)["closed"]  # the peer's client endpoint went too


def test_peer_announcement_open_and_destroy(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    svc = peer.create("conf-peer-svc", announce=True)
    channel = local.wait_channel("conf-peer-svc", timeout=5)
    assert channel.dst == svc
    assert [c.name for c in local.channels()] == ["conf-peer-svc"]
    client = local.open_channel("conf-peer-svc", timeout=5)
    assert client.dst == svc
    client.send(b"hello", timeout=5)
    assert peer.recv(svc) == (b"hello", client.addr)
    peer.send(svc, b"welcome")
    peer.send(svc, b"bye")
    peer.call("close", addr=svc)
    # what arrived before the end stays readable; then the endpoint is closed (not lost)
    assert client.recv(timeout=5) == b"welcome"
    assert client.recv(timeout=5) == b"bye"
    with pytest.raises(EndpointClosed):
        client.recv(timeout=5)
    assert client.closed
    assert local.channels() == []
    with pytest.raises(EndpointClosed):
        client.send(b"late", timeout=1)


def test_second_opener_gets_its_own_address(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    svc = peer.create("conf-shared-svc", announce=True)
    first = local.open_channel("conf-shared-svc", timeout=5)
    second = local.open_channel("conf-shared-svc", timeout=5)
    assert first.addr != second.addr
    assert first.dst == second.dst == svc
    first.send(b"one", timeout=5)
    second.send(b"two", timeout=5)
    assert peer.recv_many(svc, 2) == [(b"one", first.addr), (b"two", second.addr)]
    peer.send(svc, b"to two", dst=second.addr)
    assert second.recv(timeout=5) == b"to two"
    assert first.try_recvfrom() is None
    peer.call("close", addr=svc)  # the channel goes: both of its endpoints close
    for ep in (first, second):
        with pytest.raises(EndpointClosed):
            ep.recv(timeout=5)


def test_several_channels(harness: Harness) -> None:
    local, peer = harness.local, harness.peer
    names = [f"conf-svc-{i}" for i in range(5)]
    services = {}
    for n in names:
        # one at a time: an announcement needs a free buffer, and small links have few
        services[n] = peer.create(n, announce=True)
        local.wait_channel(n, timeout=5)
    clients = {n: local.open_channel(n, timeout=5) for n in names}
    assert sorted(c.name for c in local.channels()) == names
    for n in reversed(names):
        clients[n].send(n.encode(), timeout=5)
        assert peer.recv(services[n]) == (n.encode(), clients[n].addr)
    for i, n in enumerate(names):
        peer.call("close", addr=services[n])
        with pytest.raises(EndpointClosed):
            clients[n].recv(timeout=5)
        assert sorted(c.name for c in local.channels()) == names[i + 1:]


def test_wait_channel_times_out(harness: Harness) -> None:
    t0 = time.monotonic()
    with pytest.raises(PeerTimeout):
        harness.local.wait_channel("conf-never", timeout=0.05)
    assert_within(time.monotonic() - t0, 0.05, 0.05 + MARGIN, "wait_channel(timeout=0.05)")
    with pytest.raises(PeerTimeout):
        harness.local.open_channel("conf-never", timeout=0)


def test_announcement_needs_a_valid_name(harness: Harness) -> None:
    local = harness.local
    with pytest.raises(InvalidArgument):
        local.create_endpoint(announce=True)
    for bad in ("", "x" * 32, "nul\0in"):
        with pytest.raises(InvalidArgument):
            local.create_endpoint(bad, announce=True)
    assert local.endpoints() == []
