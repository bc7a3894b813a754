"""Helpers of the conformance cases: connected endpoints, exhausting buffers, threads
that are known to be blocked, callback recorders, timing bounds, leak accounting.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from backends import Harness
from common_kit import Outcome

from amplink.errors import NoBufferAvailable
from amplink.link import Endpoint, Link
from amplink.link.endpoint import Callback
from amplink.rpmsg.wire import RPMSG_ADDR_ANY

#: scheduling slack for "returns within" bounds on a loaded 2-core machine (s)
MARGIN = 0.5
#: a timeout may end this much early by the clocks' resolution (s)
EARLY = 0.005
#: every blocked call must get LinkDown within this long of the peer's death (s)
DEATH_LIMIT = 0.1
#: the most try_send calls before giving up on exhausting a backend's buffers
MAX_TX = 100_000
#: how long a helper thread may take to reach its blocking wait (s)
PARK_TIMEOUT = 5.0

#: the test-report property of a peer-death measurement: (backend, side, call, latency s)
DEATH_LATENCY = "death_latency"
#: every peer-death measurement of this run, gathered from the test reports
DEATH_LATENCIES: list[tuple[str, str, str, float]] = []


_channels = itertools.count()


def connect(h: Harness, *, echo: bool = False, name: str | None = None,
            callback: Callback | None = None) -> tuple[Endpoint, int]:
    """A local endpoint (with ``callback``, if given) and a peer endpoint (an echo one with
    ``echo``) addressed to each other; returns ``(local endpoint, peer address)``.

    With "rpmsg" addressing both are made at addresses; with "pair" addressing (an
    endpoint talks to one fixed peer address) the peer announces a channel that this
    side opens; with "endpoint" addressing (one number is both ends) the peer takes one
    of its numbers and this side opens the same.
    """
    addressing = h.local.capabilities.addressing
    if addressing == "pair":
        channel = name or f"conf-ch-{next(_channels)}"
        peer_addr = h.peer.create(channel, announce=True, echo=echo)
        return h.local.open_channel(channel, timeout=5, callback=callback), peer_addr
    if addressing == "endpoint":
        peer_addr = h.peer.create(echo=echo)
        return h.local.create_endpoint(name, addr=peer_addr, callback=callback), peer_addr
    ep = h.local.create_endpoint(name, callback=callback)
    peer_addr = h.peer.create(dst=ep.addr, echo=echo)
    ep.dst = peer_addr
    return ep, peer_addr


def fit(where: Harness | Endpoint, data: bytes) -> bytes:
    """``data`` as a payload of the link under test (or of an endpoint's): zero bytes
    appended up to its smallest payload (RTKit: every message is 8 bytes); unchanged on
    other links."""
    link = where.local if isinstance(where, Harness) else where.link
    assert len(data) <= link.mtu, f"{data!r} does not fit the MTU of {link.mtu}"
    return data.ljust(link.min_payload, b"\0")


def echo_channel(h: Harness) -> str:
    """Have the peer announce a channel that echoes every message to its sender; its name.

    The case's extras may name it (``echo_channel``) and, on a link whose channels are
    numbers found by discovery (Keem Bay), say at which number the peer opens it
    (``echo_channel_addr``)."""
    assert h.case is not None
    name: str = h.case.extra.get("echo_channel", "conf-echo")
    h.peer.create(name, addr=h.case.extra.get("echo_channel_addr", RPMSG_ADDR_ANY),
                  announce=True, echo=True)
    return name


#: how long the case's backend may take to free transmit buffers the peer did not free
#: (BackendCase.extra["tx_settle"], set by the harness fixture): a service returns the
#: credits of the messages it passed on to the processor a moment after the send
tx_settle = 0.0


def exhaust(ep: Endpoint) -> list[bytes]:
    """``try_send`` until no transmit buffer is free (for ``tx_settle`` s); return what was
    sent (message i is ``i.to_bytes(4, "little")``, longer where the link's smallest
    payload is)."""
    sent: list[bytes] = []
    size = max(4, ep.link.min_payload)
    while len(sent) < MAX_TX:
        payload = len(sent).to_bytes(size, "little")
        try:
            ep.try_send(payload)
        except NoBufferAvailable:
            assert sent, "not even one transmit buffer was free"
            if tx_settle and ep.wait_writable(tx_settle):
                continue
            return sent
        sent.append(payload)
    raise AssertionError(f"{MAX_TX} try_send calls never ran out of buffers")


def assert_within(elapsed: float, low: float, high: float, what: str) -> None:
    assert low - EARLY <= elapsed <= high, f"{what} took {elapsed:.3f} s, not {low}..{high} s"


# -- threads that block ---------------------------------------------------------------------
_WAIT_FILES = (os.sep + os.path.join("amplink", "link", "waiting.py"),)
_IDLE_LOOP_FILES = (os.sep + "selectors.py",)


def _stack_files(thread: threading.Thread) -> list[str]:
    frame = sys._current_frames().get(thread.ident or -1)
    files = []
    while frame is not None:
        files.append(frame.f_code.co_filename)
        frame = frame.f_back
    return files


def parked(thread: threading.Thread, *, loop: bool = False) -> bool:
    """True if ``thread`` waits in a link's wait engine (``loop``: its event loop is idle
    in its selector, i.e. every coroutine is suspended)."""
    files = _stack_files(thread)
    marks = _IDLE_LOOP_FILES if loop else _WAIT_FILES
    if loop:
        return bool(files) and files[0].endswith(marks)
    return any(f.endswith(marks) for f in files)


def wait_parked(thread: threading.Thread, *, loop: bool = False,
                timeout: float = PARK_TIMEOUT) -> None:
    """Wait until ``thread`` blocks in a link's wait (see :func:`parked`).

    Nothing public tells that a call is blocked; the thread's stack does. Checked every
    millisecond: the call being waited for has nothing to signal.
    """
    deadline = time.monotonic() + timeout
    while not parked(thread, loop=loop):
        if not thread.is_alive():
            return  # it ended: the caller's checks say how
        assert time.monotonic() < deadline, f"{thread.name} never blocked in a wait"
        time.sleep(0.001)


class _Waiting(Outcome):
    def outcome(self, timeout: float = 10.0) -> tuple[object, BaseException | None, float]:
        """``(result, error, when it ended)``; fails if it did not end in ``timeout`` s."""
        assert self.join(timeout), "the blocked call did not return"
        assert self.ended is not None
        return self.result, self.error, self.ended


class Blocked(_Waiting):
    """A call run in a thread until it blocks in a link's wait (see :func:`wait_parked`)."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(fn)
        wait_parked(self.thread)


