"""native_frames.c: C firmware that takes buffers by reference through amplink_buffers.h
and the buffer socket (AMPLINK_BUFFERS_FD), and processes them in place."""

from __future__ import annotations

import struct
import subprocess
import sys

from common_kit import wait_for
from sim_kit import assert_no_leaks, snapshot

from amplink.handover import BufferChannel
from amplink.handover.wire import HANDOVER_VERSION, RECORD, RecordType
from amplink.memory import Access, allocate_buffer
from amplink.platforms.sim import SimRemoteProc
from amplink.remoteproc.states import RprocState


def _channel(rp: SimRemoteProc) -> BufferChannel:
    return BufferChannel(rp.link.open_channel("rpmsg-frames", timeout=5), port=rp.buffers)


def test_c_firmware_inverts_handed_over_buffers_in_place(native_frames: str) -> None:
    before = snapshot()
    rp = SimRemoteProc(native_frames, boot_timeout=10)
    frames = [allocate_buffer(64 << 10, name=f"cframe{i}") for i in range(4)]
    try:
        with rp.acquire():
            assert wait_for(lambda: "native_frames: up" in rp.trace(), 5.0), rp.trace()
            ch = _channel(rp)
            for i, f in enumerate(frames):
                f.write(bytes([i]) * f.size)
            ch.send(frames[0])
            assert ch.wait_done(timeout=5).buffer is frames[0]
            assert frames[0].read(0, frames[0].size) == b"\xff" * frames[0].size
            # a slice: only its bytes change
            ch.send(frames[1].slice(4096, 8192))
            back = ch.wait_done(timeout=5)
            assert (back.buffer, back.offset, back.length) == (frames[1], 4096, 8192)
            assert frames[1].read(4095, 3) == b"\x01\xfe\xfe"
            assert frames[1].read(4096 + 8191, 2) == b"\xfe\x01"
            # a batch in one message: every DONE comes back, each buffer inverted
            assert ch.send_many(frames[1:]) == 3
            got = []
            while len(got) < 3:
                got += ch.wait_done_many(timeout=5)
            assert {r.buffer.name for r in got} == {"cframe1", "cframe2", "cframe3"}
            assert frames[2].read(0, 2) == b"\xfd\xfd" and frames[3].read(100, 1) == b"\xfc"
            # read access only: given back untouched
            ch.send(frames[2], Access.READ)
            ch.wait_done(timeout=5)
            assert frames[2].read(0, 2) == b"\xfd\xfd"
            assert ch.faults() == {} and rp.mmu_fault_count == 0
            assert sorted(a.name for a in rp.attached()) == [f.name for f in frames]
        assert rp.attached() == [] and rp.iommu.statistics().attachments == 0
    finally:
        for f in frames:
            f.close()
    assert_no_leaks(before, "native_frames")


def test_c_firmware_checksums_and_reports_bad_references(native_frames: str) -> None:
    rp = SimRemoteProc(native_frames, args=["sum"], boot_timeout=10)
    with allocate_buffer(4096, name="csum") as buf:
        buf.write(bytes(range(256)) * 16)
        with rp.acquire():
            ch = _channel(rp)
            ch.send(buf.slice(0, 512))
            ch.wait_done(timeout=5)
            assert struct.unpack("<I", buf.read(0, 4))[0] == 2 * sum(range(256))
            # references the firmware must refuse: an id never attached, and a range past
            # the end of an attached buffer; each is a fault the host's IOMMU counts
            att_id = rp.buffers.id_of(buf)
            for record in (RECORD.pack(HANDOVER_VERSION, RecordType.SEND, 3, 0, 999, 0, 16),
                           RECORD.pack(HANDOVER_VERSION, RecordType.SEND, 3, 0, att_id,
                                       4000, 200)):
                ch.endpoint.send(record)
            assert wait_for(lambda: rp.mmu_fault_count == 2, 5.0), rp.mmu_fault_count
            assert rp.state is RprocState.RUNNING
            assert buf.read(4000, 96) == (bytes(range(256)) * 16)[4000:]  # untouched
            # and it goes on serving
            ch.send(buf.slice(1024, 256))
            assert ch.wait_done(timeout=5).offset == 1024


def test_the_frames_command_runs_the_c_firmware(native_frames: str) -> None:
    """`amplink frames --firmware`: the benchmark and its checks against any firmware that
    serves rpmsg-frames, here the C one."""
    r = subprocess.run([sys.executable, "-m", "amplink.cli", "frames", "--firmware",
                        native_frames, "--count", "12", "--size", "64K"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"sim0 ({native_frames}): invert 12 frames" in r.stdout, r.stdout
    assert "every frame checked" in r.stdout and "frames: OK" in r.stdout
