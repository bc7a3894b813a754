"""Threads, callbacks and asyncio sharing one link.

The buses here get a 10 s safety net: a wake-up that only the safety net would catch
shows as a wait far beyond the bounds these tests allow, not as a slow pass.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from common_kit import Outcome, wait_for

from amplink import EndpointClosed, NoBufferAvailable, SendTimeout
from amplink.platforms.inprocess import LinkPair

NET = 10.0  # the safety net these buses fall back on


@pytest.fixture
def pair():
    p = LinkPair.create(safety_timeout=NET)
    try:
        yield p
    finally:
        p.close()


def _fill_host_tx(ep) -> None:
    while True:
        try:
            ep.try_send(b"x")
        except NoBufferAvailable:
            return


def test_a_reader_is_woken_while_a_blocked_writer_sleeps_on_the_doorbell(pair):
    h_out = pair.host.create_endpoint("out", addr=1024, dst=1024)
    h_in = pair.host.create_endpoint("in", addr=1025, dst=1025)
    d_out = pair.device.create_endpoint("out", addr=1024, dst=1024)  # unread: host TX fills
    d_in = pair.device.create_endpoint("in", addr=1025, dst=1025)
    _fill_host_tx(h_out)
    writer = Outcome(lambda: h_out.send(b"y", 5.0))
    time.sleep(0.1)  # the writer is now the thread sleeping on the doorbell
    try:
        for i in range(3):
            # sent once this thread waits too: only a kick can tell it
            later = threading.Timer(0.2, d_in.send, args=(b"%d" % i,))
            t0 = time.monotonic()
            later.start()
            assert h_in.recv(timeout=2.0) == b"%d" % i
            assert time.monotonic() - t0 < 1.0  # 0.2 s of delay, then a prompt wake-up
            later.join()
        assert writer.ended is None, writer.error  # it slept through all of that
    finally:
        while d_out.try_recvfrom() is not None:  # room for the writer at last
            pass
        assert writer.join(2), "the writer did not notice the room"
    assert writer.error is None, writer.error


def test_a_blocked_writer_is_woken_while_a_reader_sleeps_on_the_doorbell(pair):
    h_out = pair.host.create_endpoint("out", addr=1024, dst=1024)
    h_in = pair.host.create_endpoint("in", addr=1025, dst=1025)
    d_out = pair.device.create_endpoint("out", addr=1024, dst=1024)
    d_in = pair.device.create_endpoint("in", addr=1025, dst=1025)
    _fill_host_tx(h_out)
    reader = Outcome(lambda: h_in.recv(5.0))
    time.sleep(0.1)  # the reader is now the thread sleeping on the doorbell
    try:
        done = threading.Event()

        def writer() -> None:
            h_out.send(b"y", timeout=3.0)
            done.set()

        w = threading.Thread(target=writer)
        w.start()
        time.sleep(0.1)
        while d_out.try_recvfrom() is not None:  # the device frees the host's TX buffers
            pass
        assert done.wait(2.0), "the blocked send did not notice the freed buffers"
        w.join(5)
        assert reader.ended is None, reader.error  # it slept through all of that
    finally:
        d_in.send(b"for the reader")
        assert reader.join(2), "the reader did not get its message"
    assert reader.error is None and reader.result == b"for the reader", reader.error


def test_a_callback_may_wait_for_messages_of_another_endpoint(pair):
    """Callbacks run outside the link's lock, in a dispatcher: one may block in recv()
    on a queue endpoint, which drains the link itself."""
    got: list[bytes] = []
    done = threading.Event()
    other = pair.device.create_endpoint("other", addr=1030)

    def callback(ep, payload, src):
        got.append(other.recv(timeout=5.0))
        done.set()

    pair.device.create_endpoint("cb", addr=1031, callback=callback)
    pair.host.create_endpoint(None, dst=1031).send(b"go")
    threading.Timer(0.2, pair.host.create_endpoint(None, dst=1030).send,
                    args=(b"for other",)).start()
    assert done.wait(5.0)
    assert got == [b"for other"]


def test_a_callback_may_close_its_own_link(pair):
    def callback(ep, payload, src):
        pair.device.close()

    pair.device.create_endpoint("quit", addr=1031, callback=callback)
    pair.host.create_endpoint(None, dst=1031).send(b"quit")

    def closed_by_its_callback() -> bool:
        try:
            pair.device.poll()  # or a dispatcher thread: neither touches the closed rings
        except EndpointClosed:
            return True
        return False

    assert wait_for(closed_by_its_callback, 5.0)
    assert not pair.device.is_up
    with pytest.raises(EndpointClosed):
        pair.device.poll()


def test_try_recv_does_not_wait_for_a_callback_blocked_in_send(pair):
    h_out = pair.host.create_endpoint(None, dst=1024)
    d_cb_started = threading.Event()

    def reply_forever(ep, payload, src):
        d_cb_started.set()
        _fill_device_tx(ep, src)

    def _fill_device_tx(ep, dst):
        while True:
            try:
                ep.sendto(b"r", dst, timeout=3.0)
            except SendTimeout:
                return

    d_ep = pair.device.create_endpoint("cb", addr=1024, callback=reply_forever)
    other = pair.device.create_endpoint("q", addr=1025)
    h_out.send(b"go")
    drainer = threading.Thread(target=pair.device.poll)
    drainer.start()
    try:
        assert d_cb_started.wait(2.0)
        time.sleep(0.2)  # the callback now waits for a TX buffer, holding the link
        t0 = time.monotonic()
        assert other.try_recvfrom() is None
        assert time.monotonic() - t0 < 1.0
    finally:
        drainer.join(10)
    assert d_ep.statistics().messages_received == 1


async def _a_coroutine_and_a_thread_waiting(pair) -> tuple[asyncio.Future[bytes], Outcome]:
    """A coroutine awaiting a message for 1024, then a thread asleep on the rings waiting
    for one for 1025."""
    h_a = pair.host.create_endpoint("a", addr=1024)
    h_b = pair.host.create_endpoint("b", addr=1025)
    task = asyncio.ensure_future(h_a.arecv(timeout=5.0))
    await asyncio.sleep(0.05)
    other = Outcome(lambda: h_b.recv(5.0))
    await asyncio.sleep(0.1)  # the thread now sleeps on the doorbell
    return task, other


async def _the_thread_hears(other: Outcome, d) -> None:
    t1 = time.monotonic()
    d.sendto(b"for b", 1025)
    assert await asyncio.get_running_loop().run_in_executor(None, other.join, 6)
    assert other.result == b"for b", other.error
    assert other.ended - t1 < 1.0, "the sleeping thread missed its kick"


def test_an_awaiting_coroutine_hears_what_another_thread_delivered(pair):
    d = pair.device.create_endpoint(None, addr=1024)

    async def main() -> float:
        task, other = await _a_coroutine_and_a_thread_waiting(pair)
        t0 = time.monotonic()
        d.sendto(b"for a", 1024)
        # the loop is held up: the thread wakes, delivers, arms the rings again and goes
        # back to sleep before the coroutine looks
        time.sleep(0.2)
        assert await task == b"for a"
        elapsed = time.monotonic() - t0
        assert other.ended is None, other.error  # it sleeps on: nothing came for b
        # and the coroutine's wake-up left the rings armed for the thread still asleep
        await _the_thread_hears(other, d)
        return elapsed

    t_start = time.monotonic()
    assert asyncio.run(main()) < 1.0
    assert time.monotonic() - t_start < 2.0, "a waiter missed its wake-up"


def test_a_thread_that_stops_waiting_leaves_a_coroutine_able_to_hear(pair):
    """The thread asleep on the rings wakes for its message and leaves: a coroutine still
    waiting is made to arm the rings again, or the next kick would not come."""
    d = pair.device.create_endpoint(None, addr=1024)

    async def main() -> float:
        task, other = await _a_coroutine_and_a_thread_waiting(pair)
        await _the_thread_hears(other, d)
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        d.sendto(b"for a", 1024)
        assert await task == b"for a"
        return time.monotonic() - t0

    assert asyncio.run(main()) < 1.0


@pytest.mark.parametrize("options", [{"spin": 0.05}, {"poll_mode": True}])
def test_close_under_blocked_receivers_says_closed(options):
    pair = LinkPair.create(**options)
    eps = [pair.host.create_endpoint(f"r{i}") for i in range(4)]
    receivers = [Outcome(lambda ep=ep: ep.recv(timeout=5.0)) for ep in eps]
    time.sleep(0.2)
    pair.close()
    assert all(r.join(5) for r in receivers)
    results = [r.error for r in receivers]
    assert all(isinstance(exc, EndpointClosed) for exc in results), results
