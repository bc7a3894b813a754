"""Who runs user code, and never under the link's lock: callbacks and drivers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from common_kit import Outcome, wait_for

from amplink import (
    EndpointClosed,
    InvalidArgument,
    LinkConfig,
    LinkDown,
    NoBufferAvailable,
    RpmsgDriver,
)
from amplink.platforms.inprocess import LinkPair


@pytest.fixture
def pair():
    p = LinkPair.create(LinkConfig(num_buffers=8))
    try:
        yield p
    finally:
        p.close()


def test_host_callbacks_fire_without_any_hidden_step(pair):
    """The link's dispatcher starts with the first callback endpoint: nobody calls run()."""
    got = []
    done = threading.Event()

    def on_message(ep, payload, src):
        got.append(payload)
        if len(got) == 3:
            done.set()

    ep = pair.host.create_endpoint("cb", callback=on_message)
    dev = pair.device.create_endpoint(dst=ep.addr)
    for i in range(3):
        dev.send(b"%d" % i, timeout=1)
    assert done.wait(5) and got == [b"0", b"1", b"2"]


def test_callbacks_of_one_endpoint_run_in_order_one_at_a_time(pair):
    running = [0]
    seen = []
    overlap = []

    def on_message(ep, payload, src):
        running[0] += 1
        overlap.append(running[0] > 1)
        time.sleep(0.001)
        seen.append(int(payload))
        running[0] -= 1

    ep = pair.host.create_endpoint(callback=on_message)
    dev = pair.device.create_endpoint(dst=ep.addr)
    for i in range(60):
        dev.send(b"%d" % i, timeout=2)
    assert wait_for(lambda: len(seen) == 60, 10)
    assert seen == list(range(60)) and not any(overlap)


def test_a_blocked_callback_stalls_neither_other_endpoints_nor_statistics(pair):
    """One callback blocks (its send waits for a buffer the device never frees): another
    endpoint's callbacks, sends and receives, and statistics() all go on."""
    blocked = threading.Event()
    release = threading.Event()

    def stuck(ep, payload, src):
        blocked.set()
        release.wait(10)

    other_got = []
    slow = pair.host.create_endpoint("slow", callback=stuck)
    fast = pair.host.create_endpoint("fast", callback=lambda ep, p, s: other_got.append(p))
    queue_ep = pair.host.create_endpoint("queue")
    dev = pair.device.create_endpoint()
    dev.sendto(b"block", slow.addr, timeout=1)
    assert blocked.wait(5)
    try:
        t0 = time.monotonic()
        dev.sendto(b"to fast", fast.addr, timeout=1)
        assert wait_for(lambda: other_got == [b"to fast"], 5), "another callback was stalled"
        dev.sendto(b"to queue", queue_ep.addr, timeout=1)
        assert queue_ep.recv(timeout=2) == b"to queue"
        queue_ep.sendto(b"out", dev.addr, timeout=1)
        pair.host.statistics()
        assert time.monotonic() - t0 < 3
    finally:
        release.set()


def test_close_returns_once_the_callback_that_runs_has_finished(pair):
    inside = threading.Event()
    finished = []

    def slow(ep, payload, src):
        inside.set()
        time.sleep(0.3)
        finished.append(payload)

    ep = pair.host.create_endpoint(callback=slow)
    dev = pair.device.create_endpoint(dst=ep.addr)
    dev.send(b"first", timeout=1)
    dev.send(b"second", timeout=1)
    assert inside.wait(5)
    # the device's send returns once the message is in the ring, not once the host took it
    assert wait_for(lambda: ep.statistics().messages_received == 2, 5), "second not taken"
    ep.close()
    assert finished == [b"first"]  # finished before close returned; the rest dropped
    time.sleep(0.1)
    assert finished == [b"first"]
    assert ep.statistics().dropped_at_close >= 1


def test_a_callback_may_close_its_own_endpoint(pair):
    calls = []

    def once(ep, payload, src):
        calls.append(payload)
        ep.close()

    ep = pair.host.create_endpoint(callback=once)
    dev = pair.device.create_endpoint(dst=ep.addr)
    dev.send(b"a", timeout=1)
    dev.send(b"b", timeout=1)
    assert wait_for(lambda: ep.closed, 5)
    time.sleep(0.1)
    assert calls == [b"a"]


def test_driver_probe_and_remove_run_outside_the_lock(pair):
    """probe() sends on its endpoint and reads statistics: both need the lock."""
    probed = threading.Event()
    removed = threading.Event()

    def probe(channel):
        channel.endpoint.send(b"hello from probe", timeout=1)
        pair.host.statistics()
        probed.set()

    driver = RpmsgDriver(["svc"], probe=probe, remove=lambda ch: removed.set())
    pair.host.register_driver(driver)
    dev = pair.device.create_endpoint("svc", announce=True)
    assert probed.wait(5)
    assert dev.recv(timeout=2) == b"hello from probe"
    dev.close()  # the device announces the end: remove() runs
    assert removed.wait(5)


def test_dispatcher_threads_end_with_the_link(pair):
    pair.host.create_endpoint(callback=lambda *a: None)
    dispatchers = [t for t in threading.enumerate() if "host-dispatch" in t.name]
    assert dispatchers
    pair.host.close()
    for t in dispatchers:
        t.join(5)
        assert not t.is_alive()


