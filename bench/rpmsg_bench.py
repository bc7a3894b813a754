#!/usr/bin/env python3
"""rpmsg between the host and a simulated processor, against two pipe baselines.

Measures, in one run and with the same timing loops (``amplink.perf``):

* round-trip latency (RTT) of 16 B and 496 B messages to an echo peer, and
* one-way throughput (messages/s, MB/s) of 16 B and 496 B messages to a counting sink,
  timed until the sink confirmed the count,

for four peers, each a separate process:

* ``amplink blocking`` - SimProcessor with the echo / sink example firmware, eventfd
  doorbells (the waiting side sleeps);
* ``amplink polling``  - the same with ``poll_mode=True`` (both sides spin on the rings);
* ``mp.Pipe``          - ``multiprocessing.Pipe(duplex=True)`` to a forked child;
* ``os.pipe``          - a pair of ``os.pipe`` to a forked child.

For RTT the host and the peer are pinned to cores 0 and 1 when the machine allows it
(the same for every peer). Every cell is repeated (``--runs``); the table shows the
median of the runs and their interquartile range; ``--json`` writes every number.

This is a benchmark, not a test: ``python3 bench/rpmsg_bench.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

try:
    import amplink  # noqa: F401
except ImportError:  # run from a checkout without installing: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from amplink import SimProcessor  # noqa: E402
from amplink.firmware.examples.sink import REPORT as SINK_REPORT  # noqa: E402
from amplink.perf import (  # noqa: E402
    OneWayResult,
    Summary,
    make_payloads,
    measure_one_way,
    measure_round_trip,
    percentiles,
    time_one_way,
    time_round_trips,
)

ECHO_FIRMWARE = "amplink.firmware.examples.echo"
SINK_FIRMWARE = "amplink.firmware.examples.sink"
OS_PIPE_HEADER = struct.Struct("<QQ")  # count, size of the next one-way run
HOST_CORE, PEER_CORE = 0, 1

PEERS = ("amplink-blocking", "amplink-polling", "mp.Pipe", "os.pipe")
AMPLINK_PEERS = PEERS[:2]
BASELINES = PEERS[2:]
TITLES = {"amplink-blocking": "amplink blocking", "amplink-polling": "amplink polling",
          "mp.Pipe": "mp.Pipe", "os.pipe": "os.pipe"}

TARGET_ONE_WAY_POLL = 1_000_000  # msg/s, 16 B, polling mode
TARGET_RTT_POLL = 4e-6           # s, 16 B, polling mode
TARGET_RTT_RATIO = 1.2           # blocking RTT / os.pipe RTT, 16 B


@dataclass(frozen=True)
class Params:
    runs: int
    sizes: tuple[int, ...]
    rtt_count: int
    rtt_warmup: int
    one_way_count: int
    one_way_warmup: int
    spin: float = 0.0  # amplink's spin before sleeping (blocking mode), seconds


FULL = Params(runs=5, sizes=(16, 496), rtt_count=10_000, rtt_warmup=1000,
              one_way_count=50_000, one_way_warmup=5000)
QUICK = Params(runs=3, sizes=(16, 496), rtt_count=1000, rtt_warmup=200,
               one_way_count=5000, one_way_warmup=1000)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- core pinning -------------------------------------------------------------------------------
def can_pin() -> bool:
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        return {HOST_CORE, PEER_CORE} <= os.sched_getaffinity(0)
    except OSError:
        return False


@contextmanager
def pinned(peer_pid: int, enabled: bool) -> Iterator[bool]:
    """Pin this thread to HOST_CORE and every thread of ``peer_pid`` to PEER_CORE."""
    if not enabled:
        yield False
        return
    saved = os.sched_getaffinity(0)
    ok = True
    try:
        os.sched_setaffinity(0, {HOST_CORE})
        for tid in os.listdir(f"/proc/{peer_pid}/task"):
            os.sched_setaffinity(int(tid), {PEER_CORE})
    except OSError as exc:
        progress(f"  (could not pin: {exc})")
        ok = False
    try:
        yield ok
    finally:
        os.sched_setaffinity(0, saved)


# -- peers --------------------------------------------------------------------------------------
class Session(Protocol):
    pid: int

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]: ...
    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult: ...
    def statistics(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class AmplinkSession:
    """A SimProcessor running the echo or the sink example firmware."""

    def __init__(self, firmware: str, service: str, poll: bool, spin: float) -> None:
        self.proc = SimProcessor(firmware, name="bench", poll_mode=poll, spin=spin)
        self.proc.start()
        try:
            self.ep = self.proc.link.open_channel(service, timeout=10.0)
        except BaseException:
            self.proc.stop()
            raise
        assert self.proc.process is not None
        self.pid = self.proc.process.pid

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]:
        return measure_round_trip(self.ep, size, count, warmup)

    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult:
        return measure_one_way(self.ep, size, count, warmup)

    def statistics(self) -> dict[str, int]:
        s = self.proc.link.statistics()
        return {"safety_net_wakeups": s.safety_net_wakeups, "sleeps": s.sleeps,
                "messages_sent": s.messages_sent, "messages_received": s.messages_received,
                "kicks_sent": int(s.transport.get("kicks_sent", 0)),
                "protocol_faults": sum(dict(s.transport.get("protocol_faults", {})).values())}

    def close(self) -> None:
        code = self.proc.stop()
        if code:
            raise RuntimeError(f"the firmware exited with status {code}")


def _mp_echo(conn: Connection, other: Connection) -> None:
    other.close()
    recv, send = conn.recv_bytes, conn.send_bytes
    try:
        while True:
            send(recv())
    except EOFError:
        pass


def _mp_sink(conn: Connection, other: Connection) -> None:
    other.close()
    recv = conn.recv_bytes
    messages = nbytes = 0
    try:
        while True:
            data = recv()
            if data:
                messages += 1
                nbytes += len(data)
            else:
                conn.send_bytes(SINK_REPORT.pack(messages, nbytes))
                messages = nbytes = 0
    except EOFError:
        pass


class MpPipeSession:
    """``multiprocessing.Pipe(duplex=True)`` to a forked echo or sink child."""

    def __init__(self, sink: bool) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe(duplex=True)
        self.child = ctx.Process(target=_mp_sink if sink else _mp_echo,
                                 args=(child, self.conn), daemon=True)
        self.child.start()
        child.close()
        assert self.child.pid is not None
        self.pid = self.child.pid

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]:
        return time_round_trips(self.conn.send_bytes, self.conn.recv_bytes,
                                make_payloads(size), count, warmup)

    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult:
        conn = self.conn

        def finish() -> tuple[int, int]:
            conn.send_bytes(b"")
            messages, nbytes = SINK_REPORT.unpack(conn.recv_bytes())
            return messages, nbytes

        data = make_payloads(size, 1)[0]
        time_one_way(conn.send_bytes, finish, data, warmup)
        return time_one_way(conn.send_bytes, finish, data, count)

    def statistics(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self.conn.close()
        self.child.join(5)
        if self.child.is_alive():
            self.child.kill()
            self.child.join()


def _os_echo(rfd: int, wfd: int, others: tuple[int, int]) -> None:
    for fd in others:
        os.close(fd)
    read, write = os.read, os.write
    while True:
        data = read(rfd, 65536)
        if not data:
            return
        write(wfd, data)


def _read_exactly(fd: int, n: int) -> bytes:
    data = os.read(fd, n)
    while len(data) < n:
        more = os.read(fd, n - len(data))
        if not more:
            raise EOFError("the pipe peer is gone")
        data += more
    return data


def _os_sink(rfd: int, wfd: int, others: tuple[int, int]) -> None:
    for fd in others:
        os.close(fd)
    read = os.read
    while True:
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
        os.write(wfd, SINK_REPORT.pack(nbytes // size if size else 0, nbytes))


class OsPipeSession:
    """Two ``os.pipe`` (one per direction) to a forked echo or sink child."""

    def __init__(self, sink: bool) -> None:
        ctx = multiprocessing.get_context("fork")
        to_child_r, self.wfd = os.pipe()
        self.rfd, to_parent_w = os.pipe()
        self.child = ctx.Process(target=_os_sink if sink else _os_echo,
                                 args=(to_child_r, to_parent_w, (self.wfd, self.rfd)),
                                 daemon=True)
        self.child.start()
        os.close(to_child_r)
        os.close(to_parent_w)
        assert self.child.pid is not None
        self.pid = self.child.pid

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

    def statistics(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        os.close(self.wfd)
        os.close(self.rfd)
        self.child.join(5)
        if self.child.is_alive():
            self.child.kill()
            self.child.join()


def open_session(peer: str, sink: bool, spin: float) -> Session:
    if peer in AMPLINK_PEERS:
        firmware, service = (SINK_FIRMWARE, "rpmsg-sink") if sink else (ECHO_FIRMWARE,
                                                                        "rpmsg-echo")
        return AmplinkSession(firmware, service, poll=peer == "amplink-polling", spin=spin)
    if peer == "mp.Pipe":
        return MpPipeSession(sink)
    if peer == "os.pipe":
        return OsPipeSession(sink)
    raise ValueError(f"unknown peer {peer!r}")


@contextmanager
def session(peer: str, sink: bool, spin: float) -> Iterator[Session]:
    s = open_session(peer, sink, spin)
    try:
        yield s
    finally:
        s.close()


@contextmanager
def quiet_gc() -> Iterator[None]:
    """No garbage collection inside a timed run (the same for every peer)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- measuring ----------------------------------------------------------------------------------
