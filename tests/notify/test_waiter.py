"""Waiter: timeouts, doorbell kicks, wake() across threads, watched fds, fence."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from amplink.notify import EventfdDoorbell, PollingDoorbell, SocketDoorbell, Waiter


@pytest.fixture
def bells():
    a, b = EventfdDoorbell.pair()
    waiter = Waiter(b)
    yield a, b, waiter
    waiter.close()
    a.close()
    b.close()


def test_wait_times_out_false(bells):
    _a, _b, waiter = bells
    t0 = time.monotonic()
    assert waiter.wait(0.05) is False
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 1.0


def test_kick_makes_wait_true_and_is_consumed(bells):
    a, _b, waiter = bells
    a.kick()
    t0 = time.monotonic()
    assert waiter.wait(2.0) is True
    assert time.monotonic() - t0 < 1.0
    # the kick was consumed by the wait
    assert waiter.wait(0) is False


def test_waiter_fileno_is_readable_on_kick(bells):
    a, _b, waiter = bells
    assert not select.select([waiter.fileno()], [], [], 0)[0]
    a.kick()
    assert select.select([waiter.fileno()], [], [], 1.0)[0]


@pytest.mark.timeout(10)
def test_wake_rouses_a_thread_blocked_in_wait(bells):
    _a, _b, waiter = bells
    result: list[tuple[bool, float]] = []
    entered = threading.Event()

    def sleeper():
        entered.set()
        t0 = time.monotonic()
        ok = waiter.wait(5.0)
        result.append((ok, time.monotonic() - t0))

    t = threading.Thread(target=sleeper)
    t.start()
    assert entered.wait(2.0)
    time.sleep(0.05)  # let it reach epoll
    waiter.wake()
    t.join(3.0)
    assert not t.is_alive()
    ok, elapsed = result[0]
    assert ok is True
    assert elapsed < 2.0


def test_wake_stays_pending_until_reset(bells):
    _a, _b, waiter = bells
    waiter.wake()
    assert waiter.wait(0) is True
    assert waiter.wait(0) is True  # every sleeping thread sees it
    waiter.reset_wake()
    assert waiter.wait(0) is False
    waiter.reset_wake()  # resetting twice is harmless


@pytest.mark.timeout(10)
def test_watch_callback_on_socket_hangup(bells):
    _a, _b, waiter = bells
    mine, theirs = socket.socketpair()
    calls: list[int] = []
    try:
        waiter.watch(mine.fileno(), lambda: calls.append(1))
        assert waiter.wait(0) is False
        assert calls == []
        theirs.close()
        assert waiter.wait(2.0) is True
        assert calls, "the watch callback did not run on hang-up"
        waiter.unwatch(mine.fileno())
        calls.clear()
        assert waiter.wait(0) is False
        assert calls == []
        waiter.unwatch(mine.fileno())  # unwatching twice is harmless
    finally:
        mine.close()
        theirs.close()


def test_watch_callback_on_readable_data(bells):
    _a, _b, waiter = bells
    mine, theirs = socket.socketpair()
    calls: list[int] = []
    try:
        waiter.watch(mine.fileno(), lambda: calls.append(1))
        theirs.send(b"x")
        assert waiter.wait(1.0) is True
        assert calls == [1]
    finally:
        waiter.unwatch(mine.fileno())
        mine.close()
        theirs.close()


def test_waiter_on_socket_doorbell():
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a, b = SocketDoorbell(s1), SocketDoorbell(s2)
    waiter = Waiter(b)
    try:
        assert waiter.wait(0.01) is False
        a.kick()
        a.kick()
        assert waiter.wait(1.0) is True
        assert waiter.wait(0) is False  # both kicks consumed at once
    finally:
        waiter.close()
        a.close()
        b.close()


def test_waiter_on_polling_doorbell_only_times_out():
    waiter = Waiter(PollingDoorbell())
    try:
        assert waiter.wait(0.01) is False
        waiter.wake()
        assert waiter.wait(0) is True
    finally:
        waiter.close()


def test_close_is_idempotent_and_wake_after_close_is_harmless():
    waiter = Waiter(PollingDoorbell())
    waiter.close()
    waiter.close()
    waiter.wake()
    assert waiter.closed and waiter.wait(0) is True  # a closed waiter never sleeps


def test_a_link_closed_while_a_kick_is_consumed_waits_for_it():
    """The owner closes the waiter, then the doorbell: never under a kick being read."""
    reading, release = threading.Event(), threading.Event()

    class SlowDoorbell(SocketDoorbell):
        def clear(self) -> None:
            reading.set()
            release.wait(5)
            super().clear()

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    bell, peer = SlowDoorbell(a), SocketDoorbell(b)
    waiter = Waiter(bell)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(_wait_or_error(waiter)))
    try:
        peer.kick()
        thread.start()
        assert reading.wait(5)
        closer = threading.Thread(target=lambda: (waiter.close(), bell.close()))
        closer.start()
        closer.join(0.2)
        assert closer.is_alive()  # held off while the kick is read
        release.set()
        closer.join(5)
        thread.join(5)
        assert outcome == [True]
    finally:
        release.set()
        waiter.close()
        bell.close()
        peer.close()


def _wait_or_error(waiter: Waiter) -> object:
    try:
        return waiter.wait(5)
    except OSError as exc:
        return exc
