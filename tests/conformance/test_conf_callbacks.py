"""Callbacks, in both dispatch modes: they run (in order, on the dispatcher), their errors
are counted, none runs after close() returns, and one that blocks stalls only itself
(other endpoints send and receive, statistics() answers).

In mode "thread" the link's dispatcher threads run callbacks; in mode "caller" only a
thread in ``link.run()``/``link.poll()`` does, so the cases drive the link themselves.
"""

from __future__ import annotations

import threading
import time

import pytest
from backends import Harness
from common_kit import Outcome
from conformance_kit import MARGIN, Recorder, drive_until, exhaust, wait_parked

from amplink.errors import AmplinkError, EndpointClosed, NoBufferAvailable
from amplink.link import Endpoint

pytestmark = [pytest.mark.timeout(30), pytest.mark.addressing("rpmsg", "channel")]


def test_callbacks_run_in_order(harness: Harness, dispatch: str) -> None:
    rec = Recorder()
    ep = harness.local.create_endpoint(callback=rec)
    p = harness.peer.create(dst=ep.addr)
    msgs = [b"m%d" % i for i in range(20)]
    # more than a small ring holds: the peer sends while this side dispatches
    sending = harness.peer.start("send_many", addr=p, dst=ep.addr, items=msgs)
    assert drive_until(harness, rec, lambda: rec.count() >= len(msgs), 10)
    assert sending.result(10) == len(msgs)
    assert rec.payloads == msgs
    assert {src for _, src, _ in rec.calls} == {p}
    threads = {tid for _, _, tid in rec.calls}
    if dispatch == "caller":
        assert threads == {threading.get_ident()}  # only the thread in run() dispatches
    else:
        assert threading.get_ident() not in threads  # the link's own threads
    assert ep.statistics().messages_received == len(msgs)
    with pytest.raises(RuntimeError):  # a callback endpoint has no queue to read
        ep.recv(timeout=0)


@pytest.mark.parametrize("dispatch", ["caller"])
def test_caller_mode_runs_callbacks_only_when_asked(harness: Harness, dispatch: str) -> None:
    """In mode "caller" nothing runs a callback until the link is polled or run."""
    rec = Recorder()
    ep = harness.local.create_endpoint(callback=rec)
    p = harness.peer.create(dst=ep.addr)
    harness.peer.send(p, b"waits")
    other, q = harness.local.create_endpoint(), harness.peer.create()
    harness.peer.send(q, b"recv", dst=other.addr)
    assert other.recv(timeout=5) == b"recv"  # recv() drains but runs nobody's callback
    assert rec.count() == 0
    harness.local.poll()
    assert rec.payloads == [b"waits"]


def test_callback_errors_are_counted(harness: Harness, dispatch: str) -> None:
    def fail_on_odd(ep: Endpoint, payload: bytes, src: int) -> None:
        if int(payload) % 2:
            raise ValueError(f"odd {payload!r}")

    rec = Recorder(fail_on_odd)
    ep = harness.local.create_endpoint(callback=rec)
    p = harness.peer.create(dst=ep.addr)
    sending = harness.peer.start("send_many", addr=p, dst=ep.addr,
                                 items=[b"%d" % i for i in range(10)])
    assert drive_until(harness, rec, lambda: rec.count() >= 10, 10)
    sending.result(10)
    assert rec.payloads == [b"%d" % i for i in range(10)]  # an error stops nothing
    assert ep.statistics().callback_errors == 5
    assert not ep.closed
    ep.send(b"still fine", timeout=5)
    assert harness.peer.recv(p) == (b"still fine", ep.addr)


def test_no_callback_after_close_returns(harness: Harness, dispatch: str) -> None:
    after_close = threading.Event()
    late: list[bytes] = []

    def check(ep: Endpoint, payload: bytes, src: int) -> None:
        if after_close.is_set():
            late.append(payload)

    rec = Recorder(check)
    ep = harness.local.create_endpoint(callback=rec)
    p = harness.peer.create(dst=ep.addr)
    harness.peer.send(p, b"first")
    assert drive_until(harness, rec, lambda: rec.count() >= 1, 10)
    # a stream of messages on its way while the endpoint closes
    streaming = harness.peer.start("send_many", addr=p, dst=ep.addr,
                                   items=[b"%d" % i for i in range(200)])
    runner = None
    if dispatch == "caller":
        stop = threading.Event()
        runner = Outcome(lambda: harness.local.run(until=stop.is_set, timeout=10))
    ep.close()
    after_close.set()
    streaming.result(10)
    seen = rec.count()
    # whatever the peer sent goes to a closed address now: dropped, no callback
    harness.peer.send(p, b"later")
    sentinel = Recorder()
    probe = harness.local.create_endpoint(callback=sentinel)
    harness.peer.send(p, b"probe", dst=probe.addr)
    assert drive_until(harness, sentinel, lambda: sentinel.count() >= 1, 10)
    if runner is not None:
        stop.set()
        assert runner.join(5)
    assert late == []
    assert rec.count() == seen


def test_close_from_its_own_callback(harness: Harness, dispatch: str) -> None:
    def close_on_stop(ep: Endpoint, payload: bytes, src: int) -> None:
        if payload == b"stop":
            ep.close()  # allowed: this call finishes, no further one runs

    rec = Recorder(close_on_stop)
    ep = harness.local.create_endpoint(callback=rec)
    p = harness.peer.create(dst=ep.addr)
    harness.peer.call("send_many", addr=p, dst=ep.addr, items=[b"a", b"stop", b"b", b"c"])
    assert drive_until(harness, rec, lambda: ep.closed, 10)
    # the rest were queued for it or dropped at its address: never delivered
    sentinel = Recorder()
    probe = harness.local.create_endpoint(callback=sentinel)
    harness.peer.send(p, b"probe", dst=probe.addr)
    assert drive_until(harness, sentinel, lambda: sentinel.count() >= 1, 10)
    assert rec.payloads == [b"a", b"stop"]


