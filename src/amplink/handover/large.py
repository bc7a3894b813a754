"""Large messages on any endpoint: payloads of any size through a shared block pool.

:class:`LargeMessages` wraps an endpoint so that ``send(b"x" * 10_000_000)`` just works:
a payload that fits one message travels INLINE; a larger one is copied into blocks of a
pool the receiver has attached (as Zephyr's ICBMsg does), announced by a HEAD record and
sent as MSG records naming the blocks (a fragment at most ``fragment`` bytes, so that
copying in and copying out overlap); the receiver copies each fragment out and frees its
blocks with a FREE record. Nothing is ever truncated: a sender waits (up to its timeout)
for free blocks.

Speed: both sides keep one view of each pool for the channel's life (no access bracket
per fragment); the sender takes in the FREEs that arrived before it places a fragment,
and blocks are taken lowest first, so that the few blocks in flight are used again
while they are still in the cache.

The pools belong to the side with a :class:`~amplink.handover.port.BufferPort` (the
host): one it writes and the peer reads, and one the peer writes and it reads, which it
announces to the peer with a POOL record. The peer side (``buffers=``) reaches both
through its attachments. Every record is checked; a fault is counted, never an access
outside a pool.
"""

from __future__ import annotations

from collections import deque

from ..errors import InvalidArgument, MessageTooLarge, ReceiveTimeout, SendTimeout
from ..link.endpoint import DEFAULT_SEND_TIMEOUT, Endpoint
from ..memory.access import Access
from ..memory.allocator import RegionAllocator, align_up
from ..memory.buffers import CpuAccess, SharedBuffer
from ..memory.errors import PeerBufferError
from ..memory.providers import allocate_buffer
from ..memory.table import BufferFaultReason
from . import wire
from .channel import BufferImporter
from .port import OwnerPort
from .pump import RecordPump
from .wire import FLAG_LAST, HandoverFault, Record, RecordType

DEFAULT_POOL_SIZE = 32 << 20
DEFAULT_BLOCK_SIZE = 64 << 10
#: the default fragment (the largest piece copied before it is announced)
DEFAULT_FRAGMENT = 1 << 20
#: the largest message a receiver assembles (bigger ones are a counted fault)
DEFAULT_MAX_MESSAGE = 1 << 30

_MSG, _FREE, _HEAD, _INLINE, _POOL = (int(t) for t in (
    RecordType.MSG, RecordType.FREE, RecordType.HEAD, RecordType.INLINE, RecordType.POOL))

