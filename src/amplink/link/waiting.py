"""The wait engine of a link: threads and coroutines waiting for the rings.

No background thread sits in the message path: the thread that waits (in ``recv``, a
blocked ``send``, a dispatcher) drains the backend itself. One waiting thread at a time
sleeps on the doorbell (the *poller*); the others wait on a condition it signals. In
polling mode the poller spins on the rings instead. asyncio waiters watch the waiter's
epoll fd from the event loop and never block it.

The engine holds no user code: ``settle`` (the link's "drain, then check") and the
``ready`` predicates it is given are the link's own, called with the lock held.

Spinning (polling mode, and the spin before each sleep) goes through the backend's
``wait_pending``: the C backend spins there without holding the GIL; every spinner
yields its core between looks (``sched_yield``: at once back if nobody else is runnable),
so more spinning processes than cores take turns instead of waiting for time slices.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .backend import Backend

if TYPE_CHECKING:
    import asyncio

#: longest sleep before the rings are re-checked even without a kick (the safety net)
DEFAULT_SAFETY_TIMEOUT = 0.05
#: a polling waiter looks at the clock, news and the peer's lifeline this often (s)
SPIN_SLICE = 50e-6
#: how long a blocking waiter spins before it sleeps, with more than one core to run on
#: (a peer on another core answering within it costs no wake-up: see bench/README.md)
MULTICORE_SPIN = 50e-6


def default_spin() -> float:
    """The default spin before each sleep: :data:`MULTICORE_SPIN` when this process may
    run on more than one core, else 0 (spinning on the only core delays the peer)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return MULTICORE_SPIN if cores > 1 else 0.0


#: the spin of links created without one
DEFAULT_SPIN = default_spin()

#: ``settle(ready, tx) -> bool``: drain, then True if ``ready()``; raises when it cannot be
Settle = Callable[[Callable[[], bool], bool], bool]


