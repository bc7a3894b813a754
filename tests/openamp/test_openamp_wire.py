"""The OpenAMP profile byte by byte: amplink in each role against a raw-bytes OpenAMP peer.

These tests are the proof of compatibility (no OpenAMP program runs here): the fake
peers in :mod:`openamp_kit` follow the profile with plain offsets, and every byte
amplink writes where OpenAMP reads it is compared with the profile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
from openamp_kit import (
    BUF,
    EXPECTED_TABLE,
    GFEATURES,
    KICK,
    NS_ADDR,
    NUM,
    RX_BUFFERS,
    STATUS,
    TX_BUFFERS,
    WRITE,
    FakeOpenAmpHost,
    FakeOpenAmpRemote,
    accept,
    connect,
    listen,
    ns_message,
    shm,
    wait_until,
)

from amplink import EndpointClosed, LinkDown, MessageTooLarge, NoBufferAvailable
from amplink.platforms.inprocess import LinkPair
from amplink.platforms.openamp import DEMO_SERVICE, OpenAmpConfig, OpenAmpLink
from amplink.virtio.vdev import VdevControl

NS_DESTROY = 1


def record_status_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every value written to a vdev status byte through VdevControl, in order."""
    writes: list[int] = []
    original: property = VdevControl.__dict__["status"]

    def setter(self: VdevControl, value: int) -> None:
        writes.append(value)
        assert original.fset is not None
        original.fset(self, value)

    monkeypatch.setattr(VdevControl, "status", property(original.fget, setter))
    return writes


def test_resource_table_bytes() -> None:
    assert len(EXPECTED_TABLE) == 88
    assert OpenAmpConfig().table_bytes() == EXPECTED_TABLE


def test_linux_status_sequence_is_still_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = record_status_writes(monkeypatch)
    LinkPair.create().close()
    assert writes == [0, 1, 3, 7]


# -- amplink as the host -------------------------------------------------------------------------
@pytest.fixture
def fake_remote(config: OpenAmpConfig) -> Iterator[tuple[OpenAmpLink, FakeOpenAmpRemote]]:
    """An amplink host (socket client) and a raw OpenAMP remote (server) that attached."""
    region = shm(config)
    region.write(0, EXPECTED_TABLE)
    with listen(config.socket_path) as listener:
        link = OpenAmpLink.open("host", server=False, config=config, timeout=5)
        peer = FakeOpenAmpRemote(region, accept(listener))
    try:
        peer.attach()
        yield link, peer
    finally:
        link.close()
        peer.close()


