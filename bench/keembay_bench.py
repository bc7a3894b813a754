#!/usr/bin/env python3
"""Keem Bay IPC: high-speed priority under a general-purpose flood, and Keem Bay beside
rpmsg over virtio, on this machine and in the same run.

**Priority.** The round-trip time (16 B) of an echo on high-speed (HS) channel 0 and on
general-purpose (GP) channel 10 of the ``kmb_echo`` firmware in a simulated VPU, idle and
while GP channels flood the link, two ways:

* *VPU flood*: the firmware sends 64-byte messages on GP channels 30 and 31 as fast as
  the link takes them (``flood on`` on HS channel 1); the host takes them in while it
  waits for its echoes, and empties their queues between round trips, untimed;
* *host flood*: a second host thread sends 64-byte messages to the GP sinks 20 and 21 as
  fast as the link takes them (both host threads on one core, sharing the GIL).

Idle and loaded blocks alternate in every run, so the machine's own load falls on both;
the target is the HS p99 under load at most 2x the idle HS p99 (ratio of the medians
over the runs). ``--plot PATH`` draws the percentiles (PNG, needs matplotlib).

**Beside virtio.** RTT (16 B, 496 B) of the HS echo against the rpmsg echo firmware, and
the one-way message rate to a sink (GP channel 20 against ``rpmsg-sink``), with the same
timing loops (:mod:`amplink.perf`); both processors run throughout and are measured in
turn within every run; ratios Keem Bay / virtio of the medians.

A benchmark, not a test: ``python3 bench/keembay_bench.py [--quick] [--plot P] [--json P]``.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

# the benchmarks' shared helpers (bench/ is sys.path[0]); first: it finds amplink
import benchkit
from benchkit import (
    add_common_options,
    chosen_params,
    describe_run,
    measure_all,
    pinned,
    progress,
    quiet_gc,
    summarized,
    table,
    write_json,
)

from amplink import SimProcessor
from amplink.firmware.examples.kmb_echo import COUNT
from amplink.link import Endpoint
from amplink.perf import (
    SINK_REPORT,
    PayloadMismatch,
    Summary,
    make_payloads,
    measure_one_way,
    measure_round_trip,
    percentiles,
)
from amplink.platforms.sim.keembay import KeemBayProcessor
from amplink.transports.keembay import KmbConfig, wait_peer_channel

KMB_FIRMWARE = "amplink.firmware.examples.kmb_echo"
HS, CONTROL, GP, SINKS, FLOODS = 0, 1, 10, (20, 21), (30, 31)
FLOOD_SIZE = 64
TIMEOUT = 10.0
TARGET_P99_RATIO = 2.0
SCENARIOS = ("idle", "vpu-flood", "host-flood")
TITLES = {"idle": "idle", "vpu-flood": "VPU flood", "host-flood": "host flood"}
PLOT_PERCENTILES = ("p50", "p90", "p99", "p99.9")


@dataclass(frozen=True)
class Params(benchkit.Params):
    one_way_count: int
    one_way_warmup: int
    fifo_share: int


QUICK = Params(runs=3, sizes=(16, 496), rtt_count=500, rtt_warmup=100, one_way_count=10_000,
               one_way_warmup=1000, fifo_share=KmbConfig.fifo_share)
FULL = Params(runs=5, sizes=(16, 496), rtt_count=3000, rtt_warmup=300, one_way_count=50_000,
              one_way_warmup=2000, fifo_share=KmbConfig.fifo_share)


# -- priority -----------------------------------------------------------------------------
def round_trips(ep: Endpoint, count: int, warmup: int,
                between: Callable[[], object]) -> list[float]:
    """``count`` timed round trips of 16 B on ``ep`` (after ``warmup``), each reply
    checked; ``between()`` runs before each, untimed."""
    payloads = make_payloads(16)
    clock = time.perf_counter_ns
    samples = []
    for i in range(-warmup, count):
        between()
        data = payloads[i % len(payloads)]
        t0 = clock()
        ep.send(data, timeout=TIMEOUT)
        reply = ep.recv(TIMEOUT)
        t1 = clock()
        if reply != data:
            raise PayloadMismatch(f"round trip {i}: the echo differs")
        if i >= 0:
            samples.append((t1 - t0) * 1e-9)
    return samples


class HostFlood:
    """A host thread sending to the GP sinks as fast as the link takes it."""

    def __init__(self, sinks: list[Endpoint]) -> None:
        self.sinks = sinks
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="host-flood")

    def _run(self) -> None:
        payload = bytes(FLOOD_SIZE)
        try:
            while not self.stop.is_set():
                for ep in self.sinks:
                    ep.send(payload, timeout=TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self) -> int:
        """Stop; the messages the sinks counted."""
        self.stop.set()
        self.thread.join(TIMEOUT)
        if self.error is not None:
            raise self.error
        total = 0
        for ep in self.sinks:
            ep.send(b"", timeout=TIMEOUT)
            total += SINK_REPORT.unpack(ep.recv(TIMEOUT))[0]
        return total


@contextmanager
def flooded(scenario: str, link_eps: dict[int, Endpoint],
            floods: list[Endpoint]) -> Iterator[dict[str, float]]:
    """Run the body under ``scenario``'s load; the dict gets the flood's rate (msg/s)."""
    info: dict[str, float] = {}
    t0 = time.perf_counter()
    if scenario == "vpu-flood":
        control = link_eps[CONTROL]
        control.send(b"flood on", timeout=TIMEOUT)
        assert control.recv(TIMEOUT) == b"ok"
        try:
            yield info
        finally:
            control.send(b"flood off", timeout=TIMEOUT)
            sent = COUNT.unpack(control.recv(TIMEOUT))[0]
            info["rate"] = sent / (time.perf_counter() - t0)
    elif scenario == "host-flood":
        flood = HostFlood([link_eps[c] for c in SINKS])
        flood.thread.start()
        try:
            yield info
        finally:
            info["rate"] = flood.finish() / (time.perf_counter() - t0)
    else:
        yield info


def measure_priority(params: Params, pin: bool) -> dict[str, Any]:
    proc = KeemBayProcessor(KMB_FIRMWARE, name="bench", kmb=KmbConfig(
        fifo_share=params.fifo_share))
    proc.start()
    try:
        link = proc.link
        for channel in (HS, CONTROL, GP, *SINKS, *FLOODS):
            if not wait_peer_channel(link, channel, TIMEOUT):
                raise RuntimeError(f"the firmware did not open channel {channel}")
        eps = {c: link.create_endpoint(addr=c) for c in (HS, CONTROL, GP, *SINKS)}
        floods = [link.create_endpoint(addr=c) for c in FLOODS]
        for ep in floods:
            ep.max_queued = 1 << 30  # emptied between round trips

        def empty_floods() -> None:
            for ep in floods:
                while ep.try_recvfrom() is not None:
                    pass

        assert proc.process is not None
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            s: {"hs": [], "gp": []} for s in SCENARIOS}
        rates: dict[str, list[float]] = {s: [] for s in SCENARIOS if s != "idle"}
        with pinned(proc.process.pid, pin) as ok:
            for run in range(params.runs):
                for scenario in SCENARIOS:
                    with flooded(scenario, eps, floods) as info, quiet_gc():
                        for kind, channel in (("hs", HS), ("gp", GP)):
                            samples = round_trips(eps[channel], params.rtt_count,
                                                  params.rtt_warmup, empty_floods)
                            runs[scenario][kind].append(
                                {**percentiles(samples),
                                 "samples_ns": [round(x * 1e9) for x in samples]})
                    empty_floods()
                    if scenario != "idle":
                        rates[scenario].append(info["rate"])
                progress(f"  run {run + 1}/{params.runs}")
        stats = link.statistics()
        return {
            "pinned": ok,
            "rtt": {s: {k: summarized(v, PLOT_PERCENTILES) for k, v in kinds.items()}
                    for s, kinds in runs.items()},
            "flood_rate": {s: Summary.of(v).as_dict() for s, v in rates.items()},
            "statistics": {"safety_net_wakeups": stats.safety_net_wakeups,
                           "malformed_rx": stats.backend["malformed_rx"],
                           "queued_sends": stats.backend["queued_sends"],
                           "gp_share_full": stats.backend["gp_share_full"],
                           "fifo_share": stats.backend["fifo_share"]},
        }
    finally:
        proc.stop()


# -- beside virtio --------------------------------------------------------------------------
BACKENDS = ("keembay", "virtio")


def _start(backend: str, sink: bool, fifo_share: int) -> tuple[SimProcessor, Endpoint]:
    """A Keem Bay or virtio processor and an endpoint on its echo (or sink)."""
    if backend == "keembay":
        proc: SimProcessor = KeemBayProcessor(KMB_FIRMWARE, name=f"bench-{backend}",
                                              kmb=KmbConfig(fifo_share=fifo_share))
    else:
        proc = SimProcessor(f"amplink.firmware.examples.{'sink' if sink else 'echo'}",
                            name=f"bench-{backend}")
    proc.start()
    try:
        link = proc.link
        if backend == "virtio":
            return proc, link.open_channel("rpmsg-sink" if sink else "rpmsg-echo",
                                           timeout=TIMEOUT)
        channel = SINKS[0] if sink else HS
        if not wait_peer_channel(link, channel, TIMEOUT):
            raise RuntimeError(f"the firmware did not open channel {channel}")
        return proc, link.create_endpoint(addr=channel)
    except BaseException:
        proc.stop()
        raise


@contextmanager
def started(sink: bool, fifo_share: int) -> Iterator[dict[str, tuple[SimProcessor, Endpoint]]]:
    """Both backends' processors at once (one measured at a time: the other sleeps)."""
    running: dict[str, tuple[SimProcessor, Endpoint]] = {}
    try:
        for backend in BACKENDS:
            running[backend] = _start(backend, sink, fifo_share)
        yield running
    finally:
        for proc, _ep in running.values():
            proc.stop()


