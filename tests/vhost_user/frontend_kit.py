"""A vhost-user front end written for the tests: guest memory, rings, Linux's sequence.

:class:`FakeFrontEnd` plays the VMM and the guest: it owns a memfd of "guest memory"
whose guest-physical, front-end user and file addresses all differ (so any identity
assumption in the back end fails), sends the messages User-Mode Linux sends, and plays
the guest's virtio driver with amplink's own driver-role rings (:func:`driver_link`).
"""

from __future__ import annotations

import array
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from amplink.link import Link
from amplink.memory.region import SharedRegion
from amplink.notify.doorbell import EventfdDoorbell
from amplink.platforms.vhost_user import VhostUserServer
from amplink.platforms.vhost_user import protocol as P
from amplink.platforms.vhost_user.protocol import MemRegion, Request, VringAddr, VringState
from amplink.transports.virtio import SUPPORTED_FEATURES
from amplink.transports.virtio_link import driver_link
from amplink.virtio.ring import VringLayout
from amplink.virtio.vdev import VIRTIO_ID_RPMSG, VdevControl, VdevEntry, VringEntry

GPA = 0x4000_0000  # guest-physical base of the memory region
UADDR = 0x7F12_3400_0000  # the front end's user address of the same bytes
MMAP_OFFSET = 0x10000  # where the region starts in the memory file
MEM_SIZE = 0x100000
NUM = 64
ALIGN = 4096
RING_OFFSETS = (0x1000, 0x4000)  # region offsets of vring 0 and vring 1
POOL_OFFSET = 0x10000
REPLY_TIMEOUT = 5.0


def ring_addr(index: int, num: int = NUM, align: int = ALIGN) -> VringAddr:
    layout = VringLayout(RING_OFFSETS[index], num, align)
    return VringAddr(index, 0, UADDR + layout.desc, UADDR + layout.used,
                     UADDR + layout.avail, 0)


