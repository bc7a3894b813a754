"""The host's RTKit state machine, fed messages directly (no I/O)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.rtkit import host as h
from amplink.rtkit import messages as m
from amplink.rtkit.errors import (
    DropReason,
    RtkitCrashed,
    RtkitNotRunning,
    RtkitProtocolError,
)
from amplink.rtkit.syslog import SyslogLayout

ON = m.PowerState.ON


def sends(events):
    return [(e.ep, e.msg) for e in events if isinstance(e, h.Send)]


def booted(endpoints=(1, 2, 4, 0x20), version=(11, 12)) -> h.HostProtocol:
    """A host that saw HELLO, the map of ``endpoints`` and both power states ON."""
    proto = h.HostProtocol()
    proto.receive(0, m.hello(*version))
    bases = sorted({ep // 32 for ep in endpoints})
    for i, base in enumerate(bases):
        bitmap = sum(1 << (ep % 32) for ep in endpoints if ep // 32 == base)
        proto.receive(0, m.epmap(base, bitmap, last=i == len(bases) - 1))
    proto.receive(0, m.power(m.MgmtType.IOP_PWR_STATE_ACK, ON))
    proto.receive(0, m.power(m.MgmtType.SET_AP_PWR_STATE, ON))
    assert proto.running
    return proto


@pytest.mark.parametrize("low,high,chosen", [(11, 12, 12), (5, 11, 11), (12, 15, 12),
                                              (11, 11, 11), (0, 0xFFFF, 12)])
def test_hello_picks_the_highest_common_version(low, high, chosen):
    proto = h.HostProtocol()
    events = proto.receive(0, m.hello(low, high))
    assert sends(events) == [(0, m.hello_reply(chosen))]
    assert proto.version == chosen and proto.phase is h.Phase.WAIT_EPMAP


@pytest.mark.parametrize("low,high,why", [(13, 15, "too new"), (1, 10, "too old"),
                                           (12, 11, "above its maximum")])
def test_hello_outside_11_to_12_fails_the_boot_with_einval(low, high, why):
    proto = h.HostProtocol()
    events = proto.receive(0, m.hello(low, high))
    assert sends(events) == []
    (result,) = [e for e in events if isinstance(e, h.BootResult)]
    assert isinstance(result.error, RtkitProtocolError)
    assert result.error.errno == errno.EINVAL and why in str(result.error)
    assert proto.phase is h.Phase.FAILED and proto.boot_error is result.error


def test_the_endpoint_map_is_answered_and_system_endpoints_started():
    proto = h.HostProtocol()
    proto.receive(0, m.hello(11, 12))
    first = proto.receive(0, m.epmap(0, (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5)
                                     | (1 << 8) | (1 << 0x1F), last=False))
    assert sends(first) == [(0, m.epmap_reply(0, last=False))]
    assert proto.phase is h.Phase.WAIT_EPMAP
    last = proto.receive(0, m.epmap(1, 0b101, last=True))
    assert sends(last) == [(0, m.epmap_reply(1, last=True))] + [
        (0, m.startep(ep)) for ep in (1, 2, 3, 4, 8)]
    assert isinstance(last[-1], h.BootResult) and last[-1].error is None
    assert proto.endpoints == {0, 1, 2, 3, 4, 5, 8, 0x1F, 0x20, 0x22}
    assert proto.unknown_system_endpoints == {5, 0x1F}  # announced, not started
    assert proto.phase is h.Phase.READY


def test_an_endpoint_map_that_repeats_a_base_never_ends_and_fails_the_boot():
    proto = h.HostProtocol()
    proto.receive(0, m.hello(11, 12))
    for base in range(8):
        proto.receive(0, m.epmap(base, 1, last=False))
    events = proto.receive(0, m.epmap(3, 1, last=False))
    result = events[-1]
    assert isinstance(result, h.BootResult) and isinstance(result.error, RtkitProtocolError)
    assert proto.drops["EPMAP_OVERFLOW"] == 1
    assert proto.receive(0, m.epmap(0, 1, last=True))[0].reason is DropReason.UNEXPECTED


def test_messages_out_of_order_are_dropped_and_counted():
    proto = h.HostProtocol()
    (drop,) = proto.receive(0, m.epmap(0, 2, last=True))
    assert drop.reason is DropReason.UNEXPECTED
    proto.receive(0, m.hello(11, 12))
    (drop,) = proto.receive(0, m.hello(11, 12))
    assert drop.reason is DropReason.UNEXPECTED
    (drop,) = proto.receive(0, m.typed(0x3F))
    assert drop.reason is DropReason.UNKNOWN_TYPE
    assert proto.drops == {"UNEXPECTED": 2, "UNKNOWN_TYPE": 1}


def test_messages_to_undiscovered_endpoints_are_dropped():
    proto = booted(endpoints=(1, 2, 0x20))
    for ep in (3, 4, 0x21, 0xFF):
        (drop,) = proto.receive(ep, 1)
        assert drop.reason is DropReason.UNDISCOVERED_ENDPOINT
    assert proto.drops["UNDISCOVERED_ENDPOINT"] == 4


def test_running_needs_both_power_states_with_low_byte_on():
    proto = booted()
    proto.receive(0, m.power(m.MgmtType.SET_AP_PWR_STATE, m.PowerState.IDLE))
    assert not proto.running and proto.ap_acks == 2
    proto.receive(0, m.power(m.MgmtType.SET_AP_PWR_STATE, 0x120))  # low byte 0x20
    assert proto.running


def test_application_endpoints_need_a_running_coprocessor():
    proto = h.HostProtocol()
    proto.receive(0, m.hello(11, 12))
    proto.receive(0, m.epmap(1, 1, last=True))
    with pytest.raises(RtkitNotRunning):
        proto.start_endpoint(0x20)
    with pytest.raises(RtkitNotRunning):
        proto.check_send(0x20)
    proto.check_send(0)  # management is always there
    with pytest.raises(RtkitNotRunning):
        proto.check_send(0x21)  # not announced
    proto.receive(0, m.power(m.MgmtType.IOP_PWR_STATE_ACK, ON))
    proto.receive(0, m.power(m.MgmtType.SET_AP_PWR_STATE, ON))
    assert proto.start_endpoint(0x20) == h.Send(0, m.startep(0x20))
    assert proto.receive(0x20, 42) == [h.AppMessage(0x20, 42)]


def test_syslog_slots_are_checked_against_the_count():
    proto = booted()
    log = m.syslog_log(0)
    drop, ack = proto.receive(2, log)
    assert drop.reason is DropReason.SYSLOG_NOT_READY and ack == h.Send(2, log)
    proto.buffer_granted(2, 0x1000)
    proto.receive(2, m.syslog_init(4, 0x60))
    assert proto.syslog_layout == SyslogLayout(4, 0x60)
    read, ack = proto.receive(2, m.syslog_log(3))
    assert read == h.SyslogRead(3, 3 * 0x80, 0x80, SyslogLayout(4, 0x60))
    assert ack == h.Send(2, m.syslog_log(3))
    # index == count: Linux's `idx > n_entries` reads this slot, one past the end
    drop, ack = proto.receive(2, m.syslog_log(4))
    assert drop.reason is DropReason.SYSLOG_INDEX and ack == h.Send(2, m.syslog_log(4))


def test_syslog_entries_that_do_not_fit_the_buffer_are_not_read():
    proto = booted()
    proto.buffer_granted(2, 0x1000)
    proto.receive(2, m.syslog_init(255, 255))  # 255 slots of 0x11f bytes: far past 4 KiB
    assert isinstance(proto.receive(2, m.syslog_log(13))[0], h.SyslogRead)  # ends at 0xfa1
    drop, _ = proto.receive(2, m.syslog_log(14))
    assert drop.reason is DropReason.SYSLOG_LAYOUT


def test_the_second_crashlog_message_is_the_crash_and_sends_fail_until_reinit():
    proto = booted()
    (request,) = proto.receive(1, m.buffer_request(2, 0))
    assert request == h.BufferRequested(1, 2, 0)
    proto.buffer_granted(1, 0x2000)
    (crash,) = proto.receive(1, m.buffer_request(2, 0x1000))
    assert isinstance(crash, h.CrashReported) and proto.crashed and not proto.running
    with pytest.raises(RtkitCrashed) as info:
        proto.check_send(0x20)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(RtkitCrashed):
        proto.set_power(iop=True, state=ON)
    (drop,) = proto.receive(0x20, 1)
    assert drop.reason is DropReason.AFTER_CRASH
    proto.reinit()
    assert not proto.crashed and proto.endpoints == {0} and proto.buffers == {}
    assert proto.iop_state == proto.ap_state == m.PowerState.OFF
    assert proto.phase is h.Phase.WAIT_HELLO


def test_ioreport_echoes_types_8_and_c_and_asks_for_buffers():
    proto = booted()
    for kind in (0x8, 0xC):
        msg = m.typed(kind, 0x1234)
        assert proto.receive(4, msg) == [h.Send(4, msg)]
    assert proto.receive(4, m.buffer_request(1, 0)) == [h.BufferRequested(4, 1, 0)]
    (drop,) = proto.receive(4, m.typed(0x9))
    assert drop.reason is DropReason.UNKNOWN_TYPE


def test_oslog_init_is_acknowledged():
    proto = booted(endpoints=(8,))
    assert proto.receive(8, m.oslog(m.OSLOG_INIT, 5)) == [h.Send(8, m.oslog(m.OSLOG_ACK))]


def test_buffer_replies_carry_the_size_and_iova():
    proto = booted()
    assert proto.buffer_reply(4, 3, 0x1000_0000) == h.Send(4, m.buffer_request(3, 0x1000_0000))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFF), st.integers(0, (1 << 64) - 1)), max_size=80))
def test_any_message_stream_is_taken_without_an_exception(stream):
    proto = h.HostProtocol()
    proto.receive(0, m.hello(11, 12))
    proto.receive(0, m.epmap(0, 0xFFFF_FFFF, last=False))
    dropped = 0
    for ep, msg in stream:
        events = proto.receive(ep, msg)
        dropped += sum(isinstance(e, h.Dropped) for e in events)
        for event in events:
            if isinstance(event, h.SyslogRead):  # only slots inside the granted buffer
                assert event.offset + event.length <= proto.buffers[2]
        if any(isinstance(e, h.BufferRequested) for e in events):
            proto.buffer_granted(ep, 0x1000)
    assert sum(proto.drops.values()) == dropped
