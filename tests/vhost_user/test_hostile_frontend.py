"""A hostile front end: every bad value is a typed, counted error and a closed connection.

After each case the server still serves the next front end, and every fd and mapping
the connection brought is gone.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from frontend_kit import (
    GPA,
    MMAP_OFFSET,
    UADDR,
    FakeFrontEnd,
    mappings,
    open_fds,
    ring_addr,
    serving,
    wait_until,
)

from amplink.platforms.vhost_user import protocol as P
from amplink.platforms.vhost_user.protocol import MemRegion, Request, VringAddr, VringState

ECHO = "amplink.firmware.examples.echo"


def _raw(data: bytes) -> Callable[[FakeFrontEnd], None]:
    return lambda fe: fe.sock.sendall(data)


def _table(fe: FakeFrontEnd, regions: list[MemRegion], fds: list[int] | None = None) -> None:
    fe.send(Request.SET_MEM_TABLE, P.pack_mem_table(regions),
            [fe.mem_fd] * len(regions) if fds is None else fds)


def _small_file(fe: FakeFrontEnd) -> None:
    small = os.memfd_create("small", os.MFD_CLOEXEC)
    os.ftruncate(small, 4096)
    try:
        _table(fe, [MemRegion(GPA, 0x100000, UADDR, 0)], [small])
    finally:
        os.close(small)


def _pipe_as_memory(fe: FakeFrontEnd) -> None:
    r, w = os.pipe()
    try:
        _table(fe, [MemRegion(GPA, 4096, UADDR, 0)], [r])
    finally:
        os.close(r)
        os.close(w)


def _set_up_then(bad: Callable[[FakeFrontEnd], None]) -> Callable[[FakeFrontEnd], None]:
    """Negotiate and set up both queues as UML does, then do ``bad``."""
    def run(fe: FakeFrontEnd) -> None:
        fe.negotiate()
        bad(fe)
    return run


def _queues_with(addrs: dict[int, VringAddr], num: int = 64) -> Callable[[FakeFrontEnd], None]:
    def run(fe: FakeFrontEnd) -> None:
        for index in range(2):
            fe.send(Request.SET_VRING_NUM, VringState(index, num).pack())
            fe.send(Request.SET_VRING_ADDR, addrs.get(index, ring_addr(index)).pack())
        for index in range(2):
            fe.send(Request.SET_VRING_KICK, P.pack_u64(index), [fe.kick])
            fe.send(Request.SET_VRING_ENABLE, VringState(index, 1).pack())
        os.eventfd_write(fe.kick, 1)  # "driver OK": the run starts and checks the rings
    return _set_up_then(run)


_shifted = ring_addr(1)
CASES: dict[str, Callable[[FakeFrontEnd], None]] = {
    "garbage": _raw(os.urandom(5) + b"\xff" * 40),
    "version 2": _raw(struct.pack("<III", Request.GET_FEATURES, 2, 0)),
    "reply flag from the front end": _raw(struct.pack("<III", Request.GET_FEATURES, 5, 0)),
    "unknown flag bits": _raw(struct.pack("<III", Request.GET_FEATURES, 0x101, 0)),
    "huge payload size": _raw(struct.pack("<III", Request.SET_FEATURES, 1, 1 << 30)),
    "short SET_FEATURES": lambda fe: fe.send(Request.SET_FEATURES, b"\0" * 4),
    "payload on GET_FEATURES": lambda fe: fe.send(Request.GET_FEATURES, b"\0" * 8),
    "unknown request": lambda fe: fe.send(99, b""),
    "unsupported GET_CONFIG": lambda fe: fe.send(Request.GET_CONFIG, b"\0" * 12),
    "unsupported SET_LOG_BASE": lambda fe: fe.send(Request.SET_LOG_BASE, b"\0" * 8),
    "fd on SET_OWNER": lambda fe: fe.send(Request.SET_OWNER, b"", [fe.kick]),
    "SET_OWNER twice": lambda fe: (fe.send(Request.SET_OWNER), fe.send(Request.SET_OWNER)),
    "unoffered features": lambda fe: fe.send(Request.SET_FEATURES, P.pack_u64(1 << 40)),
    "unoffered protocol features": lambda fe: fe.send(Request.SET_PROTOCOL_FEATURES,
                                                      P.pack_u64(1 << 0)),
    "mem table without fds": lambda fe: _table(fe, [MemRegion(GPA, 4096, UADDR, 0)], []),
    "mem table with 0 regions": lambda fe: fe.send(Request.SET_MEM_TABLE, b"\0" * 8),
    "mem table with 9 regions": lambda fe: fe.send(Request.SET_MEM_TABLE,
                                                   struct.pack("<II", 9, 0) + b"\0" * 256),
    "mem region past the end of its file": _small_file,
    "mem region over a pipe": _pipe_as_memory,
    "mem region at an unaligned offset": lambda fe: _table(
        fe, [MemRegion(GPA, 4096, UADDR, 100)]),
    "mem region wrapping 64 bits": lambda fe: _table(
        fe, [MemRegion((1 << 64) - 4096, 8192, UADDR, 0)]),
    "overlapping mem regions": lambda fe: _table(fe, [MemRegion(GPA, 0x10000, UADDR, 0),
                                                      MemRegion(GPA + 0x8000, 0x1000,
                                                                UADDR + 0x100000, 0)]),
    "queue index 5": lambda fe: fe.send(Request.SET_VRING_NUM, VringState(5, 64).pack()),
    "ring size 100": lambda fe: fe.send(Request.SET_VRING_NUM, VringState(0, 100).pack()),
    "ring size 65536": lambda fe: fe.send(Request.SET_VRING_NUM, VringState(0, 1 << 16).pack()),
    "ring base over 16 bits": lambda fe: fe.send(Request.SET_VRING_BASE,
                                                 VringState(0, 1 << 16).pack()),
    "kick without fd": lambda fe: fe.send(Request.SET_VRING_KICK, P.pack_u64(0)),
    "kick in polling mode": lambda fe: fe.send(Request.SET_VRING_KICK,
                                               P.pack_u64(P.VRING_NOFD_MASK)),
    "two fds for a call": lambda fe: fe.send(Request.SET_VRING_CALL, P.pack_u64(0),
                                             [fe.call, fe.call]),
    "unknown vring fd bits": lambda fe: fe.send(Request.SET_VRING_CALL, P.pack_u64(1 << 12),
                                                [fe.call]),
    "enable before protocol features": lambda fe: fe.send(Request.SET_VRING_ENABLE,
                                                          VringState(0, 1).pack()),
    "enable value 2": _set_up_then(lambda fe: fe.send(Request.SET_VRING_ENABLE,
                                                      VringState(0, 2).pack())),
    "vring outside the memory table": _queues_with(
        {0: VringAddr(0, 0, UADDR + (1 << 30), UADDR + (1 << 30) + 0x1000,
                      UADDR + (1 << 30) + 1024, 0)}),
    "vring running past the table's end": _queues_with(
        {1: VringAddr(1, 0, UADDR + 0xFF000, UADDR + 0x100000, UADDR + 0xFF000 + 1024, 0)}),
    "non-standard vring layout": _queues_with(
        {1: VringAddr(1, 0, _shifted.desc, _shifted.used, _shifted.avail + 64, 0)}),
    "unaligned descriptor table": _queues_with(
        {1: VringAddr(1, 0, _shifted.desc + 8, _shifted.used + 8, _shifted.avail + 8, 0)}),
    "hang-up mid-header": _raw(struct.pack("<III", Request.SET_FEATURES, 1, 8)[:7]),
    "hang-up mid-payload": _raw(struct.pack("<III", Request.SET_FEATURES, 1, 8) + b"\0" * 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_front_end_gets_a_counted_error_and_a_closed_connection(
        tmp_path: Path, case: str) -> None:
    before = open_fds()
    with serving(tmp_path / "s", ECHO, message_timeout=0.5) as server:
        fe = FakeFrontEnd(server.path)
        try:
            CASES[case](fe)
            if case.startswith("hang-up"):
                fe.sock.shutdown(socket.SHUT_WR)
            assert fe.closed_by_peer(), f"{case}: the back end kept the connection open"
        finally:
            fe.close()
        assert wait_until(lambda: server.statistics().protocol_errors == 1 and
                          server.backend is None), server.statistics()
        assert server.statistics().last_error
        good = FakeFrontEnd(server.path)  # the server goes on
        try:
            assert good.get_u64(Request.GET_FEATURES)
        finally:
            good.close()
    assert mappings("fake-guest-ram") == 0
    assert open_fds() == before


def test_stall_mid_message_times_out(tmp_path: Path) -> None:
    with serving(tmp_path / "s", ECHO, message_timeout=0.3) as server:
        fe = FakeFrontEnd(server.path)
        try:
            fe.sock.sendall(struct.pack("<III", Request.SET_FEATURES, 1, 8))  # no payload
            assert fe.closed_by_peer(3)
        finally:
            fe.close()
        assert wait_until(lambda: server.statistics().protocol_errors == 1)
        assert "stalled" in (server.statistics().last_error or "")


def test_failed_request_with_need_reply_gets_a_failure_ack(tmp_path: Path) -> None:
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            fe.negotiate()  # REPLY_ACK on
            fe.send(Request.SET_VRING_NUM, VringState(0, 3).pack(), need_reply=True)
            assert P.unpack_u64(fe.reply(Request.SET_VRING_NUM), "ack") != 0
            assert fe.closed_by_peer()
        finally:
            fe.close()


def test_connection_reset_mid_run(tmp_path: Path) -> None:
    """An abrupt reset while the firmware runs: the run stops, nothing leaks."""
    before = open_fds()
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            ep = fe.boot().open_channel("rpmsg-echo", timeout=5)
            ep.send(b"ping")
            assert ep.recv(timeout=2) == b"ping"
            run = server.backend.run if server.backend else None
            assert run is not None and run.running
            fe.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            fe.close()  # RST
        assert wait_until(lambda: server.backend is None)
        assert not run.running
    assert mappings("fake-guest-ram") == 0
    assert open_fds() == before


def test_garbage_in_the_rings_is_counted_and_the_device_survives(tmp_path: Path) -> None:
    """The guest jumps avail.idx of vring 1 by 1000: the device's receive direction breaks
    (counted, LinkDown for that direction), the process and the server stay up."""
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            link = fe.boot()
            link.open_channel("rpmsg-echo", timeout=5)
            region = link.backend.region  # the driver's view of guest memory
            layout = link.backend.tx.layout
            region.write_u16(layout.avail + 2, 1000)
            os.eventfd_write(fe.kick, 1)
            run = server.backend.run if server.backend else None
            assert run is not None
            assert wait_until(lambda: run.link.statistics().backend["protocol_faults"])
            faults = run.link.statistics().backend["protocol_faults"]
            assert any("avail.idx moved" in reason for reason in faults), faults
            fe.shut_down()
        finally:
            fe.close()
        assert wait_until(lambda: server.backend is None)
        assert server.statistics().protocol_errors == 0  # shared-memory faults are counted
    assert mappings("fake-guest-ram") == 0


def test_memory_table_fd_mapped_at_its_offset(tmp_path: Path) -> None:
    """The region starts at mmap_offset in its file: bytes before it are not guest memory."""
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            os.pwrite(fe.mem_fd, b"guest byte 0", MMAP_OFFSET)
            fe.negotiate()
            memory = server.backend.memory if server.backend else None
            assert memory is not None
            g, gpa = memory.user_to_guest(UADDR + 16, 4, "test")
            assert gpa == GPA + 16
            assert g.region.read(0, 12) == b"guest byte 0"
        finally:
            fe.close()
