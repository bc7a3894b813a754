"""The firmware runtime on its own: set-up checks, syslog before a buffer, send timeouts,
the crashlog it writes and the crash message."""

from __future__ import annotations

import errno

import pytest

from amplink.errors import InvalidArgument
from amplink.firmware.rtkit import Halted, RtkitFirmware
from amplink.memory.region import SharedRegion
from amplink.rtkit import crashlog as cl
from amplink.rtkit import messages as m
from amplink.transports.mailbox import MailboxSendTimeout, mailbox_pair


@pytest.fixture
def pair():
    """The firmware runtime and the host's end of its mailbox (nobody serves it)."""
    ap, iop = mailbox_pair(4)
    sram = SharedRegion.memfd(0x4000, "sram", da_base=0x2_0000_0000)
    fw = RtkitFirmware(iop, sram=sram, name="unit")
    yield fw, ap
    ap.close()
    fw.close()


@pytest.fixture
def fw(pair):
    return pair[0]


def test_endpoints_are_application_ones_registered_before_the_boot(pair):
    fw, host_end = pair
    with pytest.raises(InvalidArgument):
        fw.endpoint(0x1F, lambda msg: None)
    fw.endpoint(0x20, lambda msg: None)
    fw.run(until=lambda: True)  # says HELLO, returns
    assert host_end.try_recv() == (0, m.hello(11, 12))
    with pytest.raises(RuntimeError, match="before run"):
        fw.endpoint(0x21, lambda msg: None)


def test_sram_buffers_must_fit(fw):
    request = fw.sram_buffer(2, 0x2000)
    assert (request.pages, request.iova, request.expect_reply) == (2, 0x2_0000_2000, False)
    with pytest.raises(InvalidArgument):
        fw.sram_buffer(3, 0x2000)


def test_syslog_before_its_buffer_is_dropped_and_counted(fw):
    assert fw.log("too early") is False
    fw.run(until=lambda: True)
    assert fw.log("still no buffer") is False
    assert fw.dropped_logs == 2


def test_sends_into_a_full_mailbox_time_out_and_are_counted(fw):
    for i in range(4):
        fw.send(0x20, i)
    with pytest.raises(MailboxSendTimeout) as info:
        fw.send(0x20, 4, timeout=0.05)
    assert info.value.errno == errno.ETIMEDOUT and fw.send_timeouts == 1


def test_the_crashlog_is_cut_to_its_buffer_and_parses(fw):
    for i in range(16):
        fw._history.append(cl.MailboxRecord(i, 0x20, i))
    full = cl.parse_crashlog(fw.build_crashlog("boom", 0x2000))
    assert full.ok and full.messages() == ["boom"]
    assert len(full.sections[3].value[2]) == 16
    small = fw.build_crashlog("boom", 0x500)
    assert len(small) <= 0x500
    cut = cl.parse_crashlog(small)
    assert cut.ok and len(cut.sections[3].value[2]) < 16  # the oldest history went first


def test_a_crash_without_its_buffer_still_says_so(pair):
    fw, host_end = pair
    fw.run(until=lambda: True)
    host_end.try_recv()  # HELLO
    with pytest.raises(Halted, match="no buffer here"):
        fw.crash("no buffer here")
    assert host_end.try_recv() == (1, m.buffer_request(0, 0))
    assert fw.halted and fw.log("after") is False
    with pytest.raises(Halted):
        fw.send(0x20, 1)
