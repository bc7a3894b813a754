"""Buffers passed to another process by SCM_RIGHTS: it maps and writes them, and when it
dies holding buffers the table takes them all back, leaving no fd or mapping behind."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from buffer_kit import assert_nothing_left, mappings_named, unique

from amplink.memory import (
    CPU,
    BufferTable,
    CarveoutProvider,
    SharedRegion,
    allocate_buffer,
    send_buffer,
)

PEER = str(Path(__file__).with_name("buffer_peer.py"))
ANSWER = struct.Struct("<IB")
TIMEOUT = 20.0


class Peer:
    """``buffer_peer.py`` as a child process, on one end of a socket pair."""

    def __init__(self, count: int, mode: str) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(TIMEOUT)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, PEER, str(theirs.fileno()), str(count), mode],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            theirs.close()

    def answer(self) -> tuple[int, int, bytes]:
        data = self.sock.recv(64)
        assert len(data) == ANSWER.size + 16, (data, self.errors())
        id, status = ANSWER.unpack_from(data)
        return id, status, data[ANSWER.size:]

    def errors(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        self.sock.close()


@pytest.fixture
def name() -> Iterator[str]:
    tag = unique("xproc-test")
    yield tag
    assert_nothing_left(tag)


def test_the_peer_maps_writes_and_the_host_sees_the_bytes(name):
    table = BufferTable("xproc")
    sizes = {table.add(allocate_buffer(s, name=name)): s
             for s in (1, 0x1000, 3 << 20)}
    peer = Peer(len(sizes), "exit")
    try:
        for id in sizes:
            if sizes[id] >= 7:
                table.get(id).write(b"host->" + bytes([id]))
            send_buffer(peer.sock, table.get(id), id=id)
            table.lend(id, "peer")
        for _ in sizes:
            id, status, first = peer.answer()
            assert status == 0
            buf = table.release("peer", id)
            size = sizes[id]
            if size >= 7:
                assert first[:7] == b"host->" + bytes([id])
            mark = bytes([id]) * min(16, size)
            assert buf.read(0, min(16, size)) == mark
            assert buf.read(size - min(16, size)) == mark
        assert peer.sock.recv(16) == b"bye"
        assert peer.proc.wait(TIMEOUT) == 0, peer.errors()
    finally:
        peer.close()
        table.reclaim("peer")
        table.close()


def test_a_read_only_buffer_cannot_be_written_by_the_peer(name):
    with allocate_buffer(0x1000, name=name) as buf:
        buf.write(b"sealed words")
        peer = Peer(1, "exit")
        try:
            send_buffer(peer.sock, buf, id=9, read_only=True)
            assert peer.answer() == (9, 1, b"sealed words\0\0\0\0")
            assert peer.sock.recv(16) == b"bye"
            assert peer.proc.wait(TIMEOUT) == 0, peer.errors()
        finally:
            peer.close()
        assert buf.read(0, 12) == b"sealed words"


def test_a_peer_dying_with_buffers_gives_them_all_back(name):
    table = BufferTable("xproc-death")
    region_name = unique("xproc-region")
    with SharedRegion.memfd(0x10000, region_name) as region:
        carveout = CarveoutProvider(region, name="pool")
        ids = [table.add(allocate_buffer(1 << 30, name=name)),  # touched at 2 pages
               table.add(allocate_buffer(0x2000, name=name)),
               table.add(carveout.allocate(0x3000, name=f"{name}-piece"))]
        peer = Peer(len(ids), "hold")
        try:
            for id in ids:
                send_buffer(peer.sock, table.get(id), id=id)
                table.lend(id, "peer")
            assert sorted(peer.answer()[0] for _ in ids) == ids
            assert peer.sock.recv(16) == b"holding"
            assert table.statistics().held_by_peer == {"peer": 3}
            # the host's memory is untouched by the lending: no mapping of its own yet
            assert mappings_named(name) == []
            peer.proc.send_signal(signal.SIGKILL)
            assert peer.proc.wait(TIMEOUT) == -signal.SIGKILL
            assert peer.sock.recv(16) == b""  # the lifeline says the peer is gone
            assert table.reclaim("peer") == ids
            for id in ids:
                buf = table.get(id)
                assert buf.owner == CPU
                assert buf.read(0, 16) == bytes([id]) * 16  # what it wrote before dying
            big = table.get(ids[0])
            assert os.fstat(big.fd).st_blocks * 512 <= 16 * 4096  # two pages, not a GiB
        finally:
            peer.close()
            table.reclaim("peer")
            table.close()
        assert carveout.used_bytes == 0
    assert_nothing_left(region_name)
