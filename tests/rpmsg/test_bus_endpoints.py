"""The rpmsg bus on an in-process link: addresses, argument checks, MTU, timeouts, buffers,
unknown destinations, statistics.

Both buses live in this process and share no thread: a send writes the ring at once,
and the peer sees it the next time it drains (``poll``, ``recv`` ...).
"""

from __future__ import annotations

import dataclasses
import errno
import math
import threading
import time

import pytest

from amplink import (
    RPMSG_ADDR_ANY,
    RPMSG_NS_ADDR,
    AmplinkError,
    EndpointClosed,
    EndpointStatistics,
    LinkConfig,
    LinkDown,
    LinkStatistics,
    MessageTooLarge,
    NoBufferAvailable,
    ReceiveTimeout,
    SendTimeout,
)
from amplink.platforms.inprocess import LinkPair

MTU = 496
MARGIN = 0.75  # scheduling slack on a loaded machine, seconds


@pytest.fixture
def pair():
    lp = LinkPair.create()
    yield lp
    lp.close()


@pytest.fixture
def small_pair():
    """Four buffers per direction, so that exhausting them is cheap."""
    lp = LinkPair.create(LinkConfig(num_buffers=4))
    yield lp
    lp.close()


def connect(lp):
    """A host endpoint and a device endpoint that send to each other."""
    h = lp.host.create_endpoint()
    d = lp.device.create_endpoint(dst=h.addr)
    h.dst = d.addr
    return h, d


def device_gets_nothing(lp, d):
    assert lp.device.poll() == 0
    assert d.try_recvfrom() is None


# -- addresses --
def test_dynamic_addresses_start_at_1024_in_order(pair):
    eps = [pair.host.create_endpoint() for _ in range(4)]
    assert [ep.addr for ep in eps] == [1024, 1025, 1026, 1027]
    # the two buses have separate address spaces
    assert pair.device.create_endpoint().addr == 1024


def test_dynamic_address_is_reused_lowest_free_first(pair):
    a, b, c = (pair.host.create_endpoint() for _ in range(3))
    b.close()
    assert pair.host.create_endpoint().addr == 1025, "lowest free dynamic address first"
    a.close()
    assert pair.host.create_endpoint().addr == 1024
    assert c.addr == 1026


def test_dynamic_allocation_skips_explicit_addresses(pair):
    explicit = pair.host.create_endpoint(addr=1024)
    assert explicit.addr == 1024
    assert pair.host.create_endpoint().addr == 1025


@pytest.mark.parametrize("addr", [0, 1, 100, 1023])
def test_explicit_reserved_address_works(pair, addr):
    d = pair.device.create_endpoint(addr=addr)
    assert d.addr == addr
    h = pair.host.create_endpoint(dst=addr)
    h.send(b"to reserved", timeout=1)
    payload, src = d.recvfrom(timeout=2)
    assert (payload, src) == (b"to reserved", h.addr)


def test_duplicate_address_is_refused(pair):
    pair.host.create_endpoint(addr=2000)
    with pytest.raises(ValueError):
        pair.host.create_endpoint(addr=2000)
    with pytest.raises(ValueError):  # the name service owns 53
        pair.host.create_endpoint(addr=RPMSG_NS_ADDR)
    dyn = pair.host.create_endpoint()
    with pytest.raises(ValueError):
        pair.host.create_endpoint(addr=dyn.addr)


@pytest.mark.parametrize(("addr", "kind"), [(-1, ValueError), (1 << 32, ValueError),
                                             (2.5, TypeError), ("5", TypeError)])
def test_bad_explicit_address_is_refused(pair, addr, kind):
    with pytest.raises(AmplinkError, match="addr") as info:
        pair.host.create_endpoint(addr=addr)
    assert isinstance(info.value, kind)


