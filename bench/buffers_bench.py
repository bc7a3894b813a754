"""Shared buffers vs. multiprocessing.shared_memory: allocation, mapping, CPU access.

For each size from 4 KiB to 256 MiB, in this process (no peer):

* alloc+map: ``allocate_buffer(size)`` (a sealed memfd) and its first mapping (a 1-byte
  CPU access bracket), against ``SharedMemory(create=True, size=size)`` (shm_open,
  ftruncate, mmap); no page is touched;
* free: ``close()`` against ``close()`` + ``unlink()``;
* bracket: one ``cpu_access()`` enter/exit on a mapped buffer (a view of the whole
  buffer, released at the end), against taking and releasing a view of ``shm.buf``;
* first fill: writing every byte of a new buffer once (page faults included).

Numbers are printed, not asserted: medians of the runs with their interquartile range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

from benchkit import progress, quiet_gc, table, write_json

from amplink.memory import Access, allocate_buffer

KiB, MiB = 1 << 10, 1 << 20
SIZES = (4 * KiB, 64 * KiB, MiB, 16 * MiB, 256 * MiB)
NAME = f"amplink-bench-{os.getpid()}"


def median_iqr(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) < 2:
        return samples[0], samples[0], samples[0]
    q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q2, q1, q3


def per_op(fn: Callable[[], object], count: int) -> float:
    """Seconds per call of ``fn``, over ``count`` calls."""
    t0 = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - t0) / count


def measure_amplink(size: int, runs: int, brackets: int, pattern: bytes) -> dict[str, list]:
    out: dict[str, list[float]] = {"alloc_map": [], "free": [], "bracket": [], "fill": []}
    for _ in range(runs):
        with quiet_gc():
            t0 = time.perf_counter()
            buf = allocate_buffer(size, name=NAME)
            with buf.cpu_access(Access.READ, 0, 1):
                pass
            t1 = time.perf_counter()
            def one(b: Any = buf) -> None:
                with b.cpu_access(Access.READ_WRITE):
                    pass

            out["bracket"].append(per_op(one, brackets))
            t2 = time.perf_counter()
            with buf.cpu_access(Access.WRITE) as view:
                view[:] = pattern
            t3 = time.perf_counter()
            buf.close()
            t5 = time.perf_counter()
        out["alloc_map"].append(t1 - t0)
        out["fill"].append(t3 - t2)
        out["free"].append(t5 - t3)
    return out


def measure_shm(size: int, runs: int, brackets: int, pattern: bytes) -> dict[str, list]:
    out: dict[str, list[float]] = {"alloc_map": [], "free": [], "bracket": [], "fill": []}
    for _ in range(runs):
        with quiet_gc():
            t0 = time.perf_counter()
            shm = shared_memory.SharedMemory(create=True, size=size)
            t1 = time.perf_counter()

            def one(s: Any = shm) -> None:
                view = s.buf[:]
                view.release()

            out["bracket"].append(per_op(one, brackets))
            t2 = time.perf_counter()
            assert shm.buf is not None
            shm.buf[:size] = pattern
            t3 = time.perf_counter()
            shm.close()
            shm.unlink()
            t5 = time.perf_counter()
        out["alloc_map"].append(t1 - t0)
        out["fill"].append(t3 - t2)
        out["free"].append(t5 - t3)
    return out


def size_label(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"


def cell(samples: list[float], scale: float, digits: int) -> str:
    med, q1, q3 = median_iqr([s * scale for s in samples])
    return f"{med:.{digits}f} [{q1:.{digits}f}-{q3:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs, fewer brackets (~5 s)")
    parser.add_argument("--runs", type=int, help="repetitions per cell (default 7, quick 3)")
    parser.add_argument("--json", metavar="PATH", help="write every number to PATH as JSON")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 7)
    brackets = 2000 if args.quick else 20000
    if runs < 1:
        parser.error("--runs must be at least 1")

    results: dict[str, Any] = {}
    measure_amplink(4 * KiB, 1, 10, b"\0" * 4 * KiB)  # warm-up: imports, first mappings
    measure_shm(4 * KiB, 1, 10, b"\0" * 4 * KiB)  # and the resource tracker process
    for size in SIZES:
        progress(f"measuring {size_label(size)} ...")
        pattern = b"\xa5" * size
        results[str(size)] = {"amplink": measure_amplink(size, runs, brackets, pattern),
                              "shared_memory": measure_shm(size, runs, brackets, pattern)}

    lines = [["size", "peer", "alloc+map us", "free us", "bracket us", "first fill ms"]]
    for size in SIZES:
        for peer in ("amplink", "shared_memory"):
            r = results[str(size)][peer]
            lines.append([size_label(size), peer, cell(r["alloc_map"], 1e6, 1),
                          cell(r["free"], 1e6, 1), cell(r["bracket"], 1e6, 2),
                          cell(r["fill"], 1e3, 2)])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {runs} runs per cell, "
          f"{brackets} brackets per run; median [q1-q3]; 1-min load average "
          f"{os.getloadavg()[0]:.2f}")
    print("\n".join(table(lines)))
    print("alloc+map: amplink = memfd + seals + first mmap (no page touched); shared_memory ="
          " shm_open + ftruncate + mmap.\nbracket: amplink = cpu_access() enter/exit (a "
          "released view of the whole buffer); shared_memory = a view of shm.buf taken and "
          "released (no ownership, no export check).")
    if args.json:
        write_json(args.json, {"runs": runs, "brackets": brackets, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
