"""The runtime of RTKit-style firmware: the co-processor's end of the mailbox.

Firmware is a module (or ``.py`` file) with a ``main(fw)`` function; amplink runs it as
``python -m amplink.firmware.rtkit SPEC`` in a simulated co-processor (``amplink boot
--rtkit SPEC``, :class:`~amplink.platforms.rtkit.RtkitRemoteProc`). ``main`` registers
application endpoints and settings; the runtime then speaks RTKit (HELLO, the endpoint
map, buffer requests, power states, see :mod:`amplink.rtkit.coproc`) until the host
stops the processor::

    def main(fw):
        @fw.endpoint(0x20)
        def echo(msg):
            fw.send(0x20, msg)
        fw.log("echo ready")
        fw.run()            # optional: the runtime runs once main returns

What the firmware can reach is what a co-processor reaches: the mailbox (:meth:`send`),
its own memory (:attr:`sram`), and host memory only through the host's IOMMU
(:meth:`dma_read`, :meth:`dma_write`; anything not attached is a :class:`DmaFault`, a
fault the host records). :meth:`log` writes the syslog, :meth:`crash` the crashlog
(an exception escaping a handler crashes the co-processor the same way).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import time
import uuid
from collections.abc import Callable
from typing import NoReturn

from ...errors import AddressError, InvalidArgument, LinkDown, PeerTimeout
from ...memory.region import SharedRegion
from ...notify.waiter import wait_readable
from ...platforms import sim_abi as L
from ...platforms.rtkit.dma import DmaClient, DmaFault
from ...platforms.rtkit.layout import RtkitEnv
from ...rtkit import coproc as c
from ...rtkit import crashlog as cl
from ...rtkit import host as h
from ...rtkit import messages as m
from ...rtkit.syslog import SyslogLayout, encode_entry
from ...transports.mailbox import SEND_TIMEOUT, Mailbox, MailboxSendTimeout, Role
from ...transports.mailbox import PeerFds as _PeerFds

__all__ = ["BufferRequest", "DmaFault", "Halted", "RtkitFirmware", "connect"]

BufferRequest = c.BufferRequest
log = logging.getLogger(__name__)

#: how long a syslog write waits for its slot's previous message to be acknowledged
SYSLOG_WAIT = 1.0
#: messages kept for the crashlog's mailbox history
MAILBOX_HISTORY = 16
#: the firmware's version text in its crashlog
FIRMWARE_VERSION = "amplink RTKit firmware runtime 1"
_UUID = uuid.UUID("8d7a7a3e-6d2a-4d57-9a31-2f0c3b4f5e61").bytes

Handler = Callable[[int], object]


class Halted(Exception):  # noqa: N818 - a state, not an error: the co-processor has crashed
    """The co-processor crashed (:meth:`RtkitFirmware.crash`): it runs no more code."""


class RtkitFirmware:
    """One co-processor's runtime (see the module docstring); single-threaded."""

    def __init__(self, mailbox: Mailbox, *, dma: DmaClient | None = None,
                 sram: SharedRegion | None = None, lifeline: socket.socket | None = None,
                 name: str = "rtkit") -> None:
        self.name = name
        self.mailbox = mailbox
        self.dma = dma
        #: the co-processor's own memory (device addresses ``sram.da_base`` and up)
        self.sram = sram
        self.lifeline = lifeline
        self.versions = (m.MIN_SUPPORTED_VERSION, m.MAX_SUPPORTED_VERSION)
        self.system_endpoints = {m.EP_CRASHLOG, m.EP_SYSLOG, m.EP_IOREPORT}
        self.buffers: dict[int, c.BufferRequest] = {
            m.EP_CRASHLOG: c.BufferRequest(2), m.EP_SYSLOG: c.BufferRequest(1),
            m.EP_IOREPORT: c.BufferRequest(1)}
        self.syslog_layout = SyslogLayout(16, 0x60)
        self._handlers: dict[int, Handler] = {}
        self._proto: c.CoprocProtocol | None = None
        self._history: collections.deque[cl.MailboxRecord] = collections.deque(
            maxlen=MAILBOX_HISTORY)
        self._in_flight: set[int] = set()
        self._next_log = 0
        self._deferred: collections.deque[c.CoprocEvent] = collections.deque()
        self._dispatching = False
        self.started = False
        self.halted = False
        #: syslog messages dropped (no buffer yet, or a slot never acknowledged), and sends
        #: that timed out; what the host sent that was dropped is ``proto.drops``
        self.dropped_logs = 0
        self.send_timeouts = 0

    # -- set-up (before run) -------------------------------------------------------------------
    def endpoint(self, ep: int, handler: Handler | None = None) -> Callable[[Handler], Handler]:
        """Announce application endpoint ``ep`` (0x20..0xff); ``handler(msg)`` gets its
        messages. Usable as a decorator: ``@fw.endpoint(0x20)``."""
        m.check_endpoint(ep, "ep")
        if ep < m.APP_ENDPOINT_START:
            raise InvalidArgument(f"ep must be an application endpoint (>= 0x20), got 0x{ep:x}")
        if self.started:
            raise RuntimeError("endpoints are announced at boot: register them before run()")

        def register(fn: Handler) -> Handler:
            self._handlers[ep] = fn
            return fn

        if handler is not None:
            register(handler)
        return register

    def sram_buffer(self, pages: int, offset: int) -> c.BufferRequest:
        """A buffer request for ``pages`` pages at ``offset`` of the co-processor's own
        memory: the host reads it in place (way 3) and does not answer."""
        if self.sram is None:
            raise RuntimeError("this co-processor has no device-local memory")
        if offset < 0 or offset + pages * m.PAGE_SIZE > self.sram.size:
            raise InvalidArgument(f"{pages} pages at 0x{offset:x} do not fit the SRAM of "
                                  f"0x{self.sram.size:x} bytes")
        return c.BufferRequest(pages, self.sram.da_base + offset, expect_reply=False)

    # -- running -------------------------------------------------------------------------------
    @property
    def proto(self) -> c.CoprocProtocol:
        if self._proto is None:
            raise RuntimeError("the co-processor is not running: call run()")
        return self._proto

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Say HELLO and serve the host until it goes away (LinkDown ends it quietly when
        run by ``python -m amplink.firmware.rtkit``), ``until()`` is true (checked at
        least every 50 ms), or the co-processor crashes (:class:`Halted`)."""
        if not self.started:
            self.started = True
            self._proto = c.CoprocProtocol(
                self.system_endpoints | set(self._handlers),
                buffers={ep: b for ep, b in self.buffers.items() if ep in self.system_endpoints},
                syslog=self.syslog_layout if m.EP_SYSLOG in self.system_endpoints else None,
                min_version=self.versions[0], max_version=self.versions[1])
            if self.lifeline is not None:
                self.lifeline.sendall(L.LIFELINE_READY)
            self._handle(self._proto.start())
        poller = select.poll()
        poller.register(self.mailbox.fileno(), select.POLLIN)
        if self.lifeline is not None:
            poller.register(self.lifeline, select.POLLIN)
        while until is None or not until():
            ready = {fd for fd, _ in poller.poll(None if until is None else 50)}
            if self.lifeline is not None and self.lifeline.fileno() in ready:
                self._check_lifeline()
            self._pump()
            while self._deferred:
                self._handle([self._deferred.popleft()])

    def _check_lifeline(self) -> None:
        assert self.lifeline is not None
        try:
            data = self.lifeline.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            raise LinkDown("the host is gone")

    def _pump(self) -> None:
        """Handle every waiting message (application ones later, when nested)."""
        self.mailbox.clear_doorbell()
        while (got := self.mailbox.try_recv()) is not None:
            ep, msg = got
            self._history.append(cl.MailboxRecord(msg, ep, _timestamp()))
            self._handle(self.proto.receive(ep, msg))

    def _handle(self, events: list[c.CoprocEvent]) -> None:
        for event in events:
            if isinstance(event, h.Send):
                self._send(event.ep, event.msg)
            elif isinstance(event, c.SyslogAck):
                self._in_flight.discard(event.index)
            elif isinstance(event, c.BuffersReleased):
                self._in_flight.clear()
            elif isinstance(event, (h.AppMessage, c.CrashRequested)):
                if self._dispatching:
                    self._deferred.append(event)
                else:
                    self._dispatch(event)
            elif isinstance(event, h.Dropped):
                log.debug("%s: dropped 0x%x on endpoint %s: %s %s", self.name, event.msg,
                          m.endpoint_name(event.ep), event.reason.value, event.detail)

    def _dispatch(self, event: h.AppMessage | c.CrashRequested) -> None:
        if isinstance(event, c.CrashRequested):
            self.crash("crash requested by the host")
        handler = self._handlers.get(event.ep)
        if handler is None:
            return
        self._dispatching = True
        try:
            handler(event.msg)
        except (Halted, LinkDown):
            raise
        except Exception as exc:  # noqa: BLE001 - a firmware bug crashes the co-processor
            log.info("handler of endpoint 0x%x failed", event.ep, exc_info=exc)
            self.crash(f"endpoint 0x{event.ep:x}: {type(exc).__name__}: {exc}")
        finally:
            self._dispatching = False

    def _send(self, ep: int, msg: int, timeout: float = SEND_TIMEOUT) -> None:
        try:
            self.mailbox.send(ep, msg, timeout)
        except MailboxSendTimeout:
            self.send_timeouts += 1
            raise
        self._history.append(cl.MailboxRecord(msg, ep, _timestamp()))

    # -- what firmware code calls ----------------------------------------------------------------
    def send(self, ep: int, msg: int, timeout: float = SEND_TIMEOUT) -> None:
        """Send a 64-bit message to the host on endpoint ``ep`` (MailboxSendTimeout after
        ``timeout`` s of a full mailbox)."""
        if self.halted:
            raise Halted("the co-processor has crashed")
        self._send(m.check_endpoint(ep, "ep"), m.check_word(msg), timeout)

    def dma_read(self, da: int, length: int) -> bytes:
        """Read host memory at device address ``da`` (DmaFault unless attached)."""
        if self.dma is None:
            raise DmaFault("this co-processor has no memory bus", None)
        return self.dma.read(da, length)

    def dma_write(self, da: int, data: bytes | bytearray | memoryview) -> None:
        """Write host memory at device address ``da`` (DmaFault unless attached)."""
        if self.dma is None:
            raise DmaFault("this co-processor has no memory bus", None)
        self.dma.write(da, data)

    def _store(self, da: int, data: bytes) -> None:
        """Write ``data`` at ``da``: in the SRAM if it lies there, else through the IOMMU."""
        sram = self.sram
        if sram is not None and sram.da_base <= da < sram.da_base + sram.size:
            sram.write(sram.da_to_offset(da, len(data)), data)
        else:
            self.dma_write(da, data)

    def log(self, text: str, context: str = "") -> bool:
        """Write ``text`` to the syslog (the host logs it and shows it in ``amplink trace``);
        False if it was dropped (no syslog buffer yet, or its slot stayed unacknowledged)."""
        proto = self._proto
        ready = None if proto is None else proto.ready_buffers.get(m.EP_SYSLOG)
        layout = self.syslog_layout
        if ready is None or self.halted or layout.entries == 0:
            self.dropped_logs += 1
            return False
        index = self._next_log % layout.entries
        deadline = time.monotonic() + SYSLOG_WAIT
        while index in self._in_flight and (remaining := deadline - time.monotonic()) > 0:
            wait_readable(self.mailbox.fileno(), remaining)
            self._pump_nested()  # takes the ack; no handler runs nested in here
        if index in self._in_flight:
            self.dropped_logs += 1
            return False
        self._store(ready.iova + layout.offset(index),
                    encode_entry(layout, text, context))
        self._in_flight.add(index)
        self._next_log += 1
        self._send(m.EP_SYSLOG, m.syslog_log(index))
        return True

    def _pump_nested(self) -> None:
        was, self._dispatching = self._dispatching, True
        try:
            self._pump()
        finally:
            self._dispatching = was

    def crash(self, reason: str) -> NoReturn:
        """Write the crashlog (reason, version, time, mailbox history, registers), tell the
        host "I crashed" and stop running (:class:`Halted`)."""
        proto = self._proto
        ready = None if proto is None else proto.ready_buffers.get(m.EP_CRASHLOG)
        self.halted = True
        if proto is not None and m.EP_CRASHLOG in proto.endpoints:
            if ready is not None:
                try:
                    self._store(ready.iova, self.build_crashlog(reason, ready.size))
                except (AddressError, LinkDown, PeerTimeout) as exc:  # DmaFault included
                    log.warning("%s: the crashlog could not be written: %s", self.name, exc)
            message = proto.crash_message()
            try:
                self._send(message.ep, message.msg)
            except MailboxSendTimeout:
                log.warning("%s: the host did not take the crash message", self.name)
        raise Halted(reason)

    def build_crashlog(self, reason: str, size: int) -> bytes:
        """This co-processor's crashlog for ``reason``, cut to ``size`` bytes of sections."""
        history = list(self._history)
        registers = cl.Registers(x=(0,) * 31, sp=0, pc=0, psr=0x5, far=0, esr=0)
        while True:
            data = cl.build_crashlog([
                cl.cver(_UUID, FIRMWARE_VERSION), cl.cstr(0, reason),
                cl.ctim(time.monotonic_ns()), cl.cmbx(0, len(history), history),
                cl.crg8(registers)])
            if len(data) <= size or not history:
                return data[:size]
            history.pop(0)

    def close(self) -> None:
        """Release the mailbox, memory bus, SRAM and lifeline."""
        self.mailbox.close()
        if self.dma is not None:
            self.dma.close()
        if self.sram is not None:
            self.sram.close()
        if self.lifeline is not None:
            self.lifeline.close()

    def halt(self) -> None:
        """After a crash: wait until the host stops the processor (lifeline EOF)."""
        if self.lifeline is None:
            return
        self.lifeline.setblocking(True)
        try:
            while self.lifeline.recv(64):
                pass
        except OSError:
            pass


def _timestamp() -> int:
    return time.monotonic_ns() // 1000 & 0xFFFFFFFF


def connect(env: dict[str, str] | None = None) -> RtkitFirmware:
    """The runtime over what the host passed (see :mod:`amplink.platforms.rtkit.layout`)."""
    rt = RtkitEnv.from_env(os.environ if env is None else env)
    data, space = _PeerFds(rt.data_rx_fd, rt.data_tx_fd, rt.space_rx_fd,
                           rt.space_tx_fd).doorbells()
    mailbox = Mailbox(SharedRegion.from_fd(rt.mbox_fd, rt.mbox_size), Role.IOP, data, space)
    sram = SharedRegion.from_fd(rt.sram_fd, rt.sram_size, da_base=rt.sram_base)
    dma = DmaClient(socket.socket(fileno=rt.dma_fd))
    lifeline = socket.socket(fileno=rt.lifeline_fd)
    return RtkitFirmware(mailbox, dma=dma, sram=sram, lifeline=lifeline, name=rt.name)
