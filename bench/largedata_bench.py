"""Large data: hand-over by reference and large messages, beside multiprocessing.shared_memory
+ a pipe and iceoryx2's publish/subscribe, in one run. Prints a table and ratios;
``--plot FILE.png`` draws throughput against size (needs the ``[plot]`` extra).

    python3 bench/largedata_bench.py [--quick] [--plot out.png]

Hand-over (buffers/s): the host sends a buffer, the peer touches one byte and says done;
``depth`` buffers in flight, handed over again as they come back: batched (all that came
back in one message) and one by one (a message per buffer). The peers go one by one.
Copy (GB/s): the host copies a message in, the peer copies it out into a reused buffer;
memcpy is one copy of the same size in this process (the best of several runs).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from functools import partial
from multiprocessing import shared_memory

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from amplink.handover import BufferChannel  # noqa: E402
from amplink.handover.large import LargeMessages  # noqa: E402
from amplink.memory import allocate_buffer  # noqa: E402
from amplink.platforms.sim import SimRemoteProc  # noqa: E402

KIB, MIB = 1 << 10, 1 << 20


def amplink_handover(size: int, count: int, depth: int, batched: bool = True) -> float:
    """Buffers/s: ``depth`` buffers in flight, the firmware touches one byte of each.
    ``batched``: what came back is handed over again in one message (``wait_done_many``,
    ``send_many``: one SEND message and one kick per batch); else one ``send`` (one
    message, usually one kick) and one ``wait_done`` per buffer."""
    rp = SimRemoteProc("amplink.firmware.examples.frames", args=["touch"])
    bufs = [allocate_buffer(size, name=f"b{i}") for i in range(depth)]
    try:
        with rp.acquire():
            ch = BufferChannel(rp.link.open_channel("rpmsg-frames", timeout=5), port=rp.buffers)
            for n in (min(1000, count), count):
                t0 = time.perf_counter()
                if batched:
                    ch.send_many(bufs)
                    sent, got = depth, 0
                    while got < n:
                        back = ch.wait_done_many(10)
                        got += len(back)
                        again = [r.buffer for r in back[:max(0, n - sent)]]
                        if again:
                            ch.send_many(again)
                            sent += len(again)
                else:
                    for b in bufs:
                        ch.send(b)
                    sent = depth
                    for _ in range(n):
                        buffer = ch.wait_done(10).buffer
                        if sent < n:
                            ch.send(buffer)
                            sent += 1
                dt = time.perf_counter() - t0
            return n / dt
    finally:
        for b in bufs:
            b.close()


def amplink_copy(size: int, count: int) -> float:
    rp = SimRemoteProc("amplink.firmware.examples.large_echo", args=["sink"])
    data = b"\xab" * size
    with rp.acquire():
        lm = LargeMessages(rp.link.open_channel("rpmsg-large", timeout=5), port=rp.buffers,
                           pool_size=max(32 * MIB, 2 * size))  # default fragments (1 MiB): copy-in
        # and copy-out overlap
        for n in (2, count):
            t0 = time.perf_counter()
            for _ in range(n):
                lm.send(data, timeout=30)
            lm.send(b"")
            messages, total = struct.unpack("<QQ", lm.recv(30))
            dt = time.perf_counter() - t0
            assert messages == n and total == n * size
        lm.close()
    return n * size / dt / 1e9


def _shm_child(name: str, size: int, conn, mode: str) -> None:
    shm = shared_memory.SharedMemory(name=name)
    out = memoryview(bytearray(size))  # a memoryview: assigning to it is one memcpy
    while True:
        msg = conn.recv_bytes()
        if msg == b"q":
            break
        if mode == "touch":
            shm.buf[0]  # noqa: B018
        else:
            out[:] = shm.buf[:size]
        conn.send_bytes(b"d")
    del out
    shm.close()


def shm_pipe(size: int, count: int, mode: str) -> float:
    shm = shared_memory.SharedMemory(create=True, size=size)
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_shm_child, args=(shm.name, size, child, mode))
    proc.start()
    data = b"\xab" * size
    try:
        for n in (2, count):
            t0 = time.perf_counter()
            for _ in range(n):  # one buffer: send, the peer touches or copies out, done
                if mode == "copy":
                    shm.buf[:size] = data
                parent.send_bytes(b"s")
                parent.recv_bytes()
            dt = time.perf_counter() - t0
        parent.send_bytes(b"q")
        proc.join(5)
    finally:
        shm.close()
        shm.unlink()
    return n / dt if mode == "touch" else n * size / dt / 1e9


def iceoryx2_pubsub(size: int, count: int, mode: str) -> float | None:
    try:
        import iceoryx2  # noqa: F401
    except ImportError:
        return None
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_iox_child, args=(size, count, mode, child))
    proc.start()
    result = parent.recv() if parent.poll(30) else None
    proc.join(10)
    return result


def _iox_child(size: int, count: int, mode: str, conn) -> None:
    """Publisher here, subscriber in a second process: the same ping-pong."""
    import ctypes

    import iceoryx2 as iox
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    service = (node.service_builder(iox.ServiceName.new(f"amplink-bench-{os.getpid()}"))
               .publish_subscribe(iox.Slice[ctypes.c_uint8]).open_or_create())
    publisher = service.publisher_builder().initial_max_slice_len(size).create()
    ctx = mp.get_context("spawn")
    ack_r, ack_w = ctx.Pipe()
    peer = ctx.Process(target=_iox_sub, args=(f"amplink-bench-{os.getpid()}", mode, size, ack_w))
    peer.start()
    ack_r.recv()  # subscribed
    data = b"\xab" * size
    for n in (2, count):
        t0 = time.perf_counter()
        for _ in range(n):
            sample = publisher.loan_slice_uninit(size)
            if mode == "copy":
                sample.payload_ptr and _memmove(sample.payload_ptr, data, size)
            sample = sample.assume_init()
            sample.send()
            ack_r.recv_bytes()
        dt = time.perf_counter() - t0
    peer.kill()
    conn.send(n / dt if mode == "touch" else n * size / dt / 1e9)


def _memmove(ptr: int, data: bytes, size: int) -> None:
    import ctypes
    ctypes.memmove(ptr, data, size)


def _iox_sub(name: str, mode: str, size: int, ack) -> None:
    import ctypes

    import iceoryx2 as iox
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    service = (node.service_builder(iox.ServiceName.new(name))
               .publish_subscribe(iox.Slice[ctypes.c_uint8]).open_or_create())
    subscriber = service.subscriber_builder().create()
    out = (ctypes.c_uint8 * size)()
    ack.send(b"ready")
    while True:
        sample = subscriber.receive()
        if sample is None:
            continue
        if mode == "copy":
            ctypes.memmove(out, sample.payload_ptr, size)
        else:
            ctypes.c_uint8.from_address(sample.payload_ptr).value  # noqa: B018
        sample.delete()
        ack.send_bytes(b"d")


def memcpy(size: int, count: int) -> float:
    """GB/s of one copy of ``size`` bytes into a reused buffer. Through a memoryview:
    ``bytearray[:] = bytes`` first copies ``bytes`` into a temporary bytearray (CPython),
    which at 64 MiB is a fresh mapping each time and ran at a twentieth of memcpy."""
    src = b"\xab" * size
    dst = memoryview(bytearray(size))
    dst[:] = src
    t0 = time.perf_counter()
    for _ in range(count):
        dst[:] = src
    return count * size / (time.perf_counter() - t0) / 1e9


def _median(runs: int, measure: Callable[[], float | None]) -> float | None:
    values = [measure() for _ in range(runs)]
    if any(v is None for v in values):
        return None
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", metavar="FILE.png")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per cell, the median is shown (default 3, --quick 1)")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    hand_sizes = ([4 * KIB, 1 * MIB, 64 * MIB] if args.quick
                  else [4 * KIB, 1 * MIB, 16 * MIB, 256 * MIB])
    copy_sizes = [4 * MIB, 64 * MIB]
    n_hand = 5000 if args.quick else 30000
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
          f"median of {runs} run(s) per cell; depth {args.depth}", flush=True)
    rows = []
    verdicts = []
    for size in hand_sizes:
        a = _median(runs, partial(amplink_handover, size, n_hand, args.depth))
        one = _median(runs, partial(amplink_handover, size, n_hand, args.depth,
                                                 batched=False))
        s = _median(runs, partial(shm_pipe, size, min(n_hand, 20000), "touch"))
        i = (_median(runs, partial(iceoryx2_pubsub, size, min(n_hand, 20000), "touch"))
             if size <= 16 * MIB else None)
        assert a is not None and one is not None and s is not None
        rows.append(("hand-over buffers/s", size, a, s, i, None, one))
        verdicts.append((f"hand-over {size:,} B >= 50,000/s (batched)", a >= 50_000))
        print(f"hand-over {size:>11,} B: amplink batched {a:>9,.0f}/s  one by one "
              f"{one:>9,.0f}/s  shm+pipe {s:>9,.0f}/s  iceoryx2 "
              f"{'-' if i is None else f'{i:,.0f}'}/s  batched/shm {a / s:.2f}x", flush=True)
    for size in copy_sizes:
        n = 40 if size <= 4 * MIB else 8
        if args.quick:
            n //= 2
        a = _median(runs, partial(amplink_copy, size, n))
        # memcpy: the best of several (a conservative ratio on a busy machine)
        m = max(memcpy(size, n) for _ in range(3 * runs))
        s = _median(runs, partial(shm_pipe, size, n, "copy"))
        i = _median(runs, partial(iceoryx2_pubsub, size, n, "copy"))
        assert a is not None and s is not None
        rows.append(("copy GB/s", size, a, s, i, m, None))
        verdicts.append((f"large messages {size:,} B >= 0.8x memcpy", a >= 0.8 * m))
        print(f"copy       {size:>11,} B: amplink {a:.2f} GB/s  shm+pipe {s:.2f}  iceoryx2 "
              f"{'-' if i is None else f'{i:.2f}'}  memcpy {m:.2f}  amplink/memcpy "
              f"{a / m:.2f}x", flush=True)
    for what, ok in verdicts:
        print(f"{'PASS' if ok else 'MISS'}  {what}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.plot:
        _plot(rows, args.plot)
    return 0


def _plot(rows, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("hand-over buffers/s", "copy GB/s"), strict=True):
        chosen = [r for r in rows if r[0] == kind]
        sizes = [r[1] for r in chosen]
        for column, label in ((2, "amplink (batched)"), (6, "amplink (one by one)"),
                              (3, "shm + pipe"), (4, "iceoryx2"), (5, "memcpy")):
            points = [(s, r[column]) for s, r in zip(sizes, chosen, strict=True) if r[column]]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size (bytes)")
        ax.set_title(kind)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot written to {path}")


if __name__ == "__main__":
    sys.exit(main())
