"""The host's RTKit runtime: the thin I/O around :class:`~amplink.rtkit.host.HostProtocol`.

One :class:`RtkitHost` serves one run of a co-processor with two threads:

* the **dispatcher** (Linux's ordered RTKit workqueue) sleeps in ``poll`` on the
  mailbox's "not empty" doorbell, feeds each message to the protocol and carries out
  what comes back: replies, buffer requests (:mod:`.buffers`), syslog slots read and
  logged, the crashlog read and parsed, application messages handed to their
  endpoints. System endpoints need this service whether or not anyone waits for a
  message, hence a thread; application messages reach a waiting ``recv`` with one
  thread hop. Its replies never block it: what the full FIFO does not take waits in a
  bounded queue (as Linux's mailbox framework queues), retried every millisecond;
* the **memory bus** serves the co-processor's accesses to host memory (:mod:`.dma`).
  It is a thread of its own so that a co-processor waiting for an access never waits
  for the dispatcher, which may be waiting for that co-processor to read its FIFO.

The commands (:meth:`RtkitHost.boot`, :meth:`~RtkitHost.shutdown`, power states, ping)
run in the caller's thread: they send (waiting at most 500 ms for room) and then wait
for the dispatcher to see the answer, each wait bounded by ``ack_timeout`` (1 s, ETIME
as Linux).

Locks, in the order they nest: ``_dispatch`` serialises handling a batch of messages
with a reinit (as Linux stops its mailbox and flushes its workqueue to reinit);
``_buffers`` guards the buffers against being freed while read or accessed; ``_cond``
guards the protocol state and is held only briefly. No callback (endpoint or crash)
runs under any of them, and no thread blocks on the mailbox while holding one.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ...errors import InvalidArgument, LinkDown
from ...memory.iommu import Iommu
from ...memory.region import SharedRegion
from ...rtkit import host as h
from ...rtkit import messages as m
from ...rtkit.crashlog import Crashlog, parse_crashlog
from ...rtkit.errors import (
    BufferRequestError,
    DropReason,
    RtkitCrashed,
    RtkitNotRunning,
    RtkitProtocolError,
    RtkitTimeout,
)
from ...rtkit.syslog import decode_entry
from ...transports.mailbox import SEND_TIMEOUT, Mailbox, MailboxBroken
from .buffers import BufferService, IovaHook, map_at_iova
from .dma import DmaServer, DmaStatistics
from .endpoints import AppReceiver, EndpointCallback, RtkitEndpoint, SyslogRing

log = logging.getLogger(__name__)
syslog_log = logging.getLogger("amplink.rtkit.syslog")

#: Linux waits this long for HELLO/EPMAP and for each power-state ack (ETIME after)
ACK_TIMEOUT = 1.0
#: messages handled per batch (the mailbox's doorbell is looked at between batches)
DISPATCH_BUDGET = 64
#: replies the dispatcher keeps while the co-processor's FIFO is full; more are dropped
REPLY_QUEUE = 256
#: how often queued replies are retried (s)
REPLY_RETRY = 0.001

#: ``on_crash(crashlog or None, summary)``: the co-processor crashed (or broke the mailbox)
CrashCallback = Callable[[Crashlog | None, str], object]
#: ``on_down(error)``: the run is over (crash: RtkitCrashed, broken mailbox, stop: LinkDown)
DownCallback = Callable[[LinkDown], object]


@dataclass(frozen=True, slots=True)
class RtkitStatistics:
    """One co-processor's RTKit state and counters at one moment."""

    name: str
    phase: str
    version: int | None
    iop_state: str
    ap_state: str
    running: bool
    crashed: bool
    endpoints: tuple[int, ...]
    started: tuple[int, ...]
    received: int
    sent: int
    drops: dict[str, int] = field(default_factory=dict)
    replies_queued: int = 0
    replies_dropped: int = 0
    syslog_messages: int = 0
    buffers: tuple[str, ...] = ()
    buffer_refusals: dict[str, int] = field(default_factory=dict)
    iommu_faults: int = 0
    dma: DmaStatistics | None = None
    boot_time: float | None = None
    mailbox_broken: str = ""


