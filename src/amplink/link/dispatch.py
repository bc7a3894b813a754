"""Running user code for a link: endpoint callbacks and driver probe/remove, never under
the link's lock.

Draining (with the lock held) only queues: a message for a callback endpoint goes on its
queue and the endpoint on the ready list; a driver event on the event list. Dispatchers
then run them with the lock released:

* the link's dispatcher threads (mode "thread", the default for host-side links): one
  starts with the first callback endpoint or driver, and stops at close. When every one
  of them has been stuck in a callback for a while (it blocks, say in a send waiting for
  a buffer) and another endpoint has work, one more starts (up to a limit); extra
  threads leave again when idle. So a blocking callback stalls only its own endpoint.
* any thread in ``link.run()`` or ``link.poll()`` (mode "caller", the firmware runtime:
  its main loop dispatches).

Callbacks of one endpoint run one at a time, in order; driver events run one at a time,
in order. ``recv()`` and ``send()`` never run other people's callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

from ..errors import AmplinkError
from .core import Event, Probe, Unbind
from .zerocopy import HeldMessage

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .runtime import Link

log = logging.getLogger(__name__)

#: "thread": the link runs dispatcher threads of its own; "caller": only threads in
#: ``link.run()`` / ``link.poll()`` dispatch
DispatchMode = Literal["thread", "caller"]

#: a dispatcher in one callback for this long is taken as blocked (another may start)
BLOCKED_AFTER = 0.02
#: dispatcher threads of one link, at most
MAX_THREADS = 8
#: an extra dispatcher thread leaves after this long without work
IDLE_EXIT = 1.0


#: work taken from the lists: an endpoint and its batch of messages, or a driver event
_Job = tuple["Endpoint", list[tuple[Any, int]]] | Event


class Dispatcher:
    """The callback side of one link (see the module docstring)."""

    def __init__(self, link: Link, mode: DispatchMode) -> None:
        self.link = link
        self.mode = mode
        self.ready: deque[Endpoint] = deque()
        self.events: deque[Event] = deque()
        self._event_busy = False
        self._busy_since: dict[int, float | None] = {}  # our threads: in a callback since
        self._threads: dict[int, threading.Thread] = {}
        self.threads_started = 0
        self._stopping = False

    # -- with the link's lock held -----------------------------------------------------------
    def schedule(self, ep: Endpoint) -> None:
        """``ep`` got a message for its callback."""
        if not ep._scheduled:
            ep._scheduled = True
            self.ready.append(ep)
            if self.mode == "thread" and self._all_blocked():
                self._start_thread()

    def add_events(self, events: list[Event]) -> None:
        self.events.extend(events)
        if self.mode == "thread" and events and not self._threads:
            self._start_thread()

    def has_work(self) -> bool:
        return bool(self.ready) or (bool(self.events) and not self._event_busy)

    def _all_blocked(self) -> bool:
        """True if no thread of ours could take new work soon (or there is none)."""
        if not self._threads:
            return True
        if len(self._threads) >= MAX_THREADS:
            return False
        now = time.monotonic()
        return all(since is not None and now - since > BLOCKED_AFTER
                   for since in self._busy_since.values())

    def _take(self) -> _Job | None:
        if self.events and not self._event_busy:
            self._event_busy = True
            return self.events.popleft()
        while self.ready:
            ep = self.ready.popleft()
            items = list(ep._queue)
            ep._queue.clear()
            if not items:  # emptied by a close meanwhile
                ep._scheduled = False
                continue
            ep._dispatcher = threading.get_ident()
            return ep, items
        return None

    # -- without the lock --------------------------------------------------------------------
    def ensure_thread(self) -> None:
        """Mode "thread": make sure a dispatcher thread runs."""
        if self.mode == "thread":
            with self.link._lock:
                if not self._threads and not self.link.closed:
                    self._start_thread()

    def dispatch(self) -> bool:
        """Run the work that is ready, in this thread; True if any ran."""
        link = self.link
        me = threading.get_ident()
        ran = False
        while self.ready or self.events:  # read without the lock: a miss is seen next time
            with link._lock:
                job = self._take()
            if job is None:
                return ran
            ran = True
            ours = me in self._busy_since
            if ours:
                self._busy_since[me] = time.monotonic()
            try:
                if isinstance(job, tuple):
                    self._run_callbacks(*job)
                else:
                    self._run_event(job)
            finally:
                if ours:
                    self._busy_since[me] = None
                self._finish(job)
        return ran

    def _finish(self, job: _Job) -> None:
        link = self.link
        with link._lock:
            if not isinstance(job, tuple):
                self._event_busy = False
            else:
                ep = job[0]
                ep._dispatcher = None
                if ep._queue:
                    self.ready.append(ep)  # more arrived meanwhile
                else:
                    ep._scheduled = False
                if not ep.closed:
                    return
        with link._wait.cond:  # a close() may wait for this callback to end
            link._wait.cond.notify_all()

    def _run_callbacks(self, ep: Endpoint, items: list[tuple[Any, int]]) -> None:
        callback = ep.callback
        assert callback is not None
        for i, (item, src) in enumerate(items):
            if ep._discarded:  # its user closed it (perhaps its own callback): drop the rest
                ep.dropped_at_close += len(items) - i
                self.link._release_all(items[i:], lock=True)
                return
            try:
                callback(ep, item, src)
            except Exception:  # noqa: BLE001 - neither a callback's bug nor its failed
                # reply may escape into the dispatcher, or lose the ring buffer
                ep.callback_errors += 1
                if ep.callback_errors == 1 or log.isEnabledFor(logging.DEBUG):
                    log.exception("%s: callback of endpoint 0x%x raised (further ones are "
                                  "counted)", self.link.name, ep.addr)
            finally:
                if isinstance(item, HeldMessage) and not item._kept:
                    item.release()

    def _run_event(self, event: Event) -> None:
        if isinstance(event, Probe):
            self.link._probe(event.driver, event.channel)
        elif isinstance(event, Unbind):
            self.link._unbind(event)

    # -- threads -----------------------------------------------------------------------------
    def _start_thread(self) -> None:  # link lock held
        if self._stopping or len(self._threads) >= MAX_THREADS:
            return
        extra = bool(self._threads)
        self.threads_started += 1
        thread = threading.Thread(target=self._thread_main, args=(extra,), daemon=True,
                                  name=f"amplink-{self.link.name}-dispatch{self.threads_started}")
        self._threads[id(thread)] = thread
        thread.start()

    def _thread_main(self, extra: bool) -> None:
        me = threading.get_ident()
        key = id(threading.current_thread())
        self._busy_since[me] = None
        link = self.link
        try:
            while not self._stopping:
                link.run(timeout=IDLE_EXIT if extra else None, until=lambda: self._stopping)
                if extra and not self.has_work():
                    return  # the blocking that called for it is over
        except AmplinkError:
            return  # the link is closed or down: the dispatcher's job is over
        except Exception:  # noqa: BLE001 - a dispatcher must not die silently
            log.exception("%s: a dispatcher thread failed", link.name)
        finally:
            with link._lock:
                self._threads.pop(key, None)
                self._busy_since.pop(me, None)

    def stop(self, timeout: float) -> None:
        """End the dispatcher threads (the link is closed); waits up to ``timeout`` s for
        them, except for the calling thread (a callback that closed its own link)."""
        self._stopping = True
        self.link._wait.wake_all()
        me = threading.current_thread()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            if thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