def measure_beside(params: Params, pin: bool) -> dict[str, Any]:
    """RTT and one-way rate of both backends, alternating within every run."""
    rtt: dict[str, dict[int, list[dict[str, float]]]] = {
        b: {s: [] for s in params.sizes} for b in BACKENDS}
    ow: dict[str, dict[int, list[dict[str, Any]]]] = {
        b: {s: [] for s in params.sizes} for b in BACKENDS}
    pinned_all = True
    with started(False, params.fifo_share) as running:
        for _ in range(params.runs):
            for backend, (proc, ep) in running.items():
                assert proc.process is not None
                with pinned(proc.process.pid, pin) as ok:
                    pinned_all &= ok
                    for size in params.sizes:
                        with quiet_gc():
                            rtt[backend][size].append(percentiles(measure_round_trip(
                                ep, size, params.rtt_count, params.rtt_warmup)))
    with started(True, params.fifo_share) as running:
        for _ in range(params.runs):
            for backend, (_proc, ep) in running.items():
                for size in params.sizes:
                    with quiet_gc():
                        r = measure_one_way(ep, size, params.one_way_count,
                                            params.one_way_warmup)
                    ow[backend][size].append({**asdict(r), "msg_per_s": r.messages_per_second})
    return {"pinned": pinned_all, **{b: {
        "rtt": {str(s): summarized(rtt[b][s]) for s in params.sizes},
        "one_way": {str(s): summarized(ow[b][s], ("msg_per_s",)) for s in params.sizes},
    } for b in BACKENDS}}


