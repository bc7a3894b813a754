"""Byte-level stand-ins for OpenAMP's programs, and helpers of the OpenAMP-profile tests.

:class:`FakeOpenAmpRemote` and :class:`FakeOpenAmpHost` do what OpenAMP's remote
(virtio device) and host (virtio driver) do on the wire, written from the profile
(shared/reference/openamp-linux.md) with plain offsets and typed views of the shared
memory, not with amplink's ring code: they are the independent half of the
compatibility tests. They know only the default layout (vrings at 0x4000 and 0x8000,
256 entries, align 0x1000, buffers of 512 B at 0x10000 and 0x30000).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from amplink.memory.region import SharedRegion
from amplink.platforms.openamp import OpenAmpConfig

# The resource table, field by field (what the tests compare against).
EXPECTED_TABLE = bytes.fromhex(
    "01000000" "01000000" "00000000" "00000000"  # ver 1, num 1, reserved[2]
    "14000000"  # offset[0] = 0x14
    "03000000" "07000000" "00000000" "01000000"  # @0x14 type 3 (vdev), id 7, notifyid 0, F_NS
    "00000000" "00000000" "00" "02" "0000"  # @0x24 gfeatures, config_len, @0x2c status, 2 vrings
    "00400000" "00100000" "00010000" "01000000" "00000000"  # @0x30 vring 0
    "00800000" "00100000" "00010000" "02000000" "00000000"  # @0x44 vring 1
)
GFEATURES = 0x24
STATUS = 0x2C
NUM = 256
BUF = 512
RX_BUFFERS = 0x10000
TX_BUFFERS = 0x30000
HDR = struct.Struct("<IIIHH")  # src, dst, reserved, len, flags
DESC = struct.Struct("<QIHH")  # addr, len, flags, next
NS = struct.Struct("<32sII")  # name, addr, flags
NS_ADDR = 0x35
WRITE = 2
KICK = b"\x01"


class Ring:
    """One split ring of the default layout: desc at base, avail +0x1000, used +0x2000."""

    def __init__(self, region: SharedRegion, base: int) -> None:
        self.region = region
        self.base = base
        self.avail = base + 16 * NUM
        self.used = base + 0x2000
        self.end = self.used + 4 + 8 * NUM + 2

    def u16(self, offset: int) -> int:
        return self.region.u16[offset >> 1]

    def set_u16(self, offset: int, value: int) -> None:
        self.region.u16[offset >> 1] = value

    def desc(self, i: int) -> tuple[int, int, int, int]:
        return DESC.unpack_from(self.region.mm, self.base + 16 * i)

    def set_desc(self, i: int, addr: int, length: int, flags: int) -> None:
        DESC.pack_into(self.region.mm, self.base + 16 * i, addr, length, flags, 0)

    @property
    def avail_flags(self) -> int:
        return self.u16(self.avail)

    @property
    def avail_idx(self) -> int:
        return self.u16(self.avail + 2)

    def avail_ring(self, slot: int) -> int:
        return self.u16(self.avail + 4 + 2 * (slot % NUM))

    @property
    def used_flags(self) -> int:
        return self.u16(self.used)

    @property
    def used_idx(self) -> int:
        return self.u16(self.used + 2)

    def used_elem(self, slot: int) -> tuple[int, int]:
        at = (self.used + 4 + 8 * (slot % NUM)) >> 2
        return self.region.u32[at], self.region.u32[at + 1]

    def publish_avail(self, head: int) -> None:
        idx = self.avail_idx
        self.set_u16(self.avail + 4 + 2 * (idx % NUM), head)
        self.set_u16(self.avail + 2, (idx + 1) & 0xFFFF)

    def publish_used(self, head: int, length: int) -> None:
        idx = self.used_idx
        at = (self.used + 4 + 8 * (idx % NUM)) >> 2
        self.region.u32[at] = head
        self.region.u32[at + 1] = length
        self.set_u16(self.used + 2, (idx + 1) & 0xFFFF)

    def raw(self) -> bytes:
        return self.region.read(self.base, self.end - self.base)


def ns_message(name: str, addr: int, flags: int = 0, garbage: bytes = b"") -> bytes:
    """A name-service message; ``garbage`` fills the name field after its NUL (as OpenAMP)."""
    field = name.encode() + b"\0" + garbage
    return NS.pack(field[:32].ljust(32, b"\0"), addr, flags)


def read_message(region: SharedRegion, addr: int, limit: int) -> tuple[int, int, bytes]:
    src, dst, _res, length, _flags = HDR.unpack_from(region.mm, addr)
    assert length <= limit - HDR.size
    return src, dst, region.read(addr + HDR.size, length)


def write_message(region: SharedRegion, addr: int, src: int, dst: int, payload: bytes,
                  hdr_len: int | None = None) -> None:
    HDR.pack_into(region.mm, addr, src, dst, 0, len(payload) if hdr_len is None else hdr_len,
                  0)
    region.write(addr + HDR.size, payload)


class _Peer:
    def __init__(self, region: SharedRegion, sock: socket.socket) -> None:
        self.region = region
        self.sock = sock
        self.vring0 = Ring(region, 0x4000)
        self.vring1 = Ring(region, 0x8000)

    def kick(self) -> None:
        self.sock.send(KICK)

    def kicks(self, wait: float = 0.0) -> bytes:
        """The kick bytes received so far (after waiting ``wait`` s for the first one)."""
        data = b""
        deadline = time.monotonic() + wait
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if not select.select([self.sock], [], [], remaining)[0]:
                return data
            chunk = self.sock.recv(32)
            if not chunk:
                return data
            data += chunk
            deadline = time.monotonic()  # got some: just drain the rest

    def close(self) -> None:
        self.sock.close()
        self.region.close()


class FakeOpenAmpRemote(_Peer):
    """OpenAMP's remote: waits for DRIVER_OK, sets NO_NOTIFY, sends with used.len = 512."""

    def __init__(self, region: SharedRegion, sock: socket.socket) -> None:
        super().__init__(region, sock)
        self.rx_seen = 0  # vring 0 avail entries taken
        self.tx_seen = 0  # vring 1 avail entries consumed

    def attach(self, timeout: float = 5.0) -> None:
        wait_until(lambda: self.region.read_u8(STATUS) & 4, timeout, "DRIVER_OK")
        self.vring0.set_u16(self.vring0.used, 1)  # NO_NOTIFY

    def send(self, src: int, dst: int, payload: bytes, *, used_len: int | None = None,
             hdr_len: int | None = None) -> int:
        """Fill the next posted RX buffer; used.len is the descriptor's length by default."""
        ring = self.vring0
        assert ring.avail_idx != self.rx_seen, "the host posted no RX buffer"
        head = ring.avail_ring(self.rx_seen)
        self.rx_seen = (self.rx_seen + 1) & 0xFFFF
        addr, length, flags, _ = ring.desc(head)
        assert flags == WRITE and length == BUF
        write_message(self.region, addr, src, dst, payload, hdr_len)
        ring.publish_used(head, length if used_len is None else used_len)
        if not ring.avail_flags & 1:
            self.kick()
        return addr

    def receive(self) -> list[tuple[int, int, bytes]]:
        """Take every message on vring 1 and return the buffers (no kick, as OpenAMP)."""
        ring = self.vring1
        out = []
        while ring.avail_idx != self.tx_seen:
            head = ring.avail_ring(self.tx_seen)
            self.tx_seen = (self.tx_seen + 1) & 0xFFFF
            addr, length, flags, _ = ring.desc(head)
            assert flags == 0 and HDR.size <= length <= BUF
            out.append(read_message(self.region, addr, length))
            ring.publish_used(head, length)
        return out


