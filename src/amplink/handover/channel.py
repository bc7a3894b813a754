"""Hand-over by reference on any endpoint: :class:`BufferChannel`.

The side that owns buffers (the host) *sends* a buffer or a slice of it: the buffer is
attached to the peer once (through a :class:`~amplink.handover.port.BufferPort`), lent
to it in the port's :class:`~amplink.memory.BufferTable` (it becomes the device's:
``to_device``) and a 24-byte SEND record names it (attachment id, offset, length,
access). The peer maps nothing new: it resolves the reference against what is attached
to it (:class:`~amplink.handover.mapped.DeviceBuffers`), gets a view without copying,
and answers DONE when it is finished; the buffer is then the CPU's again (``to_cpu``)
and :meth:`BufferChannel.wait_done` returns it.

The other way round, the firmware hands over what it holds: a buffer the host lent it
(:meth:`ReceivedBuffer.send`, e.g. a frame it filled: the host reads it and answers
DONE, and the buffer comes back to the firmware through :meth:`BufferChannel.recv`), or
a buffer of its own memory (``memory=``, a carveout's
:class:`~amplink.memory.CarveoutProvider`: SEND id 0 names it by device address, and
:meth:`BufferChannel.wait_done` returns it after the host's DONE).

Several records travel in one message: ``send(..., flush=False)`` and
``done(flush=False)`` wait for :meth:`BufferChannel.flush` (or a full message), and
:meth:`BufferChannel.send_many`, :meth:`BufferChannel.recv_many` and
:meth:`BufferChannel.wait_done_many` move batches. Every record a peer sends is checked;
each failed check is a counted fault (:meth:`BufferChannel.statistics`), never an access
outside a buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..errors import InvalidArgument, ReceiveTimeout
from ..link.endpoint import DEFAULT_SEND_TIMEOUT, Endpoint
from ..memory.access import Access, checked_access
from ..memory.buffers import BufferSlice, CpuAccess, SharedBuffer
from ..memory.errors import IommuFault, PeerBufferError
from ..memory.table import BufferFaultReason
from ..rpmsg.wire import RPMSG_ADDR_ANY
from . import wire
from .port import OwnerPort
from .pump import RecordPump
from .wire import RECORD, RECORD_SIZE, RecordType

if TYPE_CHECKING:
    from ..memory.providers import CarveoutProvider

_SEND, _DONE = int(RecordType.SEND), int(RecordType.DONE)
_VERSION = wire.HANDOVER_VERSION
_ACCESS = {1: Access.READ, 2: Access.WRITE, 3: Access.READ_WRITE}
#: the device name a firmware's own buffers go to while the host holds them
HOST = "host"


class BufferImporter(Protocol):
    """What a receiving side resolves references with (e.g. ``DeviceBuffers``)."""

    def ref(self, att_id: int, offset: int, length: int, access: int) -> memoryview: ...


class Returned(NamedTuple):
    """A buffer the peer gave back: the CPU's again. ``offset``/``length``: the range the
    peer says holds its result (checked to lie inside the buffer)."""

    buffer: SharedBuffer
    id: int
    offset: int
    length: int


class ReceivedBuffer:
    """A buffer the peer handed over: :attr:`view` (no copy; read-only unless
    :attr:`access` has write) until :meth:`done` gives it back (or, on the firmware,
    :meth:`send` hands it to the host for a while). :attr:`buffer` is the host's
    :class:`SharedBuffer` it lies in (None on the firmware, and for the firmware's own
    memory: ``id`` 0, ``offset`` its device address)."""

    __slots__ = ("_channel", "id", "offset", "length", "_access", "view", "buffer",
                 "given_back", "_bracket")

    def __init__(self, channel: BufferChannel, id: int, offset: int, length: int,
                 access: int, view: memoryview, buffer: SharedBuffer | None = None,
                 bracket: CpuAccess | None = None) -> None:
        self._channel = channel
        self.id = id
        self.offset = offset
        self.length = length
        self._access = access
        self.view = view
        self.buffer = buffer
        self.given_back = False
        self._bracket = bracket  # the host's CPU access bracket behind the view

    @property
    def access(self) -> Access:
        """What this side may do with the bytes."""
        return _ACCESS[self._access]

    def done(self, length: int | None = None, offset: int | None = None, *,
             flush: bool = True) -> None:
        """Give the buffer back, saying ``[offset, offset + length)`` holds the result
        (default: the range received). The view is released: using it raises
        ``ValueError``. With ``flush=False`` the DONE waits for the next
        :meth:`BufferChannel.flush` (several travel in one message). Once only."""
        self._check_held()
        record = self._channel._finish(self, self.offset if offset is None else offset,
                                       self.length if length is None else length)
        self.given_back = True
        self._channel._queue(record, flush, DEFAULT_SEND_TIMEOUT, done=True)

    def send(self, length: int | None = None, offset: int | None = None,
             access: Access | int = Access.READ, *, flush: bool = True,
             timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """(firmware) Hand this buffer, which the host lent, to the host for a while with
        data in ``[offset, offset + length)`` (default: the range received) for
        ``access``: e.g. a frame it filled. The view is released; once the host is done
        the buffer comes back through :meth:`BufferChannel.recv`, the firmware's again."""
        self._check_held()
        record = self._channel._lend_back(
            self, self.offset if offset is None else offset,
            self.length if length is None else length, checked_access(access))
        self.given_back = True
        self._channel._queue(record, flush, timeout)

    def _check_held(self) -> None:
        if self.given_back:
            raise InvalidArgument(f"{self!r} was given back already")

    def _release(self) -> None:
        """End this side's access: the view goes (and the host's bracket ends)."""
        bracket, self._bracket = self._bracket, None
        if bracket is not None:
            bracket.__exit__(None, None, None)  # ViewsOutstanding: done() again later
        else:
            self.view.release()

    def __enter__(self) -> memoryview:
        return self.view

    def __exit__(self, *exc: object) -> None:
        if not self.given_back:
            self.done()

    def __repr__(self) -> str:
        return (f"<ReceivedBuffer id {self.id} 0x{self.offset:x}+0x{self.length:x} "
                f"{self.access.name}>")