@pytest.mark.addressing("rpmsg")  # sends to another address than its own
def test_a_callback_blocked_in_send_stalls_only_itself(harness: Harness, dispatch: str) -> None:
    """A's callback blocks in a send (the rings are full). Meanwhile statistics()
    answers, endpoint B receives, B's try_send is refused at once rather than hanging,
    and C's callback runs; once the peer reads, A's send and B's send complete."""
    local, peer = harness.local, harness.peer
    in_callback = threading.Event()
    where: list[threading.Thread] = []
    a_sent: list[BaseException | None] = []
    sink = peer.create()

    def send_from_callback(ep: Endpoint, payload: bytes, src: int) -> None:
        where.append(threading.current_thread())
        in_callback.set()
        try:
            ep.sendto(b"from A's callback", sink, timeout=10)
            a_sent.append(None)
        except AmplinkError as exc:  # recorded: the case checks it
            a_sent.append(exc)

    rec_a = Recorder(send_from_callback)
    a = local.create_endpoint(callback=rec_a)
    b = local.create_endpoint(dst=sink)
    rec_c = Recorder()
    c = local.create_endpoint(callback=rec_c)
    p = peer.create()
    filled = exhaust(b)  # the peer reads nothing yet
    peer.send(p, b"go", dst=a.addr)
    runners = []
    if harness.dispatch == "caller":  # two callers: one gets stuck in A's callback
        stop = threading.Event()
        runners = [Outcome(lambda: local.run(until=stop.is_set, timeout=20))
                   for _ in range(2)]
    assert in_callback.wait(10), "A's callback never ran"
    wait_parked(where[0])  # A's send waits for a buffer
    t0 = time.monotonic()
    stats = local.statistics()
    assert time.monotonic() - t0 < MARGIN  # it takes no lock: no wait at all
    assert stats.state == "up"
    peer.send(p, b"to B", dst=b.addr)
    assert b.recvfrom(timeout=5) == (b"to B", p)
    t0 = time.monotonic()
    with pytest.raises(NoBufferAvailable):
        b.try_send(b"refused")
    assert time.monotonic() - t0 < MARGIN
    peer.send(p, b"to C", dst=c.addr)
    with rec_c.cond:
        assert rec_c.cond.wait_for(lambda: rec_c.count() >= 1, 10), "C's callback stalled"
    assert a_sent == []  # A is still blocked
    # the peer reads: A's send and then B's go through
    b_sending = Outcome(lambda: b.send(b"from B", timeout=10))
    got = peer.recv_many(sink, len(filled) + 2, timeout=10)
    assert b_sending.join(10) and b_sending.error is None
    with rec_a.cond:
        assert rec_a.cond.wait_for(lambda: bool(a_sent), 10)
    assert a_sent == [None]
    payloads = [m for m, _ in got]
    assert payloads[:len(filled)] == filled
    assert sorted(payloads[len(filled):]) == [b"from A's callback", b"from B"]
    if runners:
        stop.set()
        for runner in runners:
            assert runner.join(5)


def test_statistics_answers_while_a_callback_blocks(harness: Harness, dispatch: str) -> None:
    release = threading.Event()
    entered = threading.Event()

    def block(ep: Endpoint, payload: bytes, src: int) -> None:
        entered.set()
        release.wait(10)  # user code that blocks on anything at all

    ep = harness.local.create_endpoint(callback=block)
    p = harness.peer.create(dst=ep.addr)
    harness.peer.send(p, b"block")
    runner = None
    if dispatch == "caller":
        runner = Outcome(lambda: harness.local.run(until=release.is_set, timeout=20))
    try:
        assert entered.wait(10)
        for _ in range(3):
            t0 = time.monotonic()
            stats = harness.local.statistics()
            assert time.monotonic() - t0 < MARGIN  # it takes no lock: no wait at all
            assert stats.state == "up"
            assert harness.local.endpoints() == [ep]
        other, q = harness.local.create_endpoint(), harness.peer.create()
        harness.peer.send(q, b"meanwhile", dst=other.addr)
        assert other.recv(timeout=5) == b"meanwhile"
    finally:
        release.set()
    if runner is not None:
        assert runner.join(10)


@pytest.mark.addressing("rpmsg")  # sends to another address than its own
def test_link_close_ends_a_callback_blocked_in_send(harness: Harness, dispatch: str) -> None:
    """close() does not wait out the send timeout of a callback stuck in a send: the send
    fails with EndpointClosed at once, and close() returns."""
    harness.tainted = True
    local, peer = harness.local, harness.peer
    entered = threading.Event()
    where: list[threading.Thread] = []
    outcome: list[BaseException | None] = []
    sink = peer.create()

    def stuck(ep: Endpoint, payload: bytes, src: int) -> None:
        where.append(threading.current_thread())
        entered.set()
        try:
            ep.sendto(b"never", sink, timeout=20)
            outcome.append(None)
        except AmplinkError as exc:
            outcome.append(exc)

    a = local.create_endpoint(callback=stuck)
    filler = local.create_endpoint(dst=sink)
    exhaust(filler)
    peer.send(peer.create(), b"go", dst=a.addr)
    runner = None
    if dispatch == "caller":
        runner = Outcome(lambda: local.run(timeout=20))
    assert entered.wait(10)
    wait_parked(where[0])  # the callback's send waits for a buffer
    t0 = time.monotonic()
    local.close()
    assert time.monotonic() - t0 < MARGIN
    assert len(outcome) == 1 and isinstance(outcome[0], EndpointClosed), outcome
    if runner is not None:
        assert runner.join(5)
