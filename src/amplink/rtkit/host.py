"""The host's half of RTKit (Linux's rtkit.c) as a state machine, without I/O.

:meth:`HostProtocol.receive` takes one message from the co-processor and returns the
events it causes, in the order the runtime must carry them out: messages to send
(:class:`Send`), a finished endpoint map (:class:`BootResult`), power-state acks, buffer
requests to serve, syslog slots to read, a crash, application messages, and drops. The
commands (:meth:`~HostProtocol.start_endpoint`, :meth:`~HostProtocol.set_power`,
:meth:`~HostProtocol.ping`) return the message to send. Nothing here sends, sleeps,
allocates or reads memory: the runtime (:mod:`amplink.platforms.rtkit`) does, and
reports what it did back (:meth:`~HostProtocol.buffer_granted`).

Every message is untrusted: a message in the wrong state, to an endpoint the
co-processor did not announce, of an unknown type or out of range is a counted
:class:`Dropped`, never an exception. A HELLO with versions outside 11..12 and an
endpoint map that repeats a base (so never ends) fail the boot with EINVAL.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass

from . import messages as m
from .errors import (
    DropReason,
    RtkitCrashed,
    RtkitError,
    RtkitNotRunning,
    RtkitProtocolError,
    RtkitUndiscoveredEndpoint,
)
from .syslog import SyslogLayout

# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to endpoint ``ep``."""

    ep: int
    msg: int


@dataclass(frozen=True, slots=True)
class BootResult:
    """The endpoint map is complete (``error`` None) or the boot failed (HELLO, EPMAP)."""

    error: RtkitError | None


@dataclass(frozen=True, slots=True)
class PowerAck:
    """The co-processor acknowledged an IOP (``iop``) or AP power state."""

    iop: bool
    state: int


@dataclass(frozen=True, slots=True)
class Pong:
    cookie: int


@dataclass(frozen=True, slots=True)
class BufferRequested:
    """Serve a buffer request of ``pages`` 4 KiB pages at ``iova`` (0: the host chooses),
    then report it with :meth:`HostProtocol.buffer_granted`."""

    ep: int
    pages: int
    iova: int


@dataclass(frozen=True, slots=True)
class SyslogRead:
    """Read and decode syslog slot ``index``: ``length`` bytes at ``offset`` of the syslog
    buffer (checked to lie inside it)."""

    index: int
    offset: int
    length: int
    layout: SyslogLayout


@dataclass(frozen=True, slots=True)
class CrashReported:
    """The co-processor crashed: read its crashlog buffer (if it has one)."""

    msg: int


