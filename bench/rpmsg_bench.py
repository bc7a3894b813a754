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
import multiprocessing
import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from typing import Any, Protocol

# the benchmarks' shared helpers (bench/ is sys.path[0]); first: it finds amplink
import benchkit
from benchkit import (
    add_common_options,
    chosen_params,
    describe_run,
    measure_all,
    pinned,
    quiet_gc,
    summarized,
    table,
    write_json,
)

from amplink import SimProcessor
from amplink.perf import (
    SINK_REPORT,
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
TIMEOUT = 10.0  # s, any wait of a zero-copy run
_SAME = b"same"  # a zero-copy reply that equals its request (compared in place)

PEERS = ("amplink-blocking", "amplink-polling", "amplink-zc-blocking", "amplink-zc-polling",
         "mp.Pipe", "os.pipe")
AMPLINK_PEERS = PEERS[:4]
BASELINES = PEERS[4:]
TITLES = {"amplink-blocking": "amplink blocking", "amplink-polling": "amplink polling",
          "amplink-zc-blocking": "zero-copy blocking", "amplink-zc-polling": "zero-copy polling",
          "mp.Pipe": "mp.Pipe", "os.pipe": "os.pipe"}
SHORT = {"amplink-blocking": "blocking", "amplink-polling": "polling",
         "amplink-zc-blocking": "zc-blocking", "amplink-zc-polling": "zc-polling"}

TARGET_ONE_WAY_POLL = 1_000_000  # msg/s, 16 B, polling mode
TARGET_RTT_POLL = 4e-6           # s, 16 B, polling mode
TARGET_RTT_RATIO = 1.2           # blocking RTT / os.pipe RTT, 16 B


@dataclass(frozen=True)
class Params(benchkit.Params):
    one_way_count: int
    one_way_warmup: int
    spin: float = 0.0  # amplink's spin before sleeping (blocking mode), seconds


FULL = Params(runs=5, sizes=(16, 496), rtt_count=10_000, rtt_warmup=1000,
              one_way_count=50_000, one_way_warmup=5000)
QUICK = Params(runs=3, sizes=(16, 496), rtt_count=1000, rtt_warmup=200,
               one_way_count=5000, one_way_warmup=1000)


# -- peers --------------------------------------------------------------------------------------
class Session(Protocol):
    pid: int

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]: ...
    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult: ...
    def statistics(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class AmplinkSession:
    """A SimProcessor running the echo or the sink example firmware.

    ``zero_copy``: the host fills loaned transmit buffers in place and reads replies as
    held receive buffers (compared in place, then released: inside the timed window,
    as the copying receive re-posts its buffer inside it); the firmware is the same.
    """

    def __init__(self, firmware: str, service: str, poll: bool, spin: float,
                 zero_copy: bool = False) -> None:
        self.proc = SimProcessor(firmware, name="bench", poll_mode=poll, spin=spin)
        self.proc.start()
        try:
            self.ep = self.proc.link.open_channel(service, timeout=10.0, hold=zero_copy)
        except BaseException:
            self.proc.stop()
            raise
        assert self.proc.process is not None
        self.pid = self.proc.process.pid
        self.zero_copy = zero_copy

    def _send_loaned(self, data: bytes) -> None:
        loan = self.ep.loan(TIMEOUT)
        n = len(data)
        loan.view[:n] = data
        loan.send(n)

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]:
        if not self.zero_copy:
            return measure_round_trip(self.ep, size, count, warmup)
        recv_held = self.ep.recv_held

        def recv() -> bytes:
            with recv_held(TIMEOUT) as msg:
                return _SAME if msg.view == self._last else bytes(msg.view)

        def send(data: bytes) -> None:
            self._last = data
            self._send_loaned(data)

        return time_round_trips(send, recv, make_payloads(size), count, warmup,
                                expect=lambda data: _SAME)

    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult:
        if not self.zero_copy:
            return measure_one_way(self.ep, size, count, warmup)
        ep = self.ep

        def finish() -> tuple[int, int]:
            ep.send(b"", timeout=TIMEOUT)
            messages, nbytes = SINK_REPORT.unpack(ep.recv(TIMEOUT))
            return messages, nbytes

        data = make_payloads(size, 1)[0]
        time_one_way(self._send_loaned, finish, data, warmup)
        return time_one_way(self._send_loaned, finish, data, count)

    def statistics(self) -> dict[str, int]:
        s = self.proc.link.statistics()
        return {"safety_net_wakeups": s.safety_net_wakeups, "sleeps": s.sleeps,
                "messages_sent": s.messages_sent, "messages_received": s.messages_received,
                "kicks_sent": int(s.backend.get("kicks_sent", 0)),
                "protocol_faults": sum(dict(s.backend.get("protocol_faults", {})).values())}

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
        return AmplinkSession(firmware, service, poll=peer.endswith("polling"), spin=spin,
                              zero_copy=peer.startswith("amplink-zc"))
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
        result["rtt"][str(size)] = summarized(size_runs)
    with session(peer, sink=True, spin=params.spin) as s:
        ow: dict[int, list[OneWayResult]] = {size: [] for size in params.sizes}
        for _run in range(params.runs):
            for size in params.sizes:
                with quiet_gc():
                    ow[size].append(s.one_way(size, params.one_way_count,
                                              params.one_way_warmup))
        result["statistics"]["one_way"] = s.statistics()
    for size, results in ow.items():
        result["one_way"][str(size)] = summarized(
            [{**asdict(r), "msg_per_s": r.messages_per_second,
              "mb_per_s": r.megabytes_per_second} for r in results],
            ("msg_per_s", "mb_per_s"))
    return result


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
        return Summary.from_dict(results[peer][row.kind][str(row.size)][row.key])
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


def report(data: dict[str, Any], params: Params) -> str:
    results = data["results"]
    meta = data["meta"]
    peers = [p for p in PEERS if p in results]
    out = [
        f"amplink rpmsg benchmark ({meta['mode']}): {params.runs} runs per cell; RTT "
        f"{params.rtt_count} round trips per run, one-way {params.one_way_count} messages "
        "per run",
        describe_run(meta, "RTT host/peer", "pinned_rtt"),
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
        head = ["metric"] + [f"{SHORT[p.split('/')[0]]}/{p.split('/')[1]}" for p in pairs]
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
    add_common_options(
        parser, quick_help="fewer runs and messages (well under 30 s)",
        pin_help="do not pin host and peer to cores 0 and 1 for the RTT runs")
    parser.add_argument("--spin-us", type=float, default=0.0,
                        help="amplink blocking mode: spin this long before each sleep")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated subset of {','.join(PEERS)}")
    args = parser.parse_args(argv)
    params = chosen_params(parser, args, QUICK, FULL)
    if args.spin_us:
        params = replace(params, spin=args.spin_us / 1e6)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    data = measure_all(args, params, {p: TITLES[p] for p in PEERS if p in peers},
                       measure_peer, pinned_key="pinned_rtt")
    results = data["results"]
    data["ratios"] = ratios(results, params)
    data["targets"] = targets(results)
    print(report(data, params))
    if args.json:
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