def measure(name: str, params: Params, pin: bool) -> dict[str, Any]:
    if name == "priority":
        return measure_priority(params, pin)
    return measure_beside(params, pin)


# -- reporting ----------------------------------------------------------------------------
def median(results: dict[str, Any], *path: str) -> float:
    node: Any = results
    for key in path:
        node = node[key]
    return float(node["median"])


#: an idle p99 above this says the machine's other work decides the tails
NOISY_IDLE_P99 = 1e-3


def verdict(results: dict[str, Any]) -> list[dict[str, Any]]:
    prio = results["priority"]["rtt"]
    out = []
    for scenario in SCENARIOS[1:]:
        idle, loaded = median(prio, "idle", "hs", "p99"), median(prio, scenario, "hs", "p99")
        ratio = loaded / idle
        out.append({"name": f"HS p99 under {TITLES[scenario]} <= {TARGET_P99_RATIO:g} x idle",
                    "ratio": ratio, "pass": ratio <= TARGET_P99_RATIO,
                    "shown": f"{loaded * 1e6:.1f} / {idle * 1e6:.1f} us = {ratio:.2f}x"})
    return out


def notes(results: dict[str, Any]) -> list[str]:
    """What the reader should know before trusting the targets."""
    prio = results["priority"]["rtt"]
    out = []
    idle_p99 = median(prio, "idle", "hs", "p99")
    if idle_p99 > NOISY_IDLE_P99:
        out.append(f"the idle HS p99 is {idle_p99 * 1e3:.1f} ms: other work on this machine "
                   "decides the tails, so the p99 ratios say little (see p50 and p90)")
    for scenario in SCENARIOS[1:]:
        ratios = [median(prio, scenario, "hs", p) / median(prio, "idle", "hs", p)
                  for p in ("p50", "p90")]
        out.append(f"HS under {TITLES[scenario]}: p50 {ratios[0]:.2f}x, p90 {ratios[1]:.2f}x "
                   "the idle ones")
    return out