class LargeMessages(RecordPump):
    """Messages of any size over ``endpoint`` (see the module docstring).

    The owning side passes ``port`` (it allocates two pools of ``pool_size`` bytes and
    attaches them); the peer passes ``buffers``. :meth:`send` copies in, :meth:`recv`
    copies out (into a new bytearray, or into ``into``).
    """

    def __init__(self, endpoint: Endpoint, *, port: OwnerPort | None = None,
                 buffers: BufferImporter | None = None, pool_size: int = DEFAULT_POOL_SIZE,
                 block_size: int = DEFAULT_BLOCK_SIZE, fragment: int | None = None,
                 max_message: int = DEFAULT_MAX_MESSAGE, name: str | None = None) -> None:
        if (port is None) == (buffers is None):
            raise InvalidArgument("LargeMessages needs exactly one of port= (the side that "
                                  "owns the pools) and buffers= (the peer)")
        super().__init__(endpoint, name or endpoint.name or f"0x{endpoint.addr:x}")
        self.block_size = block_size
        self.max_message = max_message
        self.inline_max = endpoint.mtu - wire.RECORD_SIZE
        self._port = port
        self._buffers = buffers
        self._messages: deque[bytearray | _Into] = deque()
        self._into: memoryview | None = None
        self._asm: memoryview | None = None  # the message being assembled, and its fill
        self._asm_buf: bytearray | memoryview | None = None
        self._asm_pos = 0
        self._frees: list[bytes] = []
        self._tx_id = 0
        self._tx: RegionAllocator | None = None
        self._tx_view: memoryview | None = None  # where this side writes its fragments
        self._rx_view: memoryview | None = None  # the host: where the peer writes its own
        self._brackets: list[CpuAccess] = []  # the host's access to its pools, for life
        self._tx_pool: SharedBuffer | None = None
        self._rx_pool: SharedBuffer | None = None
        self._rx_id = 0
        self._in_flight: dict[int, int] = {}  # pool offset -> bytes, sent and not freed
        self.fragment = fragment
        self.sent = self.received = 0
        if port is not None:
            self._tx_pool = allocate_buffer(pool_size, name=f"{self.name}-tx-pool")
            self._rx_pool = allocate_buffer(pool_size, name=f"{self.name}-rx-pool")
            port.attach(self._tx_pool, Access.READ)
            port.attach(self._rx_pool, Access.READ_WRITE)
            tx_id, rx_id = port.id_of(self._tx_pool), port.id_of(self._rx_pool)
            assert tx_id is not None and rx_id is not None
            self._tx_id, self._rx_id = tx_id, rx_id
            # The pools never go to the device (the peer reads one and writes the other
            # through its attachments; MSG and FREE records say whose each block is), so
            # the host holds one access bracket to each for the channel's life.
            self._brackets = [self._tx_pool.cpu_access(Access.WRITE),
                              self._rx_pool.cpu_access(Access.READ)]
            self._tx_view, self._rx_view = (b.__enter__() for b in self._brackets)
            self._tx = RegionAllocator(pool_size, 0, what=f"pool of {self.name!r}")
            self._send(wire.pack(_POOL, rx_id, 0, pool_size))

    # -- sending ---------------------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview,
             timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send ``data``, of any size; waits up to ``timeout`` s for pool space
        (:class:`SendTimeout`)."""
        src = memoryview(data).cast("B")
        size = len(src)
        if size <= self.inline_max:
            self._send(wire.pack_inline(src), timeout)
            self.sent += 1
            return
        if size > self.max_message:
            raise MessageTooLarge(f"{size} bytes: more than max_message ({self.max_message})")
        if self._tx is None and not self._wait(lambda: self._tx is not None, timeout):
            raise SendTimeout(f"{self.name!r}: the peer announced no pool within {timeout} s")
        tx = self._tx
        assert tx is not None
        view = self._tx_view
        assert tx is not None and view is not None
        fragment = min(align_up(self.fragment or DEFAULT_FRAGMENT, self.block_size), tx.size)
        head = wire.pack(_HEAD, 0, 0, size)
        pos = 0
        while pos < size:
            n = min(fragment, size - pos)
            offset = self._alloc(align_up(n, self.block_size), timeout)
            view[offset:offset + n] = src[pos:pos + n]
            pos += n
            record = wire.RECORD.pack(wire.HANDOVER_VERSION, _MSG, 0,
                                      FLAG_LAST if pos == size else 0, self._tx_id, offset, n)
            self._send(head + record if head else record, timeout)
            head = b""
        self.sent += 1

    def _alloc(self, span: int, timeout: float | None) -> int:
        tx = self._tx
        assert tx is not None
        self._pump_now()  # the FREEs that came: their blocks, still in the cache, first

        def take() -> int | None:
            try:
                offset = tx.alloc(span, self.block_size)
            except MemoryError:
                return None
            self._in_flight[offset] = span
            return offset + 1  # true even for offset 0

        got = self._wait(take, timeout)
        if got is None:
            raise SendTimeout(f"{self.name!r}: no {span} bytes free in the pool within "
                              f"{timeout} s (the peer does not free them)")
        return int(got) - 1

    # -- receiving -------------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> bytearray:
        """The next message (a new bytearray); :class:`ReceiveTimeout` after ``timeout``."""
        got = self._wait(self._pop, timeout)
        if got is None:
            raise ReceiveTimeout(f"no message on {self.name!r} within {timeout} s")
        message = got[0]
        assert isinstance(message, bytearray)
        return message

    def recv_into(self, buffer: bytearray | memoryview, timeout: float | None = None) -> int:
        """Receive the next message into ``buffer`` (no allocation); returns its length.
        :class:`MessageTooLarge` (the message is dropped) if it does not fit."""
        target = memoryview(buffer).cast("B")
        with self._lock:
            self._into = target
        try:
            got = self._wait(self._pop, timeout)
        finally:
            with self._lock:
                self._into = None
        if got is None:
            raise ReceiveTimeout(f"no message on {self.name!r} within {timeout} s")
        got = got[0]
        if isinstance(got, _Into):
            return got.length
        if len(got) > len(target):
            raise MessageTooLarge(f"a message of {len(got)} bytes into a buffer of "
                                  f"{len(target)}")
        target[:len(got)] = got
        return len(got)

    def _pop(self) -> tuple[bytearray | _Into] | None:
        """The next message in a tuple (an empty message is a message too)."""
        return (self._messages.popleft(),) if self._messages else None

    def _dispatch(self, message: bytes, src: int) -> None:
        super()._dispatch(message, src)
        if self._frees:
            data, self._frees = b"".join(self._frees), []
            self._send(data)

    def _record(self, record: Record, payload: memoryview | None) -> None:
        kind = record.type
        if kind == _INLINE:
            assert payload is not None
            self._deliver(bytearray(payload))
        elif kind == _HEAD:
            self._head(record.length)
        elif kind == _MSG:
            self._fragment(record)
        elif kind == _FREE:
            self._free(record)
        elif kind == _POOL and self._buffers is not None and self._tx is None:
            view = self._buffers.ref(record.id, record.offset, record.length, Access.WRITE)
            with self._lock:
                self._tx_view, self._tx_id = view, record.id
                self._tx = RegionAllocator(record.length, 0, what=f"pool of {self.name!r}")
        else:
            raise self._unexpected(kind)

    def _head(self, total: int) -> None:
        if self._asm is not None:
            self._asm = self._asm_buf = None
            raise PeerBufferError(HandoverFault.MALFORMED, "HEAD inside a message")
        if not 0 < total <= self.max_message:
            raise PeerBufferError(HandoverFault.MALFORMED, f"message of {total} bytes")
        with self._lock:
            into = self._into
        if into is not None and len(into) >= total and not self._messages:
            self._asm_buf = into
            self._asm = into[:total]
        else:
            self._asm_buf = bytearray(total)
            self._asm = memoryview(self._asm_buf)
        self._asm_pos = 0

    def _fragment(self, record: Record) -> None:
        # Checked and freed whatever happens to the message: the blocks go back.
        self._frees.append(wire.pack(_FREE, record.id, record.offset, record.length))
        asm, pos, n = self._asm, self._asm_pos, record.length
        if asm is None or n > len(asm) - pos:
            self._asm = self._asm_buf = None
            raise PeerBufferError(HandoverFault.MALFORMED,
                                  f"fragment of {n} bytes outside a message")
        if self._buffers is not None:
            source = self._buffers.ref(record.id, record.offset, n, Access.READ)
            asm[pos:pos + n] = source
            source.release()
        else:
            pool, offset = self._rx_view, record.offset
            assert pool is not None
            if record.id != self._rx_id:
                raise PeerBufferError(BufferFaultReason.UNKNOWN_ID, f"pool id {record.id}")
            if offset > len(pool) or n > len(pool) - offset:
                raise PeerBufferError(BufferFaultReason.OUT_OF_RANGE,
                                      f"{offset}+{n} in the pool")
            asm[pos:pos + n] = pool[offset:offset + n]
        pos += n
        self._asm_pos = pos
        if record.flags & FLAG_LAST:
            whole = self._asm_buf
            self._asm = self._asm_buf = None
            if pos != len(asm):
                raise PeerBufferError(HandoverFault.MALFORMED,
                                      f"message of {len(asm)} bytes ended at {pos}")
            assert whole is not None
            self._deliver(whole if isinstance(whole, bytearray) else _Into(pos))

    def _deliver(self, message: bytearray | _Into) -> None:
        with self._lock:
            self._messages.append(message)
            self.received += 1

    def _free(self, record: Record) -> None:
        with self._lock:
            if (record.id != self._tx_id or self._tx is None
                    or self._in_flight.get(record.offset) != align_up(record.length,
                                                                      self.block_size)):
                raise PeerBufferError(BufferFaultReason.NOT_HELD,
                                      f"FREE of {record.offset}+{record.length} in pool "
                                      f"{record.id}")
            del self._in_flight[record.offset]
            self._tx.free(record.offset)

    # -- the end ---------------------------------------------------------------------------
    def close(self) -> None:
        """Detach and close the pools (the owning side), or let go of the pool view."""
        if self._tx_view is not None:
            self._tx_view.release()
        for bracket in self._brackets:
            bracket.__exit__(None, None, None)
        self._brackets = []
        port = self._port
        for pool in (self._tx_pool, self._rx_pool):
            if pool is None:
                continue
            if port is not None:
                att_id = port.id_of(pool)
                attachment = None if att_id is None else port.attachment(att_id)
                if attachment is not None:
                    try:
                        port.detach(attachment)
                    except Exception:  # noqa: BLE001 - the peer is gone: detached anyway
                        pass
            if not pool.attachments:
                pool.close()


class _Into:
    """A message assembled into the caller's buffer: only its length is queued."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length