class BlockedCoroutine(_Waiting):
    """A coroutine run in an event loop of its own thread until the loop is idle (the
    coroutine suspended in its await)."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, object]]) -> None:
        self.started = threading.Event()

        async def main() -> object:
            self.started.set()
            return await make()

        super().__init__(lambda: asyncio.run(main()))
        assert self.started.wait(PARK_TIMEOUT), "the event loop did not start"
        wait_parked(self.thread, loop=True)


# -- callbacks --------------------------------------------------------------------------------
class Recorder:
    """A callback that records ``(payload, src, thread ident)`` and can be waited on."""

    def __init__(self, action: Callable[[Endpoint, Any, int], object] | None = None) -> None:
        self.calls: list[tuple[Any, int, int]] = []
        self.cond = threading.Condition()
        self.action = action

    def __call__(self, ep: Endpoint, payload: Any, src: int) -> None:
        with self.cond:
            self.calls.append((payload, src, threading.get_ident()))
            self.cond.notify_all()
        if self.action is not None:
            try:
                self.action(ep, payload, src)
            finally:
                with self.cond:  # what the action did may be what a waiter waits for
                    self.cond.notify_all()

    @property
    def payloads(self) -> list[Any]:
        with self.cond:
            return [c[0] for c in self.calls]

    def count(self) -> int:
        with self.cond:
            return len(self.calls)


def drive_until(h: Harness, recorder: Recorder, ready: Callable[[], bool], timeout: float,
                link: Link | None = None) -> bool:
    """Wait until ``ready()``, a condition on what ``recorder`` recorded: in dispatch
    mode "caller" by running the link's dispatch in this thread (nothing else runs
    callbacks), else on the recorder's condition (the dispatcher threads call it)."""
    link = link or h.local
    if h.dispatch == "caller":
        link.run(until=ready, timeout=timeout)
        return ready()
    with recorder.cond:
        return recorder.cond.wait_for(ready, timeout)