class WaitEngine:
    """Waiting on one backend's doorbell (see the module docstring).

    ``blocked(tx)`` tells that a direction cannot progress by itself (the link holds too
    many received buffers): its waiters then wait for news only, without arming.
    """

    def __init__(self, backend: Backend, lock: threading.Lock, settle: Settle,
                 closed: Callable[[], bool], blocked: Callable[[bool], bool], *,
                 poll_mode: bool, spin: float, safety_timeout: float) -> None:
        self.backend = backend
        self.lock = lock
        self._settle = settle
        self._closed = closed
        self._blocked = blocked
        self.poll_mode = poll_mode
        self.spin = spin
        self.safety_timeout = safety_timeout
        self._cond_lock = threading.Lock()  # entered directly: cheaper than the Condition
        self.cond = threading.Condition(self._cond_lock)
        self.poller: int | None = None  # the thread watching the rings, if any
        self.followers = 0
        self._poller_watchers = 0  # threads in wait_poller_gone
        self.generation = 0  # bumped whenever waiters must re-check their condition
        self.sleeps = 0
        self.safety_net_wakeups = 0
        self._async_futures: set[asyncio.Future[None]] = set()
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_fd = -1

    # -- news ---------------------------------------------------------------------------------
    def tell(self) -> None:
        """Something changed (lock held or not): every waiter must re-check."""
        self.generation += 1
        poller = self.poller
        if poller is None and not self.followers and not self._async_futures:
            return  # nobody else waits: the common case
        if poller is not None and poller != threading.get_ident():
            self.backend.waiter.wake()  # the sleeping thread may wait for this
        if self.followers:
            with self.cond:
                self.cond.notify_all()
        if self._async_futures:
            self._wake_async()

    def _wake_async(self) -> None:
        """Have the coroutines waiting on the link look again (from any thread)."""
        loop = self._async_loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._async_readable)
            except RuntimeError:  # that loop is closed: its waiters are gone
                pass

    def wake_all(self) -> None:
        """Rouse every waiter at once (close, link down)."""
        self.generation += 1
        self.backend.waiter.wake()
        with self.cond:
            self.cond.notify_all()

    def wait_poller_gone(self, timeout: float) -> None:
        """Let the thread spinning or sleeping on the rings leave them (up to ``timeout``)."""
        me = threading.get_ident()
        with self.cond:
            self._poller_watchers += 1
            try:
                end = time.monotonic() + timeout
                while self.poller not in (None, me) and time.monotonic() < end:
                    self.cond.wait(0.05)
            finally:
                self._poller_watchers -= 1

    # -- threads ------------------------------------------------------------------------------
    def _acquire(self, deadline: float | None) -> bool:
        """Take the lock, giving up at ``deadline``."""
        lock = self.lock
        if deadline is None or lock.acquire(False):  # uncontended: no clock read
            return lock.acquire() if deadline is None else True
        return lock.acquire(timeout=max(0.0, deadline - time.monotonic()))

    def wait_until(self, ready: Callable[[], bool], timeout: float | None, *, tx: bool) -> bool:
        """Drain and wait until ``ready()`` (called with the lock held) or the timeout.

        Returns False on timeout; raises what ``settle`` raises (link down, closed).

        The express way first: one look if the lock is free, then (polling, or a spin
        before sleeping) one spin on the rings as the poller, if no thread is, and a
        second look; only then the poller and its followers.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        lock = self.lock
        spin = SPIN_SLICE if self.poll_mode else self.spin
        if lock.acquire(False):
            try:
                if self._settle(ready, tx):
                    return True
            finally:
                lock.release()
            if timeout == 0:
                return False
            if spin and self._express_spin(tx, spin if timeout is None else min(spin, timeout)):
                if lock.acquire(False):
                    try:
                        if self._settle(ready, tx):
                            return True
                    finally:
                        lock.release()
                spin = 0.0  # spun already: the first sleep comes without
        return self._wait_until(ready, deadline, tx, spin)

    def _express_spin(self, tx: bool, seconds: float) -> bool:
        """Spin as the poller, if there is none (close() waits for the poller to leave
        the rings); True if work may be there."""
        me = threading.get_ident()
        with self._cond_lock:
            outer = self.poller
            if outer not in (None, me) or self._closed():
                return False
            self.poller = me
        try:
            return self.backend.wait_pending(tx, seconds)
        finally:
            with self._cond_lock:
                self.poller = outer
                if self.followers or self._poller_watchers:
                    self.cond.notify_all()

    def _wait_until(self, ready: Callable[[], bool], deadline: float | None, tx: bool,
                    spin: float) -> bool:
        """:meth:`wait_until` the long way: ``spin`` before the first sleep."""
        backend = self.backend
        lock = self.lock
        me = threading.get_ident()
        spun_at = -1  # the generation at which the last spin said work was there
        while True:
            if not self._acquire(deadline):
                return False
            try:
                if self._settle(ready, tx):
                    return True
                generation = self.generation
                if generation == spun_at:
                    # The spin's "work" brought nothing (a backend that reads a hung-up
                    # socket as readable, say): sleep on the doorbell this time, which
                    # notices such ends, instead of spinning round until the timeout.
                    spin = 0.0
                blocked = self._blocked(tx)
                poller = self.poller
                # Another thread sleeps on the doorbell: have the peer ring for our
                # direction too, or its kick would not come (that thread wakes us).
                if (not blocked and poller is not None and poller != me and not self.poll_mode
                        and backend.arm(rx=not tx, tx=tx)):
                    continue
            finally:
                lock.release()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            # One thread (the poller) watches the rings; the others wait for its news, as
            # does a waiter whose direction only a release by another thread can unblock.
            with self._cond_lock:
                if blocked or (self.poller is not None and self.poller != me):
                    self.followers += 1
                    try:
                        if self.generation == generation:
                            self.cond.wait(self.safety_timeout if remaining is None
                                           else min(remaining, self.safety_timeout))
                    finally:
                        self.followers -= 1
                    continue
                outer = self.poller  # a callback of ours may wait inside our own wait
                self.poller = me
            try:
                if self.poll_mode:
                    self._spin(remaining, tx, generation)
                else:
                    spun_at = generation if self._sleep(remaining, tx, generation, spin) else -1
                    spin = self.spin
            finally:
                with self._cond_lock:
                    self.poller = outer
                    if self.followers or self._poller_watchers:
                        self.cond.notify_all()
                if self._async_futures:  # they left the arming to us: they arm again
                    self._wake_async()

    def _spin(self, remaining: float | None, tx: bool, generation: int) -> None:
        backend = self.backend
        wait_pending = backend.wait_pending
        end = None if remaining is None else time.monotonic() + remaining
        closed = self._closed
        while not closed():
            if wait_pending(tx, SPIN_SLICE):
                return
            # Now and then: let other threads run, notice a dead peer, news, the time.
            time.sleep(0)
            backend.waiter.poll_sources()
            if backend.broken(tx=tx) is not None:
                return
            if generation != self.generation:
                return
            if end is not None and time.monotonic() >= end:
                return

    def _sleep(self, remaining: float | None, tx: bool, generation: int, spin: float) -> bool:
        """Spin ``spin`` seconds, then sleep on the doorbell; True if the spin found work."""
        backend = self.backend
        closed = self._closed
        pending = backend.tx_available if tx else backend.rx_pending
        if spin and backend.wait_pending(tx, spin):
            return True
        if closed():
            return False
        with self.lock:
            if generation != self.generation or closed():
                return False  # another thread delivered meanwhile: re-check before sleeping
            if backend.arm(rx=not tx, tx=tx):
                backend.disarm()
                return False
        limit = self.safety_timeout
        polling_tx = tx and not backend.tx_kicks
        if polling_tx:
            limit = backend.tx_poll_interval  # no kick will come: this is the poll period
        timeout = limit if remaining is None else min(remaining, limit)
        self.sleeps += 1
        signalled = backend.waiter.wait(timeout)
        with self.lock:
            if closed():
                return False
            backend.disarm()
            if not signalled and not polling_tx and pending():
                self.safety_net_wakeups += 1
            backend.waiter.reset_wake()
        return False

    # -- asyncio ------------------------------------------------------------------------------
    async def async_wait_until(self, ready: Callable[[], bool], timeout: float | None, *,
                               tx: bool) -> bool:
        """The asyncio form of :meth:`wait_until`: the loop watches the waiter's epoll fd.

        The lock is only ever tried, never waited for, inside the loop. A link is awaited
        from one event loop at a time.
        """
        import asyncio  # here: a firmware that never awaits does not pay for its import

        loop = asyncio.get_running_loop()
        if self._async_loop is not loop:
            if self._async_futures:
                raise RuntimeError("this link is already awaited in another event loop")
            self._async_loop = loop
        deadline = None if timeout is None else loop.time() + timeout
        backend = self.backend
        lock = self.lock
        while True:
            if not lock.acquire(False):
                await asyncio.sleep(0)  # a thread holds it for a moment (no user code runs)
                if deadline is not None and loop.time() >= deadline:
                    return False
                continue
            try:
                if self._settle(ready, tx):
                    return True
                blocked = self._blocked(tx)
                if not blocked and backend.arm(rx=not tx, tx=tx):
                    if self.poller is None:  # a thread sleeping on the rings needs them armed
                        backend.disarm()
                    continue
            finally:
                lock.release()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            limit = (backend.tx_poll_interval if tx and not backend.tx_kicks
                     else self.safety_timeout)
            wait = limit if remaining is None else min(remaining, limit)
            future = self._async_future(loop)
            try:
                await asyncio.wait_for(asyncio.shield(future), wait)
            except TimeoutError:
                pass
            finally:
                self._async_futures.discard(future)
                if not self._async_futures:
                    loop.remove_reader(self._async_fd)
            if self._closed() or not lock.acquire(False):
                continue
            try:
                # A thread asleep on the rings owns the waiter and the arming: consuming
                # its kicks or its wake-up, or disarming, here could leave it asleep
                if self.poller is None:
                    backend.waiter.poll_sources()
                    backend.waiter.reset_wake()
                    backend.disarm()
            finally:
                lock.release()

    def _async_future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        if not self._async_futures:
            self._async_fd = self.backend.waiter.fileno()
            loop.add_reader(self._async_fd, self._async_readable)
        future: asyncio.Future[None] = loop.create_future()
        self._async_futures.add(future)
        return future

    def _async_readable(self) -> None:
        for future in self._async_futures:
            if not future.done():
                future.set_result(None)