@dataclass(frozen=True, slots=True)
class AppMessage:
    ep: int
    msg: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message that was not acted on (counted by ``reason``)."""

    ep: int
    msg: int
    reason: DropReason
    detail: str = ""


Event = (Send | BootResult | PowerAck | Pong | BufferRequested | SyslogRead | CrashReported
         | AppMessage | Dropped)


class Phase(enum.Enum):
    """Where the boot handshake stands."""

    WAIT_HELLO = "waiting for HELLO"
    WAIT_EPMAP = "receiving the endpoint map"
    READY = "endpoint map complete"
    FAILED = "boot failed"


def _low_byte_on(state: int) -> bool:
    return state & 0xFF == m.PowerState.ON


class HostProtocol:
    """The host's RTKit state for one co-processor (see the module docstring).

    Not thread-safe: the runtime serialises calls.
    """

    def __init__(self, *, min_version: int = m.MIN_SUPPORTED_VERSION,
                 max_version: int = m.MAX_SUPPORTED_VERSION) -> None:
        self.min_version = min_version
        self.max_version = max_version
        #: why each message was dropped, by :class:`DropReason` name
        self.drops: Counter[str] = Counter()
        #: acks received so far (never reset): a waiter compares before and after
        self.iop_acks = 0
        self.ap_acks = 0
        self.reinit()

    def reinit(self) -> None:
        """Forget the co-processor's endpoints, buffers and states (Linux's reinit)."""
        self.phase = Phase.WAIT_HELLO
        self.boot_error: RtkitError | None = None
        self.version: int | None = None
        self.endpoints: set[int] = {m.EP_MGMT}
        self.started: set[int] = set()
        self.unknown_system_endpoints: set[int] = set()
        self.iop_state = m.PowerState.OFF.value
        self.ap_state = m.PowerState.OFF.value
        self.crashed = False
        self.syslog_layout: SyslogLayout | None = None
        #: endpoint -> bytes of the buffer granted to it
        self.buffers: dict[int, int] = {}
        self.crashlog_requested = False
        self._epmap_bases: set[int] = set()

    # -- what the runtime asks ---------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Not crashed, and both IOP and AP power states have low byte ON (0x20)."""
        return not self.crashed and _low_byte_on(self.iop_state) and _low_byte_on(self.ap_state)

    def check_send(self, ep: int) -> None:
        """Raise unless a message may go to ``ep`` now (as apple_rtkit_send_message)."""
        if self.crashed:
            raise RtkitCrashed("the co-processor crashed: every send fails until it is "
                               "reinitialised (recover or restart it)")
        if ep not in self.endpoints:
            raise RtkitUndiscoveredEndpoint(f"endpoint {m.endpoint_name(ep)} was not announced "
                                            "by the co-processor")
        if ep >= m.APP_ENDPOINT_START and not self.running:
            raise RtkitNotRunning(f"endpoint {m.endpoint_name(ep)}: the co-processor is not "
                                  f"running (IOP {m.power_name(self.iop_state)}, AP "
                                  f"{m.power_name(self.ap_state)})")

    def start_endpoint(self, ep: int) -> Send:
        """STARTEP for an announced endpoint (an application one only while running)."""
        self.check_send(ep)
        self.started.add(ep)
        return Send(m.EP_MGMT, m.startep(ep))

    def set_power(self, *, iop: bool, state: int) -> Send:
        """SET_IOP_PWR_STATE or SET_AP_PWR_STATE; the runtime waits for the ack
        (:attr:`iop_acks` / :attr:`ap_acks` growing)."""
        self.check_send(m.EP_MGMT)
        kind = m.MgmtType.SET_IOP_PWR_STATE if iop else m.MgmtType.SET_AP_PWR_STATE
        return Send(m.EP_MGMT, m.power(kind, state))

    def ping(self, cookie: int) -> Send:
        self.check_send(m.EP_MGMT)
        return Send(m.EP_MGMT, m.ping(cookie))

    def buffer_granted(self, ep: int, size: int) -> None:
        """The runtime served the buffer request of ``ep`` with ``size`` bytes."""
        self.buffers[ep] = size

    def buffer_reply(self, ep: int, pages: int, iova: int) -> Send:
        """The answer to a buffer request: its size and the IOVA."""
        return Send(ep, m.buffer_request(pages, iova))

    # -- what the co-processor says ----------------------------------------------------------
    def receive(self, ep: int, msg: int) -> list[Event]:
        """The events one message from the co-processor causes, in order."""
        if ep not in self.endpoints:
            return [self._drop(ep, msg, DropReason.UNDISCOVERED_ENDPOINT)]
        if self.crashed:
            return [self._drop(ep, msg, DropReason.AFTER_CRASH)]
        if ep >= m.APP_ENDPOINT_START:
            return [AppMessage(ep, msg)]
        handler = self._HANDLERS.get(ep)
        if handler is None:
            return [self._drop(ep, msg, DropReason.UNKNOWN_SYSTEM_ENDPOINT)]
        return handler(self, msg)

    def _drop(self, ep: int, msg: int, reason: DropReason, detail: str = "") -> Dropped:
        self.drops[reason.name] += 1
        return Dropped(ep, msg, reason, detail)

    def _unknown(self, ep: int, msg: int, what: str) -> Dropped:
        return self._drop(ep, msg, DropReason.UNKNOWN_TYPE, what)

    def _unexpected(self, msg: int, what: str) -> Dropped:
        return self._drop(m.EP_MGMT, msg, DropReason.UNEXPECTED,
                          f"{what} while {self.phase.value}")

    def _mgmt(self, msg: int) -> list[Event]:
        kind = m.msg_type(msg)
        if kind == m.MgmtType.HELLO:
            return self._hello(msg)
        if kind == m.MgmtType.EPMAP:
            return self._epmap(msg)
        if kind == m.MgmtType.IOP_PWR_STATE_ACK:
            self.iop_state = m.power_state(msg)
            self.iop_acks += 1
            return [PowerAck(True, self.iop_state)]
        if kind == m.MgmtType.SET_AP_PWR_STATE:
            self.ap_state = m.power_state(msg)
            self.ap_acks += 1
            return [PowerAck(False, self.ap_state)]
        if kind == m.MgmtType.PONG:
            return [Pong(m.cookie(msg))]
        return [self._unknown(m.EP_MGMT, msg, f"management type 0x{kind:x}")]

    def _fail_boot(self, msg: int, reason: DropReason | None, error: RtkitError) -> list[Event]:
        self.phase = Phase.FAILED
        self.boot_error = error
        events: list[Event] = []
        if reason is not None:
            events.append(self._drop(m.EP_MGMT, msg, reason, str(error)))
        events.append(BootResult(error))
        return events

    def _hello(self, msg: int) -> list[Event]:
        if self.phase is not Phase.WAIT_HELLO:
            return [self._unexpected(msg, "HELLO")]
        low, high = m.hello_versions(msg)
        speaks = f"{self.min_version}..{self.max_version}"
        problem = None
        if low > high:
            problem = f"its minimum version {low} is above its maximum {high}"
        elif low > self.max_version:
            problem = f"its minimum version {low} is too new (the host speaks {speaks})"
        elif high < self.min_version:
            problem = f"its maximum version {high} is too old (the host speaks {speaks})"
        if problem is not None:
            return self._fail_boot(msg, None, RtkitProtocolError(f"HELLO: {problem}"))
        self.version = min(self.max_version, high)
        self.phase = Phase.WAIT_EPMAP
        return [Send(m.EP_MGMT, m.hello_reply(self.version))]

    def _epmap(self, msg: int) -> list[Event]:
        if self.phase is not Phase.WAIT_EPMAP:
            return [self._unexpected(msg, "EPMAP")]
        base, bitmap, last = m.epmap_fields(msg)
        if base in self._epmap_bases:
            # eight bases cover every endpoint: a repeated one means a map that never ends
            return self._fail_boot(msg, DropReason.EPMAP_OVERFLOW, RtkitProtocolError(
                f"EPMAP: base {base} announced twice: the endpoint map does not end"))
        self._epmap_bases.add(base)
        self.endpoints.update(32 * base + bit for bit in range(32) if bitmap >> bit & 1)
        events: list[Event] = [Send(m.EP_MGMT, m.epmap_reply(base, last))]
        if not last:
            return events
        for ep in sorted(e for e in self.endpoints if 0 < e < m.APP_ENDPOINT_START):
            if ep in m.STARTED_SYSTEM_ENDPOINTS:
                self.started.add(ep)
                events.append(Send(m.EP_MGMT, m.startep(ep)))
            else:
                self.unknown_system_endpoints.add(ep)
        self.phase = Phase.READY
        events.append(BootResult(None))
        return events

    def _crashlog(self, msg: int) -> list[Event]:
        kind = m.msg_type(msg)
        if kind != m.CRASHLOG_CRASH:
            return [self._unknown(m.EP_CRASHLOG, msg, f"crashlog type 0x{kind:x}")]
        if not self.crashlog_requested:  # the first type-1 message asks for the buffer
            self.crashlog_requested = True
            pages, iova = m.buffer_fields(msg)
            return [BufferRequested(m.EP_CRASHLOG, pages, iova)]
        self.crashed = True
        return [CrashReported(msg)]

    def _syslog(self, msg: int) -> list[Event]:
        kind = m.msg_type(msg)
        if kind == m.BUFFER_REQUEST:
            pages, iova = m.buffer_fields(msg)
            return [BufferRequested(m.EP_SYSLOG, pages, iova)]
        if kind == m.SYSLOG_INIT:
            entries, msg_size = m.syslog_init_fields(msg)
            self.syslog_layout = SyslogLayout(entries, msg_size)
            return []
        if kind != m.SYSLOG_LOG:
            return [self._unknown(m.EP_SYSLOG, msg, f"syslog type 0x{kind:x}")]
        ack = Send(m.EP_SYSLOG, msg)  # always echoed: the co-processor waits for it
        index = m.syslog_index(msg)
        layout = self.syslog_layout
        size = self.buffers.get(m.EP_SYSLOG)
        if layout is None or size is None:
            return [self._drop(m.EP_SYSLOG, msg, DropReason.SYSLOG_NOT_READY), ack]
        if index >= layout.entries:
            return [self._drop(m.EP_SYSLOG, msg, DropReason.SYSLOG_INDEX,
                               f"index {index} of {layout.entries} entries"), ack]
        offset = layout.offset(index)
        if offset + layout.stride > size:
            return [self._drop(m.EP_SYSLOG, msg, DropReason.SYSLOG_LAYOUT,
                               f"entry {index} at 0x{offset:x}+0x{layout.stride:x} in a buffer "
                               f"of 0x{size:x} bytes"), ack]
        return [SyslogRead(index, offset, layout.stride, layout), ack]

    def _ioreport(self, msg: int) -> list[Event]:
        kind = m.msg_type(msg)
        if kind == m.BUFFER_REQUEST:
            pages, iova = m.buffer_fields(msg)
            return [BufferRequested(m.EP_IOREPORT, pages, iova)]
        if kind in m.IOREPORT_ECHOED:
            return [Send(m.EP_IOREPORT, msg)]
        return [self._unknown(m.EP_IOREPORT, msg, f"ioreport type 0x{kind:x}")]

    def _oslog(self, msg: int) -> list[Event]:
        if m.oslog_type(msg) == m.OSLOG_INIT:
            return [Send(m.EP_OSLOG, m.oslog(m.OSLOG_ACK))]
        return [self._unknown(m.EP_OSLOG, msg, f"oslog type 0x{m.oslog_type(msg):x}")]

    def _debug(self, msg: int) -> list[Event]:
        return [self._unknown(m.EP_DEBUG, msg, "debug endpoint messages are not handled")]

    _HANDLERS = {
        m.EP_MGMT: _mgmt, m.EP_CRASHLOG: _crashlog, m.EP_SYSLOG: _syslog,
        m.EP_DEBUG: _debug, m.EP_IOREPORT: _ioreport, m.EP_OSLOG: _oslog,
    }