def test_caller_mode_runs_callbacks_only_in_run_and_poll():
    p = LinkPair.create(dispatch="caller")
    try:
        got = []
        ep = p.host.create_endpoint(callback=lambda e, data, src: got.append(data))
        p.device.create_endpoint(dst=ep.addr).send(b"x", timeout=1)
        time.sleep(0.1)
        assert got == []  # nobody dispatched
        assert not [t for t in threading.enumerate() if "dispatch" in t.name]
        p.host.poll()
        assert got == [b"x"]
    finally:
        p.close()


def test_asyncio_never_blocks_the_loop_while_a_thread_holds_the_link(pair):
    """The loop only ever tries the lock: a thread holding it does not freeze the loop."""
    ep = pair.host.create_endpoint()
    dev = pair.device.create_endpoint(dst=ep.addr)

    async def main() -> tuple[int, bytes]:
        ticks = 0
        receive = asyncio.ensure_future(ep.arecv(timeout=5))
        await asyncio.sleep(0.01)
        holder = Outcome(lambda: _hold(pair.host, 0.3))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.25:
            await asyncio.sleep(0.01)
            ticks += 1
        assert holder.join(5)
        dev.send(b"late", timeout=1)
        return ticks, await receive

    ticks, payload = asyncio.run(main())
    assert ticks >= 10 and payload == b"late"


def _hold(link, seconds: float) -> None:
    with link._lock:
        time.sleep(seconds)


def test_a_closed_link_fails_try_send_at_once(pair):
    ep = pair.host.create_endpoint(dst=1024)
    pair.host.close()
    with pytest.raises(EndpointClosed):
        ep.try_send(b"x")
    with pytest.raises(EndpointClosed):
        pair.host.poll()
    assert not isinstance(EndpointClosed("x"), NoBufferAvailable)


def test_closing_an_endpoint_ends_its_callbacks_blocked_send_at_once():
    """A callback stuck in a send (no buffer will come) does not hold close() for the
    send's whole timeout: the send fails as soon as its endpoint is closed."""
    p = LinkPair.create(LinkConfig(num_buffers=4))
    try:
        started = threading.Event()
        outcome = []

        def flood(ep, payload, src):
            started.set()
            try:
                while True:
                    ep.sendto(b"x", src, timeout=30)
            except EndpointClosed as exc:
                outcome.append(exc)

        ep = p.host.create_endpoint(callback=flood)
        p.device.create_endpoint(dst=ep.addr).send(b"go", timeout=1)  # never reads
        assert started.wait(5)
        time.sleep(0.1)  # the callback now waits for a buffer
        t0 = time.monotonic()
        ep.close()
        assert time.monotonic() - t0 < 2 and len(outcome) == 1
    finally:
        p.close()


@pytest.mark.parametrize("form", ["sync", "asyncio"])
def test_closing_an_endpoint_ends_its_blocked_wait_writable_at_once(form):
    """A wait for writability on an endpoint ends with EndpointClosed when the endpoint is
    closed meanwhile, as a blocked send does (not False after the whole timeout)."""
    p = LinkPair.create(LinkConfig(num_buffers=4))
    try:
        ep = p.host.create_endpoint(dst=p.device.create_endpoint().addr)
        with pytest.raises(NoBufferAvailable):
            for _ in range(5):
                ep.try_send(b"x")  # the device never reads: the ring fills
        if form == "sync":
            waiting = Outcome(lambda: ep.wait_writable(timeout=30))
        else:
            waiting = Outcome(lambda: asyncio.run(ep.await_writable(timeout=30)))
        time.sleep(0.1)  # it now waits for a buffer
        t0 = time.monotonic()
        ep.close()
        assert waiting.join(5) and time.monotonic() - t0 < 2
        assert isinstance(waiting.error, EndpointClosed), (waiting.result, waiting.error)
    finally:
        p.close()


def test_a_reply_that_finds_the_peer_gone_is_counted_without_an_error_log(pair, caplog):
    """A callback whose reply meets LinkDown (the host stopped mid-conversation) is the end of
    the conversation, not a bug to report with a traceback; other exceptions still are."""
    raised = threading.Event()

    def callback(ep, payload, src):
        try:
            if payload == b"gone":
                raise LinkDown("the host is gone")
            raise RuntimeError("callback bug")
        finally:
            raised.set()

    h = pair.host.create_endpoint(callback=callback)
    d = pair.device.create_endpoint(dst=h.addr)
    with caplog.at_level(logging.DEBUG, logger="amplink.link.dispatch"):
        d.send(b"gone", timeout=1)
        assert wait_for(lambda: h.statistics().callback_errors == 1, 5)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        d.send(b"bug", timeout=1)
        assert wait_for(lambda: h.statistics().callback_errors == 2, 5)

        def errors() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.levelno >= logging.ERROR]

        # counted first, then logged: the record may come a moment after the count
        assert wait_for(lambda: errors(), 5)
    assert len(errors()) == 1 and errors()[0].exc_info is not None


def test_spin_is_settable_and_checked(pair):
    """Whoever becomes a link's waiting thread may choose how long it spins (the service's
    relay does); a negative or infinite spin is refused."""
    pair.host.spin = 2e-4
    assert pair.host.spin == 2e-4
    for bad in (-1.0, float("inf"), "1"):
        with pytest.raises((InvalidArgument, TypeError)):
            pair.host.spin = bad
    assert pair.host.spin == 2e-4
    d = pair.device.create_endpoint("spun", addr=1030, announce=False)
    h = pair.host.create_endpoint(dst=1030)
    h.send(b"still works")
    assert d.recv(timeout=5) == b"still works"
