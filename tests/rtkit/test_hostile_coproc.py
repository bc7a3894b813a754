"""A hostile co-processor, driven message by message against the host runtime: every
misdeed is counted and typed, and nothing crashes the host or makes it hang (every wait
has its timeout)."""

from __future__ import annotations

import errno
import struct
import time

import pytest
from common_kit import Outcome, wait_for
from rtkit_kit import IOVA_BASE, IOVA_SIZE, SRAM_BASE, Rig

from amplink.errors import LinkDown
from amplink.memory.iommu import IommuFaultReason
from amplink.platforms.rtkit import DmaFault
from amplink.platforms.rtkit.runtime import REPLY_QUEUE
from amplink.rtkit import crashlog as cl
from amplink.rtkit import messages as m
from amplink.rtkit.errors import RtkitNotRunning, RtkitProtocolError, RtkitTimeout
from amplink.transports.mailbox import MailboxSendTimeout

ACK = 0.2  # a short ack timeout keeps the timeouts of these tests short


@pytest.fixture
def rig():
    rig = Rig(ack_timeout=ACK, buffer_budget=64 << 10)
    yield rig
    rig.close()


def boot(rig: Rig, endpoints=frozenset({1, 2, 4, 0x20})) -> None:
    """Boot as a well-behaved co-processor would, the host's boot() in a thread."""
    booting = Outcome(rig.host.boot)
    rig.hello_and_map(set(endpoints))
    started = {m.startep_endpoint(msg) for _, msg in rig.recv_all(0.05)}
    assert started == set(endpoints) & m.STARTED_SYSTEM_ENDPOINTS
    rig.power_up()
    assert booting.join(2) and booting.error is None
    assert rig.host.running


def grant(rig: Rig, ep: int, pages: int = 1, iova: int = 0) -> int:
    """Ask for a buffer; returns the IOVA the host answered with."""
    rig.send(ep, m.buffer_request(pages, iova))
    got_ep, msg = rig.recv()
    assert got_ep == ep
    return m.buffer_fields(msg)[1]


def drops(rig: Rig) -> dict[str, int]:
    return rig.host.statistics().drops


# -- the boot ------------------------------------------------------------------------------
@pytest.mark.parametrize("low,high", [(13, 15), (1, 10), (12, 11), (0xFFFF, 0xFFFF)])
def test_versions_outside_11_12_fail_the_boot_at_once_with_einval(rig, low, high):
    booting = Outcome(rig.host.boot)
    rig.send(0, m.hello(low, high))
    assert booting.join(2)
    assert isinstance(booting.error, RtkitProtocolError)
    assert booting.error.errno == errno.EINVAL  # at once: a timeout would be ETIME
    assert rig.recv_all(0.05) == []  # no HELLO_REPLY


def test_no_hello_is_etime(rig):
    start = time.monotonic()
    with pytest.raises(RtkitTimeout) as info:
        rig.host.boot()
    assert info.value.errno == errno.ETIME and ACK <= time.monotonic() - start < ACK + 5


def test_an_endpoint_map_without_end_fails_with_einval_or_etime(rig):
    booting = Outcome(rig.host.boot)
    rig.send(0, m.hello(11, 12))
    rig.recv()
    for base in (0, 1, 2, 1):  # base 1 again: this map would never end
        rig.send(0, m.epmap(base, 0xFFFF_FFFF, last=False))
    assert booting.join(2) and isinstance(booting.error, RtkitProtocolError)
    assert "does not end" in str(booting.error) and drops(rig)["EPMAP_OVERFLOW"] == 1


def test_an_endpoint_map_that_stops_before_its_last_message_is_etime():
    rig = Rig(ack_timeout=ACK)
    try:
        booting = Outcome(rig.host.boot)
        rig.send(0, m.hello(11, 12))
        rig.send(0, m.epmap(0, 2, last=False))
        assert booting.join(2) and isinstance(booting.error, RtkitTimeout)
    finally:
        rig.close()


@pytest.mark.parametrize("iop_state", [m.PowerState.SLEEP, m.PowerState.IDLE, 0x1234])
def test_an_iop_ack_of_another_state_fails_the_boot(rig, iop_state):
    booting = Outcome(rig.host.boot)
    rig.hello_and_map({1})
    rig.send(0, m.power(m.MgmtType.IOP_PWR_STATE_ACK, iop_state))
    assert booting.join(2) and isinstance(booting.error, RtkitProtocolError)
    assert booting.error.errno == errno.EINVAL


