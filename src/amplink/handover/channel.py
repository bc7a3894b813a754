"""Hand-over by reference on any endpoint: :class:`BufferChannel`.

The side that owns buffers (the host) *sends* a buffer or a slice of it: the buffer is
attached to the peer once (through a :class:`~amplink.handover.port.BufferPort`), lent
to it in the port's :class:`~amplink.memory.BufferTable` (it becomes the device's:
``to_device``) and a 24-byte SEND record names it (attachment id, offset, length,
access). The peer maps nothing new: it resolves the reference against what is attached
to it (:class:`~amplink.handover.mapped.DeviceBuffers`), gets a view without copying,
and answers DONE when it is finished; the buffer is then the CPU's again (``to_cpu``)
and :meth:`BufferChannel.wait_done` returns it. Every record a peer sends is checked;
each failed check is a counted fault (:meth:`BufferChannel.statistics`), never an access
outside a buffer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidArgument, ReceiveTimeout
from ..link.endpoint import DEFAULT_SEND_TIMEOUT, Endpoint
from ..memory.access import Access, checked_access
from ..memory.buffers import BufferSlice, SharedBuffer
from . import wire
from .port import OwnerPort
from .pump import RecordPump
from .wire import Record, RecordType

_SEND, _DONE = int(RecordType.SEND), int(RecordType.DONE)


class BufferImporter(Protocol):
    """What a receiving side resolves references with (e.g. ``DeviceBuffers``)."""

    def ref(self, att_id: int, offset: int, length: int, access: int) -> memoryview: ...


@dataclass(frozen=True, slots=True)
class Returned:
    """A buffer the peer gave back: the CPU's again. ``offset``/``length``: the range the
    peer says holds its result (checked to lie inside the buffer)."""

    buffer: SharedBuffer
    id: int
    offset: int
    length: int


class ReceivedBuffer:
    """A buffer the peer handed over: :attr:`view` (no copy; read-only unless
    :attr:`access` has write) until :meth:`done` gives it back."""

    __slots__ = ("_channel", "id", "offset", "length", "access", "view", "given_back")

    def __init__(self, channel: BufferChannel, id: int, offset: int, length: int, access: int,
                 view: memoryview) -> None:
        self._channel = channel
        self.id = id
        self.offset = offset
        self.length = length
        self.access = Access(access)
        self.view = view
        self.given_back = False

    def done(self, length: int | None = None, offset: int | None = None, *,
             flush: bool = True) -> None:
        """Give the buffer back, saying ``[offset, offset + length)`` holds the result
        (default: the range received). The view is released: using it raises
        ``ValueError``. With ``flush=False`` the DONE waits for the next
        :meth:`BufferChannel.flush` (several travel in one message). Once only."""
        if self.given_back:
            raise InvalidArgument(f"{self!r} was given back already")
        self.given_back = True
        self.view.release()
        self._channel._done(self.id, self.offset if offset is None else offset,
                            self.length if length is None else length, flush)

    def __enter__(self) -> memoryview:
        return self.view

    def __exit__(self, *exc: object) -> None:
        if not self.given_back:
            self.done()

    def __repr__(self) -> str:
        return (f"<ReceivedBuffer id {self.id} 0x{self.offset:x}+0x{self.length:x} "
                f"{self.access.name}>")


@dataclass(frozen=True, slots=True)
class BufferChannelStatistics:
    """One channel at one moment."""

    name: str
    sent: int
    returned: int
    received: int
    done: int
    in_flight: int
    faults: dict[str, int]


class BufferChannel(RecordPump):
    """Hands buffers over ``endpoint`` by reference (see the module docstring).

    ``port`` (the owning side, e.g. ``rproc.buffers``) lets it :meth:`send`;
    ``buffers`` (the receiving side, e.g. ``amplink.firmware.buffers()``) lets it
    :meth:`recv`. The endpoint must have no callback: the channel reads its queue.
    Threads may share a channel; asyncio coroutines use the ``a...`` methods (not mixed
    with threads on one channel).
    """

    def __init__(self, endpoint: Endpoint, *, port: OwnerPort | None = None,
                 buffers: BufferImporter | None = None, name: str | None = None) -> None:
        super().__init__(endpoint, name or endpoint.name or f"0x{endpoint.addr:x}")
        self.port = port
        self.buffers = buffers
        self._returned: deque[Returned] = deque()
        self._received: deque[ReceivedBuffer] = deque()
        self._pending: list[bytes] = []  # DONE records not flushed yet
        self.sent = self.returned = self.received = self.done_count = 0

    # -- the owning side -------------------------------------------------------------------
    def _reference(self, target: SharedBuffer | BufferSlice, access: Access | int) -> bytes:
        """Attach (once) and lend the buffer; the SEND record that names it."""
        port = self.port
        if port is None:
            raise InvalidArgument("this channel has no port: it cannot send buffers")
        if isinstance(target, BufferSlice):
            buffer, offset, length = target.buffer, target.offset, target.length
        elif isinstance(target, SharedBuffer):
            buffer, offset, length = target, 0, target.size
        else:
            raise InvalidArgument(f"send() takes a SharedBuffer or a BufferSlice, got "
                                  f"{type(target).__name__}")
        access = checked_access(access)
        att_id = port.id_of(buffer)
        if att_id is None:
            port.attach(buffer, Access.READ if buffer.read_only else Access.READ_WRITE)
            att_id = port.id_of(buffer)
            assert att_id is not None
        table = port.table
        try:
            table.holder(att_id)
        except KeyError:
            table.add(buffer, id=att_id)
        table.lend(att_id, port.peer)
        return wire.pack(_SEND, att_id, offset, length, int(access))

    def send(self, target: SharedBuffer | BufferSlice, access: Access | int = Access.READ_WRITE,
             timeout: float | None = DEFAULT_SEND_TIMEOUT) -> int:
        """Hand a buffer (or the slice named) to the peer, which may ``access`` it; returns
        its id. The buffer is the device's until it comes back (:meth:`wait_done`)."""
        record = self._reference(target, access)
        try:
            self._send(record, timeout)
        except BaseException:
            self._take_back(record)
            raise
        self.sent += 1
        return _id_of(record)

    async def asend(self, target: SharedBuffer | BufferSlice,
                    access: Access | int = Access.READ_WRITE,
                    timeout: float | None = DEFAULT_SEND_TIMEOUT) -> int:
        """:meth:`send`, awaiting a free transmit buffer."""
        record = self._reference(target, access)
        try:
            await self._asend(record, timeout)
        except BaseException:
            self._take_back(record)
            raise
        self.sent += 1
        return _id_of(record)

    def _take_back(self, record: bytes) -> None:
        assert self.port is not None
        self.port.table.release(self.port.peer, _id_of(record))

    def forget(self, buffer: SharedBuffer) -> None:
        """Detach a buffer :meth:`send` attached (it must have come back), e.g. to close
        it while the processor runs on. The end of the run detaches everything anyway."""
        port = self.port
        att_id = None if port is None else port.id_of(buffer)
        if port is None or att_id is None:
            raise InvalidArgument(f"buffer {buffer.name!r} is not attached through this "
                                  f"channel's port")
        if att_id in port.table.ids():
            port.table.remove(att_id)  # OwnershipError while the peer holds it
        attachment = port.attachment(att_id)
        assert attachment is not None
        port.detach(attachment)

    def wait_done(self, timeout: float | None = None) -> Returned:
        """The next buffer the peer gave back (:class:`ReceiveTimeout` after ``timeout``;
        ``LinkDown`` if the peer is gone: its buffers are taken back by its port)."""
        got = self._wait(self._pop_returned, timeout)
        if got is None:
            raise ReceiveTimeout(f"no buffer came back on {self.name!r} within {timeout} s")
        return got  # type: ignore[no-any-return]

    async def await_done(self, timeout: float | None = None) -> Returned:
        """:meth:`wait_done`, awaited."""
        got = await self._await(self._pop_returned, timeout)
        if got is None:
            raise ReceiveTimeout(f"no buffer came back on {self.name!r} within {timeout} s")
        return got  # type: ignore[no-any-return]

    def _pop_returned(self) -> Returned | None:
        return self._returned.popleft() if self._returned else None

    # -- the receiving side ----------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> ReceivedBuffer:
        """The next buffer the peer handed over (:class:`ReceiveTimeout` after ``timeout``)."""
        got = self._wait(self._pop_received, timeout)
        if got is None:
            raise ReceiveTimeout(f"no buffer arrived on {self.name!r} within {timeout} s")
        return got  # type: ignore[no-any-return]

    async def arecv(self, timeout: float | None = None) -> ReceivedBuffer:
        """:meth:`recv`, awaited."""
        got = await self._await(self._pop_received, timeout)
        if got is None:
            raise ReceiveTimeout(f"no buffer arrived on {self.name!r} within {timeout} s")
        return got  # type: ignore[no-any-return]

    def try_recv(self) -> ReceivedBuffer | None:
        """A buffer that arrived already, else None (does not wait)."""
        return self._wait(self._pop_received, 0)  # type: ignore[no-any-return]

    def _pop_received(self) -> ReceivedBuffer | None:
        return self._received.popleft() if self._received else None

    def _done(self, id: int, offset: int, length: int, flush: bool) -> None:
        self._pending.append(wire.pack(_DONE, id, offset, length))
        self.done_count += 1
        if flush or len(self._pending) * wire.RECORD_SIZE + wire.RECORD_SIZE > self.endpoint.mtu:
            self.flush()

    def flush(self) -> None:
        """Send the DONE records that wait (one message)."""
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            self._send(data)

    # -- records from the peer -------------------------------------------------------------
    def _record(self, record: Record, payload: memoryview | None) -> None:
        """(called without the lock)"""
        kind = record.type
        if kind == _SEND and self.buffers is not None:
            view = self.buffers.ref(record.id, record.offset, record.length, record.access)
            item = ReceivedBuffer(self, record.id, record.offset, record.length, record.access,
                                  view)
            with self._lock:
                self._received.append(item)
                self.received += 1
        elif kind == _DONE and self.port is not None:
            port = self.port
            # the peer must hold it, and the result range lie inside it
            buffer = port.table.release(port.peer, record.id, record.offset, record.length)
            with self._lock:
                self._returned.append(Returned(buffer, record.id, record.offset,
                                               record.length))
                self.returned += 1
        else:
            raise self._unexpected(record)

    def statistics(self) -> BufferChannelStatistics:
        """Counts so far and the peer's faults by reason."""
        with self._lock:
            return BufferChannelStatistics(self.name, self.sent, self.returned, self.received,
                                           self.done_count, self.sent - self.returned,
                                           dict(self._faults))


def _id_of(record: bytes) -> int:
    return int.from_bytes(record[4:8], "little")
