"""The host runtime (RtkitHost) with amplink's firmware runtime, both in this process:
boot, application endpoints, syslog, the three kinds of buffers, power states, ping,
crash and crashlog, shutdown."""

from __future__ import annotations

import errno
import logging
import threading
import time

import pytest
from common_kit import Outcome, wait_for
from rtkit_kit import IOVA_BASE, SRAM_BASE, FirmwareRig

from amplink.errors import EndpointClosed, InvalidArgument, LinkDown, ReceiveTimeout
from amplink.firmware.rtkit import BufferRequest, DmaFault, RtkitFirmware
from amplink.memory.iommu import IommuFaultReason
from amplink.rtkit import messages as m
from amplink.rtkit.errors import RtkitCrashed, RtkitNotRunning, RtkitTimeout


def echo(fw: RtkitFirmware) -> None:
    fw.endpoint(0x20, lambda msg: fw.send(0x20, msg))
    fw.endpoint(0x21, lambda msg: fw.log(f"log {msg:x}", "app"))

    def crash(msg: int) -> None:
        raise ValueError(f"bad value {msg}")

    fw.endpoint(0x22, crash)


@pytest.fixture
def rig():
    rig = FirmwareRig(echo)
    rig.host.boot()
    yield rig
    rig.close()


def test_boot_negotiates_and_powers_up(rig):
    stats = rig.host.statistics()
    assert stats.running and stats.version == 12
    assert (stats.iop_state, stats.ap_state) == ("ON", "ON")
    assert stats.endpoints == (0, 1, 2, 4, 0x20, 0x21, 0x22)
    assert stats.started == (1, 2, 4)
    assert stats.boot_time is not None and stats.boot_time > 0
    assert rig.fw.proto.running and stats.drops == {}


def test_application_endpoint_round_trip_with_recv_and_callback(rig):
    ep = rig.host.open_endpoint(0x20)
    for value in (0, 1, 0xFFFF_FFFF_FFFF_FFFF):
        ep.send(value)
        assert ep.recv(timeout=2) == value
    assert ep.try_recv() is None
    with pytest.raises(ReceiveTimeout):
        ep.recv(timeout=0.05)
    ep.close()
    got = []
    done = threading.Event()
    ep = rig.host.open_endpoint(0x20, callback=lambda e, msg: (got.append(msg), done.set()))
    ep.send(7)
    assert done.wait(2) and got == [7]
    ep.close()
    with pytest.raises(EndpointClosed):
        ep.send(1)


def test_endpoint_arguments_are_checked(rig):
    with pytest.raises(InvalidArgument):
        rig.host.open_endpoint(0x02)
    with pytest.raises(RtkitNotRunning):
        rig.host.open_endpoint(0x30)  # not announced
    ep = rig.host.open_endpoint(0x20)
    with pytest.raises(InvalidArgument):
        rig.host.open_endpoint(0x20)
    with pytest.raises(InvalidArgument):
        ep.send(1 << 64)
    ep.close()


def test_messages_for_an_endpoint_nobody_opened_are_counted(rig):
    rig.host.send(0x21, 5)  # the firmware logs instead of answering
    ep = rig.host.open_endpoint(0x20)
    ep.close()
    rig.host.send(0x20, 1)  # echoed back to a closed endpoint
    assert wait_for(lambda: rig.host.statistics().drops.get("NO_LISTENER") == 1, 2)


def test_syslog_lines_become_log_records(rig, caplog):
    with caplog.at_level(logging.INFO, logger="amplink.rtkit.syslog"):
        for i in range(40):  # more than the 16 slots: each is reused once acknowledged
            rig.host.send(0x21, i)
        assert wait_for(lambda: rig.host.syslog.count == 40, 5)
    text = rig.host.syslog.text()
    assert "app: log 0\n" in text and "app: log 27\n" in text
    assert any("test: app: log 27" in r.getMessage() for r in caplog.records)
    assert rig.fw.dropped_logs == 0


def test_buffers_are_host_allocated_and_attached(rig):
    buffers = {b.ep: b for b in rig.host.buffers.buffers}
    assert {b.way for b in buffers.values()} == {"host"}
    crashlog = buffers[m.EP_CRASHLOG]
    assert crashlog.size == 0x2000 and IOVA_BASE <= crashlog.iova < IOVA_BASE + (16 << 20)
    assert rig.iommu.statistics().attachments == 3
    # the firmware reaches its buffer through the IOMMU, and nothing else
    rig.fw.dma_write(crashlog.iova + 0x10, b"hello")
    assert crashlog.read(0x10, 5) == b"hello"
    assert rig.fw.dma_read(crashlog.iova + 0x10, 5) == b"hello"
    with pytest.raises(DmaFault) as info:
        rig.fw.dma_read(crashlog.iova + 0x1FFE, 4)  # runs past the buffer
    assert info.value.reason is IommuFaultReason.PARTIAL
    with pytest.raises(DmaFault) as info:
        rig.fw.dma_write(0x1234_0000, b"x")  # nothing mapped there
    assert info.value.reason is IommuFaultReason.UNMAPPED
    stats = rig.iommu.statistics()
    assert stats.faults == 2 and stats.faults_by_reason == {"PARTIAL": 1, "UNMAPPED": 1}
    assert rig.host.statistics().iommu_faults == 2