@pytest.mark.parametrize("host_server", [False, True], ids=["host-client", "host-server"])
def test_host_handshake_bytes(config: OpenAmpConfig, host_server: bool,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    writes = record_status_writes(monkeypatch)
    region = shm(config)
    region.fill(0x4000, 0xC000 - 0x4000, 0xEE)  # an earlier run's rings: must be zeroed
    with ExitStack() as stack:
        if host_server:
            pool = stack.enter_context(ThreadPoolExecutor(1))
            future = pool.submit(OpenAmpLink.open, "host", server=True, config=config,
                                 timeout=5)
            sock = connect(config.socket_path)
            link = future.result(timeout=10)
        else:
            region.write(0, EXPECTED_TABLE)
            with listen(config.socket_path) as listener:
                link = OpenAmpLink.open("host", server=False, config=config, timeout=5)
                sock = accept(listener)
        stack.callback(link.close)
        peer = FakeOpenAmpRemote(region, sock)
        stack.callback(peer.close)

        assert writes == [0x04]  # only DRIVER_OK: no ACKNOWLEDGE, no DRIVER
        assert region.read_u32(GFEATURES) == 1  # accepted: the name service only
        assert region.read_u8(STATUS) == 0x04
        table = bytearray(EXPECTED_TABLE)
        table[GFEATURES] = 1
        table[STATUS] = 0x04
        assert region.read(0, 88) == table
        assert peer.kicks(wait=2.0) == KICK * 2  # after the features, after DRIVER_OK

        v0, v1 = peer.vring0, peer.vring1
        for i in range(NUM):
            assert v0.desc(i) == (RX_BUFFERS + i * BUF, BUF, WRITE, 0)
            assert v0.avail_ring(i) == i
        assert v0.avail_idx == NUM
        assert region.read(v0.used, v0.end - v0.used) == bytes(v0.end - v0.used)
        expected_v1 = bytearray(v1.end - v1.base)
        expected_v1[v1.avail - v1.base] = 1  # avail.flags = NO_INTERRUPT, all else zero
        assert v1.raw() == expected_v1

        peer.attach()
        assert v0.used_flags == 1
        ep = link.create_service(DEMO_SERVICE)
        assert ep.addr == 0x400
        assert peer.receive() == [(0x400, NS_ADDR, ns_message(DEMO_SERVICE, 0x400))]
        assert v1.desc(0) == (TX_BUFFERS, 16 + 40, 0, 0)  # the first TX buffer, exact length
        assert peer.kicks(wait=2.0) == KICK


def test_host_used_len_and_name_quirks(
        fake_remote: tuple[OpenAmpLink, FakeOpenAmpRemote]) -> None:
    link, peer = fake_remote
    # An announcement with garbage after the NUL, before the host's endpoint exists.
    peer.send(0x400, NS_ADDR, ns_message("svc", 0x400, garbage=b"\xde\xad rest of a name"))
    link.bus.poll()
    assert [(c.name, c.dst) for c in link.bus.channels()] == [("svc", 0x400)]
    ep = link.create_service("svc")
    assert ep.dst == 0x400  # adopted from the earlier announcement

    peer.send(0x400, 0x400, b"x" * 20)  # used.len = 512, the descriptor's length
    assert ep.recvfrom(2) == (b"x" * 20, 0x400)
    peer.send(0x400, 0x400, b"y" * 10, hdr_len=BUF - 16 + 1)  # header len beyond the buffer
    peer.send(0x400, 0x400, b"w" * 10, used_len=10)  # used.len shorter than a header
    peer.send(0x400, 0x400, b"z" * 496)
    assert ep.recv(2) == b"z" * 496
    assert ep.try_recvfrom() is None
    assert link.statistics().backend["malformed_rx"] == 2
    assert peer.vring0.avail_idx == NUM + 5  # every buffer re-posted, the bad ones too


def test_host_reclaims_tx_buffers_by_polling(
        fake_remote: tuple[OpenAmpLink, FakeOpenAmpRemote]) -> None:
    link, peer = fake_remote
    assert link.bus.backend.tx_kicks is False
    ep = link.create_service("svc")
    for _ in range(NUM - 1):  # the announcement took one buffer
        ep.try_sendto(b"m", 0x400)
    with pytest.raises(NoBufferAvailable):
        ep.try_sendto(b"m", 0x400)
    assert len(peer.receive()) == NUM  # returned without a kick, as OpenAMP does
    ep.try_sendto(b"again", 0x400)  # reclaimed from the used ring
    while True:
        try:
            ep.try_sendto(b"m", 0x400)
        except NoBufferAvailable:
            break
    freeing = threading.Event()

    def free() -> None:
        freeing.set()  # before the first buffer goes back
        peer.receive()

    timer = threading.Timer(0.1, free)
    timer.start()
    try:
        ep.sendto(b"late", 0x400, timeout=5)  # blocks, polling the used ring
        assert freeing.is_set()  # it went only once the peer gave buffers back
    finally:
        timer.join()


def test_host_announces_destroy_only_for_dynamic_addresses(
        fake_remote: tuple[OpenAmpLink, FakeOpenAmpRemote]) -> None:
    link, peer = fake_remote
    low = link.bus.create_endpoint("low", addr=0x20, announce=True)
    dyn = link.create_service("dyn")
    assert peer.receive() == [(0x20, NS_ADDR, ns_message("low", 0x20)),
                              (0x400, NS_ADDR, ns_message("dyn", 0x400))]
    low.close()
    dyn.close()
    assert peer.receive() == [(0x400, NS_ADDR, ns_message("dyn", 0x400, NS_DESTROY))]


def test_host_never_sends_more_than_496_bytes(
        fake_remote: tuple[OpenAmpLink, FakeOpenAmpRemote]) -> None:
    link, peer = fake_remote
    ep = link.create_service("svc")
    assert link.mtu == 496
    with pytest.raises(MessageTooLarge):
        ep.sendto(bytes(497), 0x400)
    ep.sendto(bytes(range(256)) + bytes(240), 0x400)
    assert peer.receive()[-1] == (0x400, 0x400, bytes(range(256)) + bytes(240))


def test_host_sees_link_down_when_the_remote_hangs_up(
        fake_remote: tuple[OpenAmpLink, FakeOpenAmpRemote]) -> None:
    link, peer = fake_remote
    ep = link.create_service("svc")
    peer.sock.close()
    t0 = time.monotonic()
    with pytest.raises(LinkDown):
        ep.recv(5)
    assert time.monotonic() - t0 < 2


# -- amplink as the remote -----------------------------------------------------------------------
@pytest.mark.parametrize("remote_server", [False, True], ids=["remote-client", "remote-server"])
def test_remote_handshake_and_messages(config: OpenAmpConfig, remote_server: bool) -> None:
    region = shm(config)
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(1))
        if remote_server:
            region.write(0, b"\xee" * 88)  # an earlier run's table: the server rewrites it
            future = pool.submit(OpenAmpLink.open, "remote", server=True, config=config,
                                 timeout=5)
            sock = connect(config.socket_path)
        else:
            region.write(0, EXPECTED_TABLE)
            listener = stack.enter_context(listen(config.socket_path))
            future = pool.submit(OpenAmpLink.open, "remote", server=False, config=config,
                                 timeout=5)
            sock = accept(listener)
        host = FakeOpenAmpHost(region, sock)
        stack.callback(host.close)
        assert region.read(0, 88) == EXPECTED_TABLE

        # Before DRIVER_OK the remote must leave the rings alone.
        region.fill(0x4000, 0xC000 - 0x4000, 0xEE)
        time.sleep(0.1)
        assert region.read(0x4000, 0xC000 - 0x4000) == b"\xee" * (0xC000 - 0x4000)
        assert not future.done()
        host.handshake()
        link = future.result(timeout=5)
        stack.callback(link.close)
        assert host.vring0.used_flags == 1  # NO_NOTIFY
        assert link.bus.backend.supports_ns and link.bus.backend.tx_kicks is False

        ep = link.create_service(DEMO_SERVICE)
        assert host.receive() == [(0x400, NS_ADDR, ns_message(DEMO_SERVICE, 0x400), 56)]
        assert host.kicks(wait=2.0) == KICK

        host.send(0x400, NS_ADDR, ns_message(DEMO_SERVICE, 0x400, garbage=b"\x99garbage"))
        assert link.wait_peer(ep, 2) == 0x400
        host.send(0x400, 0x400, b"hello")
        payload, src = ep.recvfrom(2)
        assert (payload, src) == (b"hello", 0x400)
        ep.sendto(payload, src)
        assert host.receive() == [(0x400, 0x400, b"hello", 21)]
        # one kick for the echo, none for the two TX buffers the remote returned
        assert host.kicks(wait=2.0) == KICK
        assert host.vring1.used_idx == 2
        assert [host.vring1.used_elem(i) for i in range(2)] == [(0, 56), (1, 21)]

        host.send(0x400, NS_ADDR, ns_message(DEMO_SERVICE, 0x400, NS_DESTROY))
        with pytest.raises(EndpointClosed):
            ep.recv(2)
        with pytest.raises(MessageTooLarge):
            link.bus.create_endpoint("x", announce=False).sendto(bytes(497), 0x400)


def test_remote_sees_link_down_when_the_host_hangs_up(config: OpenAmpConfig) -> None:
    region = shm(config)
    region.write(0, EXPECTED_TABLE)
    with listen(config.socket_path) as listener, ThreadPoolExecutor(1) as pool:
        future = pool.submit(OpenAmpLink.open, "remote", server=False, config=config, timeout=5)
        host = FakeOpenAmpHost(region, accept(listener))
        host.handshake()
        with future.result(timeout=5) as link:
            ep = link.create_service(DEMO_SERVICE)
            wait_until(lambda: host.vring0.used_idx == 1, 2, "the announcement")
            host.close()
            t0 = time.monotonic()
            with pytest.raises(LinkDown):
                ep.recv(5)
            assert time.monotonic() - t0 < 2