class _Own(NamedTuple):
    """One of the firmware's own buffers the host holds."""

    buffer: SharedBuffer
    offset: int
    length: int


class BufferChannelStatistics(NamedTuple):
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

    ``port`` (the owning side, e.g. ``rproc.buffers``) lets it :meth:`send` buffers and
    receive what the firmware hands back; ``buffers`` (the firmware, e.g.
    ``amplink.firmware.buffers()``) lets it :meth:`recv`; ``memory`` (the firmware: a
    :class:`~amplink.memory.CarveoutProvider` of its own memory) lets it :meth:`send`
    buffers from there. Without any of them the endpoint's link gives its own
    (``link.buffers``: a link with the ``send_by_reference`` capability).

    The owning side says hello (an empty message) when it opens the channel, so that the
    firmware learns its address and may hand over first. The endpoint must have no
    callback: the channel reads its queue. Threads may share a channel; asyncio
    coroutines use the ``a...`` methods (not mixed with threads on one channel).
    """

    def __init__(self, endpoint: Endpoint, *, port: OwnerPort | None = None,
                 buffers: BufferImporter | None = None,
                 memory: CarveoutProvider | None = None, name: str | None = None) -> None:
        super().__init__(endpoint, name or endpoint.name or f"0x{endpoint.addr:x}")
        if port is None and buffers is None and memory is None:
            found = endpoint.link.buffers  # NotSupported without send_by_reference
            if hasattr(found, "attach"):  # a port (BufferPort, ServicePort): the owner
                port = found
            else:
                buffers = found
        self.port = port
        self.buffers = buffers
        self.memory = memory
        self._returned: deque[Returned] = deque()
        self._received: deque[ReceivedBuffer] = deque()
        self._pending: list[bytes] = []  # records waiting for flush()
        self._per_message = max(1, endpoint.mtu // RECORD_SIZE)
        self._lent_back: dict[int, ReceivedBuffer] = {}  # firmware: handed to the host
        self._own: dict[int, _Own] = {}  # firmware: own buffers the host holds, by da
        self.sent = self.returned = self.received = self.done_count = 0
        if port is not None:
            self._send(b"")  # hello: the peer learns our address, and may hand over first

    # -- handing over ------------------------------------------------------------------------
    def send(self, target: SharedBuffer | BufferSlice, access: Access | int = Access.READ_WRITE,
             timeout: float | None = DEFAULT_SEND_TIMEOUT, *, flush: bool = True) -> int:
        """Hand a buffer (or the slice named) to the peer, which may ``access`` it; returns
        its id (0: the firmware's own memory). The buffer is the device's until it comes
        back (:meth:`wait_done`). With ``flush=False`` the SEND waits for :meth:`flush`."""
        record = self._lend(target, access)
        self._queue(record, flush, timeout)
        return _id_of(record)

    def send_many(self, targets: Iterable[SharedBuffer | BufferSlice],
                  access: Access | int = Access.READ_WRITE,
                  timeout: float | None = DEFAULT_SEND_TIMEOUT) -> int:
        """Hand several buffers over in as few messages as fit; returns how many. If one
        is refused none is sent (those lent already are taken back)."""
        records = []
        try:
            for target in targets:
                records.append(self._lend(target, access))
        except BaseException:
            self._take_back(records)
            raise
        with self._lock:
            self._pending.extend(records)
            self.sent += len(records)
        self.flush(timeout)
        return len(records)

    async def asend(self, target: SharedBuffer | BufferSlice,
                    access: Access | int = Access.READ_WRITE,
                    timeout: float | None = DEFAULT_SEND_TIMEOUT) -> int:
        """:meth:`send`, awaiting a free transmit buffer."""
        record = self._lend(target, access)
        with self._lock:
            self.sent += 1
        try:
            await self._asend(record, timeout)
        except BaseException:
            self._unsent([record])
            raise
        return _id_of(record)

    def _lend(self, target: SharedBuffer | BufferSlice, access: Access | int) -> bytes:
        """Lend the buffer (attaching it once); the SEND record that names it."""
        if type(target) is SharedBuffer:
            buffer, offset, length = target, 0, target.size
        elif isinstance(target, BufferSlice):
            buffer, offset, length = target.buffer, target.offset, target.length
        elif isinstance(target, SharedBuffer):
            buffer, offset, length = target, 0, target.size
        else:
            raise InvalidArgument(f"send() takes a SharedBuffer or a BufferSlice, got "
                                  f"{type(target).__name__}")
        if access not in _ACCESS or type(access) is bool:
            access = checked_access(access)
        port = self.port
        if port is not None:
            att_id = port.id_of(buffer)
            if att_id is None:
                port.attach(buffer, Access.READ if buffer.read_only else Access.READ_WRITE)
                att_id = port.id_of(buffer)
                assert att_id is not None
            port.table.lend_as(att_id, buffer, port.peer)
            return RECORD.pack(_VERSION, _SEND, access, 0, att_id, offset, length)
        memory = self.memory
        if memory is None:
            raise InvalidArgument("this channel has no port (the host's buffers) and no "
                                  "memory (the firmware's own): it cannot send buffers")
        da = memory.device_address(buffer) + offset
        buffer.to_device(HOST)
        with self._lock:
            self._own[da] = _Own(buffer, offset, length)
        return RECORD.pack(_VERSION, _SEND, access, 0, 0, da, length)

    def _lend_back(self, item: ReceivedBuffer, offset: int, length: int, access: int
                   ) -> bytes:
        """The SEND record that hands a buffer the host lent back to it (firmware)."""
        if item.buffer is not None or item.id == 0 or self.buffers is None:
            raise InvalidArgument(f"{item!r}: only the firmware hands back a buffer the "
                                  f"host lent it")
        if (type(offset) is not int or type(length) is not int or offset < item.offset
                or length < 0 or offset + length > item.offset + item.length):
            raise InvalidArgument(f"{offset!r}+{length!r} is outside {item!r}")
        item._release()
        with self._lock:
            self._lent_back[item.id] = item
        return RECORD.pack(_VERSION, _SEND, access, 0, item.id, offset, length)

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

    # -- giving back -------------------------------------------------------------------------
    def _finish(self, item: ReceivedBuffer, offset: int, length: int) -> bytes:
        """End this side's access to ``item``; the DONE record for it."""
        if item.id == 0:  # the firmware's own memory: the DONE names what was lent
            offset, length = item.offset, item.length
        elif (type(offset) is not int or type(length) is not int or offset < 0
              or length < 0):
            raise InvalidArgument(f"a result range of {offset!r}+{length!r}")
        item._release()  # ViewsOutstanding (host): not given back yet, done() again
        if item.buffer is not None:  # the host: the buffer goes back to the firmware
            port = self.port
            assert port is not None
            port.table.give_back(item.id)
        return RECORD.pack(_VERSION, _DONE, 0, 0, item.id, offset, length)

    # -- sending records -----------------------------------------------------------------------
    def _queue(self, record: bytes, flush: bool, timeout: float | None, *,
               done: bool = False) -> None:
        """Queue a record (a SEND unless ``done``) for :meth:`flush`, and flush now if
        asked or a message is full."""
        with self._lock:
            self._pending.append(record)
            if done:
                self.done_count += 1
            else:
                self.sent += 1
            full = len(self._pending) >= self._per_message
        if flush or full:
            self.flush(timeout)

    def flush(self, timeout: float | None = DEFAULT_SEND_TIMEOUT) -> None:
        """Send the records that wait (as few messages as they fit in). If sending fails,
        buffers whose SEND did not go are taken back, DONEs wait for the next flush."""
        with self._lock:
            records, self._pending = self._pending, []
        per = self._per_message
        for start in range(0, len(records), per):
            try:
                self._send(b"".join(records[start:start + per]), timeout)
            except BaseException:
                self._unsent(records[start:])
                raise

    def _unsent(self, records: list[bytes]) -> None:
        """Records that did not go: a SEND's buffer is this side's again; a DONE waits
        for the next flush."""
        sends = [r for r in records if r[1] == _SEND]
        with self._lock:
            self.sent -= len(sends)
            self._pending[:0] = [r for r in records if r[1] == _DONE]
        self._take_back(sends)

    def _take_back(self, records: list[bytes]) -> None:
        """The buffers of SEND records that did not go are this side's again."""
        for record in records:
            _v, _kind, _access, _f, att_id, offset, _length = RECORD.unpack(record)
            with self._lock:
                own = self._own.pop(offset, None) if att_id == 0 else None
                item = self._lent_back.pop(att_id, None)
            if own is not None:
                own.buffer.to_cpu()
            elif item is not None:  # firmware: still ours, as it was before
                assert self.buffers is not None
                try:
                    view = self.buffers.ref(att_id, item.offset, item.length, item._access)
                except IommuFault:
                    continue  # the host detached it meanwhile: it is gone
                self._deliver([ReceivedBuffer(self, att_id, item.offset, item.length,
                                              item._access, view)], (), 0, 0)
            elif self.port is not None:
                self.port.table.recall(self.port.peer, att_id)

    # -- waiting -------------------------------------------------------------------------------
    def wait_done(self, timeout: float | None = None) -> Returned:
        """The next buffer the peer gave back (:class:`ReceiveTimeout` after ``timeout``;
        ``LinkDown`` if the peer is gone: its buffers are taken back by its port)."""
        return self._get(self._returned.popleft, self._returned, timeout, "came back")

    def wait_done_many(self, timeout: float | None = None) -> list[Returned]:
        """Every buffer the peer gave back so far, waiting up to ``timeout`` for one."""
        return self._get(self._take_returned, self._returned, timeout, "came back")

    async def await_done(self, timeout: float | None = None) -> Returned:
        """:meth:`wait_done`, awaited."""
        return await self._aget(self._returned.popleft, self._returned, timeout, "came back")

    def recv(self, timeout: float | None = None) -> ReceivedBuffer:
        """The next buffer the peer handed over (:class:`ReceiveTimeout` after ``timeout``)."""
        return self._get(self._received.popleft, self._received, timeout, "arrived")

    def recv_many(self, timeout: float | None = None) -> list[ReceivedBuffer]:
        """Every buffer the peer handed over so far, waiting up to ``timeout`` for one."""
        return self._get(self._take_received, self._received, timeout, "arrived")

    async def arecv(self, timeout: float | None = None) -> ReceivedBuffer:
        """:meth:`recv`, awaited."""
        return await self._aget(self._received.popleft, self._received, timeout, "arrived")

    def try_recv(self) -> ReceivedBuffer | None:
        """A buffer that arrived already, else None (does not wait)."""
        got = self._wait(lambda: self._received and (self._received.popleft(),), 0)
        return None if got is None else got[0]  # type: ignore[no-any-return]

    def _take_returned(self) -> list[Returned]:
        items = list(self._returned)
        self._returned.clear()
        return items

    def _take_received(self) -> list[ReceivedBuffer]:
        items = list(self._received)
        self._received.clear()
        return items

    def _get(self, take: Callable[[], Any], queue: deque[Any], timeout: float | None,
             what: str) -> Any:
        got = self._wait(lambda: queue and (take(),), timeout)
        if got is None:
            raise ReceiveTimeout(f"no buffer {what} on {self.name!r} within {timeout} s")
        return got[0]

    async def _aget(self, take: Callable[[], Any], queue: deque[Any], timeout: float | None,
                    what: str) -> Any:
        got = await self._await(lambda: queue and (take(),), timeout)
        if got is None:
            raise ReceiveTimeout(f"no buffer {what} on {self.name!r} within {timeout} s")
        return got[0]

    # -- records from the peer -----------------------------------------------------------------
    def _dispatch(self, message: bytes, src: int) -> None:
        """Handle one message: refused whole (counted) if it does not decode; each record
        checked on its own (a refused record is a counted fault)."""
        if self._dst == RPMSG_ADDR_ANY:
            self._dst = src
        if not message:
            return  # the owning side's hello
        records = wire.plain_records(message)
        if records is None:
            try:
                records = [(_VERSION, r.type, r.access, r.flags, r.id, r.offset, r.length)
                           for r, _payload in wire.unpack(message)]
            except PeerBufferError as exc:
                self._count(exc)
                return
        received: list[ReceivedBuffer] = []
        returned: list[Returned] = []
        sends = dones = 0
        for _v, kind, access, _f, att_id, offset, length in records:
            try:
                if kind == _SEND:
                    received.append(self._on_send(att_id, offset, length, access))
                    sends += 1
                elif kind == _DONE:
                    self._on_done(att_id, offset, length, received, returned)
                    dones += 1
                else:
                    raise self._unexpected(kind)
            except (PeerBufferError, IommuFault) as exc:
                self._count(exc)
        if sends or dones:
            self._deliver(received, returned, sends, dones)

    def _deliver(self, received: list[ReceivedBuffer], returned: Iterable[Returned],
                 sends: int, dones: int) -> None:
        with self._lock:
            self._received.extend(received)
            self._returned.extend(returned)
            self.received += sends
            self.returned += dones

    def _on_send(self, att_id: int, offset: int, length: int, access: int) -> ReceivedBuffer:
        """A SEND from the peer: the buffer it names, checked and mapped."""
        buffers = self.buffers
        if buffers is not None and att_id:  # the firmware: the host lends a buffer
            return ReceivedBuffer(self, att_id, offset, length, access,
                                  buffers.ref(att_id, offset, length, access))
        port = self.port
        if port is None:
            raise self._unexpected(_SEND)
        if att_id == 0:  # the host: the firmware hands over its own memory
            own_memory = getattr(port, "own_memory", None)  # a BufferPort's; not a service's
            if own_memory is None:
                raise PeerBufferError(BufferFaultReason.OUT_OF_RANGE,
                                      f"0x{offset:x}+0x{length:x}: this port reaches none of "
                                      f"{port.peer}'s own memory")
            bracket = own_memory(offset, length, access)
            return ReceivedBuffer(self, 0, offset, length, access, bracket.__enter__(),
                                  None, bracket)
        # the host: the firmware hands back for a while a buffer it holds
        piece = port.table.borrow(port.peer, att_id, offset, length)
        buffer = piece.buffer
        if access & 2 and buffer.read_only:
            port.table.give_back(att_id)
            raise PeerBufferError(BufferFaultReason.ACCESS,
                                  f"write access to read-only buffer {att_id}")
        bracket = buffer.cpu_access(access, offset, length)
        return ReceivedBuffer(self, att_id, offset, length, access, bracket.__enter__(),
                              buffer, bracket)

    def _on_done(self, att_id: int, offset: int, length: int,
                 received: list[ReceivedBuffer], returned: list[Returned]) -> None:
        """A DONE from the peer: the buffer comes back to this side."""
        port, buffers = self.port, self.buffers
        if att_id and port is not None:  # the host: the firmware is done with a loan
            buffer = port.table.release(port.peer, att_id, offset, length)
            returned.append(Returned(buffer, att_id, offset, length))
        elif att_id and buffers is not None:  # the firmware: one it handed back is its again
            with self._lock:
                item = self._lent_back.pop(att_id, None)
            if item is None:
                raise PeerBufferError(BufferFaultReason.NOT_HELD, f"DONE of buffer {att_id}")
            view = buffers.ref(att_id, item.offset, item.length, item._access)
            received.append(ReceivedBuffer(self, att_id, item.offset, item.length,
                                           item._access, view))
        elif att_id == 0 and self.memory is not None:  # the firmware: its own memory
            with self._lock:
                own = self._own.get(offset)
                if own is not None and own.length == length:
                    del self._own[offset]
            if own is None or own.length != length:
                raise PeerBufferError(BufferFaultReason.NOT_HELD,
                                      f"DONE of own memory 0x{offset:x}+0x{length:x}")
            own.buffer.to_cpu()
            returned.append(Returned(own.buffer, 0, own.offset, length))
        else:
            raise PeerBufferError(BufferFaultReason.UNKNOWN_ID, f"DONE of buffer {att_id}")

    def statistics(self) -> BufferChannelStatistics:
        """Counts so far and the peer's faults by reason."""
        with self._lock:
            return BufferChannelStatistics(self.name, self.sent, self.returned, self.received,
                                           self.done_count, self.sent - self.returned,
                                           dict(self._faults))


def _id_of(record: bytes) -> int:
    return int.from_bytes(record[4:8], "little")
