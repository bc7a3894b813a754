#!/usr/bin/env python3
"""rpmsg between the host and a simulated processor, against every baseline, in one run.

Measures, in one run and with the same timing loops (``amplink.perf``):

* round-trip latency (RTT) of each payload size to an echo peer, and
* one-way throughput (messages/s, MB/s) to a counting sink, timed until the sink
  confirmed the count (amplink also in batches with ``send_many``),

for these peers, each a separate process:

* ``amplink blocking``  - SimProcessor with the echo / sink example firmware, eventfd
  doorbells: the waiting side spins briefly (the default spin), then sleeps;
* ``amplink no-spin``   - the same with ``spin=0``: every wait sleeps at once;
* ``amplink polling``   - ``poll_mode=True``: both sides spin on the rings;
* ``zero-copy blocking`` / ``zero-copy polling`` - loaned and held buffers;
* the baselines of ``baselines.py``: ``mp.Pipe``, ``os.pipe``, ``shm-ring`` (a minimal
  Python SPSC ring in shared memory), ``iceoryx2-busy`` and ``iceoryx2-event`` (its
  Python publish/subscribe; skipped if the ``iceoryx2`` package is not installed).

For RTT the host and the peer are pinned to cores 0 and 1 when the machine allows it
(the same for every peer). Every cell is repeated (``--runs``); the table shows the
median of the runs and their interquartile range, then the ratios amplink/baseline and
the targets; ``--json`` writes every number, ``--plot`` draws them (matplotlib).

This is a benchmark, not a test: ``python3 bench/rpmsg_bench.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

# the benchmarks' shared helpers (bench/ is sys.path[0]); first: it finds amplink
import benchkit
from baselines import (
    Iceoryx2Session,
    MpPipeSession,
    OsPipeSession,
    ShmRingSession,
    iceoryx2_available,
)
from benchkit import (
    add_common_options,
    chosen_params,
    describe_run,
    measure_interleaved,
    pinned,
    progress,
    quiet_gc,
    summarized,
    table,
    write_json,
)

from amplink import SimProcessor
from amplink._accel import IMPLEMENTATION
from amplink.link.waiting import DEFAULT_SPIN
from amplink.perf import (
    SINK_REPORT,
    OneWayResult,
    PayloadMismatch,
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
TIMEOUT = 10.0  # s, any wait of a zero-copy run
BATCH = 64  # messages per send_many in the batched one-way run
_SAME = b"same"  # a zero-copy reply that equals its request (compared in place)

PEERS = ("amplink-blocking", "amplink-nospin", "amplink-polling", "amplink-zc-blocking",
         "amplink-zc-polling", "mp.Pipe", "os.pipe", "shm-ring", "iceoryx2-busy",
         "iceoryx2-event")
AMPLINK_PEERS = PEERS[:5]
BASELINES = PEERS[5:]
ICEORYX2_PEERS = ("iceoryx2-busy", "iceoryx2-event")
TITLES = {"amplink-blocking": "amplink blocking", "amplink-nospin": "amplink no-spin",
          "amplink-polling": "amplink polling", "amplink-zc-blocking": "zero-copy blocking",
          "amplink-zc-polling": "zero-copy polling", "mp.Pipe": "mp.Pipe", "os.pipe": "os.pipe",
          "shm-ring": "shm-ring", "iceoryx2-busy": "iceoryx2 busy",
          "iceoryx2-event": "iceoryx2 event"}

TARGET_RTT_POLL = 3e-6        # s, RTT p50 16 B, polling mode
TARGET_RTT_RATIO = 1.05       # blocking RTT p50 / os.pipe RTT p50, 16 B
TARGET_ONE_WAY_RATIO = 1.0    # one-way 16 B msg/s, amplink / os.pipe (polling and blocking)


@dataclass(frozen=True)
class Params(benchkit.Params):
    one_way_count: int
    one_way_warmup: int
    spin: float | None = None  # amplink blocking's spin before sleeping (None: the default)


FULL = Params(runs=5, sizes=(16, 496), rtt_count=10_000, rtt_warmup=1000,
              one_way_count=50_000, one_way_warmup=5000)
QUICK = Params(runs=3, sizes=(16, 496), rtt_count=1000, rtt_warmup=200,
               one_way_count=5000, one_way_warmup=1000)


# -- amplink --------------------------------------------------------------------------------------
class Session(Protocol):
    pid: int

    def round_trips(self, size: int, count: int, warmup: int) -> list[float]: ...
    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult: ...
    def statistics(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class AmplinkSession:
    """A SimProcessor running the echo or the sink example firmware.

    ``zero_copy``: the host fills loaned transmit buffers in place and reads replies as
    held receive buffers (compared in place, then released: inside the timed window,
    as the copying receive re-posts its buffer inside it); the firmware is the same.
    """

    def __init__(self, firmware: str, service: str, poll: bool, spin: float | None,
                 zero_copy: bool = False) -> None:
        options = {} if spin is None else {"spin": spin}
        self.proc = SimProcessor(firmware, name="bench", poll_mode=poll, **options)
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

    def _finish(self) -> tuple[int, int]:
        self.ep.send(b"", timeout=TIMEOUT)
        messages, nbytes = SINK_REPORT.unpack(self.ep.recv(TIMEOUT))
        return messages, nbytes

    def one_way(self, size: int, count: int, warmup: int) -> OneWayResult:
        if not self.zero_copy:
            return measure_one_way(self.ep, size, count, warmup)
        data = make_payloads(size, 1)[0]
        time_one_way(self._send_loaned, self._finish, data, warmup)
        return time_one_way(self._send_loaned, self._finish, data, count)

    def one_way_batched(self, size: int, count: int, warmup: int) -> OneWayResult:
        """One-way throughput sending ``BATCH`` messages per ``send_many`` (counts are
        rounded up to whole batches), timed as :func:`time_one_way` times single sends."""
        batch = make_payloads(size, 1) * BATCH
        send_many = self.ep.send_many
        clock = time.perf_counter_ns

        def run(batches: int) -> OneWayResult:
            t0 = clock()
            for _ in range(batches):
                if send_many(batch, TIMEOUT) != BATCH:
                    raise TimeoutError("a batch was not sent within the timeout")
            messages, nbytes = self._finish()
            t1 = clock()
            if messages != batches * BATCH or nbytes != batches * BATCH * size:
                raise PayloadMismatch(f"the sink counted {messages} messages / {nbytes} B, "
                                      f"{batches * BATCH} / {batches * BATCH * size} B went")
            return OneWayResult(messages, size, (t1 - t0) * 1e-9)

        run(-(-warmup // BATCH))
        return run(-(-count // BATCH))

    def statistics(self) -> dict[str, Any]:
        s = self.proc.link.statistics()
        return {"safety_net_wakeups": s.safety_net_wakeups, "sleeps": s.sleeps,
                "messages_sent": s.messages_sent, "messages_received": s.messages_received,
                "kicks_sent": int(s.backend.get("kicks_sent", 0)),
                "protocol_faults": sum(dict(s.backend.get("protocol_faults", {})).values()),
                "implementation": s.backend.get("implementation", "python"),
                "spin_us": self.proc.link.spin * 1e6}

    def close(self) -> None:
        code = self.proc.stop()
        if code:
            raise RuntimeError(f"the firmware exited with status {code}")


def open_session(peer: str, sink: bool, params: Params) -> Session:
    if peer in AMPLINK_PEERS:
        firmware, service = (SINK_FIRMWARE, "rpmsg-sink") if sink else (ECHO_FIRMWARE,
                                                                        "rpmsg-echo")
        spin = 0.0 if peer == "amplink-nospin" else params.spin
        return AmplinkSession(firmware, service, poll=peer.endswith("polling"), spin=spin,
                              zero_copy=peer.startswith("amplink-zc"))
    if peer == "mp.Pipe":
        return MpPipeSession(sink)
    if peer == "os.pipe":
        return OsPipeSession(sink)
    if peer == "shm-ring":
        return ShmRingSession(sink)
    if peer in ICEORYX2_PEERS:
        return Iceoryx2Session(sink, event=peer == "iceoryx2-event")
    raise ValueError(f"unknown peer {peer!r}")


@contextmanager
def session(peer: str, sink: bool, params: Params) -> Iterator[Session]:
    s = open_session(peer, sink, params)
    try:
        yield s
    finally:
        s.close()


# -- measuring ------------------------------------------------------------------------------------
def _one_way_summary(results: list[OneWayResult]) -> dict[str, Any]:
    return summarized([{**asdict(r), "msg_per_s": r.messages_per_second,
                        "mb_per_s": r.megabytes_per_second} for r in results],
                      ("msg_per_s", "mb_per_s"))


def measure_run(peer: str, params: Params, pin: bool) -> dict[str, Any]:
    """One run of ``peer``: RTT (pinned) of every size, then one-way (and, for amplink,
    batched one-way) of every size, each session fresh."""
    run: dict[str, Any] = {"rtt": {}, "one_way": {}, "one_way_batched": {}, "statistics": {}}
    with session(peer, sink=False, params=params) as s:
        with pinned(s.pid, pin) as ok:
            run["pinned_rtt"] = ok
            for size in params.sizes:
                with quiet_gc():
                    samples = s.round_trips(size, params.rtt_count, params.rtt_warmup)
                run["rtt"][size] = {**percentiles(samples), "mean": sum(samples) / len(samples),
                                    "samples_ns": [round(x * 1e9) for x in samples]}
        run["statistics"]["rtt"] = s.statistics()
    with session(peer, sink=True, params=params) as s:
        for size in params.sizes:
            with quiet_gc():
                run["one_way"][size] = s.one_way(size, params.one_way_count,
                                                 params.one_way_warmup)
            if isinstance(s, AmplinkSession):
                with quiet_gc():
                    run["one_way_batched"][size] = s.one_way_batched(
                        size, params.one_way_count, params.one_way_warmup)
        run["statistics"]["one_way"] = s.statistics()
    return run


def _added(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics of several runs: counters added, the rest as in the last run."""
    total = dict(stats[-1])
    for key, value in total.items():
        if isinstance(value, int) and not isinstance(value, bool):
            total[key] = sum(s[key] for s in stats)
    return total


