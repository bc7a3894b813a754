"""The peers amplink is measured against in ``rpmsg_bench.py``, each a forked child process.

Every session offers what the benchmark times: ``round_trips`` to an echo and
``one_way`` to a sink that counts what it got and answers an empty message with the
counts since its last answer (``SINK_REPORT``), so a lost or extra message is an error.

* ``mp.Pipe``   - ``multiprocessing.Pipe(duplex=True)``;
* ``os.pipe``   - two ``os.pipe`` (one per direction), the sink reads in large chunks;
* ``shm-ring``  - a minimal single-producer single-consumer ring per direction in
  ``multiprocessing.shared_memory``, both sides busy-waiting (pure Python; it relies on
  the stores of one side becoming visible in order, as on x86);
* ``iceoryx2-busy`` / ``iceoryx2-event`` - iceoryx2's Python publish/subscribe (its own
  shared memory, zero-copy samples), the reader busy-waiting on ``receive()`` or
  sleeping on an event service the writer notifies after each send.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import struct
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from amplink.perf import SINK_REPORT, OneWayResult, make_payloads, time_one_way, time_round_trips

OS_PIPE_HEADER = struct.Struct("<QQ")  # count, size of the next one-way run
MAX_PAYLOAD = 496
_FORK = multiprocessing.get_context("fork")


class ForkedSession:
    """A child process started with ``target(*args)``; killed if it does not end."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.child = _FORK.Process(target=target, args=args, daemon=True)
        self.child.start()
        assert self.child.pid is not None
        self.pid = self.child.pid

    def statistics(self) -> dict[str, int]:
        return {}

    def _join(self) -> None:
        self.child.join(5)
        if self.child.is_alive():
            self.child.kill()
            self.child.join()


class _Counter:
    """What a sink counts between two reports."""

    def __init__(self) -> None:
        self.messages = self.nbytes = 0

    def add(self, n: int) -> bytes | None:
        """Count a message of ``n`` bytes; an empty one returns the report to send."""
        if n:
            self.messages += 1
            self.nbytes += n
            return None
        report = SINK_REPORT.pack(self.messages, self.nbytes)
        self.messages = self.nbytes = 0
        return report


def _one_way(send: Callable[[bytes], object], recv_report: Callable[[], bytes], size: int,
             count: int, warmup: int) -> OneWayResult:
    def finish() -> tuple[int, int]:
        send(b"")
        messages, nbytes = SINK_REPORT.unpack(recv_report())
        return messages, nbytes

    data = make_payloads(size, 1)[0]
    time_one_way(send, finish, data, warmup)
    return time_one_way(send, finish, data, count)


# -- multiprocessing.Pipe -----------------------------------------------------------------------
def _mp_child(conn: Connection, other: Connection, sink: bool) -> None:
    other.close()
    recv, send = conn.recv_bytes, conn.send_bytes
    counter = _Counter()
    try:
        while True:
            data = recv()
            if not sink:
                send(data)
            elif (report := counter.add(len(data))) is not None:
                send(report)
    except EOFError:
        pass


class MpPipeSession(ForkedSession):
    """``multiprocessing.Pipe(duplex=True)`` to a forked echo or sink child."""

    def __init__(self, sink: bool) -> None:
        self.conn, child = _FORK.Pipe(duplex=True)
        super().__init__(_mp_child, (child, self.conn, sink))
        child.close()

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]:
        return time_round_trips(self.conn.send_bytes, self.conn.recv_bytes,
                                make_payloads(size), count, warmup)

    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult:
        return _one_way(self.conn.send_bytes, self.conn.recv_bytes, size, count, warmup)

    def close(self) -> None:
        self.conn.close()
        self._join()


# -- os.pipe --------------------------------------------------------------------------------------
def _read_exactly(fd: int, n: int) -> bytes:
    data = os.read(fd, n)
    while len(data) < n:
        more = os.read(fd, n - len(data))
        if not more:
            raise EOFError("the pipe peer is gone")
        data += more
    return data


