"""Running user code for a link: endpoint callbacks and driver probe/remove, never under
the link's lock.

Draining (with the lock held) only queues: a message for a callback endpoint goes on its
queue and the endpoint on the ready list; a driver event on the event list. Dispatchers
then run them with the lock released:

* the link's dispatcher threads (mode "thread", the default for host-side links): one
  starts with the first callback endpoint or driver, and they stop at close. One of them
  is always free to watch the link: when the last free one takes work, another starts
  (up to a limit), so a callback that blocks (say in a send waiting for a buffer)
  stalls only its own endpoint. Beyond two, threads leave again after a second idle.
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

from ..errors import AmplinkError, EndpointClosed, LinkDown
from .core import Event, Probe, Unbind
from .zerocopy import HeldMessage

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .runtime import Link

log = logging.getLogger(__name__)

#: "thread": the link runs dispatcher threads of its own; "caller": only threads in
#: ``link.run()`` / ``link.poll()`` dispatch
DispatchMode = Literal["thread", "caller"]

#: dispatcher threads of one link, at most
MAX_THREADS = 8
#: threads kept however idle: one runs callbacks while another watches the link
KEPT_THREADS = 2
#: a thread beyond those leaves after this long without work
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
        self._threads: dict[int, threading.Thread] = {}  # ours, by thread ident
        self._free = 0  # our threads not running a job
        self._last_job: dict[int, float] = {}  # when each of ours last finished one
        self.threads_started = 0
        self._stopping = False

    # -- with the link's lock held -----------------------------------------------------------
    def schedule(self, ep: Endpoint) -> None:
        """``ep`` got a message for its callback."""
        if not ep._scheduled:
            ep._scheduled = True
            self.ready.append(ep)

    def add_events(self, events: list[Event]) -> None:
        self.events.extend(events)
        if self.mode == "thread" and events and not self._threads:
            self._start_thread()

    def has_work(self) -> bool:
        return bool(self.ready) or (bool(self.events) and not self._event_busy)

    def _take(self, me: int) -> _Job | None:
        job = self._next(me)
        if job is not None and me in self._threads:
            self._free -= 1
            if not self._free:  # keep one of ours free to watch the link meanwhile
                self._start_thread()
        return job

    def _next(self, me: int) -> _Job | None:
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
            ep._dispatcher = me
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
                job = self._take(me)
            if job is None:
                return ran
            ran = True
            try:
                if isinstance(job, tuple):
                    self._run_callbacks(*job)
                else:
                    self._run_event(job)
            finally:
                self._finish(job, me)
        return ran

    def _finish(self, job: _Job, me: int) -> None:
        link = self.link
        with link._lock:
            if me in self._threads:
                self._free += 1
                self._last_job[me] = time.monotonic()
            if not isinstance(job, tuple):
                self._event_busy = False
            else:
                ep = job[0]
                ep._dispatcher = None
                if ep._queue:
                    self.ready.append(ep)  # more arrived meanwhile
                else:
                    ep._scheduled = False
                if ep._closed_reason is None:  # open: nobody waits for this callback
                    return
        with link._wait.cond:  # a close() may wait for this callback to end
            link._wait.cond.notify_all()

    def _run_callbacks(self, ep: Endpoint, items: list[tuple[Any, int]]) -> None:
        callback = ep.callback
        assert callback is not None
        hold = ep.hold  # only then may items be held messages
        for i, (item, src) in enumerate(items):
            if ep._discarded:  # its user closed it (perhaps its own callback): drop the rest
                ep.dropped_at_close += len(items) - i
                self.link._release_all(items[i:], lock=True)
                return
            try:
                callback(ep, item, src)
            except (LinkDown, EndpointClosed) as exc:
                # A reply that finds the peer gone or an endpoint closed is how a conversation
                # ends (e.g. the host stopped), not a bug of the callback: counted, quietly.
                ep.callback_errors += 1
                log.debug("%s: callback of endpoint 0x%x ended: %s", self.link.name, ep.addr, exc)
            except Exception:  # noqa: BLE001 - neither a callback's bug nor its failed
                # reply may escape into the dispatcher, or lose the ring buffer
                ep.callback_errors += 1
                if ep.callback_errors == 1 or log.isEnabledFor(logging.DEBUG):
                    log.exception("%s: callback of endpoint 0x%x raised (further ones are "
                                  "counted)", self.link.name, ep.addr)
            finally:
                if hold and isinstance(item, HeldMessage) and not item._kept:
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
        self.threads_started += 1
        thread = threading.Thread(target=self._thread_main, daemon=True,
                                  name=f"amplink-{self.link.name}-dispatch{self.threads_started}")
        thread.start()
        assert thread.ident is not None
        self._threads[thread.ident] = thread
        self._free += 1

    def _thread_main(self) -> None:
        link = self.link
        me = threading.get_ident()
        try:
            while not self._stopping:  # stop() closes the link first: run() raises then
                link.run(timeout=IDLE_EXIT)
                with link._lock:
                    idle = time.monotonic() - self._last_job.get(me, 0.0) >= IDLE_EXIT
                    if idle and len(self._threads) > KEPT_THREADS and self._free > 1:
                        return  # the blocking that called for it is over
        except AmplinkError:
            return  # the link is closed or down: the dispatcher's job is over
        except Exception:  # noqa: BLE001 - a dispatcher must not die silently
            log.exception("%s: a dispatcher thread failed", link.name)
        finally:
            with link._lock:
                if self._threads.pop(me, None) is not None:
                    self._free -= 1
                self._last_job.pop(me, None)

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