def measure_peer(peer: str, params: Params, pin: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"rtt": {}, "one_way": {}, "statistics": {}, "pinned_rtt": False}
    with session(peer, sink=False, spin=params.spin) as s:
        with pinned(s.pid, pin) as ok:
            result["pinned_rtt"] = ok
            runs: dict[int, list[dict[str, Any]]] = {size: [] for size in params.sizes}
            for _run in range(params.runs):
                for size in params.sizes:
                    with quiet_gc():
                        samples = s.round_trips(size, params.rtt_count, params.rtt_warmup)
                    pct = percentiles(samples)
                    runs[size].append({
                        **pct, "mean": sum(samples) / len(samples),
                        "samples_ns": [round(x * 1e9) for x in samples],
                    })
        result["statistics"]["rtt"] = s.statistics()
    for size, size_runs in runs.items():
        result["rtt"][str(size)] = {
            "runs": size_runs,
            "p50": asdict_summary(Summary.of(r["p50"] for r in size_runs)),
            "p99": asdict_summary(Summary.of(r["p99"] for r in size_runs)),
        }
    with session(peer, sink=True, spin=params.spin) as s:
        ow: dict[int, list[OneWayResult]] = {size: [] for size in params.sizes}
        for _run in range(params.runs):
            for size in params.sizes:
                with quiet_gc():
                    ow[size].append(s.one_way(size, params.one_way_count,
                                              params.one_way_warmup))
        result["statistics"]["one_way"] = s.statistics()
    for size, results in ow.items():
        result["one_way"][str(size)] = {
            "runs": [{**asdict(r), "msg_per_s": r.messages_per_second,
                      "mb_per_s": r.megabytes_per_second} for r in results],
            "msg_per_s": asdict_summary(Summary.of(r.messages_per_second for r in results)),
            "mb_per_s": asdict_summary(Summary.of(r.megabytes_per_second for r in results)),
        }
    return result


