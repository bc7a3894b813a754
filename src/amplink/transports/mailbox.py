"""A simulated Apple mailbox in shared memory: 64-bit messages to an endpoint byte.

Apple's co-processors are reached through a mailbox: one FIFO each way (AP -> IOP and
IOP -> AP), each entry a 64-bit message (``msg0``) and a small second word whose low
byte is the endpoint (``msg1``), with FULL/EMPTY status, a "not empty" interrupt, and a
send that gives up after 500 ms (ETIMEDOUT). This module lays that out in one shared
memory region (a sealed memfd) between the host and a simulated co-processor::

    0x000  u32 magic "AMBX", u32 version 1, u32 depth (slots per FIFO), u32 slot size 16
    0x040  u32 A2I tail   (AP -> IOP: the AP's count of messages pushed)
    0x080  u32 A2I head   (the IOP's count of messages popped)
    0x0c0  u32 I2A tail   (IOP -> AP: the IOP's count pushed)
    0x100  u32 I2A head   (the AP's count popped)
    0x140  A2I slots, then I2A slots: {u64 msg0; u32 msg1; u32 reserved}, little-endian

Indices run freely modulo 2**32; a FIFO holds ``tail - head`` messages, EMPTY at 0 and
FULL at ``depth`` (a power of two). Each side keeps its own index privately and only
publishes it: what it reads of the peer's index is untrusted, and a count past the
depth breaks that direction for good (:class:`MailboxBroken`, a ``LinkDown``, from then
on) instead of reading a slot twice or outside the FIFO; the other direction goes on.

Interrupts are eventfds (:class:`~amplink.notify.doorbell.EventfdDoorbell` pairs): the
producer rings the consumer's "not empty" doorbell with every message; a consumer whose
pop may have ended a full FIFO rings the producer's "not full" doorbell, on which a
blocked :meth:`Mailbox.send` sleeps (looking again every :data:`SPACE_RECHECK`). The
role (``"ap"`` or ``"iop"``) only says which FIFO is whose: the same code runs both
ends. One thread at a time receives; any number send.
"""

from __future__ import annotations

import enum
import errno
import os
import struct
import threading
import time
from dataclasses import dataclass

from .._args import FOREVER, int_arg, timeout_arg
from ..errors import LinkDown, RemoteProtocolError, SendTimeout
from ..memory.fence import full_fence
from ..memory.region import SharedRegion
from ..notify.doorbell import Doorbell, EventfdDoorbell
from ..notify.waiter import wait_readable

MAGIC = int.from_bytes(b"AMBX", "little")
VERSION = 1
DEFAULT_DEPTH = 32
MAX_DEPTH = 4096
#: how long a blocking send waits for room (Apple's mailbox driver: 500 ms)
SEND_TIMEOUT = 0.5
#: a sender waiting for room looks again this often (s) without a "not full" ring: a
#: safety net, as the link's, should a ring be lost after all (a peer's doorbell that is
#: no system call does not order its stores before its loads)
SPACE_RECHECK = 0.005
SLOT = struct.Struct("<QII")
_HEADER = struct.Struct("<IIII")
_INDEX_MASK = 0xFFFFFFFF
_A2I_TAIL, _A2I_HEAD, _I2A_TAIL, _I2A_HEAD = 0x40, 0x80, 0xC0, 0x100
_SLOTS = 0x140
_PAGE = 0x1000


class Role(enum.StrEnum):
    """Which end of the mailbox: the application processor or the co-processor."""

    AP = "ap"
    IOP = "iop"