# -- ANY is never a source or destination on the wire --
def test_any_as_src_or_dst_is_refused_and_nothing_sent(pair):
    h, d = connect(pair)
    calls = [
        lambda: h.sendto(b"x", RPMSG_ADDR_ANY, timeout=1),
        lambda: h.try_sendto(b"x", RPMSG_ADDR_ANY),
        lambda: h.send_offchannel(RPMSG_ADDR_ANY, d.addr, b"x", timeout=1),
        lambda: h.send_offchannel(h.addr, RPMSG_ADDR_ANY, b"x", timeout=1),
        lambda: h.try_send_offchannel(RPMSG_ADDR_ANY, d.addr, b"x"),
        lambda: h.try_send_offchannel(h.addr, RPMSG_ADDR_ANY, b"x"),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert h.statistics().messages_sent == 0
    device_gets_nothing(pair, d)


def test_send_without_a_destination_is_a_value_error(pair):
    """send() on an endpoint whose dst is still ANY is an invalid address (EINVAL in Linux),
    not a closed endpoint."""
    unbound = pair.host.create_endpoint()
    assert unbound.dst == RPMSG_ADDR_ANY
    with pytest.raises(ValueError):
        unbound.send(b"x", timeout=1)
    with pytest.raises(ValueError):
        unbound.try_send(b"x")
    assert not unbound.closed


def test_send_offchannel_uses_the_given_source(pair):
    h, d = connect(pair)
    h.send_offchannel(0x777, d.addr, b"off", timeout=1)
    assert d.recvfrom(timeout=2) == (b"off", 0x777)


# -- MTU --
def test_mtu_payload_is_accepted(pair):
    h, d = connect(pair)
    assert h.mtu == d.mtu == MTU
    assert pair.host.statistics().mtu == MTU
    big = bytes(range(256)) + bytes(range(240))
    assert len(big) == MTU
    h.send(big, timeout=1)
    assert d.recv(timeout=2) == big
    d.send(bytearray(big), timeout=1)
    assert h.recv(timeout=2) == big
    h.send(memoryview(big)[:10], timeout=1)
    assert d.recv(timeout=2) == big[:10]
    h.send(b"", timeout=1)
    assert d.recv(timeout=2) == b""


@pytest.mark.parametrize("method", ["send", "try_send", "sendto", "try_sendto",
                                    "send_offchannel", "try_send_offchannel"])
def test_over_mtu_is_refused_and_nothing_sent(pair, method):
    h, d = connect(pair)
    data = b"z" * (MTU + 1)
    call = {
        "send": lambda: h.send(data, timeout=1),
        "try_send": lambda: h.try_send(data),
        "sendto": lambda: h.sendto(data, d.addr, timeout=1),
        "try_sendto": lambda: h.try_sendto(data, d.addr),
        "send_offchannel": lambda: h.send_offchannel(h.addr, d.addr, data, timeout=1),
        "try_send_offchannel": lambda: h.try_send_offchannel(h.addr, d.addr, data),
    }[method]
    with pytest.raises(MessageTooLarge) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AmplinkError)
    assert info.value.errno == errno.EMSGSIZE
    assert h.statistics().messages_sent == 0
    assert pair.host.statistics().messages_sent == 0
    device_gets_nothing(pair, d)
    # the link still works
    h.send(b"after", timeout=1)
    assert d.recv(timeout=2) == b"after"


def test_over_mtu_from_the_device_is_refused(pair):
    h, d = connect(pair)
    with pytest.raises(MessageTooLarge):
        d.send(bytes(MTU + 1), timeout=1)
    assert pair.host.poll() == 0


# -- timeouts --
@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf, "1", object(), True])
def test_bad_timeouts_are_refused(pair, bad):
    """A typed error naming the argument; a ValueError for a bad number, a TypeError else."""
    kind = ValueError if isinstance(bad, float | int) and not isinstance(bad, bool) else TypeError
    h, d = connect(pair)
    calls = [
        lambda: h.send(b"x", timeout=bad),
        lambda: h.sendto(b"x", d.addr, timeout=bad),
        lambda: h.send_offchannel(h.addr, d.addr, b"x", timeout=bad),
        lambda: d.recv(timeout=bad),
        lambda: d.recvfrom(timeout=bad),
        lambda: pair.host.wait_channel("svc", timeout=bad),
    ]
    for call in calls:
        with pytest.raises(AmplinkError, match="timeout") as info:
            call()
        assert isinstance(info.value, kind)
    device_gets_nothing(pair, d)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("forever", [math.inf, 1e10, 1e300])
def test_huge_timeouts_mean_forever_even_while_another_thread_holds_the_link(pair, forever):
    """A timeout too large for lock and poll primitives (OverflowError) waits forever."""
    h, d = connect(pair)
    h.send(b"later", timeout=forever)
    assert d.recv(timeout=forever) == b"later"
    got = []
    reader = threading.Thread(target=lambda: got.append(d.recv(timeout=forever)))
    reader.start()  # this thread now sleeps on the link
    time.sleep(0.05)
    h.send(b"two", timeout=forever)
    reader.join(5)
    assert got == [b"two"]
    assert h.statistics() is not None


@pytest.mark.parametrize("bad", [-1, math.nan])
def test_bad_recv_timeout_is_refused_even_with_a_message_queued(pair, bad):
    """Argument checks must not depend on the queue state (queue.Queue.get does the same)."""
    h, d = connect(pair)
    h.send(b"queued", timeout=1)
    pair.device.poll()
    with pytest.raises(ValueError):
        d.recv(timeout=bad)