class RtkitHost:
    """The host's side of one run of an RTKit co-processor (see the module docstring).

    ``mailbox`` is the host (AP) end; ``dma`` serves the co-processor's memory accesses
    through ``iommu``; ``mmio`` is the co-processor's own memory, where it may place
    buffers the host reads in place. ``syslog`` receives the syslog lines (a ring shared
    across runs). Call :meth:`start`, then :meth:`boot`; :meth:`close` at the end.
    """

    def __init__(self, mailbox: Mailbox, *, iommu: Iommu, name: str = "rtkit",
                 dma: DmaServer | None = None, mmio: SharedRegion | None = None,
                 syslog: SyslogRing | None = None, ack_timeout: float = ACK_TIMEOUT,
                 buffer_budget: int = 1 << 20, map_iova: IovaHook = map_at_iova,
                 min_version: int = m.MIN_SUPPORTED_VERSION,
                 max_version: int = m.MAX_SUPPORTED_VERSION) -> None:
        self.name = name
        self.mailbox = mailbox
        self.iommu = iommu
        self.dma = dma
        self.ack_timeout = ack_timeout
        self.syslog = syslog or SyslogRing()
        self.proto = h.HostProtocol(min_version=min_version, max_version=max_version)
        self.buffers = BufferService(iommu, mmio=mmio, budget=buffer_budget,
                                     map_iova=map_iova, name=name)
        self._cond = threading.Condition()
        self._dispatch = threading.Lock()
        self._buffers = threading.Lock()
        self._replies: collections.deque[h.Send] = collections.deque()
        self._replies_dropped = 0
        self._endpoints: dict[int, AppReceiver] = {}
        self._down_watchers: list[DownCallback] = []
        self._iop_baseline = 0  # IOP acks counted before the boot or wake under way
        self._pings: dict[int, bool] = {}  # cookie -> answered, for the pings under way
        self._cookies = itertools.count(1)
        self._warned: set[str] = set()
        self._hello_at: float | None = None
        self.boot_time: float | None = None
        self.crashlog: Crashlog | None = None
        #: the last crash report as text ("" before any crash)
        self.crash_report = ""
        self._on_crash: CrashCallback | None = None
        self._crash_summary: str | None = None
        self._down: LinkDown | None = None
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._threads = [threading.Thread(target=self._run, daemon=True,
                                          name=f"amplink-{name}-rtkit")]
        if dma is not None:
            self._threads.append(threading.Thread(target=self._serve_bus, args=(dma,),
                                                  daemon=True, name=f"amplink-{name}-bus"))
        self._closed = False

    # -- lifetime ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatcher and memory-bus threads."""
        for thread in self._threads:
            thread.start()

    def watch_crash(self, callback: CrashCallback) -> None:
        """Call ``callback`` once when the co-processor crashes (at once if it did)."""
        with self._cond:
            self._on_crash = callback
            summary = self._crash_summary
        if summary is not None:
            callback(self.crashlog, summary)

    def watch_down(self, callback: DownCallback) -> None:
        """Call ``callback(error)`` once when this run ends (a crash: RtkitCrashed; a broken
        mailbox or a stop: LinkDown), at once if it has; with no lock held, before the
        mailbox is released."""
        with self._cond:
            error = self._down
            if error is None:
                self._down_watchers.append(callback)
                return
        callback(error)

    def unwatch_down(self, callback: DownCallback) -> None:
        with self._cond:
            if callback in self._down_watchers:
                self._down_watchers.remove(callback)

    def _tell_down(self, error: LinkDown) -> None:
        """Call the down watchers (no lock held)."""
        with self._cond:
            watchers, self._down_watchers = self._down_watchers, []
        for callback in watchers:
            callback(error)

    def close(self, reason: str = "the co-processor was stopped") -> None:
        """Stop the dispatcher, fail the endpoints, free every buffer."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if self._down is None:
                self._down = LinkDown(f"{self.name}: {reason}")
            down = self._down
            self._cond.notify_all()
            endpoints = list(self._endpoints.values())
            self._endpoints.clear()
        self._tell_down(down)
        os.eventfd_write(self._wake_fd, 1)  # stays readable: every thread sees it
        for thread in self._threads:
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join(5.0)
                if thread.is_alive():
                    log.warning("%s: thread %s did not stop within 5 s", self.name, thread.name)
        for endpoint in endpoints:
            endpoint._down(self._down)
        with self._buffers:
            self.buffers.release_all()
        if not any(thread.is_alive() for thread in self._threads):
            os.close(self._wake_fd)
        self.mailbox.close()
        if self.dma is not None:
            self.dma.close()

    # -- the dispatcher ------------------------------------------------------------------------
    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        poller.register(self.mailbox.fileno(), select.POLLIN)
        busy = False
        try:
            while not self._closed:
                timeout = 0 if busy else REPLY_RETRY * 1000 if self._replies else None
                if self._wake_fd in {fd for fd, _ in poller.poll(timeout)}:
                    return
                self._flush_replies()
                self.mailbox.clear_doorbell()
                busy = self._drain()
        except MailboxBroken as exc:
            self._fatal(str(exc))
        except Exception:  # noqa: BLE001 - a bug here must be seen, and end the run clearly
            log.exception("%s: the RTKit dispatcher failed", self.name)
            self._fatal("the host's RTKit dispatcher failed")

    def _serve_bus(self, dma: DmaServer) -> None:
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        poller.register(dma.fileno(), select.POLLIN)
        try:
            while not dma.closed_by_peer:  # gone: the process died, its crash watch reports
                if self._wake_fd in {fd for fd, _ in poller.poll()}:
                    return
                dma.serve(lock=self._buffers)  # what it accesses is not freed meanwhile
        except Exception:  # noqa: BLE001 - a bug here must be seen, and end the run clearly
            log.exception("%s: the memory bus failed", self.name)
            self._fatal("the host's memory bus failed")

    def _drain(self) -> bool:
        """Handle up to DISPATCH_BUDGET messages; True if more may be waiting."""
        deliveries: list[tuple[int, AppReceiver, int]] = []
        crash: str | None = None
        with self._dispatch:
            for _ in range(DISPATCH_BUDGET):
                got = self.mailbox.try_recv()
                if got is None:
                    break
                ep, msg = got
                if ep == m.EP_MGMT and m.msg_type(msg) == m.MgmtType.HELLO:
                    self._hello_at = time.monotonic()
                with self._cond:
                    events = self.proto.receive(ep, msg)
                for event in events:
                    if isinstance(event, h.CrashReported):
                        crash = self._read_crashlog()
                    else:
                        self._do(event, deliveries)
        if crash is not None:  # outside every lock: it calls the crash watcher
            self._fatal(crash, crashed=True)
        for ep, receiver, msg in deliveries:  # outside every lock
            dropped = receiver._deliver(msg)
            if dropped is not None:
                self._count_drop(h.Dropped(ep, msg, dropped))
        return self.mailbox.rx_pending()

    def _do(self, event: h.Event, deliveries: list[tuple[int, AppReceiver, int]]) -> None:
        if isinstance(event, h.Send):
            self._reply(event)
        elif isinstance(event, h.AppMessage):
            with self._cond:
                receiver = self._endpoints.get(event.ep)
            if receiver is None:
                self._count_drop(h.Dropped(event.ep, event.msg, DropReason.NO_LISTENER))
            else:
                deliveries.append((event.ep, receiver, event.msg))
        elif isinstance(event, h.Dropped):
            self._log_drop(event)
        elif isinstance(event, h.BufferRequested):
            self._serve_buffer(event)
        elif isinstance(event, h.SyslogRead):
            self._read_syslog(event)
        elif isinstance(event, h.Pong):
            with self._cond:
                expected = event.cookie in self._pings
                if expected:
                    self._pings[event.cookie] = True
                    self._cond.notify_all()
            if not expected:  # not kept: a flood of them must not grow memory
                self._count_drop(h.Dropped(m.EP_MGMT, m.pong(event.cookie),
                                           DropReason.UNEXPECTED, "PONG to no PING"))
        else:  # BootResult, PowerAck: a waiter looks at the state (CrashReported: _drain)
            with self._cond:
                self._cond.notify_all()

    def _reply(self, send: h.Send) -> None:
        """Send now if the FIFO has room and nothing is queued before it, else queue it."""
        if not self._replies and self.mailbox.try_send(send.ep, send.msg):
            return
        if len(self._replies) >= REPLY_QUEUE:
            self._replies_dropped += 1
            self._count_drop(h.Dropped(send.ep, send.msg, DropReason.REPLY_OVERFLOW))
            return
        self._replies.append(send)

    def _flush_replies(self) -> None:
        replies = self._replies
        while replies and self.mailbox.try_send(replies[0].ep, replies[0].msg):
            replies.popleft()

    def _count_drop(self, event: h.Dropped) -> None:
        with self._cond:
            self.proto.drops[event.reason.name] += 1
        self._log_drop(event)

    def _log_drop(self, event: h.Dropped) -> None:
        # the first drop of each kind is a warning; a flood of them is not a flood of logs
        level = logging.DEBUG if event.reason.name in self._warned else logging.WARNING
        self._warned.add(event.reason.name)
        if log.isEnabledFor(level):
            detail = f" ({event.detail})" if event.detail else ""
            log.log(level, "%s: dropped 0x%016x on endpoint %s: %s%s", self.name, event.msg,
                    m.endpoint_name(event.ep), event.reason.value, detail)

    def _serve_buffer(self, request: h.BufferRequested) -> None:
        try:
            with self._buffers:
                buffer, answer = self.buffers.serve(request.ep, request.pages, request.iova)
        except BufferRequestError as exc:
            self._count_drop(h.Dropped(request.ep, m.buffer_request(request.pages, request.iova),
                                       DropReason.BUFFER_REFUSED, str(exc)))
            return
        with self._cond:
            self.proto.buffer_granted(request.ep, buffer.size)
            reply = self.proto.buffer_reply(request.ep, request.pages, buffer.iova)
        log.debug("%s: %s", self.name, buffer.describe())
        if answer:
            self._reply(reply)

    def _read_syslog(self, read: h.SyslogRead) -> None:
        with self._buffers:
            buffer = self.buffers.get(m.EP_SYSLOG)
            assert buffer is not None  # the protocol checked the slot against this buffer
            raw = buffer.read(read.offset, read.length)
        entry = decode_entry(raw, read.layout, read.index)
        self.syslog.append(str(entry))
        if syslog_log.isEnabledFor(logging.INFO):
            syslog_log.info("%s: %s", self.name, entry)

    def _read_crashlog(self) -> str:
        """Read and parse the crashlog; keep the report; return the crash's summary."""
        with self._buffers:
            buffer = self.buffers.get(m.EP_CRASHLOG)
            shadow = None if buffer is None else buffer.read(0, buffer.size)
        if shadow is None:
            summary = "crashed (it has no crashlog buffer)"
            report = f"{self.name} crashed; it has no crashlog buffer\n"
        else:
            crashlog = parse_crashlog(shadow)  # a copy: the co-processor cannot change it now
            self.crashlog = crashlog
            report = crashlog.report()
            messages = crashlog.messages()
            summary = f"RTKit crashlog: {messages[0]}" if messages else (
                f"RTKit crashlog with {len(crashlog.errors)} problem(s)")
        self.crash_report = report
        log.error("%s: the co-processor crashed:\n%s", self.name, report.rstrip())
        return summary

    def _fatal(self, summary: str, *, crashed: bool = False) -> None:
        """The run is over: fail the waiters and endpoints, tell the crash watcher."""
        error: LinkDown = (RtkitCrashed(f"{self.name}: {summary}") if crashed
                           else LinkDown(f"{self.name}: {summary}"))
        with self._cond:
            if self._crash_summary is not None:
                return
            self._crash_summary = summary
            if self._down is None:
                self._down = error
            down = self._down
            self._cond.notify_all()
            endpoints = list(self._endpoints.values())
            callback = self._on_crash
        for endpoint in endpoints:
            endpoint._down(error)
        self._tell_down(down)
        if callback is not None:
            callback(self.crashlog, summary)

    # -- waiting for the co-processor -------------------------------------------------------------
    def _raise_if_down(self) -> None:  # with self._cond held
        if self.proto.crashed:
            raise RtkitCrashed(f"{self.name}: the co-processor crashed: every send fails until "
                               "it is reinitialised")
        if self._down is not None:
            raise self._down

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: predicate() or self.proto.crashed or self._down is not None,
                self.ack_timeout)
            if predicate():
                return
            self._raise_if_down()
            if not ok:
                raise RtkitTimeout(f"{self.name}: {what} within {self.ack_timeout} s")

    def _send_command(self, make: Callable[[], h.Send]) -> None:
        with self._cond:
            self._raise_if_down()
            send = make()
        self.mailbox.send(send.ep, send.msg, SEND_TIMEOUT)

    # -- commands ------------------------------------------------------------------------------
    def boot(self) -> None:
        """Wait for HELLO and the endpoint map, the IOP's power ack, then set the AP power
        state ON (as apple_rtkit_boot). Each wait: ``ack_timeout`` (RtkitTimeout, ETIME)."""
        with self._cond:
            if self.proto.running:
                return
            self._raise_if_down()
            baseline = self._iop_baseline
        proto = self.proto
        self._wait(lambda: proto.phase in (h.Phase.READY, h.Phase.FAILED),
                   "no HELLO and endpoint map from the co-processor")
        if proto.boot_error is not None:
            raise proto.boot_error
        self._wait(lambda: proto.iop_acks > baseline, "the co-processor did not acknowledge "
                                                      "IOP power ON")
        if proto.iop_state != m.PowerState.ON:
            raise RtkitProtocolError(f"{self.name}: the IOP power ack says "
                                     f"{m.power_name(proto.iop_state)}, not ON")
        self.set_power(iop=False, state=m.PowerState.ON)
        if self._hello_at is not None:
            self.boot_time = time.monotonic() - self._hello_at

    def set_power(self, *, iop: bool, state: int) -> None:
        """Ask for IOP (``iop``) or AP power state ``state`` (:class:`~amplink.rtkit.
        messages.PowerState`) and wait for its ack: RtkitTimeout (ETIME) after
        ``ack_timeout``, RtkitProtocolError (EINVAL) if it acknowledges another state."""
        m.put(state, 15, 0, "state")
        with self._cond:
            before = self.proto.iop_acks if iop else self.proto.ap_acks
        self._send_command(lambda: self.proto.set_power(iop=iop, state=state))
        which = "IOP" if iop else "AP"
        self._wait(lambda: (self.proto.iop_acks if iop else self.proto.ap_acks) > before,
                   f"no ack of {which} power state {m.power_name(state)}")
        got = self.proto.iop_state if iop else self.proto.ap_state
        if got != state:
            raise RtkitProtocolError(f"{self.name}: asked for {which} power state "
                                     f"{m.power_name(state)}, the ack says {m.power_name(got)}")

    def reinit(self) -> None:
        """Forget endpoints, free buffers, clear the crashed flag, states OFF (Linux's reinit)."""
        with self._dispatch, self._buffers:
            with self._cond:
                self.proto.reinit()
                self._iop_baseline = self.proto.iop_acks
            self.buffers.release_all()

    def shutdown(self) -> None:
        """AP QUIESCED, IOP SLEEP, reinit (apple_rtkit_shutdown)."""
        self.set_power(iop=False, state=m.PowerState.QUIESCED)
        self.set_power(iop=True, state=m.PowerState.SLEEP)
        self.reinit()

    def quiesce(self) -> None:
        """AP and IOP QUIESCED, reinit; the states stay QUIESCED (apple_rtkit_quiesce)."""
        self.set_power(iop=False, state=m.PowerState.QUIESCED)
        self.set_power(iop=True, state=m.PowerState.QUIESCED)
        self.reinit()
        with self._cond:
            self.proto.iop_state = self.proto.ap_state = m.PowerState.QUIESCED

    def idle(self) -> None:
        """AP and IOP IDLE: asleep with state retained (apple_rtkit_idle)."""
        self.set_power(iop=False, state=m.PowerState.IDLE)
        self.set_power(iop=True, state=m.PowerState.IDLE)

    def wake(self) -> None:
        """IOP ON, then boot (apple_rtkit_wake); RtkitNotRunning if it is running already."""
        with self._cond:
            if self.proto.running:
                raise RtkitNotRunning(f"{self.name} is running already: nothing to wake")
            self._iop_baseline = self.proto.iop_acks
        self._send_command(lambda: self.proto.set_power(iop=True, state=m.PowerState.ON))
        self.boot()

    def ping(self) -> float:
        """Round-trip time (s) of a PING to its PONG (RtkitTimeout after ``ack_timeout``)."""
        cookie = next(self._cookies) & 0xFFFFFFFF
        with self._cond:
            self._pings[cookie] = False
        try:
            start = time.monotonic()
            self._send_command(lambda: self.proto.ping(cookie))
            self._wait(lambda: self._pings[cookie], "no PONG")
            return time.monotonic() - start
        finally:
            with self._cond:
                del self._pings[cookie]

    def request_crash(self) -> None:
        """Ask the co-processor to crash (it writes its crashlog, then says so)."""
        def make() -> h.Send:
            self.proto.check_send(m.EP_CRASHLOG)
            return h.Send(m.EP_CRASHLOG, m.CRASHLOG_REQUEST_CRASH)

        self._send_command(make)

    # -- application endpoints -----------------------------------------------------------------
    def open_endpoint(self, ep: int, callback: EndpointCallback | None = None) -> RtkitEndpoint:
        """Start application endpoint ``ep`` (>= 0x20, announced, while running) and return it;
        ``callback(endpoint, msg)`` receives its messages in the dispatcher thread, else
        :meth:`RtkitEndpoint.recv` does."""
        endpoint = RtkitEndpoint(self, ep, callback)
        self.attach(ep, endpoint)
        return endpoint

    def attach(self, ep: int, receiver: AppReceiver) -> None:
        """Hand the messages of application endpoint ``ep`` (>= 0x20, announced, while
        running) to ``receiver``, starting the endpoint (STARTEP, waiting up to 500 ms for
        room in the mailbox) unless it was started in this run."""
        m.check_endpoint(ep, "ep")
        if ep < m.APP_ENDPOINT_START:
            raise InvalidArgument(f"ep must be an application endpoint (>= 0x20), got 0x{ep:x}")
        with self._cond:
            if ep in self._endpoints:
                raise InvalidArgument(f"endpoint 0x{ep:x} is open already")
            self._raise_if_down()
            self.proto.check_send(ep)
            start = None if ep in self.proto.started else self.proto.start_endpoint(ep)
            self._endpoints[ep] = receiver
        if start is not None:
            try:
                self.mailbox.send(start.ep, start.msg, SEND_TIMEOUT)
            except BaseException:
                with self._cond:
                    self.proto.started.discard(ep)  # not started: the next opener sends it
                self.detach(ep, receiver)
                raise

    def detach(self, ep: int, receiver: AppReceiver) -> None:
        """``receiver`` no longer takes endpoint ``ep``'s messages (they are dropped and
        counted from now on)."""
        with self._cond:
            if self._endpoints.get(ep) is receiver:
                del self._endpoints[ep]

    def app_endpoints(self) -> list[int]:
        """The application endpoints of this run's endpoint map."""
        with self._cond:
            return sorted(ep for ep in self.proto.endpoints if ep >= m.APP_ENDPOINT_START)

    def send(self, ep: int, msg: int, timeout: float | None = SEND_TIMEOUT) -> None:
        """Send ``msg`` to endpoint ``ep``, waiting up to ``timeout`` s for room."""
        m.check_endpoint(ep, "ep")
        msg = m.check_word(msg)
        with self._cond:
            self._raise_if_down()
            self.proto.check_send(ep)
        self.mailbox.send(ep, msg, timeout)

    def try_send(self, ep: int, msg: int) -> bool:
        """Send ``msg`` to endpoint ``ep`` if the mailbox has room now (else False)."""
        m.check_endpoint(ep, "ep")
        msg = m.check_word(msg)
        with self._cond:
            self._raise_if_down()
            self.proto.check_send(ep)
        return self.mailbox.try_send(ep, msg)

    # -- looking -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proto.running and self._down is None

    def statistics(self) -> RtkitStatistics:
        """A snapshot (never blocks on the dispatcher)."""
        mbox = self.mailbox.statistics()
        with self._buffers:
            buffers = tuple(b.describe() for b in self.buffers.buffers)
            refusals = dict(self.buffers.refusals)
        with self._cond:
            p = self.proto
            return RtkitStatistics(
                name=self.name, phase=p.phase.value, version=p.version,
                iop_state=m.power_name(p.iop_state), ap_state=m.power_name(p.ap_state),
                running=p.running, crashed=p.crashed, endpoints=tuple(sorted(p.endpoints)),
                started=tuple(sorted(p.started)), received=mbox.received, sent=mbox.sent,
                drops=dict(Counter(p.drops)), replies_queued=len(self._replies),
                replies_dropped=self._replies_dropped,
                syslog_messages=self.syslog.count,
                buffers=buffers, buffer_refusals=refusals,
                iommu_faults=self.iommu.statistics().faults,
                dma=None if self.dma is None else self.dma.statistics(),
                boot_time=self.boot_time, mailbox_broken=mbox.broken)