def test_an_ap_ack_of_another_state_or_none_fails_the_boot(rig):
    booting = Outcome(rig.host.boot)
    rig.hello_and_map({1})
    rig.send(0, m.power(m.MgmtType.IOP_PWR_STATE_ACK, m.PowerState.ON))
    rig.recv_all(0.05)
    rig.send(0, m.power(m.MgmtType.SET_AP_PWR_STATE, m.PowerState.QUIESCED))
    assert booting.join(2) and isinstance(booting.error, RtkitProtocolError)
    assert "the ack says QUIESCED" in str(booting.error)
    rig.host.reinit()
    booting = Outcome(rig.host.boot)
    rig.hello_and_map({1})
    rig.send(0, m.power(m.MgmtType.IOP_PWR_STATE_ACK, m.PowerState.ON))
    assert booting.join(2) and isinstance(booting.error, RtkitTimeout)  # no AP ack


# -- once running ---------------------------------------------------------------------------
def test_messages_to_undiscovered_endpoints_are_dropped_and_counted(rig):
    boot(rig, {1, 0x20})
    for ep in (2, 3, 0x21, 0x7F, 0xFF):
        rig.send(ep, 1)
    assert wait_for(lambda: drops(rig).get("UNDISCOVERED_ENDPOINT") == 5, 2)
    assert rig.host.running and rig.crashes == []
    with pytest.raises(RtkitNotRunning):
        rig.host.send(0x21, 1)


def test_the_endpoint_byte_is_the_low_byte_of_the_second_word(rig):
    boot(rig, {0x20})
    ep = rig.host.open_endpoint(0x20)
    rig.recv()  # its STARTEP
    rig.send(0xFFFF_FF20, 77)  # msg1 with high bits set: the endpoint is its low byte
    assert ep.recv(timeout=2) == 77


def test_syslog_indices_past_the_count_are_dropped_and_acknowledged(rig):
    boot(rig)
    grant(rig, 2, pages=1)
    rig.send(2, m.syslog_init(4, 0x40))
    for index in (4, 5, 0xFF):  # 4: the slot Linux reads one past the end
        rig.send(2, m.syslog_log(index))
        assert rig.recv() == (2, m.syslog_log(index))  # acknowledged all the same
    assert drops(rig)["SYSLOG_INDEX"] == 3 and rig.host.syslog.count == 0


def test_a_syslog_layout_larger_than_its_buffer_reads_nothing_outside(rig):
    boot(rig)
    iova = grant(rig, 2, pages=1)
    rig.dma().write(iova + 13 * 0x11F + 0x20, b"last slot that fits\0")
    rig.send(2, m.syslog_init(0xFF, 0xFF))
    for index in (13, 14, 200):
        rig.send(2, m.syslog_log(index))
        rig.recv()
    assert drops(rig)["SYSLOG_LAYOUT"] == 2
    assert rig.host.syslog.text() == "last slot that fits\n"


def test_syslog_before_its_buffer_or_init(rig):
    boot(rig)
    rig.send(2, m.syslog_log(0))
    assert rig.recv() == (2, m.syslog_log(0))
    grant(rig, 2)
    rig.send(2, m.syslog_log(0))
    rig.recv()
    assert drops(rig)["SYSLOG_NOT_READY"] == 2


@pytest.mark.parametrize("name,body", [
    ("a section of size 0", cl.build_crashlog([struct.pack("<IIII", cl.CSTR, 0, 0, 0)])),
    ("no terminator", cl.build_crashlog([cl.cstr(1, "x")])[:-16]),
    ("a size past the buffer", cl.build_crashlog([cl.cstr(1, "x")], size=1 << 30)),
    ("garbage", b"\xff" * 0x2000),
    ("nothing", b""),
])
def test_a_broken_crashlog_still_makes_a_report(rig, name, body):
    boot(rig)
    iova = grant(rig, 1, pages=2)
    if body:
        rig.dma().write(iova, body)
    rig.send(1, m.buffer_request(2, iova))  # "I crashed"
    assert wait_for(lambda: rig.crashes, 2), name
    log = rig.host.crashlog
    assert log is not None and not log.ok
    assert "problem: " in rig.host.crash_report
    with pytest.raises(LinkDown):
        rig.host.send(0x20, 1)


def test_a_crash_without_a_crashlog_buffer(rig):
    boot(rig)
    rig.send(1, m.buffer_request(0xFF, 0))  # over the budget: refused, not answered
    rig.send(1, m.buffer_request(0, 0))     # then "I crashed"
    assert wait_for(lambda: rig.crashes, 2)
    assert rig.crashes == ["crashed (it has no crashlog buffer)"]
    assert rig.host.statistics().buffer_refusals == {"OVER_BUDGET": 1}