def combine(peer: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one peer as the report shows them: per size, the summary of the runs."""
    sizes = list(runs[0]["rtt"])
    result: dict[str, Any] = {
        "rtt": {str(n): summarized([r["rtt"][n] for r in runs]) for n in sizes},
        "one_way": {str(n): _one_way_summary([r["one_way"][n] for r in runs]) for n in sizes},
        "one_way_batched": {str(n): _one_way_summary([r["one_way_batched"][n] for r in runs])
                            for n in sizes if n in runs[0]["one_way_batched"]},
        "statistics": {phase: _added([r["statistics"][phase] for r in runs])
                       for phase in ("rtt", "one_way")},
        "pinned_rtt": all(r["pinned_rtt"] for r in runs),
    }
    return result


# -- reporting ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    kind: str        # "rtt", "one_way" or "one_way_batched"
    size: int
    key: str         # "p50"/"p99" or "msg_per_s"/"mb_per_s"
    scale: float
    digits: int


def rows(params: Params) -> list[Row]:
    out = []
    for key in ("p50", "p99"):
        for size in params.sizes:
            out.append(Row(f"RTT {key:<3} {size:>3} B", "us", "rtt", size, key, 1e6, 1))
    for kind, label in (("one_way", "one-way"), ("one_way_batched", f"send_many({BATCH})")):
        for size in params.sizes:
            out.append(Row(f"{label} {size:>3} B", "msg/s", kind, size, "msg_per_s", 1, 0))
    for size in params.sizes:
        out.append(Row(f"one-way {size:>3} B", "MB/s", "one_way", size, "mb_per_s", 1, 2))
    return out


def cell(results: dict[str, Any], peer: str, row: Row) -> Summary | None:
    try:
        return Summary.from_dict(results[peer][row.kind][str(row.size)][row.key])
    except KeyError:
        return None


def ratios(results: dict[str, Any], params: Params) -> dict[str, dict[str, float]]:
    """amplink / baseline medians for every row (RTT: < 1 is faster; one-way: > 1 is
    faster)."""
    out: dict[str, dict[str, float]] = {}
    for row in rows(params):
        for a in AMPLINK_PEERS:
            for b in BASELINES:
                ca = cell(results, a, row)
                cb = cell(results, b, replace(row, kind="one_way") if row.kind ==
                          "one_way_batched" else row)
                if ca is None or cb is None or not cb.median:
                    continue
                out.setdefault(f"{row.name} {row.key}", {})[f"{a}/{b}"] = ca.median / cb.median
    return out


def _median(results: dict[str, Any], peer: str, kind: str, size: int,
            key: str) -> float | None:
    try:
        return float(results[peer][kind][str(size)][key]["median"])
    except KeyError:
        return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    osp_ow = _median(results, "os.pipe", "one_way", 16, "msg_per_s")
    for peer in ("amplink-polling", "amplink-blocking"):
        ow = _median(results, peer, "one_way", 16, "msg_per_s")
        if ow is not None and osp_ow:
            ratio = ow / osp_ow
            out.append({"name": f"one-way 16 B, {TITLES[peer]} >= {TARGET_ONE_WAY_RATIO:g} x "
                                "os.pipe", "value": ratio,
                        "shown": f"{ow:,.0f} / {osp_ow:,.0f} msg/s = {ratio:.2f}x",
                        "pass": ratio >= TARGET_ONE_WAY_RATIO})
    rtt = _median(results, "amplink-polling", "rtt", 16, "p50")
    if rtt is not None:
        out.append({"name": f"RTT p50 16 B, polling <= {TARGET_RTT_POLL * 1e6:g} us",
                    "value": rtt, "shown": f"{rtt * 1e6:.1f} us", "pass": rtt <= TARGET_RTT_POLL})
    iox = _median(results, "iceoryx2-busy", "rtt", 16, "p50")
    if rtt is not None and iox is not None:
        out.append({"name": "RTT p50 16 B, polling < iceoryx2 busy-wait", "value": rtt / iox,
                    "shown": f"{rtt * 1e6:.1f} / {iox * 1e6:.1f} us = {rtt / iox:.2f}x",
                    "pass": rtt < iox})
    osp = _median(results, "os.pipe", "rtt", 16, "p50")
    for peer in ("amplink-blocking", "amplink-nospin"):
        blk = _median(results, peer, "rtt", 16, "p50")
        if blk is not None and osp:
            ratio = blk / osp
            out.append({"name": f"RTT p50 16 B, {TITLES[peer]} <= {TARGET_RTT_RATIO:g} x "
                                "os.pipe", "value": ratio,
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
        f"amplink's hot path: {meta['implementation']}; spin before sleeping (blocking): "
        f"{meta['spin_us']:g} us; peers left out: {', '.join(meta['skipped']) or 'none'}",
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
    bases = [b for b in BASELINES if b in results]
    amps = [a for a in AMPLINK_PEERS if a in results]
    if bases and amps:
        out += ["", "ratios amplink/baseline of the medians (RTT: below 1 is faster than the "
                "baseline; one-way: above 1 is faster; send_many against the baseline's "
                "one-way)", ""]
        lines = [["metric", "amplink"] + [TITLES[b] for b in bases]]
        for row in rows(params):
            if row.key == "mb_per_s":
                continue  # the same ratio as msg/s
            key = f"{row.name} {row.key}"
            for a in amps:
                found = [rat.get(key, {}).get(f"{a}/{b}") for b in bases]
                if any(v is not None for v in found):
                    lines.append([row.name, TITLES[a]] + ["-" if v is None else f"{v:.2f}x"
                                                          for v in found])
        out += table(lines)

    out += ["", "link statistics (amplink runs):"]
    for peer in amps:
        for phase, s in results[peer]["statistics"].items():
            out.append(f"  {TITLES[peer]:<18} {phase:<7} safety-net wake-ups "
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
        description="Benchmark rpmsg to a simulated processor (blocking, polling, zero copy) "
                    "against multiprocessing.Pipe, os.pipe, a shared-memory ring and "
                    "iceoryx2: round-trip latency and one-way throughput.")
    add_common_options(
        parser, quick_help="fewer runs and messages (well under a minute)",
        pin_help="do not pin host and peer to cores 0 and 1 for the RTT runs")
    parser.add_argument("--spin-us", type=float,
                        help="amplink blocking: spin this long before each sleep (default: "
                             f"the library's, {DEFAULT_SPIN * 1e6:g} us here)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated subset of {','.join(PEERS)}")
    parser.add_argument("--sizes", help="comma-separated payload sizes in bytes, 1..496 "
                                        "(default 16,496)")
    parser.add_argument("--plot", metavar="PNG", help="draw the latency distributions and "
                                                      "the throughput by size (matplotlib)")
    args = parser.parse_args(argv)
    params = chosen_params(parser, args, QUICK, FULL)
    if args.spin_us is not None:
        params = replace(params, spin=args.spin_us / 1e6)
    if args.sizes:
        sizes = tuple(int(x) for x in args.sizes.split(","))
        if not all(1 <= n <= 496 for n in sizes):
            parser.error("--sizes: every size must be in 1..496")
        params = replace(params, sizes=sizes)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    skipped = []
    if not iceoryx2_available():
        skipped = [p for p in peers if p in ICEORYX2_PEERS]
        peers = [p for p in peers if p not in ICEORYX2_PEERS]
        if skipped:
            progress("iceoryx2 is not installed (pip install iceoryx2): its peers are left out")
    if args.plot:
        from plots import check_matplotlib
        check_matplotlib(parser)
    data = measure_interleaved(args, params, {p: TITLES[p] for p in PEERS if p in peers},
                               measure_run, combine, pinned_key="pinned_rtt")
    results = data["results"]
    data["meta"].update(implementation=IMPLEMENTATION, skipped=skipped,
                        spin_us=(DEFAULT_SPIN if params.spin is None else params.spin) * 1e6)
    data["ratios"] = ratios(results, params)
    data["targets"] = targets(results)
    print(report(data, params))
    if args.json:
        write_json(args.json, data)
    if args.plot:
        from plots import plot
        plot(data, TITLES, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