class FakeFrontEnd:
    """One connection to the back end at ``path``, with its guest memory."""

    def __init__(self, path: str | os.PathLike[str], *, mem_size: int = MEM_SIZE) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.connect(os.fspath(path))
        self.mem_fd = os.memfd_create("fake-guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.mem_fd, MMAP_OFFSET + mem_size)
        self.mem_size = mem_size
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.link: Link | None = None
        self.features = 0

    # -- messages ------------------------------------------------------------------------------
    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *,
             need_reply: bool = False, flags: int | None = None) -> None:
        data = P.encode_request(request, payload, need_reply=need_reply)
        if flags is not None:
            data = P.HEADER.pack(request, flags, len(payload)) + payload
        anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
               if fds else [])
        self.sock.sendmsg([data], anc)

    def recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the back end closed the connection")
            data += chunk
        return data

    def reply(self, request: int) -> bytes:
        head = P.HEADER.unpack(self.recv_exact(P.HEADER_SIZE))
        assert head[0] == request and head[1] == P.VHOST_USER_VERSION | P.VHOST_USER_FLAG_REPLY
        return self.recv_exact(head[2])

    def call_acked(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        self.send(request, payload, fds, need_reply=True)
        assert P.unpack_u64(self.reply(request), "ack") == 0

    def get_u64(self, request: int) -> int:
        self.send(request)
        return P.unpack_u64(self.reply(request), "reply")

    def closed_by_peer(self, timeout: float = REPLY_TIMEOUT) -> bool:
        """True once the back end closed the connection (replies before it are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(4096):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False

    # -- the sequence User-Mode Linux sends ------------------------------------------------------
    def negotiate(self, *, event_idx: bool = True) -> None:
        self.send(Request.SET_OWNER)
        offered = self.get_u64(Request.GET_FEATURES)
        assert offered & (1 << P.VHOST_USER_F_PROTOCOL_FEATURES)
        protocol = self.get_u64(Request.GET_PROTOCOL_FEATURES)
        wanted = (1 << P.VHOST_USER_PROTOCOL_F_REPLY_ACK) | (
            1 << P.VHOST_USER_PROTOCOL_F_BACKEND_REQ)
        assert protocol & wanted == wanted
        self.send(Request.SET_PROTOCOL_FEATURES, P.pack_u64(wanted))
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            self.call_acked(Request.SET_BACKEND_REQ_FD, fds=[w])
        finally:
            os.close(r)
            os.close(w)
        rpmsg = offered & SUPPORTED_FEATURES
        if not event_idx:
            rpmsg &= ~(1 << 29)
        self.device_features = offered & 0xFFFFFFFF
        self.features = rpmsg | (1 << P.VIRTIO_F_VERSION_1) | (
            1 << P.VHOST_USER_F_PROTOCOL_FEATURES)
        self.call_acked(Request.SET_FEATURES, P.pack_u64(self.features))
        table = [MemRegion(GPA, self.mem_size, UADDR, MMAP_OFFSET)]
        self.call_acked(Request.SET_MEM_TABLE, P.pack_mem_table(table), [self.mem_fd])

    def setup_queues(self, *, calls: Sequence[int] | None = None) -> None:
        for index in range(2):
            call = self.call if calls is None else calls[index]
            self.call_acked(Request.SET_VRING_CALL, P.pack_u64(index), [call])
            self.call_acked(Request.SET_VRING_NUM, VringState(index, NUM).pack())
            self.call_acked(Request.SET_VRING_BASE, VringState(index, 0).pack())
            self.call_acked(Request.SET_VRING_ADDR, ring_addr(index).pack())
        for index in range(2):
            self.call_acked(Request.SET_VRING_KICK, P.pack_u64(index), [self.kick])
            self.call_acked(Request.SET_VRING_ENABLE, VringState(index, 1).pack())

    def start_driver(self) -> Link:
        """The guest's virtio driver: zero the rings, post RX buffers, kick."""
        region = SharedRegion.from_fd(os.dup(self.mem_fd), da_base=GPA - MMAP_OFFSET)
        record = SharedRegion.memfd(4096, "fake-guest-vdev")
        entry = VdevEntry(VIRTIO_ID_RPMSG, dfeatures=self.device_features, vrings=[
            VringEntry(GPA + off, ALIGN, NUM) for off in RING_OFFSETS])
        record.write(0, entry.pack())
        doorbell = EventfdDoorbell(os.dup(self.call), os.dup(self.kick))
        self.link = driver_link(region, VdevControl(record, 0),
                                MMAP_OFFSET + POOL_OFFSET, doorbell, entry=entry,
                                name="fake-guest", features=self.features & 0xFFFFFFFF,
                                owned=[region, record])
        return self.link

    def boot(self, *, event_idx: bool = True) -> Link:
        self.negotiate(event_idx=event_idx)
        self.setup_queues()
        return self.start_driver()

    def shut_down(self) -> None:
        """What UML does at teardown: disable both queues, a GET_FEATURES, hang up."""
        for index in (1, 0):
            self.call_acked(Request.SET_VRING_ENABLE, VringState(index, 0).pack())
        self.get_u64(Request.GET_FEATURES)
        self.close()

    def close(self) -> None:
        if self.link is not None:
            self.link.close("guest gone")
            self.link = None
        if self.sock.fileno() >= 0:
            self.sock.close()
        for fd in (self.mem_fd, self.kick, self.call):
            if fd >= 0:
                os.close(fd)
        self.mem_fd = self.kick = self.call = -1


@contextmanager
def serving(path: Path, firmware, **options) -> Iterator[VhostUserServer]:
    """A server in a thread of this process, shut down and closed on exit."""
    server = VhostUserServer(path, firmware, **options)
    thread = threading.Thread(target=server.serve_forever, name="vhost-user server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.close()
        assert not thread.is_alive()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def mappings(name: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(name in line for line in f)