class FakeOpenAmpHost(_Peer):
    """OpenAMP's host: the handshake of the profile, TX buffers from 0x30000 upwards."""

    def __init__(self, region: SharedRegion, sock: socket.socket) -> None:
        super().__init__(region, sock)
        self.rx_seen = 0  # vring 0 used entries taken
        self.tx_sent = 0

    def handshake(self) -> None:
        self.region.write_u32(GFEATURES, 1)
        self.kick()
        self.region.fill(self.vring0.base, self.vring0.end - self.vring0.base)
        self.region.fill(self.vring1.base, self.vring1.end - self.vring1.base)
        self.vring1.set_u16(self.vring1.avail, 1)  # NO_INTERRUPT
        for i in range(NUM):
            self.vring0.set_desc(i, RX_BUFFERS + i * BUF, BUF, WRITE)
            self.vring0.publish_avail(i)
        self.region.write_u8(STATUS, 4)
        self.kick()

    def send(self, src: int, dst: int, payload: bytes) -> None:
        head = self.tx_sent
        assert head < NUM, "the fake host does not recycle TX buffers"
        self.tx_sent += 1
        addr = TX_BUFFERS + head * BUF
        write_message(self.region, addr, src, dst, payload)
        self.vring1.set_desc(head, addr, HDR.size + len(payload), 0)
        self.vring1.publish_avail(head)
        if not self.vring1.used_flags & 1:
            self.kick()

    def receive(self) -> list[tuple[int, int, bytes, int]]:
        """Every message on vring 0 as ``(src, dst, payload, used_len)``; buffers reposted."""
        ring = self.vring0
        out = []
        while ring.used_idx != self.rx_seen:
            head, used_len = ring.used_elem(self.rx_seen)
            self.rx_seen = (self.rx_seen + 1) & 0xFFFF
            addr, _length, _flags, _ = ring.desc(head)
            out.append((*read_message(self.region, addr, BUF), used_len))
            ring.publish_avail(head)
        return out


# -- helpers ------------------------------------------------------------------------------------
def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def connect(path: str, timeout: float = 5.0) -> socket.socket:
    """Connect to a server that may not listen yet."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)
    return sock


def accept(listener: socket.socket, timeout: float = 5.0) -> socket.socket:
    listener.settimeout(timeout)
    sock, _ = listener.accept()
    sock.settimeout(None)
    return sock


def shm(config: OpenAmpConfig) -> SharedRegion:
    return SharedRegion.posix(config.shm_name, config.shm_size)


def remove_files(config: OpenAmpConfig) -> None:
    for path in (config.shm_path, config.socket_path):
        with suppress(FileNotFoundError):
            os.unlink(path)


@contextmanager
def unique_config(tag: str = "t") -> Iterator[OpenAmpConfig]:
    """A profile with a shared memory name and socket path of its own, removed at the end."""
    key = f"amplink-{tag}-{uuid.uuid4().hex[:12]}"
    config = OpenAmpConfig(shm_name=f"{key}.shm", socket_path=f"/tmp/{key}.sock")
    try:
        yield config
    finally:
        remove_files(config)