@pytest.mark.parametrize("pages,iova,reason", [
    (0xFF, 0, "OVER_BUDGET"),                     # 1020 KiB > 64 KiB
    (0, 0, "EMPTY"),
    (1, IOVA_BASE + IOVA_SIZE, "UNMAPPABLE"),     # past the IOMMU window
    (1, 0x123, "UNMAPPABLE"),                     # below it, and misaligned
    (1, (1 << 44) - 0x1000, "UNMAPPABLE"),
    (0x20, SRAM_BASE, "MMIO_RANGE"),              # 128 KiB of a 64 KiB SRAM
])
def test_buffer_requests_that_cannot_be_served_are_refused_not_answered(rig, pages, iova,
                                                                         reason):
    boot(rig)
    rig.send(4, m.buffer_request(pages, iova))
    assert wait_for(lambda: drops(rig).get("BUFFER_REFUSED") == 1, 2)
    assert rig.recv_all(0.05) == []
    assert rig.host.statistics().buffer_refusals == {reason: 1}
    assert rig.iommu.statistics().attachments == 0 and rig.host.running


def test_the_coprocessor_reaches_nothing_it_was_not_given(rig):
    boot(rig)
    iova = grant(rig, 4, pages=1)
    dma = rig.dma()
    dma.write(iova, b"ok")
    for da, length, reason in ((iova + 0x1000, 1, IommuFaultReason.UNMAPPED),
                               (iova + 0xFF0, 0x20, IommuFaultReason.PARTIAL),
                               (SRAM_BASE, 4, IommuFaultReason.UNMAPPED),
                               ((1 << 64) - 2, 4, IommuFaultReason.BAD_REQUEST)):
        with pytest.raises(DmaFault) as info:
            dma.read(da, length)
        assert info.value.reason is reason
    stats = rig.host.statistics()
    assert stats.iommu_faults == 4 and stats.dma is not None and stats.dma.faults == 4


# -- floods ---------------------------------------------------------------------------------
def test_a_flood_of_junk_is_counted_and_the_host_keeps_up(rig):
    boot(rig)
    count = 5000
    for i in range(count):
        rig.send(0x55 if i % 2 else 0, m.pong(i))  # half to nowhere, half PONGs to no PING
    assert wait_for(lambda: drops(rig).get("UNDISCOVERED_ENDPOINT") == count // 2, 10)
    assert wait_for(lambda: drops(rig).get("UNEXPECTED") == count // 2, 10)
    assert rig.host._pings == {} and rig.host.running


def test_a_coprocessor_that_never_reads_cannot_block_the_host(rig):
    boot(rig)
    grant(rig, 2)
    rig.send(2, m.syslog_init(4, 0x40))
    # syslog messages want acks, which the co-processor never reads: its FIFO (32) fills,
    # the host queues REPLY_QUEUE replies more and then drops them, counted
    sent = 0
    deadline = time.monotonic() + 10
    while drops(rig).get("REPLY_OVERFLOW", 0) < 10 and time.monotonic() < deadline:
        rig.send(2, m.syslog_log(0))
        sent += 1
    stats = rig.host.statistics()
    assert stats.replies_queued == REPLY_QUEUE and stats.replies_dropped >= 10
    start = time.monotonic()
    with pytest.raises(MailboxSendTimeout) as info:  # a command waits at most 500 ms
        rig.host.ping()
    assert info.value.errno == errno.ETIMEDOUT and time.monotonic() - start < 5.5
    rig.recv_all(0.01)  # it reads again: the queued replies go out
    assert wait_for(lambda: rig.host.statistics().replies_queued == 0, 2)


def test_an_unread_application_endpoint_drops_past_its_queue(rig):
    boot(rig, {0x20})
    ep = rig.host.open_endpoint(0x20)
    rig.recv()  # its STARTEP
    for i in range(1100):
        rig.send(0x20, i)
    assert wait_for(lambda: drops(rig).get("QUEUE_FULL") == 1100 - 1024, 5)
    assert ep.dropped == 76 and [ep.recv(timeout=1) for _ in range(3)] == [0, 1, 2]


def test_a_corrupted_mailbox_ends_the_run(rig):
    boot(rig)
    rig.peer.region.write_u32(0xC0, 0x8000_0000)  # the co-processor's push count, nonsense
    rig.peer._data.kick()
    assert wait_for(lambda: rig.crashes, 2)
    assert "broke the mailbox" in rig.crashes[0]
    with pytest.raises(LinkDown):
        rig.host.send(0x20, 1)
    assert "broke the mailbox" in rig.host.statistics().mailbox_broken