def asdict_summary(s: Summary) -> dict[str, float]:
    return s.as_dict()


def summary(d: dict[str, float]) -> Summary:
    return Summary(int(d["n"]), d["median"], d["q1"], d["q3"], d["min"], d["max"])


# -- reporting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    kind: str        # "rtt" or "one_way"
    size: int
    key: str         # "p50"/"p99" or "msg_per_s"/"mb_per_s"
    scale: float
    digits: int


def rows(params: Params) -> list[Row]:
    out = []
    for key in ("p50", "p99"):
        for size in params.sizes:
            out.append(Row(f"RTT {key:<3} {size:>3} B", "us", "rtt", size, key, 1e6, 1))
    for size in params.sizes:
        out.append(Row(f"one-way {size:>3} B", "msg/s", "one_way", size, "msg_per_s", 1, 0))
    for size in params.sizes:
        out.append(Row(f"one-way {size:>3} B", "MB/s", "one_way", size, "mb_per_s", 1, 2))
    return out


def cell(results: dict[str, Any], peer: str, row: Row) -> Summary | None:
    try:
        return summary(results[peer][row.kind][str(row.size)][row.key])
    except KeyError:
        return None


def ratios(results: dict[str, Any], params: Params) -> dict[str, dict[str, float]]:
    """amplink / peer medians for every row (RTT: < 1 is faster; one-way: > 1 is faster)."""
    out: dict[str, dict[str, float]] = {}
    for row in rows(params):
        for a in AMPLINK_PEERS:
            for b in BASELINES:
                ca, cb = cell(results, a, row), cell(results, b, row)
                if ca is None or cb is None or not cb.median:
                    continue
                out.setdefault(f"{row.name} {row.key}", {})[f"{a}/{b}"] = ca.median / cb.median
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def get(peer: str, kind: str, size: int, key: str) -> float | None:
        try:
            return float(results[peer][kind][str(size)][key]["median"])
        except KeyError:
            return None

    ow = get("amplink-polling", "one_way", 16, "msg_per_s")
    if ow is not None:
        out.append({"name": "one-way 16 B, polling >= 1,000,000 msg/s",
                    "value": ow, "shown": f"{ow:,.0f} msg/s",
                    "pass": ow >= TARGET_ONE_WAY_POLL})
    rtt = get("amplink-polling", "rtt", 16, "p50")
    if rtt is not None:
        out.append({"name": "RTT p50 16 B, polling <= 4 us", "value": rtt,
                    "shown": f"{rtt * 1e6:.1f} us", "pass": rtt <= TARGET_RTT_POLL})
    blk, osp = get("amplink-blocking", "rtt", 16, "p50"), get("os.pipe", "rtt", 16, "p50")
    if blk is not None and osp is not None:
        ratio = blk / osp
        out.append({"name": "RTT p50 16 B, blocking <= 1.2 x os.pipe", "value": ratio,
                    "shown": f"{blk * 1e6:.1f} / {osp * 1e6:.1f} us = {ratio:.2f}x",
                    "pass": ratio <= TARGET_RTT_RATIO})
    for peer in AMPLINK_PEERS:
        if peer in results:
            stats = results[peer]["statistics"]
            wakeups = sum(s.get("safety_net_wakeups", 0) for s in stats.values())
            out.append({"name": f"safety-net wake-ups, {TITLES[peer]} == 0", "value": wakeups,
                        "shown": str(wakeups), "pass": wakeups == 0})
    return out


