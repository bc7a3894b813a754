"""The co-processor's half of RTKit as a state machine, without I/O.

What amplink's firmware runtime (:mod:`amplink.firmware.rtkit`) speaks, in the order a
real co-processor does:

1. :meth:`CoprocProtocol.start` says HELLO with its versions;
2. on HELLO_REPLY it sends its endpoint map, one EPMAP per base of 32 endpoints, each
   after the host's reply to the previous one, the last one flagged;
3. on STARTEP of a system endpoint that needs a buffer it sends the buffer request
   (type 1: pages and an IOVA, 0 to let the host choose); the syslog follows its buffer
   with INIT;
4. once every system endpoint the host starts (crashlog, syslog, debug, ioreport,
   oslog) is started and every buffer answered, it acknowledges IOP power ON; the host
   then sets the AP power state ON, which it acknowledges.

Afterwards it answers power-state requests (a wake from SLEEP or QUIESCED says HELLO
again, as after a reset; a wake from IDLE acknowledges at once), pings, syslog acks and
the host's crash request. Messages are from the host, which the firmware trusts no
more than the host trusts it: anything unexpected is a counted :class:`Dropped`.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import InvalidArgument
from . import messages as m
from .errors import DropReason
from .host import AppMessage, Dropped, Send
from .syslog import SyslogLayout


@dataclass(frozen=True, slots=True)
class BufferRequest:
    """What the co-processor asks for on a system endpoint: ``pages`` 4 KiB pages at
    ``iova`` (0: the host chooses). ``expect_reply`` False: the address is device-local
    memory (MMIO) the host reads in place and does not answer for."""

    pages: int
    iova: int = 0
    expect_reply: bool = True

    def __post_init__(self) -> None:
        m.put(self.pages, 51, 44, "pages")
        m.put(self.iova, 43, 0, "iova")
        if not self.expect_reply and not self.iova:
            raise InvalidArgument("a buffer the host does not answer for needs its IOVA")


@dataclass(frozen=True, slots=True)
class BufferReady:
    """The buffer of endpoint ``ep`` is ``size`` bytes at ``iova``."""

    ep: int
    iova: int
    size: int


@dataclass(frozen=True, slots=True)
class BuffersReleased:
    """The IOP went to SLEEP or QUIESCED: the host frees every buffer (its reinit)."""


@dataclass(frozen=True, slots=True)
class SyslogAck:
    index: int


@dataclass(frozen=True, slots=True)
class CrashRequested:
    """The host asked the co-processor to crash (crashlog endpoint, 0x40)."""


CoprocEvent = (Send | BufferReady | BuffersReleased | SyslogAck | CrashRequested | AppMessage
               | Dropped)


class CoprocPhase(enum.Enum):
    RESET = "reset"
    WAIT_HELLO_REPLY = "waiting for HELLO_REPLY"
    EPMAP = "sending the endpoint map"
    WAIT_START = "waiting for STARTEP and buffers"
    UP = "IOP power acknowledged"


class CoprocProtocol:
    """The RTKit state of one co-processor (see the module docstring). Not thread-safe."""

    def __init__(self, endpoints: Iterable[int], *,
                 buffers: Mapping[int, BufferRequest] | None = None,
                 syslog: SyslogLayout | None = None,
                 min_version: int = m.MIN_SUPPORTED_VERSION,
                 max_version: int = m.MAX_SUPPORTED_VERSION) -> None:
        """``endpoints``: what it announces (system and application, not 0); ``buffers``:
        the request of each system endpoint that needs a buffer; ``syslog``: its INIT."""
        self.endpoints = frozenset(m.check_endpoint(ep, "endpoints[]") for ep in endpoints)
        if m.EP_MGMT in self.endpoints:
            raise InvalidArgument("endpoint 0 (management) is always there: do not announce it")
        self.buffer_plan = dict(buffers or {})
        for ep in self.buffer_plan:
            if ep not in self.endpoints or ep not in (m.EP_CRASHLOG, m.EP_SYSLOG, m.EP_IOREPORT):
                raise InvalidArgument(f"a buffer for endpoint {ep}: only an announced crashlog, "
                                      "syslog or ioreport endpoint asks for one")
        if syslog is not None:
            m.put(syslog.entries, 7, 0, "syslog entries")
            m.put(syslog.msg_size, 31 - 24, 0, "syslog msg_size")
        self.syslog = syslog
        self.min_version = min_version
        self.max_version = max_version
        self.drops: Counter[str] = Counter()
        self._bases = sorted({ep // 32 for ep in self.endpoints}) or [0]
        self.phase = CoprocPhase.RESET
        self.iop_state = m.PowerState.OFF.value
        self.ap_state = m.PowerState.OFF.value
        self.version: int | None = None
        self._reset_session()

    def _reset_session(self) -> None:
        self.started: set[int] = set()
        self.ready_buffers: dict[int, BufferReady] = {}
        self._pending_buffers: set[int] = set()
        self._next_base = 0

    @property
    def running(self) -> bool:
        return (self.iop_state & 0xFF == m.PowerState.ON
                and self.ap_state & 0xFF == m.PowerState.ON)

    def _map(self, index: int) -> Send:
        base = self._bases[index]
        bitmap = sum(1 << (ep - 32 * base) for ep in self.endpoints if ep // 32 == base)
        return Send(m.EP_MGMT, m.epmap(base, bitmap, index == len(self._bases) - 1))

    def _drop(self, ep: int, msg: int, reason: DropReason, detail: str = "") -> Dropped:
        self.drops[reason.name] += 1
        return Dropped(ep, msg, reason, detail)

    # -- commands ----------------------------------------------------------------------------
    def start(self) -> list[CoprocEvent]:
        """Out of reset: say HELLO."""
        self._reset_session()
        self.phase = CoprocPhase.WAIT_HELLO_REPLY
        return [Send(m.EP_MGMT, m.hello(self.min_version, self.max_version))]

    def syslog_log(self, index: int) -> Send:
        return Send(m.EP_SYSLOG, m.syslog_log(index))

    def crash_message(self) -> Send:
        """"I crashed", on the crashlog endpoint (with its buffer's size and IOVA)."""
        ready = self.ready_buffers.get(m.EP_CRASHLOG)
        pages, iova = (0, 0) if ready is None else (ready.size // m.PAGE_SIZE, ready.iova)
        return Send(m.EP_CRASHLOG, m.buffer_request(pages, iova))

    # -- what the host says ------------------------------------------------------------------
    def receive(self, ep: int, msg: int) -> list[CoprocEvent]:
        if ep >= m.APP_ENDPOINT_START and ep in self.endpoints:
            return [AppMessage(ep, msg)]
        if ep == m.EP_MGMT:
            return self._mgmt(msg)
        if ep not in self.endpoints:
            return [self._drop(ep, msg, DropReason.UNDISCOVERED_ENDPOINT)]
        if ep == m.EP_CRASHLOG and msg == m.CRASHLOG_REQUEST_CRASH:
            return [CrashRequested()]
        kind = m.msg_type(msg)
        if kind == m.BUFFER_REQUEST and ep in self._pending_buffers:
            return self._buffer_answer(ep, msg)
        if ep == m.EP_SYSLOG and kind == m.SYSLOG_LOG:
            return [SyslogAck(m.syslog_index(msg))]
        if ep == m.EP_IOREPORT and kind in m.IOREPORT_ECHOED:
            return []  # the host's echo: nothing more to do
        if ep == m.EP_OSLOG and m.oslog_type(msg) == m.OSLOG_ACK:
            return []
        return [self._drop(ep, msg, DropReason.UNKNOWN_TYPE, f"type 0x{kind:x}")]

    def _mgmt(self, msg: int) -> list[CoprocEvent]:
        kind = m.msg_type(msg)
        if kind == m.MgmtType.HELLO_REPLY:
            return self._hello_reply(msg)
        if kind == m.MgmtType.EPMAP:
            return self._epmap_reply(msg)
        if kind == m.MgmtType.STARTEP:
            return self._startep(msg)
        if kind == m.MgmtType.SET_IOP_PWR_STATE:
            return self._iop_power(msg)
        if kind == m.MgmtType.SET_AP_PWR_STATE:
            self.ap_state = m.power_state(msg)
            return [Send(m.EP_MGMT, m.power(m.MgmtType.SET_AP_PWR_STATE, self.ap_state))]
        if kind == m.MgmtType.PING:
            return [Send(m.EP_MGMT, m.pong(m.cookie(msg)))]
        return [self._drop(m.EP_MGMT, msg, DropReason.UNKNOWN_TYPE, f"management type 0x{kind:x}")]

    def _hello_reply(self, msg: int) -> list[CoprocEvent]:
        if self.phase is not CoprocPhase.WAIT_HELLO_REPLY:
            return [self._drop(m.EP_MGMT, msg, DropReason.UNEXPECTED, "HELLO_REPLY")]
        low, high = m.hello_versions(msg)
        if low != high or not self.min_version <= low <= self.max_version:
            return [self._drop(m.EP_MGMT, msg, DropReason.UNEXPECTED,
                               f"the host chose versions {low}/{high}")]
        self.version = low
        self.phase = CoprocPhase.EPMAP
        self._next_base = 1
        return [self._map(0)]

    def _epmap_reply(self, msg: int) -> list[CoprocEvent]:
        expected = self._bases[self._next_base - 1] if self._next_base else None
        base, _bitmap, last = m.epmap_fields(msg)
        if self.phase is not CoprocPhase.EPMAP or base != expected:
            return [self._drop(m.EP_MGMT, msg, DropReason.UNEXPECTED, f"EPMAP reply base {base}")]
        if self._next_base < len(self._bases):
            send = self._map(self._next_base)
            self._next_base += 1
            return [send]
        if not last:
            return [self._drop(m.EP_MGMT, msg, DropReason.UNEXPECTED,
                               "the reply to the last EPMAP is not flagged last")]
        self.phase = CoprocPhase.WAIT_START
        return self._maybe_up()

    def _startep(self, msg: int) -> list[CoprocEvent]:
        ep = m.startep_endpoint(msg)
        if ep not in self.endpoints:
            return [self._drop(m.EP_MGMT, msg, DropReason.UNDISCOVERED_ENDPOINT, f"STARTEP {ep}")]
        events: list[CoprocEvent] = []
        plan = self.buffer_plan.get(ep)
        if ep not in self.started and plan is not None:
            events.append(Send(ep, m.buffer_request(plan.pages, plan.iova)))
            if plan.expect_reply:
                self._pending_buffers.add(ep)
            else:
                events += self._buffer_ready(ep, plan.iova, plan.pages)
        self.started.add(ep)
        return events + self._maybe_up()

    def _buffer_answer(self, ep: int, msg: int) -> list[CoprocEvent]:
        self._pending_buffers.discard(ep)
        plan = self.buffer_plan[ep]
        pages, iova = m.buffer_fields(msg)
        if plan.iova and iova not in (0, plan.iova):
            return [self._drop(ep, msg, DropReason.UNEXPECTED,
                               f"asked for IOVA 0x{plan.iova:x}, answered 0x{iova:x}")]
        if not iova and not plan.iova:
            return [self._drop(ep, msg, DropReason.UNEXPECTED, "answered without an IOVA")]
        return self._buffer_ready(ep, iova or plan.iova, min(pages, plan.pages) or plan.pages) \
            + self._maybe_up()

    def _buffer_ready(self, ep: int, iova: int, pages: int) -> list[CoprocEvent]:
        ready = BufferReady(ep, iova, pages * m.PAGE_SIZE)
        self.ready_buffers[ep] = ready
        events: list[CoprocEvent] = [ready]
        if ep == m.EP_SYSLOG and self.syslog is not None:
            events.append(Send(m.EP_SYSLOG, m.syslog_init(self.syslog.entries,
                                                          self.syslog.msg_size)))
        return events

    def _maybe_up(self) -> list[CoprocEvent]:
        """Acknowledge IOP ON once the host started what it starts and buffers are answered."""
        needed = self.endpoints & m.STARTED_SYSTEM_ENDPOINTS
        if (self.phase is not CoprocPhase.WAIT_START or not needed <= self.started
                or self._pending_buffers):
            return []
        self.phase = CoprocPhase.UP
        self.iop_state = m.PowerState.ON.value
        return [Send(m.EP_MGMT, m.power(m.MgmtType.IOP_PWR_STATE_ACK, self.iop_state))]

    def _iop_power(self, msg: int) -> list[CoprocEvent]:
        state = m.power_state(msg)
        ack = Send(m.EP_MGMT, m.power(m.MgmtType.IOP_PWR_STATE_ACK, state))
        if state == m.PowerState.ON:
            if self.iop_state in (m.PowerState.SLEEP, m.PowerState.QUIESCED):
                return self.start()  # woken as from a reset: HELLO, map, STARTEP, then ack
            if self.iop_state == m.PowerState.OFF:
                return [self._drop(m.EP_MGMT, msg, DropReason.UNEXPECTED,
                                   "IOP ON after OFF: an OFF co-processor cannot restart")]
            self.iop_state = state  # from IDLE (state retained) or ON already
            return [ack]
        if state in (m.PowerState.SLEEP, m.PowerState.QUIESCED):
            self.iop_state = state
            self.phase = CoprocPhase.RESET
            self._reset_session()
            return [ack, BuffersReleased()]
        if state in (m.PowerState.IDLE, m.PowerState.OFF):
            self.iop_state = state
            return [ack]
        return [self._drop(m.EP_MGMT, msg, DropReason.UNKNOWN_TYPE, f"IOP power state 0x{state:x}")]
