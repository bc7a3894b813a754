"""Name service, channels, drivers, callbacks, iteration and asyncio on an in-process link.

The device (remote) announces services; the host sees channels, opens them or binds
drivers to them, as Linux's rpmsg bus does.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from common_kit import Outcome

from amplink import (
    RPMSG_ADDR_ANY,
    RPMSG_NS_ADDR,
    EndpointClosed,
    LinkConfig,
    ReceiveTimeout,
    RpmsgDriver,
    SendTimeout,
)
from amplink.platforms.inprocess import LinkPair
from amplink.rpmsg.wire import RPMSG_NS_DESTROY, NameServiceMessage


@pytest.fixture
def pair():
    # "caller" dispatch: probes, removes and callbacks run in the thread that polls, so
    # the tests see their effects right after poll() (the dispatcher threads of the
    # default mode are tested in test_bus_dispatch.py)
    lp = LinkPair.create(dispatch="caller")
    yield lp
    lp.close()


def announce(lp, name="svc"):
    """A device endpoint announced by name; the host has not seen it yet."""
    return lp.device.create_endpoint(name, announce=True)


# -- name service --
def test_announcement_creates_a_host_channel(pair):
    d = announce(pair)
    assert d.announced
    assert d.dst == RPMSG_ADDR_ANY
    ch = pair.host.wait_channel("svc", timeout=2)
    assert (ch.name, ch.dst) == ("svc", d.addr)
    assert not ch.static
    assert ch.endpoint is None
    assert [c.name for c in pair.host.channels()] == ["svc"]


def test_wait_channel_times_out(pair):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        pair.host.wait_channel("never", timeout=0.1)
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(TimeoutError):
        pair.host.open_channel("never", timeout=0.05)


def test_open_channel_exchange_and_remote_destroy(pair):
    d = announce(pair)
    h = pair.host.open_channel("svc", timeout=2)
    assert h.dst == d.addr
    assert h.addr >= 1024
    h.send(b"ping", timeout=1)
    assert d.recvfrom(timeout=2) == (b"ping", h.addr)
    assert d.dst == h.addr  # learned from the first message
    d.send(b"pong", timeout=1)
    assert h.recv(timeout=2) == b"pong"
    # messages sent before the destroy are still delivered, then the endpoint is closed
    d.send(b"last-1", timeout=1)
    d.send(b"last-2", timeout=1)
    d.close()
    assert h.recv(timeout=2) == b"last-1"
    assert h.recv(timeout=2) == b"last-2"
    with pytest.raises(EndpointClosed):
        h.recv(timeout=2)
    assert h.closed
    assert pair.host.channels() == []
    with pytest.raises(EndpointClosed):
        h.send(b"x", timeout=1)


def test_destroy_wakes_a_blocked_receiver(pair):
    d = announce(pair)
    h = pair.host.open_channel("svc", timeout=2)
    blocked = Outcome(lambda: h.recv(timeout=5))
    time.sleep(0.05)
    d.close()
    assert blocked.join(3)
    assert isinstance(blocked.error, EndpointClosed)


def test_duplicate_announcement_is_counted(pair):
    d = announce(pair)
    pair.host.wait_channel("svc", timeout=2)
    assert pair.host.statistics().ns_errors == 0
    d.sendto(NameServiceMessage("svc", d.addr).encode(), RPMSG_NS_ADDR, timeout=1)
    pair.host.poll()
    assert pair.host.statistics().ns_errors == 1
    assert len([c for c in pair.host.channels() if c.name == "svc"]) == 1


@pytest.mark.parametrize("raw", [
    NameServiceMessage("svc", 1024).encode()[:39],
    NameServiceMessage("svc", 1024).encode() + b"\0",
    b"x" * 32 + bytes(8),
    bytes(40),
    b"svc".ljust(32, b"\0") + (0xFFFFFFFF).to_bytes(4, "little") + bytes(4),
    b"svc".ljust(32, b"\0") + (1024).to_bytes(4, "little") + (7).to_bytes(4, "little"),
], ids=["short", "long", "no-nul", "empty-name", "addr-any", "bad-flags"])
def test_malformed_announcement_is_counted_and_ignored(pair, raw):
    d = pair.device.create_endpoint()
    d.sendto(raw, RPMSG_NS_ADDR, timeout=1)
    pair.host.poll()
    assert pair.host.statistics().ns_errors == 1
    assert pair.host.channels() == []
    # the link still works
    announce(pair, "after")
    assert pair.host.wait_channel("after", timeout=2).name == "after"


def test_destroy_of_unknown_channel_is_counted(pair):
    d = pair.device.create_endpoint()
    d.sendto(NameServiceMessage("ghost", 3000, RPMSG_NS_DESTROY).encode(), RPMSG_NS_ADDR,
             timeout=1)
    pair.host.poll()
    assert pair.host.statistics().ns_errors == 1


def test_host_announcement_reaches_the_device(pair):
    h = pair.host.create_endpoint("host-svc", announce=True)
    ch = pair.device.wait_channel("host-svc", timeout=2)
    assert ch.dst == h.addr
    d = pair.device.open_channel("host-svc", timeout=2)
    d.send(b"up", timeout=1)
    assert h.recvfrom(timeout=2) == (b"up", d.addr)
    h.close()
    with pytest.raises(EndpointClosed):
        d.recv(timeout=2)


def test_announce_needs_a_name(pair):
    with pytest.raises(ValueError):
        pair.device.create_endpoint(announce=True)
    with pytest.raises(ValueError):
        pair.device.create_endpoint("x" * 32)


# -- drivers --
class Recorder:
    """A driver whose hooks record what happened."""

    def __init__(self, names=("svc",), greet=True):
        self.probed = []
        self.removed = []
        self.messages = []
        self.greet = greet
        self.driver = RpmsgDriver(id_table=list(names), probe=self.probe, remove=self.remove,
                                  callback=self.callback, name="recorder")

    def probe(self, channel):
        assert channel.endpoint is not None
        self.probed.append(channel)
        if self.greet:
            channel.endpoint.send(b"hello from probe", timeout=1)

    def remove(self, channel):
        self.removed.append(channel)

    def callback(self, ep, payload, src):
        self.messages.append((ep, payload, src))


def test_driver_probe_callback_and_remove_on_remote_destroy(pair):
    rec = Recorder()
    pair.host.register_driver(rec.driver)
    d = announce(pair)
    pair.host.poll()
    assert len(rec.probed) == 1
    ch = rec.probed[0]
    assert (ch.name, ch.dst) == ("svc", d.addr)
    assert ch.driver is rec.driver
    ep = ch.endpoint
    assert ep.dst == d.addr
    assert d.recvfrom(timeout=2) == (b"hello from probe", ep.addr)
    d.send(b"data", timeout=1)
    pair.host.poll()
    assert rec.messages == [(ep, b"data", d.addr)]
    d.close()
    pair.host.poll()
    assert rec.removed == [ch]
    assert ep.closed
    assert pair.host.channels() == []
    assert rec.driver.channels == []


def test_driver_remove_on_unregister(pair):
    rec = Recorder(greet=False)
    pair.host.register_driver(rec.driver)
    d = announce(pair)
    pair.host.poll()
    (ch,) = rec.probed
    ep = ch.endpoint
    pair.host.unregister_driver(rec.driver)
    assert rec.removed == [ch]
    assert ep.closed
    # the driver is gone: new announcements do not probe it
    announce(pair, "svc2")
    d2 = pair.device.create_endpoint("svc", announce=True)
    pair.host.poll()
    assert len(rec.probed) == 1
    assert d.addr != d2.addr


def test_register_driver_after_the_announcement_probes(pair):
    d = announce(pair)
    pair.host.wait_channel("svc", timeout=2)
    rec = Recorder()
    pair.host.register_driver(rec.driver)
    assert len(rec.probed) == 1
    assert d.recv(timeout=2) == b"hello from probe"


def test_driver_matches_by_name_only(pair):
    rec = Recorder(names=("wanted",), greet=False)
    pair.host.register_driver(rec.driver)
    announce(pair, "other")
    announce(pair, "wanted")
    pair.host.poll()
    assert [c.name for c in rec.probed] == ["wanted"]


def test_failing_probe_leaves_the_link_usable(pair):
    def bad_probe(channel):
        raise RuntimeError("probe bug")

    pair.host.register_driver(RpmsgDriver(id_table=["svc"], probe=bad_probe))
    announce(pair)
    pair.host.poll()
    (ch,) = pair.host.channels()
    assert ch.endpoint is None
    h = pair.host.open_channel("svc", timeout=2)
    h.send(b"still ok", timeout=1)


def test_static_channel_probes_a_driver(pair):
    d = pair.device.create_endpoint(addr=200)
    rec = Recorder(names=("static-svc",))
    pair.host.register_driver(rec.driver)
    ch = pair.host.add_static_channel("static-svc", dst=200)
    assert ch.static
    assert rec.probed == [ch]
    assert d.recvfrom(timeout=2) == (b"hello from probe", ch.endpoint.addr)
    d.send(b"to static", timeout=1)
    pair.host.poll()
    assert [(m[1], m[2]) for m in rec.messages] == [(b"to static", 200)]
    # nothing announced: the device knows no channel
    pair.device.poll()
    assert pair.device.channels() == []


def test_static_channel_before_register_is_probed(pair):
    pair.device.create_endpoint(addr=201)
    ch = pair.host.add_static_channel("static-late", dst=201)
    rec = Recorder(names=("static-late",), greet=False)
    pair.host.register_driver(rec.driver)
    assert rec.probed == [ch]


def test_static_channel_with_local_address_is_announced(pair):
    rec = Recorder(names=("server",), greet=False)
    pair.host.register_driver(rec.driver)
    ch = pair.host.add_static_channel("server", dst=300, src=0x500)
    assert ch.endpoint.addr == 0x500
    seen = pair.device.wait_channel("server", timeout=2)
    assert seen.dst == 0x500


# -- callbacks --
def test_callback_exception_is_counted_and_the_link_survives(pair):
    got = []

    def callback(ep, payload, src):
        if payload == b"boom":
            raise RuntimeError("callback bug")
        got.append(payload)

    h = pair.host.create_endpoint(callback=callback)
    d = pair.device.create_endpoint(dst=h.addr)
    d.send(b"one", timeout=1)
    d.send(b"boom", timeout=1)
    d.send(b"two", timeout=1)
    pair.host.poll()
    assert got == [b"one", b"two"]
    assert h.statistics().callback_errors == 1
    assert pair.host.is_up
    d.send(b"three", timeout=1)
    pair.host.poll()
    assert got[-1] == b"three"


def test_callback_endpoint_has_no_queue(pair):
    h = pair.host.create_endpoint(callback=lambda ep, payload, src: None)
    with pytest.raises(RuntimeError):
        h.recv(timeout=0.01)


@pytest.mark.timeout(30)
def test_no_callback_after_close_returns():
    """One thread hammers messages, two threads drain the host, the main thread closes
    the endpoint; once close() returned, the callback must never run again."""
    lp = LinkPair.create(LinkConfig(num_buffers=16))
    try:
        closed_after = threading.Event()
        violations: list[bytes] = []
        count = [0]

        def callback(ep, payload, src):
            if closed_after.is_set():
                violations.append(payload)
            count[0] += 1

        h = lp.host.create_endpoint(callback=callback)
        d = lp.device.create_endpoint(dst=h.addr)
        stop = threading.Event()
        errors: list[BaseException] = []

        def hammer():
            try:
                while not stop.is_set():
                    try:
                        d.send(b"x", timeout=0.2)
                    except SendTimeout:
                        pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def drainer():
            try:
                lp.host.run(until=stop.is_set, timeout=15)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=f) for f in (hammer, drainer, drainer)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 5
            while count[0] < 200 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert count[0] >= 200, "messages did not flow"
            h.close()
            closed_after.set()
            sent_at_close = d.messages_sent
            deadline = time.monotonic() + 5
            while d.messages_sent < sent_at_close + 200 and time.monotonic() < deadline:
                time.sleep(0.001)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert violations == []
        assert d.messages_sent >= sent_at_close + 200
        assert lp.host.statistics().dropped_unknown_dst > 0
    finally:
        lp.close()


# -- iteration --
@pytest.mark.timeout(10)
def test_iteration_stops_when_closed_locally(pair):
    h = pair.host.create_endpoint()
    d = pair.device.create_endpoint(dst=h.addr)
    for i in range(3):
        d.send(b"%d" % i, timeout=1)

    def closer():
        time.sleep(0.1)
        h.close()

    t = threading.Thread(target=closer)
    t.start()
    got = list(h)  # blocks until the close
    t.join(3)
    assert got == [b"0", b"1", b"2"]


@pytest.mark.timeout(10)
def test_iteration_stops_when_the_peer_destroys(pair):
    d = announce(pair)
    h = pair.host.open_channel("svc", timeout=2)
    for i in range(3):
        d.sendto(b"%d" % i, h.addr, timeout=1)
    d.close()
    assert list(h) == [b"0", b"1", b"2"]


@pytest.mark.timeout(10)
def test_blocked_recv_is_woken_by_local_close(pair):
    h = pair.host.create_endpoint()
    blocked = Outcome(lambda: h.recv(timeout=5))
    time.sleep(0.05)
    t0 = time.monotonic()
    h.close()
    assert blocked.join(3)
    assert time.monotonic() - t0 < 1.0
    assert isinstance(blocked.error, EndpointClosed)


# -- asyncio --
@pytest.mark.timeout(10)
def test_arecv_gets_a_message_sent_later_from_a_thread(pair):
    h = pair.host.create_endpoint()
    d = pair.device.create_endpoint(dst=h.addr)

    def later():
        time.sleep(0.1)
        d.send(b"late", timeout=2)

    async def main():
        t = threading.Thread(target=later)
        t.start()
        try:
            return await h.arecvfrom(timeout=3)
        finally:
            t.join(3)

    assert asyncio.run(main()) == (b"late", d.addr)


@pytest.mark.timeout(10)
def test_asend_and_arecv(pair):
    h = pair.host.create_endpoint()
    d = pair.device.create_endpoint(dst=h.addr)
    h.dst = d.addr

    async def main():
        await h.asend(b"async out", timeout=2)
        await h.asendto(b"async to", d.addr, timeout=2)
        d.send(b"back", timeout=1)
        return await h.arecv(timeout=2)

    assert asyncio.run(main()) == b"back"
    assert d.recv(timeout=1) == b"async out"
    assert d.recv(timeout=1) == b"async to"


@pytest.mark.timeout(10)
def test_arecv_timeout(pair):
    h = pair.host.create_endpoint()

    async def main():
        t0 = time.monotonic()
        with pytest.raises(ReceiveTimeout) as info:
            await h.arecv(timeout=0.1)
        assert isinstance(info.value, TimeoutError)
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    assert 0.09 <= elapsed < 1.0


@pytest.mark.timeout(10)
def test_asend_times_out_and_resumes():
    lp = LinkPair.create(LinkConfig(num_buffers=4))
    try:
        h = lp.host.create_endpoint()
        d = lp.device.create_endpoint(dst=h.addr)
        h.dst = d.addr
        for i in range(4):
            h.try_send(b"%d" % i)

        async def main():
            with pytest.raises(SendTimeout):
                await h.asend(b"x", timeout=0.1)

            def consumer():
                time.sleep(0.1)
                d.recv(timeout=2)

            t = threading.Thread(target=consumer)
            t.start()
            try:
                await h.asend(b"resumed", timeout=3)
            finally:
                t.join(3)

        asyncio.run(main())
        assert [d.recv(timeout=1) for _ in range(4)] == [b"1", b"2", b"3", b"resumed"]
    finally:
        lp.close()


@pytest.mark.timeout(10)
def test_async_wait_does_not_spin_after_an_endpoint_close(pair):
    """A wake-up left pending by close() must not turn an awaiting recv into a busy loop.

    Counted by how often the link drains its transport while nothing arrives: a sleeping
    waiter does it a few times per safety timeout, a spinning one thousands of times.
    """
    h = pair.host.create_endpoint()
    pair.host.create_endpoint().close()  # any close wakes the link's waiters
    transport = pair.host.backend
    drains = [0]
    receive = transport.receive

    def counting_receive(deliver, budget):
        drains[0] += 1
        return receive(deliver, budget)

    transport.receive = counting_receive

    async def main():
        with pytest.raises(ReceiveTimeout):
            await h.arecv(timeout=0.3)

    try:
        asyncio.run(main())
    finally:
        del transport.receive
    expected = 0.3 / pair.host.safety_timeout
    assert drains[0] < 5 * expected + 10, f"{drains[0]} drains in 0.3 s: the wait spins"


@pytest.mark.timeout(10)
def test_failed_announcement_leaves_no_endpoint_behind():
    """create_endpoint(announce=True) that raises must not leave the address bound
    (Linux destroys the endpoint when the announcement fails)."""
    lp = LinkPair.create(LinkConfig(num_buffers=4))
    try:
        filler = lp.device.create_endpoint()
        for _ in range(4):  # the host does not drain: every device TX buffer is used
            filler.try_sendto(b"x", 4000)
        with pytest.raises(TimeoutError):
            lp.device.create_endpoint("svc", addr=900, announce=True)
        assert 900 not in [ep.addr for ep in lp.device.endpoints()]
        lp.host.poll()  # buffers come back
        again = lp.device.create_endpoint("svc", addr=900, announce=True)
        assert lp.host.wait_channel("svc", timeout=2).dst == again.addr
    finally:
        lp.close()