def table(lines: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w)
                                             for c, w in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def report(data: dict[str, Any], params: Params) -> str:
    results = data["results"]
    meta = data["meta"]
    peers = [p for p in PEERS if p in results]
    out = [
        f"amplink rpmsg benchmark ({meta['mode']}): {params.runs} runs per cell; RTT "
        f"{params.rtt_count} round trips per run, one-way {params.one_way_count} messages "
        "per run",
        f"python {meta['python']}, {meta['machine']}, {meta['cpus']} CPUs; RTT host/peer "
        f"pinned to cores {HOST_CORE}/{PEER_CORE}: {meta['pinned_rtt']}; "
        f"took {meta['seconds']:.1f} s; 1-min load average before "
        f"{meta['load_average_before'][0]:.2f}, after {meta['load_average_after'][0]:.2f}",
        "cells: median of the runs [interquartile range of the runs]",
        "",
    ]
    lines = [["metric"] + [TITLES[p] for p in peers]]
    for row in rows(params):
        line = [f"{row.name} ({row.unit})"]
        for peer in peers:
            c = cell(results, peer, row)
            line.append("-" if c is None else c.format(row.scale, digits=row.digits))
        lines.append(line)
    out += table(lines)

    rat = data["ratios"]
    pairs = [f"{a}/{b}" for a in AMPLINK_PEERS for b in BASELINES
             if a in results and b in results]
    if pairs:
        out += ["", "ratios amplink/peer of the medians (RTT: below 1 is faster than the "
                "peer; one-way: above 1 is faster)", ""]
        short = {"amplink-blocking": "blocking", "amplink-polling": "polling"}
        head = ["metric"] + [f"{short[p.split('/')[0]]}/{p.split('/')[1]}" for p in pairs]
        lines = [head]
        for row in rows(params):
            if row.key == "mb_per_s":
                continue  # the same ratio as msg/s
            key = f"{row.name} {row.key}"
            lines.append([row.name] + [f"{rat.get(key, {}).get(p, float('nan')):.2f}x"
                                       for p in pairs])
        out += table(lines)

    out += ["", "link statistics (amplink runs):"]
    for peer in AMPLINK_PEERS:
        if peer in results:
            for phase, s in results[peer]["statistics"].items():
                out.append(f"  {TITLES[peer]:<16} {phase:<7} safety-net wake-ups "
                           f"{s['safety_net_wakeups']}, sleeps {s['sleeps']}, kicks sent "
                           f"{s['kicks_sent']}, protocol faults {s['protocol_faults']}")
    out += ["", "targets:"]
    lines = [["target", "measured", "result"]]
    for t in data["targets"]:
        lines.append([t["name"], t["shown"], "PASS" if t["pass"] else "MISS"])
    out += table(lines)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark rpmsg to a simulated processor (blocking and polling mode) "
                    "against multiprocessing.Pipe and os.pipe: round-trip latency and "
                    "one-way throughput, 16 B and 496 B.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer runs and messages (well under 30 s)")
    parser.add_argument("--json", metavar="PATH", help="write every number to PATH as JSON")
    parser.add_argument("--runs", type=int, help="repetitions per cell (default 5, quick 3)")
    parser.add_argument("--spin-us", type=float, default=0.0,
                        help="amplink blocking mode: spin this long before each sleep")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated subset of {','.join(PEERS)}")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin host and peer to cores 0 and 1 for the RTT runs")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    if args.runs is not None:
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        params = Params(**{**asdict(params), "runs": args.runs})
    if args.spin_us:
        params = Params(**{**asdict(params), "spin": args.spin_us / 1e6})
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    pin = can_pin() and not args.no_pin
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for peer in PEERS:
        if peer in peers:
            progress(f"measuring {TITLES[peer]} ...")
            t = time.perf_counter()
            results[peer] = measure_peer(peer, params, pin)
            progress(f"  done in {time.perf_counter() - t:.1f} s")
    data: dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full", "params": asdict(params),
            "python": platform.python_version(), "machine": platform.platform(),
            "cpus": os.cpu_count(), "pinned_rtt": pin and all(
                r["pinned_rtt"] for r in results.values()),
            "seconds": time.perf_counter() - t0,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
        },
        "results": results,
    }
    data["ratios"] = ratios(results, params)
    data["targets"] = targets(results)
    print(report(data, params))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        progress(f"raw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