@pytest.mark.timeout(10)
def test_recv_timeout(pair):
    h, d = connect(pair)
    t0 = time.monotonic()
    with pytest.raises(ReceiveTimeout) as info:
        d.recv(timeout=0.1)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, AmplinkError)
    assert 0.09 <= elapsed < 0.1 + MARGIN
    t0 = time.monotonic()
    with pytest.raises(ReceiveTimeout):
        d.recvfrom(timeout=0)
    assert time.monotonic() - t0 < MARGIN
    assert d.try_recvfrom() is None


# -- transmit buffers --
def fill_tx(ep, n):
    for i in range(n):
        ep.try_send(b"fill%d" % i)


def test_try_send_without_a_free_buffer(small_pair):
    h, d = connect(small_pair)
    fill_tx(h, 4)
    with pytest.raises(NoBufferAvailable) as info:
        h.try_send(b"one too many")
    assert isinstance(info.value, BlockingIOError)
    assert isinstance(info.value, AmplinkError)
    assert info.value.errno == errno.EAGAIN
    with pytest.raises(NoBufferAvailable):
        h.try_sendto(b"x", d.addr)
    with pytest.raises(NoBufferAvailable):
        h.send(b"x", timeout=0)
    assert h.statistics().messages_sent == 4
    # the device reads: buffers come back, the next try succeeds
    assert [d.recv(timeout=1) for _ in range(4)] == [b"fill%d" % i for i in range(4)]
    h.try_send(b"again")
    assert d.recv(timeout=1) == b"again"
    assert d.try_recvfrom() is None  # the refused sends left nothing behind


def test_device_try_send_without_a_free_buffer(small_pair):
    h, d = connect(small_pair)
    fill_tx(d, 4)
    with pytest.raises(NoBufferAvailable):
        d.try_send(b"x")
    assert [h.recv(timeout=1) for _ in range(4)] == [b"fill%d" % i for i in range(4)]
    d.try_send(b"again")
    assert h.recv(timeout=1) == b"again"


@pytest.mark.timeout(10)
def test_blocking_send_times_out(small_pair):
    h, d = connect(small_pair)
    fill_tx(h, 4)
    t0 = time.monotonic()
    with pytest.raises(SendTimeout) as info:
        h.send(b"x", timeout=0.2)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert 0.19 <= elapsed < 0.2 + MARGIN
    assert h.statistics().messages_sent == 4


@pytest.mark.timeout(10)
def test_blocked_send_resumes_when_the_peer_consumes(small_pair):
    h, d = connect(small_pair)
    fill_tx(h, 4)
    got: list[bytes] = []

    def consumer():
        time.sleep(0.1)
        got.append(d.recv(timeout=3))

    t = threading.Thread(target=consumer)
    t.start()
    t0 = time.monotonic()
    try:
        h.send(b"fifth", timeout=5)
    finally:
        t.join(5)
    assert time.monotonic() - t0 < 3
    assert got == [b"fill0"]
    rest = [d.recv(timeout=1) for _ in range(4)]
    assert rest == [b"fill1", b"fill2", b"fill3", b"fifth"]


@pytest.mark.timeout(10)
def test_blocked_device_send_resumes_when_the_host_consumes(small_pair):
    h, d = connect(small_pair)
    fill_tx(d, 4)

    def consumer():
        time.sleep(0.1)
        for _ in range(5):
            h.recv(timeout=3)

    t = threading.Thread(target=consumer)
    t.start()
    try:
        d.send(b"fifth", timeout=5)
    finally:
        t.join(5)
    assert not t.is_alive()


# -- unknown destinations --
def test_message_to_unknown_address_is_dropped_and_counted(pair):
    h, d = connect(pair)
    h.sendto(b"lost", 4000, timeout=1)
    h.sendto(b"lost too", 4001, timeout=1)
    pair.device.poll()
    stats = pair.device.statistics()
    assert stats.dropped_unknown_dst == 2
    assert d.try_recvfrom() is None
    h.send(b"good", timeout=1)
    assert d.recv(timeout=2) == b"good"
    assert pair.device.statistics().dropped_unknown_dst == 2


def test_dropped_messages_recycle_their_buffers(small_pair):
    h, d = connect(small_pair)
    for _ in range(3 * 4):  # three times the buffer count
        h.sendto(b"nobody", 4000, timeout=2)
        small_pair.device.poll()
    assert small_pair.device.statistics().dropped_unknown_dst == 12
    h.send(b"still flowing", timeout=2)
    assert d.recv(timeout=2) == b"still flowing"


