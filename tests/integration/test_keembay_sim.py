"""Keem Bay IPC with the VPU a simulated processor (a child process): echo and sinks, a
kill (EPIPE) and the recovery after it, an orderly exit, firmware without the IPC
carveout, a VPU writing garbage, frames by reference through the example service, and
nothing left behind."""

from __future__ import annotations

import errno
import zlib

import pytest
from common_kit import Outcome
from sim_kit import assert_no_leaks, fixture_firmware, snapshot, stop_quietly

from amplink import FirmwareError, RprocState
from amplink.firmware.examples.kmb_echo import COUNT
from amplink.firmware.examples.vpu_service import RESULT, thumbnail
from amplink.perf import SINK_REPORT
from amplink.platforms.sim.keembay import KeemBayProcessor, KeemBayRemoteProc
from amplink.transports.keembay import KmbConfig, LinkTornDown, wait_peer_channel

KMB_ECHO = "amplink.firmware.examples.kmb_echo"
VPU_SERVICE = "amplink.firmware.examples.vpu_service"
WAIT = 5.0


@pytest.fixture
def kmb(sim):
    """``kmb(firmware, **options)`` starts a KeemBayProcessor; every one is stopped."""
    return lambda firmware, **options: sim(firmware, kind=KeemBayProcessor, **options)


def _echo_and_sink(proc: KeemBayProcessor) -> None:
    link = proc.link
    for channel in (0, 10, 20):
        assert wait_peer_channel(link, channel, WAIT), channel
    hs, gp, sink = (link.create_endpoint(addr=c) for c in (0, 10, 20))
    for ep in (hs, gp):
        for i in range(50):
            ep.send(b"%d" % i, timeout=WAIT)
            assert ep.recvfrom(timeout=WAIT) == (b"%d" % i, ep.addr)
    for _ in range(300):
        sink.send(bytes(100), timeout=WAIT)
    sink.send(b"", timeout=WAIT)
    assert SINK_REPORT.unpack(sink.recv(timeout=WAIT)) == (300, 30000)
    assert link.statistics().backend["malformed_rx"] == 0


def test_echo_sinks_and_a_clean_stop_leave_nothing_behind():
    with KeemBayProcessor(KMB_ECHO, boot_timeout=10.0) as warm:  # imports settle first
        _echo_and_sink(warm)
    before = snapshot()
    proc = KeemBayProcessor(KMB_ECHO, boot_timeout=10.0, kmb=KmbConfig(fifo_share=16))
    try:
        proc.start()
        _echo_and_sink(proc)
        assert proc.link.statistics().backend["fifo_share"] == 16
    finally:
        code = proc.stop()
    assert code == 0
    assert_no_leaks(before, "Keem Bay start/stop")


def test_hs_echo_goes_on_while_the_vpu_floods_gp_channels(kmb):
    proc = kmb(KMB_ECHO, kmb=KmbConfig(fifo_share=16))
    link = proc.link
    for channel in (0, 1, 30, 31):
        assert wait_peer_channel(link, channel, WAIT)
    hs, control = link.create_endpoint(addr=0), link.create_endpoint(addr=1)
    floods = [link.create_endpoint(addr=c) for c in (30, 31)]
    control.send(b"flood on", timeout=WAIT)
    assert control.recv(timeout=WAIT) == b"ok"
    received = 0
    for i in range(100):
        hs.send(b"%d" % i, timeout=WAIT)
        assert hs.recv(timeout=WAIT) == b"%d" % i  # answered amid the flood
        for ep in floods:
            while ep.try_recvfrom() is not None:
                received += 1
    control.send(b"flood off", timeout=WAIT)
    (sent,) = COUNT.unpack(control.recv(timeout=WAIT))
    for ep in floods:
        while ep.try_recvfrom() is not None:
            received += 1
    assert received > 100 and sent >= received
    stats = link.statistics()
    assert stats.backend["malformed_rx"] == 0 and stats.dropped_unknown_dst == 0


def test_a_killed_vpu_is_epipe_and_recovery_brings_a_fresh_link():
    rproc = KeemBayRemoteProc(KMB_ECHO, name="vpu-rec", boot_timeout=10.0, recovery=True)
    with rproc.acquire():
        link = rproc.link
        assert wait_peer_channel(link, 0, WAIT)
        ep = link.create_endpoint(addr=0)
        blocked = Outcome(lambda: ep.recv(timeout=10))
        rproc.kill()
        assert blocked.join(5)
        assert isinstance(blocked.error, LinkTornDown), blocked.error
        assert blocked.error.errno == errno.EPIPE
        assert rproc.wait_for_state(RprocState.RUNNING, 15) and rproc.crash_count == 1
        fresh = rproc.link
        assert fresh is not link and wait_peer_channel(fresh, 0, WAIT)
        again = fresh.create_endpoint(addr=0)
        again.send(b"after the crash", timeout=WAIT)
        assert again.recv(timeout=WAIT) == b"after the crash"
    assert rproc.state is RprocState.OFFLINE


def test_an_orderly_exit_tears_the_link_down(kmb):
    proc = kmb(fixture_firmware("kmb_exit_after.py"))
    assert wait_peer_channel(proc.link, 0, WAIT)
    ep = proc.link.create_endpoint(addr=0)
    ep.send(b"once", timeout=WAIT)
    assert ep.recv(timeout=WAIT) == b"once"
    with pytest.raises(LinkTornDown) as info:
        ep.recv(timeout=WAIT)
    assert info.value.errno == errno.EPIPE


def test_firmware_without_the_ipc_carveout_is_refused():
    proc = KeemBayProcessor("amplink.firmware.examples.echo", boot_timeout=10.0)
    try:
        with pytest.raises(FirmwareError, match="keembay-ipc"):
            proc.start()
    finally:
        stop_quietly(proc)


def test_a_vpu_writing_garbage_is_counted_and_the_link_goes_on(kmb):
    proc = kmb(fixture_firmware("kmb_garbage.py"))
    link = proc.link
    assert wait_peer_channel(link, 0, WAIT)
    ep = link.create_endpoint(addr=0)
    ep.send(b"garbage", timeout=WAIT)
    assert ep.recv(timeout=WAIT) == b"after"
    backend = link.statistics().backend
    assert backend["protocol_faults"] == {"OUTSIDE_POOL": 1, "BAD_CHANNEL": 1,
                                          "BAD_ADDRESS": 1, "UNKNOWN_WRITER": 1}
    ep.send(b"still", timeout=WAIT)
    assert ep.recv(timeout=WAIT) == b"still" and link.is_up


def test_frames_by_reference_through_the_vpu_service(kmb):
    proc = kmb(VPU_SERVICE)
    link = proc.link
    for channel in (0, 10, 11, 12):
        assert wait_peer_channel(link, channel, WAIT)
    frames, results = link.create_endpoint(addr=10), link.create_endpoint(addr=11)
    thumbs = link.create_endpoint(addr=12)
    heap = link.backend.heap
    frame = heap.allocate(256 << 10, name="frame")
    for i in range(3):
        data = bytes((x * (i + 3)) & 0xFF for x in range(256)) * 1024
        frame.write(data)
        ref = frames.send_reference(frame, timeout=WAIT)
        number, size, crc, _bright, thumb_size = RESULT.unpack(results.recv(timeout=WAIT))
        assert (number, size, crc) == (i + 1, len(data), zlib.crc32(data))
        assert thumbs.recv(timeout=WAIT) == thumbnail(data) and thumb_size == len(data) // 16
        assert ref.wait(WAIT) and frame.owner == "cpu"  # the VPU released it
    frame.close()
    assert link.statistics().backend["references_done"] == 3