def report(data: dict[str, Any], params: Params) -> str:
    meta, results = data["meta"], data["results"]
    prio = results["priority"]
    out = [
        f"amplink Keem Bay benchmark ({meta['mode']}): {params.runs} runs; {params.rtt_count} "
        f"round trips per cell and run; one-way {params.one_way_count} messages; GP share of "
        f"the peer's FIFO {prio['statistics']['fifo_share']} of 128",
        describe_run(meta, "host/firmware", "pinned"),
        "cells: median of the runs [interquartile range of the runs]", "",
        "priority: RTT of 16 B echoes (us), idle and while GP channels flood the link", "",
    ]
    lines = [["channel", "load", *PLOT_PERCENTILES, "flood (msg/s)"]]
    for kind, name in (("hs", "HS 0"), ("gp", "GP 10")):
        for scenario in SCENARIOS:
            cells = prio["rtt"][scenario][kind]
            rate = prio["flood_rate"].get(scenario)
            lines.append([name, TITLES[scenario],
                          *(Summary.from_dict(cells[p]).format(1e6, digits=1)
                            for p in PLOT_PERCENTILES),
                          "-" if rate is None else Summary.from_dict(rate).format(digits=0)])
    out += table(lines)
    out += ["", "beside rpmsg over virtio (blocking mode; Keem Bay: HS echo, GP sink 20)", ""]
    lines = [["metric", "Keem Bay", "virtio", "Keem Bay / virtio"]]
    for kind, key, scale, unit, digits in (("rtt", "p50", 1e6, "us", 1),
                                           ("rtt", "p99", 1e6, "us", 1),
                                           ("one_way", "msg_per_s", 1, "msg/s", 0)):
        for size in params.sizes:
            k = Summary.from_dict(results["beside"]["keembay"][kind][str(size)][key])
            v = Summary.from_dict(results["beside"]["virtio"][kind][str(size)][key])
            name = f"{'RTT ' + key if kind == 'rtt' else 'one-way'} {size:>3} B ({unit})"
            lines.append([name, k.format(scale, digits=digits), v.format(scale, digits=digits),
                          f"{k.median / v.median:.2f}x"])
    out += table(lines)
    s = prio["statistics"]
    out += ["", f"priority run: safety-net wake-ups {s['safety_net_wakeups']}, protocol faults "
            f"{s['malformed_rx']}, sends that waited in the transmit queues {s['queued_sends']}, "
            f"GP sends refused for the share {s['gp_share_full']}", "", "targets:"]
    lines = [["target", "measured", "result"]]
    for t in data["targets"]:
        lines.append([t["name"], t["shown"], "PASS" if t["pass"] else "MISS"])
    out += table(lines)
    out += ["", "notes:"] + [f"  {note}" for note in data["notes"]]
    return "\n".join(out)


def plot(data: dict[str, Any], path: str) -> None:
    """Latency percentiles, idle and loaded, HS and GP, as a PNG (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib (or "
                         "pip install -e '.[plot]')") from None
    prio = data["results"]["priority"]["rtt"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    x = range(len(PLOT_PERCENTILES))
    for ax, (kind, title) in zip(axes, (("hs", "HS channel 0"), ("gp", "GP channel 10")),
                                 strict=True):
        for scenario, style in zip(SCENARIOS, ("o-", "s--", "^:"), strict=True):
            values = [median(prio, scenario, kind, p) * 1e6 for p in PLOT_PERCENTILES]
            ax.plot(x, values, style, label=TITLES[scenario])
        ax.set_xticks(list(x), PLOT_PERCENTILES)
        ax.set_yscale("log")
        ax.set_title(f"{title}: RTT of 16 B echoes")
        ax.set_xlabel("percentile")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("round-trip time (us, log scale)")
    meta = data["meta"]
    fig.suptitle(f"Keem Bay IPC: priority under a GP flood (median of {meta['params']['runs']} "
                 f"runs, load average {meta['load_average_before'][0]:.1f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    progress(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Keem Bay IPC: HS round trips idle and under a GP flood (VPU and host), "
                    "and RTT / one-way rate beside rpmsg over virtio.")
    add_common_options(parser, quick_help="fewer runs and round trips (about a minute)",
                       pin_help="do not pin host and firmware to cores 0 and 1")
    parser.add_argument("--plot", metavar="PATH", help="draw the percentiles as a PNG")
    parser.add_argument("--fifo-share", type=int, metavar="N",
                        help=f"GP share of the peer's FIFO (1..128, default "
                             f"{KmbConfig.fifo_share})")
    args = parser.parse_args(argv)
    params = chosen_params(parser, args, QUICK, FULL)
    if args.fifo_share is not None:
        if not 1 <= args.fifo_share <= 128:
            parser.error("--fifo-share must be in 1..128")
        params = Params(**{**asdict(params), "fifo_share": args.fifo_share})
    titles = {"priority": "priority (Keem Bay, idle and flooded)",
              "beside": "Keem Bay and virtio, RTT and one-way, alternating"}
    data = measure_all(args, params, titles, measure, pinned_key="pinned")
    data["targets"] = verdict(data["results"])
    data["notes"] = notes(data["results"])
    print(report(data, params))
    if args.plot:
        plot(data, args.plot)
    if args.json:
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
