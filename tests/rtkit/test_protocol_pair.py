"""The co-processor's state machine, alone and paired with the host's (no I/O at all):
boot, power states, wake from QUIESCED and from IDLE, ping, buffers, crash request."""

from __future__ import annotations

import collections

import pytest

from amplink.errors import InvalidArgument
from amplink.rtkit import coproc as c
from amplink.rtkit import host as h
from amplink.rtkit import messages as m
from amplink.rtkit.errors import DropReason
from amplink.rtkit.syslog import SyslogLayout

ON, QUIESCED, SLEEP, IDLE = (m.PowerState.ON, m.PowerState.QUIESCED, m.PowerState.SLEEP,
                             m.PowerState.IDLE)


class Pair:
    """A host and a co-processor state machine wired back to back; buffers get IOVAs from
    a counter (no memory), as a runtime would serve them."""

    def __init__(self, coproc: c.CoprocProtocol) -> None:
        self.host = h.HostProtocol()
        self.coproc = coproc
        self.to_host: collections.deque[tuple[int, int]] = collections.deque()
        self.to_coproc: collections.deque[tuple[int, int]] = collections.deque()
        self.host_events: list[h.Event] = []
        self.coproc_events: list[c.CoprocEvent] = []
        self.next_iova = 0x1000_0000

    def take_coproc(self, events):
        for event in events:
            self.coproc_events.append(event)
            if isinstance(event, h.Send):
                self.to_host.append((event.ep, event.msg))

    def send_to_coproc(self, send: h.Send) -> None:
        self.to_coproc.append((send.ep, send.msg))

    def run(self, limit: int = 1000) -> None:
        for _ in range(limit):
            if self.to_host:
                for event in self.host.receive(*self.to_host.popleft()):
                    self.host_events.append(event)
                    if isinstance(event, h.Send):
                        self.to_coproc.append((event.ep, event.msg))
                    elif isinstance(event, h.BufferRequested):
                        iova = event.iova or self.next_iova
                        self.next_iova += 0x10_0000
                        self.host.buffer_granted(event.ep, event.pages * m.PAGE_SIZE)
                        if event.iova < 0x2_0000_0000:  # not device memory: answered
                            self.to_coproc.append(
                                (event.ep, m.buffer_request(event.pages, iova)))
            elif self.to_coproc:
                self.take_coproc(self.coproc.receive(*self.to_coproc.popleft()))
            else:
                return
        raise AssertionError("the pair did not settle")

    def set_power(self, *, iop: bool, state: int) -> None:
        self.send_to_coproc(self.host.set_power(iop=iop, state=state))
        self.run()

    def boot(self) -> None:
        self.take_coproc(self.coproc.start())
        self.run()
        assert self.host.phase is h.Phase.READY
        assert self.host.iop_state == ON
        self.set_power(iop=False, state=ON)


def coproc(**kwargs) -> c.CoprocProtocol:
    defaults = dict(endpoints={1, 2, 4, 0x20, 0x41},
                    buffers={1: c.BufferRequest(2), 2: c.BufferRequest(1),
                             4: c.BufferRequest(1, 0x2_0000_0000, expect_reply=False)},
                    syslog=SyslogLayout(8, 0x40))
    defaults.update(kwargs)
    return c.CoprocProtocol(**defaults)


def test_boot_runs_the_whole_handshake():
    pair = Pair(coproc())
    pair.boot()
    assert pair.host.running and pair.coproc.running
    assert pair.host.version == pair.coproc.version == 12
    assert pair.host.endpoints == {0, 1, 2, 4, 0x20, 0x41}
    assert pair.coproc.started == {1, 2, 4}
    assert pair.host.syslog_layout == SyslogLayout(8, 0x40)
    ready = pair.coproc.ready_buffers
    assert ready[1] == c.BufferReady(1, 0x1000_0000, 0x2000)
    assert ready[4] == c.BufferReady(4, 0x2_0000_0000, 0x1000)  # device memory: no answer
    assert pair.host.drops == {} and pair.coproc.drops == {}


def test_the_map_spans_several_bases_one_reply_at_a_time():
    pair = Pair(coproc(endpoints={1, 0x20, 0x41, 0xE0, 0xFF}, buffers={}, syslog=None))
    pair.boot()
    assert pair.host.endpoints == {0, 1, 0x20, 0x41, 0xE0, 0xFF}
    epmaps = [e for e in pair.coproc_events
              if isinstance(e, h.Send) and m.msg_type(e.msg) == m.MgmtType.EPMAP]
    assert [m.epmap_fields(e.msg)[0] for e in epmaps] == [0, 1, 2, 7]
    assert [m.epmap_fields(e.msg)[2] for e in epmaps] == [False, False, False, True]


