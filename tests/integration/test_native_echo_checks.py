"""native_echo.c against a hand-made host: what it checks before it trusts the host.

The host here is raw: a memfd holding a processed resource table and two vrings written
with struct, eventfds and a lifeline, and the firmware started by the fd convention of
amplink/platforms/sim_abi.py. Each test bends one thing and looks at how the firmware
reacts (exit status, stderr, rings, trace, CPU time).
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from common_kit import wait_for

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 5.0
DA_BASE = 0x8000_0000
SHM_SIZE = 1 << 20
NUM = 4
ALIGN = 0x1000
VRING0, VRING1 = 0x1000, 0x4000  # offsets in the memory
TRACE, TRACE_LEN = 0x8000, 1024
BUFS = 0x10000
DRIVER_OK = 0x4
VRING_DESC_F_WRITE = 2

HEADER = struct.Struct("<IIII")      # ver, num, reserved[2]
TRACE_ENTRY = struct.Struct("<IIII32s")  # type, da, len, reserved, name
VDEV = struct.Struct("<IIIIIIBBBB")  # type, id, notifyid, dfeatures, gfeatures, config_len, ...
VRING = struct.Struct("<IIIII")      # da, align, num, notifyid, pa
DESC = struct.Struct("<QIHH")        # addr, len, flags, next
USED_ELEM = struct.Struct("<II")


def used_ring(vring: int) -> int:
    avail_end = 16 * NUM + 2 * (3 + NUM)
    return vring + (avail_end + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Host:
    fd: int
    mem: memoryview
    proc: subprocess.Popen[bytes]
    lifeline: socket.socket

    def u16(self, off: int) -> int:
        return struct.unpack_from("<H", self.mem, off)[0]

    def trace(self) -> str:
        raw = bytes(self.mem[TRACE:TRACE + TRACE_LEN])
        return raw.partition(b"\0")[0].decode(errors="replace")

    def finish(self) -> tuple[int, str]:
        """Hang up; the exit status and stderr of the firmware."""
        self.lifeline.close()
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err.decode(errors="replace")


def write_table(mem: memoryview, *, vring0_da: int = DA_BASE + VRING0,
                rx_buffers: tuple[int, ...] = (512, 512, 512, 512)) -> None:
    """The processed table (trace + rpmsg vdev, DRIVER_OK set) and RX buffers on vring 0."""
    trace_at = HEADER.size + 8
    vdev_at = trace_at + TRACE_ENTRY.size
    HEADER.pack_into(mem, 0, 1, 2, 0, 0)
    struct.pack_into("<II", mem, HEADER.size, trace_at, vdev_at)
    TRACE_ENTRY.pack_into(mem, trace_at, 2, DA_BASE + TRACE, TRACE_LEN, 0, b"trace0")
    VDEV.pack_into(mem, vdev_at, 3, 7, 0, 1, 1, 0, DRIVER_OK | 3, 2, 0, 0)
    VRING.pack_into(mem, vdev_at + VDEV.size, vring0_da, ALIGN, NUM, 0, 0)
    VRING.pack_into(mem, vdev_at + VDEV.size + VRING.size, DA_BASE + VRING1, ALIGN, NUM, 1, 0)
    avail = VRING0 + 16 * NUM
    for i, size in enumerate(rx_buffers):
        DESC.pack_into(mem, VRING0 + 16 * i, DA_BASE + BUFS + 0x1000 * i, size,
                       VRING_DESC_F_WRITE, 0)
        struct.pack_into("<H", mem, avail + 4 + 2 * i, i)
    struct.pack_into("<H", mem, avail + 2, len(rx_buffers))


@contextmanager
def raw_host(firmware: str, *, file_size: int = SHM_SIZE, table_offset: int = 0,
             watchdog_ms: int = 0, **table: object) -> Iterator[Host]:
    fd = os.memfd_create("native-checks", os.MFD_CLOEXEC)
    kick_rx = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    kick_tx = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    lifeline, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    mapping = mem = proc = None
    try:
        os.ftruncate(fd, file_size)
        mapping = mmap.mmap(fd, file_size)
        mem = memoryview(mapping)
        if file_size >= SHM_SIZE:
            write_table(mem, **table)  # type: ignore[arg-type]
        env = dict(os.environ, AMPLINK_SHM_FD=str(fd), AMPLINK_SHM_SIZE=str(SHM_SIZE),
                   AMPLINK_DA_BASE=str(DA_BASE), AMPLINK_RSC_TABLE=str(table_offset),
                   AMPLINK_RSC_SIZE="4096", AMPLINK_KICK_RX_FD=str(kick_rx),
                   AMPLINK_KICK_TX_FD=str(kick_tx), AMPLINK_LIFELINE_FD=str(child_end.fileno()),
                   AMPLINK_POLL="0", AMPLINK_WATCHDOG_MS=str(watchdog_ms))
        proc = subprocess.Popen([firmware], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                pass_fds=(fd, kick_rx, kick_tx, child_end.fileno()))
        child_end.close()
        yield Host(fd, mem, proc, lifeline)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        if mem is not None:
            mem.release()
        if mapping is not None:
            mapping.close()
        lifeline.close()
        child_end.close()
        for each in (fd, kick_rx, kick_tx):
            os.close(each)


def test_memory_smaller_than_announced_is_refused(native_echo: str) -> None:
    # the table is beyond the end of the file: reading it used to be SIGBUS
    with raw_host(native_echo, file_size=0x1000, table_offset=0x2000) as host:
        status, err = host.finish()
    assert status == 2, err
    assert "smaller than AMPLINK_SHM_SIZE" in err


def test_misaligned_vring_is_refused(native_echo: str) -> None:
    with raw_host(native_echo, vring0_da=DA_BASE + VRING0 + 2) as host:
        status, err = host.finish()
    assert status == 3, err
    assert "not 16-byte aligned" in err


def test_a_too_small_rx_buffer_is_skipped_not_the_announcement(native_echo: str) -> None:
    with raw_host(native_echo, rx_buffers=(16, 24, 512, 512)) as host:
        assert host.lifeline.recv(1) == b"R"
        used = used_ring(VRING0)
        assert wait_for(lambda: host.u16(used + 2) >= 3, TIMEOUT), host.u16(used + 2)
        elems = [USED_ELEM.unpack_from(host.mem, used + 4 + 8 * i) for i in range(3)]
        assert elems == [(0, 0), (1, 0), (2, 16 + 40)]  # two handed back, then the announcement
        announcement = bytes(host.mem[BUFS + 0x2000 + 16:BUFS + 0x2000 + 16 + 32])
        assert announcement.rstrip(b"\0") == b"rpmsg-echo"
        status, err = host.finish()
    assert status == 0, err
    assert "1 receive buffer(s) too small" in err and "2 receive buffer(s) too small" in err


def test_only_too_small_rx_buffers_are_a_clear_error(native_echo: str) -> None:
    with raw_host(native_echo, rx_buffers=(16, 16)) as host:
        assert host.lifeline.recv(1) == b"R"
        host.proc.wait(TIMEOUT)
        status, err = host.finish()
    assert status == 3, err
    assert "no receive buffer big enough for the announcement" in err


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_tiny_watchdog_period_does_not_busy_loop(native_echo: str) -> None:
    with raw_host(native_echo, watchdog_ms=1) as host:
        assert host.lifeline.recv(1) == b"R"
        host.lifeline.settimeout(TIMEOUT)
        start, cpu = time.monotonic(), _cpu_seconds(host.proc.pid)
        beats = 0
        while time.monotonic() - start < 0.5:
            beats += host.lifeline.recv(65536).count(b"H")
        busy = (_cpu_seconds(host.proc.pid) - cpu) / (time.monotonic() - start)
        # it keeps feeding the watchdog, once a millisecond at most (it used to spin)
        assert 10 < beats < 2000, beats
        assert busy < 0.5, f"the firmware used {busy:.0%} of a CPU"
        status, err = host.finish()
    assert status == 0, err
