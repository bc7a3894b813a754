"""Shared buffers with simulated processors: attach, hand over, large messages, faults,
a firmware that dies holding buffers, and no leaks."""

from __future__ import annotations

import time

import pytest
from sim_kit import assert_no_leaks, fixture_firmware, snapshot

from amplink import LinkDown
from amplink.handover import BufferChannel
from amplink.handover.large import LargeMessages
from amplink.memory import Access, allocate_buffer
from amplink.platforms.sim import SimRemoteProc
from amplink.remoteproc.states import RprocState

FRAMES = "amplink.firmware.examples.frames"
LARGE = "amplink.firmware.examples.large_echo"
HOSTILE = fixture_firmware("hostile_buffers.py")


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_frames_are_inverted_in_place():
    rp = SimRemoteProc(FRAMES, boot_timeout=10)
    frames = [allocate_buffer(64 << 10, name=f"frame{i}") for i in range(3)]
    try:
        with rp.acquire():
            ch = BufferChannel(rp.link.open_channel("rpmsg-frames", timeout=5), port=rp.buffers)
            for i, f in enumerate(frames):
                f.write(bytes([i]) * f.size)
                ch.send(f.slice(16, 1000) if i == 2 else f)
            back = {ch.wait_done(timeout=5).buffer.name for _ in frames}
            assert back == {f.name for f in frames}
            assert frames[0].read(0, 4) == b"\xff" * 4
            assert frames[2].read(15, 3) == b"\x02\xfd\xfd"  # only the slice
            assert [a.name for a in rp.attached()] == ["frame0", "frame1", "frame2"]
        assert rp.attached() == [] and rp.iommu.statistics().attachments == 0
    finally:
        for f in frames:
            f.close()


def test_large_messages_echo_10_mb():
    rp = SimRemoteProc(LARGE, boot_timeout=10)
    with rp.acquire():
        lm = LargeMessages(rp.link.open_channel("rpmsg-large", timeout=5), port=rp.buffers,
                           pool_size=4 << 20)
        data = bytes(range(256)) * (10_000_000 // 256)
        lm.send(data, timeout=10)
        assert lm.recv(timeout=10) == data
        lm.send(b"small")
        assert lm.recv(timeout=5) == b"small"
        assert lm.faults() == {}
        lm.close()


def _ctl(rp):
    ctl = rp.link.open_channel("hostile-ctl", timeout=5)

    def command(text: bytes) -> bytes:
        ctl.send(text)
        return ctl.recv(timeout=5)

    return command


@pytest.mark.parametrize("policy", ["report", "crash"])
def test_firmware_access_outside_attachments_is_a_fault(policy):
    rp = SimRemoteProc(HOSTILE, boot_timeout=10, mmu_faults=policy, recovery=False)
    events = []
    rp.subscribe(events.append)
    with allocate_buffer(8192, name="shared") as buf:
        with rp.acquire():
            command = _ctl(rp)
            att = rp.attach(buf, Access.READ)
            assert command(f"dma:{att.da:x}:2000:1".encode()) == b"ok"
            if policy == "crash":
                try:
                    command(f"dma:{att.da:x}:2001:1".encode())
                except LinkDown:
                    pass  # crashed before it could answer
                assert rp.wait_for_state(RprocState.CRASHED, 5)
                assert "mmufault" in rp.statistics().last_crash
                assert rp.mmu_fault_count == 1
                assert _wait(lambda: rp.iommu.statistics().attachments == 0)
                return
            assert command(f"dma:{att.da:x}:2001:1".encode()).startswith(b"IommuFault")
            assert command(f"write:{att.da:x}:1".encode()).startswith(b"IommuFault")
            assert command(b"dma:80000000:4:1").startswith(b"IommuFault")  # its own RAM
            assert _wait(lambda: rp.iommu.statistics().faults == 3)
            stats = rp.iommu.statistics()
            assert stats.faults_by_reason == {"PARTIAL": 1, "DIRECTION": 1, "UNMAPPED": 1}
            # the processor counts a fault after the IOMMU does (in the port's reader)
            assert _wait(lambda: [e.kind for e in events].count("mmufault") == 3)
            assert rp.mmu_fault_count == 3
            assert rp.state is RprocState.RUNNING
            rp.detach(att)
            assert command(f"dma:{att.da:x}:1:1".encode()).startswith(b"IommuFault")


def test_firmware_that_dies_holding_buffers_gives_them_back():
    def run():
        rp = SimRemoteProc(HOSTILE, boot_timeout=10, recovery=False)
        bufs = [allocate_buffer(1 << 20, name=f"held{i}") for i in range(4)]
        with rp.acquire():
            ch = BufferChannel(rp.link.open_channel("hostile-buffers", timeout=5),
                               port=rp.buffers)
            command = _ctl(rp)
            for b in bufs:
                b.write(b"x")
                ch.send(b)
            assert all(b.owner == "sim0" for b in bufs)
            command(b"raw:")  # the firmware learns the channel's address
            rp.kill()
            assert rp.wait_for_state(RprocState.CRASHED, 5)
            with pytest.raises(LinkDown):
                ch.wait_done(timeout=5)
            assert _wait(lambda: all(b.owner == "cpu" for b in bufs))  # taken back
            assert rp.iommu.statistics().attachments == 0
        for b in bufs:
            assert b.read(0, 1) == b"x"
            b.close()

    run()  # warm-up: imports and the like
    before = snapshot()
    run()
    assert_no_leaks(before, "a firmware died holding buffers")