def _os_child(rfd: int, wfd: int, others: tuple[int, int], sink: bool) -> None:
    for fd in others:
        os.close(fd)
    read, write = os.read, os.write
    while not sink:
        data = read(rfd, 65536)
        if not data:
            return
        write(wfd, data)
    while True:  # the sink: a header says how many bytes of the next run to count
        try:
            count, size = OS_PIPE_HEADER.unpack(_read_exactly(rfd, OS_PIPE_HEADER.size))
        except EOFError:
            return
        remaining = count * size
        nbytes = 0
        while remaining:
            data = read(rfd, min(remaining, 65536))
            if not data:
                return
            nbytes += len(data)
            remaining -= len(data)
        write(wfd, SINK_REPORT.pack(nbytes // size if size else 0, nbytes))


class OsPipeSession(ForkedSession):
    """Two ``os.pipe`` (one per direction) to a forked echo or sink child."""

    def __init__(self, sink: bool) -> None:
        to_child_r, self.wfd = os.pipe()
        self.rfd, to_parent_w = os.pipe()
        super().__init__(_os_child, (to_child_r, to_parent_w, (self.wfd, self.rfd), sink))
        os.close(to_child_r)
        os.close(to_parent_w)

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]:
        rfd, wfd = self.rfd, self.wfd
        read, write = os.read, os.write

        def send(data: bytes) -> int:
            return write(wfd, data)

        def recv() -> bytes:
            data = read(rfd, size)
            while len(data) < size:
                data += _read_exactly(rfd, size - len(data))
            return data

        return time_round_trips(send, recv, make_payloads(size), count, warmup)

    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult:
        rfd, wfd = self.rfd, self.wfd
        write = os.write

        def send(data: bytes) -> int:
            return write(wfd, data)

        def finish() -> tuple[int, int]:
            messages, nbytes = SINK_REPORT.unpack(_read_exactly(rfd, SINK_REPORT.size))
            return messages, nbytes

        data = make_payloads(size, 1)[0]
        write(wfd, OS_PIPE_HEADER.pack(warmup, size))
        time_one_way(send, finish, data, warmup)
        write(wfd, OS_PIPE_HEADER.pack(count, size))
        return time_one_way(send, finish, data, count)

    def close(self) -> None:
        os.close(self.wfd)
        os.close(self.rfd)
        self._join()


# -- a minimal shared-memory ring ----------------------------------------------------------------
RING_SLOTS = 256
SLOT = 4 + MAX_PAYLOAD  # u32 length, payload
_LEN = struct.Struct("<I")
_STOP = 0xFFFF_FFFF  # a length no message has: the reader stops


def _backoff(spins: int) -> int:
    """A busy-waiting loop's turn: every 64th pass yields the core (a peer on the same
    core could not run otherwise; amplink's polling waiters yield as often)."""
    if spins & 63 == 63:
        os.sched_yield()
    return spins + 1


class ShmRing:
    """One direction: ``head`` (written by the producer) and ``tail`` (by the consumer) on
    their own cache lines, then the slots. Free-running u64 counters."""

    SIZE = 128 + RING_SLOTS * SLOT

    def __init__(self, buf: memoryview, offset: int) -> None:
        self.words = buf[offset:offset + 128].cast("Q")  # [0] head, [8] tail
        self.slots = buf[offset + 128:offset + self.SIZE]

    def put(self, data: bytes | memoryview, length: int | None = None) -> None:
        words, head = self.words, self.words[0]
        spins = 0
        while head - words[8] >= RING_SLOTS:  # full: spin
            spins = _backoff(spins)
        at = (head % RING_SLOTS) * SLOT
        n = len(data) if length is None else length
        _LEN.pack_into(self.slots, at, n)
        if n != _STOP:
            self.slots[at + 4:at + 4 + n] = data
        words[0] = head + 1  # after the slot: the reader sees it complete

    def get(self) -> bytes | None:
        """The next message (busy-waiting for it), or None at the stop mark."""
        words, tail = self.words, self.words[8]
        spins = 0
        while words[0] == tail:  # empty: spin
            spins = _backoff(spins)
        at = (tail % RING_SLOTS) * SLOT
        (n,) = _LEN.unpack_from(self.slots, at)
        data = None if n == _STOP else bytes(self.slots[at + 4:at + 4 + n])
        words[8] = tail + 1
        return data

    def release(self) -> None:
        self.words.release()
        self.slots.release()


def _ring_child(name: str, sink: bool) -> None:
    shm = SharedMemory(name)
    to_child, to_parent = ShmRing(shm.buf, 0), ShmRing(shm.buf, ShmRing.SIZE)
    counter = _Counter()
    try:
        while (data := to_child.get()) is not None:
            if not sink:
                to_parent.put(data)
            elif (report := counter.add(len(data))) is not None:
                to_parent.put(report)
    finally:
        to_child.release()
        to_parent.release()
        shm.close()


class ShmRingSession(ForkedSession):
    """A forked echo or sink child on two :class:`ShmRing` in one shared-memory block."""

    def __init__(self, sink: bool) -> None:
        self.shm = SharedMemory(create=True, size=2 * ShmRing.SIZE)
        self.shm.buf[:] = bytes(2 * ShmRing.SIZE)
        self.to_child, self.to_parent = ShmRing(self.shm.buf, 0), ShmRing(self.shm.buf,
                                                                          ShmRing.SIZE)
        super().__init__(_ring_child, (self.shm.name, sink))

    def _get(self) -> bytes:
        data = self.to_parent.get()
        assert data is not None
        return data

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]:
        return time_round_trips(self.to_child.put, self._get, make_payloads(size), count,
                                warmup)

    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult:
        return _one_way(self.to_child.put, self._get, size, count, warmup)

    def close(self) -> None:
        self.to_child.put(b"", _STOP)
        self._join()
        self.to_child.release()
        self.to_parent.release()
        self.shm.close()
        self.shm.unlink()