def test_buffers_in_device_memory_and_at_a_chosen_iova():
    def setup(fw: RtkitFirmware) -> None:
        fw.buffers[m.EP_SYSLOG] = fw.sram_buffer(pages=1, offset=0x3000)
        fw.buffers[m.EP_IOREPORT] = BufferRequest(2, IOVA_BASE + 0x80_0000)
        fw.endpoint(0x20, lambda msg: fw.log(f"m{msg}"))

    rig = FirmwareRig(setup)
    try:
        rig.host.boot()
        buffers = {b.ep: b for b in rig.host.buffers.buffers}
        assert (buffers[m.EP_SYSLOG].way, buffers[m.EP_SYSLOG].iova) == ("mmio",
                                                                          SRAM_BASE + 0x3000)
        assert (buffers[m.EP_IOREPORT].way, buffers[m.EP_IOREPORT].iova) == (
            "iova", IOVA_BASE + 0x80_0000)
        assert rig.iommu.statistics().attachments == 2  # crashlog, ioreport: not the SRAM
        rig.host.send(0x20, 3)
        assert wait_for(lambda: rig.host.syslog.count == 1, 2)
        assert rig.host.syslog.text() == "m3\n"
    finally:
        rig.close()


def test_ping(rig):
    rtt = rig.host.ping()
    assert 0 < rtt < 10


def test_quiesce_and_wake_redo_the_handshake(rig):
    ep = rig.host.open_endpoint(0x20)
    rig.host.quiesce()
    stats = rig.host.statistics()
    assert not stats.running and (stats.iop_state, stats.ap_state) == ("QUIESCED", "QUIESCED")
    assert stats.buffers == () and rig.iommu.statistics().attachments == 0
    with pytest.raises(RtkitNotRunning):
        ep.send(1)
    rig.host.wake()
    assert rig.host.running and len(rig.host.buffers.buffers) == 3
    ep.close()
    ep = rig.host.open_endpoint(0x20)  # started again after the reinit
    ep.send(9)
    assert ep.recv(timeout=2) == 9
    ep.close()


def test_idle_and_wake_keep_the_state(rig):
    rig.host.idle()
    stats = rig.host.statistics()
    assert (stats.iop_state, stats.ap_state) == ("IDLE", "IDLE") and not stats.running
    assert len(stats.buffers) == 3
    with pytest.raises(RtkitNotRunning):
        rig.host.send(0x20, 1)
    rig.host.wake()
    assert rig.host.running
    with pytest.raises(RtkitNotRunning):
        rig.host.wake()  # running already


def test_an_off_coprocessor_does_not_wake(rig):
    rig.host.set_power(iop=False, state=m.PowerState.QUIESCED)
    rig.host.set_power(iop=True, state=m.PowerState.OFF)
    assert rig.host.statistics().iop_state == "OFF"
    rig.host.ack_timeout = 0.5  # this wait must time out: no need for the generous one
    with pytest.raises(RtkitTimeout) as info:
        rig.host.wake()
    assert info.value.errno == errno.ETIME
    assert rig.fw.proto.drops == {"UNEXPECTED": 1}


def test_shutdown_frees_everything(rig):
    rig.host.shutdown()
    stats = rig.host.statistics()
    assert stats.endpoints == (0,) and stats.buffers == () and not stats.running
    assert rig.iommu.statistics().attachments == 0
    assert rig.fw.proto.iop_state == m.PowerState.SLEEP


def test_a_failing_handler_crashes_the_coprocessor_with_a_crashlog(rig):
    ep = rig.host.open_endpoint(0x20)
    blocked = Outcome(lambda: ep.recv(5))
    rig.host.send(0x22, 42)
    assert wait_for(lambda: rig.crashes, 5)
    assert blocked.join(5) and isinstance(blocked.error, RtkitCrashed)
    assert rig.crashes == ["RTKit crashlog: endpoint 0x22: ValueError: bad value 42"]
    report = rig.host.crash_report
    assert "Message (id=0x0): endpoint 0x22: ValueError: bad value 42" in report
    assert "Mailbox history" in report and "Exception taken from EL1h" in report
    assert rig.host.crashlog is not None and rig.host.crashlog.ok
    assert rig.halted is not None
    for call in (lambda: rig.host.send(0x20, 1), lambda: ep.send(1), rig.host.ping,
                 lambda: rig.host.open_endpoint(0x21)):
        with pytest.raises(RtkitCrashed):
            call()
    rig.host.reinit()  # every send fails until then
    assert not rig.host.statistics().crashed


def test_request_crash_makes_the_firmware_write_its_crashlog(rig):
    rig.host.request_crash()
    assert wait_for(lambda: rig.crashes, 5)
    assert rig.crashes == ["RTKit crashlog: crash requested by the host"]


def test_crash_watchers_added_late_are_told_at_once(rig):
    rig.host.request_crash()
    assert wait_for(lambda: rig.crashes, 5)
    late = []
    rig.host.watch_crash(lambda _log, summary: late.append(summary))
    assert late == rig.crashes


def test_close_fails_blocked_receivers_and_later_calls():
    rig = FirmwareRig(echo)
    rig.host.boot()
    ep = rig.host.open_endpoint(0x20)
    waiter = Outcome(lambda: ep.recv(10))
    time.sleep(0.05)
    rig.close()
    assert waiter.join(5) and isinstance(waiter.error, LinkDown)
    with pytest.raises(LinkDown):
        ep.send(1)


def test_callbacks_run_without_the_runtime_locks(rig):
    # an IOMMU fault subscriber and a crash watcher may call back into the runtime
    faults = []
    rig.iommu.subscribe(lambda fault: faults.append(rig.host.statistics().iommu_faults))
    with pytest.raises(DmaFault):
        rig.fw.dma_read(0x1234_0000, 4)  # served by the host's memory-bus thread
    assert faults == [1]
    watched = []

    def watcher(_crashlog, summary):
        rig.host.reinit()  # takes the dispatch and buffer locks
        watched.append((summary, rig.host.statistics().crashed))

    rig.host.watch_crash(watcher)
    rig.host.request_crash()
    assert wait_for(lambda: watched, 5)
    assert watched == [("RTKit crashlog: crash requested by the host", False)]