def test_versions_are_negotiated():
    pair = Pair(coproc(min_version=12, max_version=20))
    pair.boot()
    assert pair.host.version == pair.coproc.version == 12


def test_quiesce_then_wake_says_hello_again():
    pair = Pair(coproc())
    pair.boot()
    pair.set_power(iop=False, state=QUIESCED)
    pair.set_power(iop=True, state=QUIESCED)
    assert any(isinstance(e, c.BuffersReleased) for e in pair.coproc_events)
    assert pair.coproc.ready_buffers == {}
    pair.host.reinit()
    baseline = pair.host.iop_acks
    pair.set_power(iop=True, state=ON)  # the wake: HELLO, map, STARTEP, buffers, then ack
    assert pair.host.phase is h.Phase.READY and pair.host.iop_acks == baseline + 1
    assert pair.host.iop_state == ON and 1 in pair.coproc.ready_buffers
    pair.set_power(iop=False, state=ON)
    assert pair.host.running and pair.coproc.running


def test_idle_then_wake_acknowledges_at_once():
    pair = Pair(coproc())
    pair.boot()
    pair.set_power(iop=False, state=IDLE)
    pair.set_power(iop=True, state=IDLE)
    assert pair.host.iop_state == IDLE and not pair.host.running
    hellos = len([e for e in pair.coproc_events if isinstance(e, h.Send)
                  and m.msg_type(e.msg) == m.MgmtType.HELLO])
    pair.set_power(iop=True, state=ON)
    pair.set_power(iop=False, state=ON)
    assert pair.host.running
    assert len([e for e in pair.coproc_events if isinstance(e, h.Send)
                and m.msg_type(e.msg) == m.MgmtType.HELLO]) == hellos  # no new HELLO
    assert 1 in pair.coproc.ready_buffers  # state retained


def test_an_off_coprocessor_cannot_be_woken():
    pair = Pair(coproc())
    pair.boot()
    pair.set_power(iop=True, state=m.PowerState.OFF)
    pair.send_to_coproc(pair.host.set_power(iop=True, state=ON))
    pair.run()
    assert pair.host.iop_state == m.PowerState.OFF
    assert pair.coproc.drops["UNEXPECTED"] == 1


def test_ping_is_answered_with_its_cookie():
    pair = Pair(coproc())
    pair.boot()
    pair.send_to_coproc(pair.host.ping(0xCAFE))
    pair.run()
    assert h.Pong(0xCAFE) in pair.host_events


def test_the_crash_request_reaches_the_coprocessor():
    pair = Pair(coproc())
    pair.boot()
    assert pair.coproc.receive(1, m.CRASHLOG_REQUEST_CRASH) == [c.CrashRequested()]
    crash = pair.coproc.crash_message()
    assert crash == h.Send(1, m.buffer_request(2, 0x1000_0000))
    pair.to_host.append((crash.ep, crash.msg))
    pair.run()
    assert pair.host.crashed and isinstance(pair.host_events[-1], h.CrashReported)


def test_syslog_acks_and_app_messages_reach_the_coprocessor():
    proto = coproc()
    assert proto.receive(2, m.syslog_log(5)) == [c.SyslogAck(5)]
    assert proto.receive(0x20, 7) == [h.AppMessage(0x20, 7)]
    (drop,) = proto.receive(0x21, 7)
    assert drop.reason is DropReason.UNDISCOVERED_ENDPOINT


def test_a_wrong_answer_to_a_buffer_request_is_dropped():
    proto = coproc(buffers={1: c.BufferRequest(1, 0x1000_0000)})
    proto.start()
    proto.receive(0, m.hello_reply(12))
    proto.receive(0, m.epmap_reply(0, last=False))
    proto.receive(0, m.epmap_reply(1, last=False))
    proto.receive(0, m.epmap_reply(2, last=True))
    proto.receive(0, m.startep(1))
    (drop,) = proto.receive(1, m.buffer_request(1, 0x2000_0000))
    assert drop.reason is DropReason.UNEXPECTED and 1 not in proto.ready_buffers


def test_configuration_mistakes_are_refused():
    with pytest.raises(InvalidArgument):
        c.CoprocProtocol({0, 1})
    with pytest.raises(InvalidArgument):
        c.CoprocProtocol({1}, buffers={2: c.BufferRequest(1)})
    with pytest.raises(InvalidArgument):
        c.BufferRequest(1, 0, expect_reply=False)
    with pytest.raises(InvalidArgument):
        c.BufferRequest(0x100)