# -- iceoryx2 -------------------------------------------------------------------------------------
class _Iox:
    """One side of two iceoryx2 publish/subscribe services (and, with ``event``, two event
    services), ``ping`` (parent to child) and ``pong``."""

    def __init__(self, tag: str, outgoing: str, incoming: str, event: bool) -> None:
        import iceoryx2 as iox2

        self.iox2 = iox2
        iox2.set_log_level_from_env_or(iox2.LogLevel.Warn)
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)

        def pubsub(name: str) -> Any:
            return (self.node.service_builder(iox2.ServiceName.new(f"{tag}/{name}"))
                    .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                    .subscriber_max_buffer_size(RING_SLOTS).history_size(0)
                    .enable_safe_overflow(False).open_or_create())

        def events(name: str) -> Any:
            return (self.node.service_builder(iox2.ServiceName.new(f"{tag}/{name}-event"))
                    .event().open_or_create())

        self.publisher = (pubsub(outgoing).publisher_builder().initial_max_slice_len(
            MAX_PAYLOAD).backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create())
        self.subscriber = pubsub(incoming).subscriber_builder().create()
        self.notifier = events(outgoing).notifier_builder().create() if event else None
        self.listener = events(incoming).listener_builder().create() if event else None
        self.timeout = iox2.Duration.from_millis(50)

    def send(self, data: bytes | memoryview) -> None:
        n = len(data)
        sample = self.publisher.loan_slice_uninit(n)
        if n:
            ctypes.memmove(sample.payload().as_ptr(), bytes(data), n)
        sample.assume_init().send()
        if self.notifier is not None:
            self.notifier.notify()

    def recv(self) -> bytes:
        receive, listener = self.subscriber.receive, self.listener
        spins = 0
        while (sample := receive()) is None:
            if listener is not None:
                listener.timed_wait(self.timeout)
            else:
                spins = _backoff(spins)
        payload = sample.payload()
        data = ctypes.string_at(payload.as_ptr(), payload.len())
        sample.delete()
        return data

    def close(self) -> None:
        for port in (self.publisher, self.subscriber, self.notifier, self.listener):
            if port is not None:
                port.delete()


_IOX_STOP = b"\x00amplink-bench-stop"


def _spin_until(ready: Callable[[], bool], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ready():
            return True
    return False


def _iox_child(tag: str, event: bool, sink: bool) -> None:
    side = _Iox(tag, "pong", "ping", event)
    counter = _Counter()
    try:
        while (data := side.recv()) != _IOX_STOP:
            if not sink:
                side.send(data)
            elif (report := counter.add(len(data))) is not None:
                side.send(report)
    finally:
        side.close()


class Iceoryx2Session(ForkedSession):
    """iceoryx2 publish/subscribe to a forked echo or sink child; ``event``: both readers
    sleep on an event service between samples instead of busy-waiting."""

    _sessions = 0

    def __init__(self, sink: bool, event: bool) -> None:
        Iceoryx2Session._sessions += 1
        tag = f"amplink-bench/{os.getpid()}/{Iceoryx2Session._sessions}"
        super().__init__(_iox_child, (tag, event, sink))
        self.side = _Iox(tag, "ping", "pong", event)
        self._handshake()

    def _handshake(self) -> None:
        """Ping until the child answers (a sample sent before its subscriber is
        connected is dropped), then take any late answers too."""
        has_samples = self.side.subscriber.has_samples
        deadline = time.monotonic() + 10
        self.side.send(b"")  # the echo returns it, the sink reports
        while not _spin_until(has_samples, 0.05):
            if time.monotonic() > deadline:
                raise RuntimeError("the iceoryx2 child never answered")
            self.side.send(b"")
        _spin_until(lambda: False, 0.05)
        while has_samples():
            self.side.recv()

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]:
        return time_round_trips(self.side.send, self.side.recv, make_payloads(size), count,
                                warmup)

    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult:
        return _one_way(self.side.send, self.side.recv, size, count, warmup)

    def close(self) -> None:
        self.side.send(_IOX_STOP)
        self._join()
        self.side.close()


def iceoryx2_available() -> bool:
    try:
        import iceoryx2  # noqa: F401
    except ImportError:
        return False
    return True