def test_message_to_closed_endpoint_is_dropped(pair):
    h, d = connect(pair)
    d.close()
    h.send(b"late", timeout=1)
    pair.device.poll()
    assert pair.device.statistics().dropped_unknown_dst == 1


# -- the remote learns our address --
def test_remote_learns_host_address_from_first_message(pair):
    d = pair.device.create_endpoint()
    assert d.dst == RPMSG_ADDR_ANY
    h = pair.host.create_endpoint(dst=d.addr)
    h.send(b"hello", timeout=1)
    assert d.recvfrom(timeout=2) == (b"hello", h.addr)
    assert d.dst == h.addr
    d.send(b"reply", timeout=1)
    assert h.recvfrom(timeout=2) == (b"reply", d.addr)
    # a later message from another source does not rebind it
    other = pair.host.create_endpoint(dst=d.addr)
    other.send(b"other", timeout=1)
    assert d.recvfrom(timeout=2) == (b"other", other.addr)
    assert d.dst == h.addr


# -- statistics --
def test_statistics_is_a_frozen_snapshot(pair):
    h, d = connect(pair)
    h.send(b"a", timeout=1)
    h.send(b"b", timeout=1)
    pair.device.poll()
    snap = pair.device.statistics()
    assert isinstance(snap, LinkStatistics)
    assert dataclasses.is_dataclass(snap)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.messages_received = 0  # type: ignore[misc]
    assert snap.messages_received == 2
    assert snap.state == "up"
    assert snap.name == "device"
    (ep_stats,) = snap.endpoints  # the name service endpoint is not listed
    assert isinstance(ep_stats, EndpointStatistics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ep_stats.queued = 0  # type: ignore[misc]
    assert (ep_stats.addr, ep_stats.dst) == (d.addr, h.addr)
    assert ep_stats.messages_received == 2
    assert ep_stats.queued == 2
    assert not ep_stats.closed
    # later activity does not change the snapshot
    h.send(b"c", timeout=1)
    d.recv(timeout=1)
    assert snap.messages_received == 2
    assert ep_stats.queued == 2
    host = pair.host.statistics()
    assert host.messages_sent == 3
    assert {e.addr: e.messages_sent for e in host.endpoints} == {h.addr: 3}


def test_statistics_lists_every_endpoint(pair):
    eps = [pair.host.create_endpoint(f"ep{i}") for i in range(3)]
    eps[1].close()
    snap = pair.host.statistics()
    assert sorted(e.addr for e in snap.endpoints) == [eps[0].addr, eps[2].addr]
    assert {e.name for e in snap.endpoints} == {"ep0", "ep2"}
    assert eps[1].statistics().closed


def test_statistics_after_close(pair):
    pair.host.close()
    assert pair.host.statistics().state == "closed"
    assert not pair.host.is_up


# -- closed endpoints and links --
def test_closed_endpoint_refuses_everything(pair):
    h, d = connect(pair)
    h.close()
    h.close()  # idempotent
    assert h.closed
    for call in (lambda: h.send(b"x", timeout=1), lambda: h.try_send(b"x"),
                 lambda: h.sendto(b"x", d.addr, timeout=1), lambda: h.recv(timeout=0.01),
                 lambda: h.try_recvfrom()):
        with pytest.raises(EndpointClosed):
            call()


def test_closed_link_refuses_everything(pair):
    h, d = connect(pair)
    pair.host.close()
    assert h.closed
    with pytest.raises(EndpointClosed):
        pair.host.create_endpoint()
    with pytest.raises(EndpointClosed):
        h.send(b"x", timeout=1)
    with pytest.raises(EndpointClosed):
        pair.host.poll()


# -- the peer hangs up --
@pytest.mark.timeout(10)
def test_peer_hangup_breaks_the_link_for_good():
    """Once a call reported LinkDown the link is broken: it says so and fails every later
    call, instead of queueing messages nobody will read."""
    lp = LinkPair.create(notify="socket")
    try:
        h, d = connect(lp)
        lp.device.backend.doorbell.close()  # the remote is gone
        t0 = time.monotonic()
        with pytest.raises(LinkDown):
            h.recv(timeout=2)
        assert time.monotonic() - t0 < 1.0
        assert not lp.host.is_up
        assert lp.host.statistics().state == "down"
        with pytest.raises(LinkDown):
            h.send(b"into the void", timeout=1)
        with pytest.raises(LinkDown):
            h.recv(timeout=0.1)
    finally:
        lp.close()