class MailboxSendTimeout(SendTimeout):
    """ETIMEDOUT: the peer's FIFO stayed full for the whole send timeout (500 ms)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ETIMEDOUT, message)

    def __str__(self) -> str:
        return str(self.strerror)


class MailboxBroken(LinkDown):
    """The peer published an index that does not fit its FIFO: that direction is unusable."""


def mailbox_size(depth: int) -> int:
    """Bytes of a mailbox of ``depth`` slots per FIFO, whole pages."""
    raw = _SLOTS + 2 * depth * SLOT.size
    return (raw + _PAGE - 1) // _PAGE * _PAGE


def _check_depth(depth: int) -> int:
    int_arg(depth, "depth", minimum=1, maximum=MAX_DEPTH)
    if depth & (depth - 1):
        raise ValueError(f"depth must be a power of two, got {depth}")
    return depth


def create_mailbox_region(depth: int = DEFAULT_DEPTH, name: str = "amplink-mailbox"
                          ) -> SharedRegion:
    """A new mailbox in a sealed memfd, both FIFOs empty (the host makes it)."""
    region = SharedRegion.memfd(mailbox_size(_check_depth(depth)), name)
    region.write(0, _HEADER.pack(MAGIC, VERSION, depth, SLOT.size))
    return region


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """One end of a mailbox at one moment."""

    role: str
    depth: int
    sent: int
    received: int
    tx_queued: int
    rx_queued: int
    send_timeouts: int
    broken: str = ""


class Mailbox:
    """One end of a mailbox: sends into its FIFO, receives from the peer's.

    ``data`` is this end's "not empty" doorbell pair (it is rung when a message arrives;
    ``kick()`` rings the peer), ``space`` its "not full" pair. The mailbox owns the
    region and the doorbells (:meth:`close`).
    """

    def __init__(self, region: SharedRegion, role: Role | str, data: Doorbell,
                 space: Doorbell) -> None:
        self.role = Role(role)
        magic, version, depth, slot = _HEADER.unpack(region.read(0, _HEADER.size))
        if (magic != MAGIC or version != VERSION or slot != SLOT.size or not 1 <= depth <= MAX_DEPTH
                or depth & (depth - 1) or mailbox_size(depth) > region.size):
            raise RemoteProtocolError(
                f"not an amplink mailbox: magic 0x{magic:x}, version {version}, depth {depth}, "
                f"slot {slot} in a region of 0x{region.size:x} bytes")
        self.region = region
        self.depth = depth
        self._data = data
        self._space = space
        a2i, i2a = _SLOTS, _SLOTS + depth * SLOT.size
        if self.role is Role.AP:
            tx_tail, tx_head, rx_tail, rx_head, tx_slots, rx_slots = (
                _A2I_TAIL, _A2I_HEAD, _I2A_TAIL, _I2A_HEAD, a2i, i2a)
        else:
            tx_tail, tx_head, rx_tail, rx_head, tx_slots, rx_slots = (
                _I2A_TAIL, _I2A_HEAD, _A2I_TAIL, _A2I_HEAD, i2a, a2i)
        self._u32 = region.u32  # an item store is one machine store, seen whole by the peer
        self._tx_tail_at, self._tx_head_at = tx_tail // 4, tx_head // 4
        self._rx_tail_at, self._rx_head_at = rx_tail // 4, rx_head // 4
        self._tx_slots, self._rx_slots = tx_slots, rx_slots
        self._mm = region.mm
        # our own indices: what the shared copies say is the peer's to corrupt
        self._tx_tail = self._u32[self._tx_tail_at]
        self._rx_head = self._u32[self._rx_head_at]
        self._tx_lock = threading.Lock()
        self._space_waiter = threading.Lock()
        self._sent = 0
        self._received = 0
        self._send_timeouts = 0
        # why each direction is unusable ("" while it works): the peer corrupted an index
        self._tx_broken = ""
        self._rx_broken = ""
        self.closed = False

    # -- sending -------------------------------------------------------------------------------
    def try_send(self, ep: int, msg: int) -> bool:
        """Push one message if the peer's FIFO has room now; False if it is full."""
        with self._tx_lock:
            return self._push(ep, msg)

    def _push(self, ep: int, msg: int) -> bool:
        if self._tx_broken:
            raise MailboxBroken(self._tx_broken)
        tail = self._tx_tail
        used = (tail - self._u32[self._tx_head_at]) & _INDEX_MASK
        if used > self.depth:
            self._tx_broken = self._why(f"the peer's pop count puts {used} messages in the "
                                        f"FIFO it receives from, of {self.depth}")
            raise MailboxBroken(self._tx_broken)
        if used == self.depth:
            return False
        SLOT.pack_into(self._mm, self._tx_slots + (tail % self.depth) * SLOT.size, msg, ep, 0)
        tail = (tail + 1) & _INDEX_MASK
        self._tx_tail = tail
        self._u32[self._tx_tail_at] = tail  # publishes the slot written above
        self._sent += 1
        self._data.kick()
        return True

    def send(self, ep: int, msg: int, timeout: float | None = SEND_TIMEOUT) -> None:
        """Push one message, waiting up to ``timeout`` s for room (None: forever);
        :class:`MailboxSendTimeout` (ETIMEDOUT) if the FIFO stays full."""
        limit = timeout_arg(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        with self._tx_lock:
            if self._push(ep, msg):
                return
        # One sender at a time sleeps on the "not full" doorbell: two sleeping on it, one
        # could consume the ring the other needed and leave it asleep until its timeout.
        if not self._space_waiter.acquire(timeout=-1 if deadline is None
                                          else max(0.0, deadline - time.monotonic())):
            raise self._timed_out(timeout)
        try:
            while True:
                with self._tx_lock:
                    if self._push(ep, msg):
                        return
                remaining = FOREVER if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timed_out(timeout)
                wait_readable(self._space.fileno(), min(remaining, SPACE_RECHECK))
                self._space.clear()
        finally:
            self._space_waiter.release()

    def tx_ready(self) -> bool:
        """Cheap check: may the peer's FIFO have room (a broken direction says True: the
        next send raises)?"""
        used = (self._tx_tail - self._u32[self._tx_head_at]) & _INDEX_MASK
        return used != self.depth or bool(self._tx_broken)

    def space_fileno(self) -> int:
        """Readable when the peer rang "not full" (its pop may have ended a full FIFO).
        :meth:`send` consumes these rings: another watcher must watch edges, not levels."""
        return self._space.fileno()

    def _timed_out(self, timeout: float | None) -> MailboxSendTimeout:
        self._send_timeouts += 1
        return MailboxSendTimeout(
            f"mailbox ({self.role}): the peer's FIFO stayed full for {timeout} s")

    # -- receiving -----------------------------------------------------------------------------
    def try_recv(self) -> tuple[int, int] | None:
        """``(endpoint, msg0)`` of the next message, or None if the FIFO is empty."""
        if self._rx_broken:
            raise MailboxBroken(self._rx_broken)
        head = self._rx_head
        count = (self._u32[self._rx_tail_at] - head) & _INDEX_MASK
        if count > self.depth:
            self._rx_broken = self._why(f"the peer's push count puts {count} messages in the "
                                        f"FIFO it sends into, of {self.depth}")
            raise MailboxBroken(self._rx_broken)
        if not count:
            return None
        msg0, msg1, _ = SLOT.unpack_from(self._mm, self._rx_slots + (head % self.depth) * SLOT.size)
        old_head = head
        head = (head + 1) & _INDEX_MASK
        self._rx_head = head
        self._u32[self._rx_head_at] = head
        self._received += 1
        # "Not full" for a producer that may be waiting for room: it was full when this pop
        # began, or the producer filled it meanwhile (then it saw the old head, and no
        # later pop would find it full again to ring). The fence orders our head store
        # before that load of its tail; the producer's kick (a system call) orders its
        # tail store before its load of our head.
        if count != self.depth:
            full_fence()
        if count == self.depth or (self._u32[self._rx_tail_at] - old_head) & _INDEX_MASK \
                == self.depth:
            self._space.kick()
        return msg1 & 0xFF, msg0

    def recv(self, timeout: float | None = None) -> tuple[int, int] | None:
        """Wait up to ``timeout`` s (None: forever) for a message; None on timeout."""
        limit = timeout_arg(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            got = self.try_recv()
            if got is not None:
                return got
            remaining = FOREVER if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait_readable(self._data.fileno(), remaining)
            self._data.clear()

    def rx_pending(self) -> bool:
        """Whether a message may be waiting (cheap; a broken FIFO says True)."""
        return bool(self._rx_broken) or self._u32[self._rx_tail_at] != self._rx_head

    def fileno(self) -> int:
        """Readable when the peer rang "not empty" (consume with :meth:`clear_doorbell`)."""
        return self._data.fileno()

    def clear_doorbell(self) -> None:
        """Consume pending "not empty" rings (before draining the FIFO)."""
        self._data.clear()

    # -- state ---------------------------------------------------------------------------------
    def _why(self, what: str) -> str:
        return f"mailbox ({self.role}): {what}: the peer broke the mailbox"

    @property
    def broken(self) -> str:
        """Why a direction is unusable (the peer corrupted an index), "" while both work."""
        return "; ".join(why for why in (self._rx_broken, self._tx_broken) if why)

    def statistics(self) -> MailboxStatistics:
        u32, depth = self._u32, self.depth
        return MailboxStatistics(
            self.role.value, depth, self._sent, self._received,
            min(depth, (self._tx_tail - u32[self._tx_head_at]) & _INDEX_MASK),
            min(depth, (u32[self._rx_tail_at] - self._rx_head) & _INDEX_MASK),
            self._send_timeouts, self.broken)

    def close(self) -> None:
        """Release the doorbells and the region."""
        if self.closed:
            return
        self.closed = True
        self._data.close()
        self._space.close()
        self._u32 = memoryview(b"").cast("I")  # the region's views must go before it
        self.region.close()

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class PeerFds:
    """The eventfds a co-processor process inherits: it reads ``data_rx`` ("not empty")
    and ``space_rx`` ("not full") and writes the other two."""

    data_rx: int
    data_tx: int
    space_rx: int
    space_tx: int

    def doorbells(self) -> tuple[EventfdDoorbell, EventfdDoorbell]:
        """The peer's (data, space) doorbells over these fds (they take them over)."""
        return EventfdDoorbell(self.data_rx, self.data_tx), EventfdDoorbell(self.space_rx,
                                                                           self.space_tx)


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def host_doorbells() -> tuple[EventfdDoorbell, EventfdDoorbell, PeerFds]:
    """The host's (data, space) doorbells and the fds to hand a co-processor process.

    The same four eventfds serve both: the child inherits them by number (``pass_fds``),
    so the host closing its doorbells later does not take them from the child.
    """
    fds: list[int] = []
    try:
        for _ in range(4):
            fds.append(_eventfd())
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    host_data, peer_data, host_space, peer_space = fds
    return (EventfdDoorbell(host_data, peer_data), EventfdDoorbell(host_space, peer_space),
            PeerFds(data_rx=peer_data, data_tx=host_data, space_rx=peer_space,
                    space_tx=host_space))


def mailbox_pair(depth: int = DEFAULT_DEPTH) -> tuple[Mailbox, Mailbox]:
    """Both ends of a new mailbox in this process: ``(ap, iop)`` (tests, in-process peers)."""
    region = create_mailbox_region(depth)
    try:
        peer_region = SharedRegion.from_fd(os.dup(region.fd), region.size)
    except BaseException:
        region.close()
        raise
    ap_data, iop_data = EventfdDoorbell.pair()
    ap_space, iop_space = EventfdDoorbell.pair()
    return (Mailbox(region, Role.AP, ap_data, ap_space),
            Mailbox(peer_region, Role.IOP, iop_data, iop_space))
