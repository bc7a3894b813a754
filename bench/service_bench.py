#!/usr/bin/env python3
"""The amplink service's relay overhead: a processor's channel through the service vs direct.

Measures, in one run and with the same timing loops (``amplink.perf``):

* round-trip latency (RTT) of 16 B and 496 B messages to the echo firmware, and
* one-way throughput (messages/s) of 16 B messages to the counting sink firmware, and
* the hand-over of a 4 KiB and a 4 MiB shared buffer, by reference, to the frames
  firmware (which inverts it in place) and back, and
* the round trip of 16 B messages on a Keem Bay VPU's high-speed channel 0 (the
  kmb_echo firmware; ``kmb-0`` through the service),

two ways, alternating run by run so that both see the same machine load:

* ``direct``  - this process holds the simulated processor (``SimProcessor``): the
  link a program has when it owns the processor;
* ``service`` - a supervisor process (``python -m amplink.service``) holds the
  processor and this process is its client (``connect_link``): the link any program
  has on a processor another one booted.

The service path crosses two more processes boundaries per round trip (client ->
service -> firmware -> service -> client), so each message costs two more wake-ups
and two copies through the service's socket. The table gives the median over the runs
of each run's p50 / p99, and the ratio service/direct (the target is 2.0 or less for
16 B). A second table says where the CPU time of a round trip goes: the calling
process (the host, or the service's client), the service, the firmware.

This is a benchmark, not a test: ``python3 bench/service_bench.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the benchmarks' shared helpers (bench/ is sys.path[0]); first: it finds amplink
import benchkit
from benchkit import add_common_options, chosen_params, progress, quiet_gc, table, write_json

from amplink import AmplinkError, Endpoint, Link, SimProcessor
from amplink.handover import BufferChannel
from amplink.memory import Access, allocate_buffer
from amplink.perf import Summary, measure_one_way, measure_round_trip, percentiles
from amplink.platforms.linux import LinuxRemoteProc
from amplink.platforms.sim.keembay import KeemBayProcessor
from amplink.service.supervisor import connect_supervisor, read_pid_file
from amplink.transports.service import connect_link
from amplink.transports.service_buffers import ServicePort

ECHO = "amplink.firmware.examples.echo"
SINK = "amplink.firmware.examples.sink"
FRAMES = "amplink.firmware.examples.frames"  # inverts each buffer it is lent, in place
KMB_ECHO = "amplink.firmware.examples.kmb_echo"  # a Keem Bay VPU: echoes on channel 0
#: buffer sizes lent by reference (the time per hand-over must not grow with the size,
#: but for the firmware's own pass over the bytes, the same both ways)
HANDOVER_SIZES = (4 << 10, 4 << 20)
TIMEOUT = 10.0
TARGET_RATIO = 2.0
WAYS = ("direct", "service")


@dataclass(frozen=True)
class Params(benchkit.Params):
    one_way_count: int
    one_way_warmup: int
    handover_count: int


FULL = Params(runs=7, sizes=(16, 496), rtt_count=5000, rtt_warmup=500,
              one_way_count=20_000, one_way_warmup=2000, handover_count=200)
QUICK = Params(runs=3, sizes=(16, 496), rtt_count=1000, rtt_warmup=200,
               one_way_count=5000, one_way_warmup=1000, handover_count=50)


@contextmanager
def supervisor(root: Path) -> Iterator[Any]:
    """A supervisor process serving ``root``, with an echo and a sink processor."""
    log = open(root.parent / "supervisor.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "amplink.service", "--root", str(root),
                             "--idle-grace", "60"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + TIMEOUT
        while (client := connect_supervisor(root)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the supervisor did not start; see {root.parent}")
            time.sleep(0.05)
        for firmware, name, kind in ((ECHO, "echo", None), (SINK, "sink", None),
                                     (FRAMES, "frames", None), (KMB_ECHO, "vpu", "keembay")):
            dev, _ = client.add(firmware, name, kind)
            LinuxRemoteProc(dev, client.tree).boot()
        yield client
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
        log.close()


def open_endpoint(way: str, root: Path, name: str, service: str
                  ) -> tuple[Endpoint, Link, SimProcessor | None]:
    if way == "direct":
        proc = SimProcessor(ECHO if name == "echo" else SINK, name=f"bench-{name}")
        proc.start()
        return proc.link.open_channel(service, timeout=TIMEOUT), proc.link, proc
    link = connect_link(name, root=root, timeout=TIMEOUT)
    return link.open_channel(service, timeout=TIMEOUT), link, None


def open_keembay(way: str, root: Path) -> tuple[Endpoint, Link, SimProcessor | None]:
    """Channel 0 of a Keem Bay VPU running kmb_echo, held by this process or the service."""
    if way == "direct":
        proc = KeemBayProcessor(KMB_ECHO, name="bench-vpu")
        proc.start()
        return proc.link.create_endpoint(addr=0), proc.link, proc
    return open_endpoint(way, root, "vpu", "kmb-0")


class Handover:
    """Buffers lent by reference to the frames firmware, one way or the other."""

    def __init__(self, way: str, root: Path) -> None:
        self.proc: SimProcessor | None = None
        self.link: Link | None = None
        self.port: ServicePort | None = None
        if way == "direct":
            self.proc = SimProcessor(FRAMES, name="bench-frames")
            self.proc.start()
            ep = self.proc.link.open_channel("rpmsg-frames", timeout=TIMEOUT)
            self.channel = BufferChannel(ep, port=self.proc.rproc.buffers)
        else:
            self.link = connect_link("frames", root=root, timeout=TIMEOUT)
            self.port = ServicePort("frames", channel="rpmsg-frames", root=root)
            ep = self.link.open_channel("rpmsg-frames", timeout=TIMEOUT)
            self.channel = BufferChannel(ep, port=self.port)
        self.buffers = {size: allocate_buffer(size, name=f"bench-{size}")
                        for size in HANDOVER_SIZES}

    def time(self, size: int, count: int) -> float:
        """Median seconds of one hand-over (SEND, the firmware's pass, DONE)."""
        buffer = self.buffers[size]
        samples = []
        for _ in range(count + 5):
            t0 = time.perf_counter()
            self.channel.send(buffer, Access.READ_WRITE)
            self.channel.wait_done(timeout=TIMEOUT)
            samples.append(time.perf_counter() - t0)
        return Summary.of(samples[5:]).median

    def close(self) -> None:
        for buffer in self.buffers.values():
            with contextlib.suppress(AmplinkError):
                self.channel.forget(buffer)
            buffer.close()
        if self.port is not None:
            self.port.close()
        if self.link is not None:
            self.link.close()
        if self.proc is not None:
            self.proc.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def firmware_pid(parent: int, firmware: str) -> int:
    """The firmware process running ``firmware`` among ``parent``'s children."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if ppid == parent and firmware.encode() in cmdline:
            return int(entry)
    raise RuntimeError(f"no firmware process {firmware} under pid {parent}")


#: whose CPU time is counted per round trip: the caller (host or client), the service,
#: the echo firmware
CPU_PARTS = ("caller", "service", "firmware")


def measure(params: Params, root: Path, service_pid: int) -> dict[str, Any]:
    results: dict[str, Any] = {way: {"rtt": {}, "one_way": [], "handover": {},
                                     "keembay_rtt": [],
                                     "cpu_us": {part: {} for part in CPU_PARTS}}
                               for way in WAYS}
    handovers = {way: Handover(way, root) for way in WAYS}
    endpoints = {way: {name: open_endpoint(way, root, name, svc)
                       for name, svc in (("echo", "rpmsg-echo"), ("sink", "rpmsg-sink"))}
                 for way in WAYS}
    for way in WAYS:
        endpoints[way]["keembay"] = open_keembay(way, root)
    direct_echo = endpoints["direct"]["echo"][2]
    assert direct_echo is not None and direct_echo.process is not None
    pids = {"direct": {"caller": os.getpid(), "firmware": direct_echo.process.pid},
            "service": {"caller": os.getpid(), "service": service_pid,
                        "firmware": firmware_pid(service_pid, ECHO)}}
    try:
        for run in range(params.runs):
            for way in WAYS if run % 2 == 0 else reversed(WAYS):
                ep = endpoints[way]["echo"][0]
                for size in params.sizes:
                    cpu0 = {part: cpu_seconds(pid) for part, pid in pids[way].items()}
                    with quiet_gc():
                        samples = measure_round_trip(ep, size, params.rtt_count,
                                                     params.rtt_warmup)
                    trips = params.rtt_count + params.rtt_warmup
                    for part, pid in pids[way].items():
                        per = (cpu_seconds(pid) - cpu0[part]) / trips
                        results[way]["cpu_us"][part].setdefault(size, []).append(per * 1e6)
                    results[way]["rtt"].setdefault(size, []).append(percentiles(samples))
                sink = endpoints[way]["sink"][0]
                with quiet_gc():
                    one_way = measure_one_way(sink, 16, params.one_way_count,
                                              params.one_way_warmup)
                results[way]["one_way"].append(one_way.messages_per_second)
                for size in HANDOVER_SIZES:
                    with quiet_gc():
                        per = handovers[way].time(size, params.handover_count)
                    results[way]["handover"].setdefault(size, []).append(per)
                with quiet_gc():
                    samples = measure_round_trip(endpoints[way]["keembay"][0], 16,
                                                 params.rtt_count, params.rtt_warmup)
                results[way]["keembay_rtt"].append(percentiles(samples))
            progress(f"  run {run + 1}/{params.runs} done")
    finally:
        for handover in handovers.values():
            handover.close()
        for way in WAYS:
            for _, link, proc in endpoints[way].values():
                if proc is not None:
                    proc.stop()
                else:
                    link.close()
    return results


def _cpu(results: dict[str, Any], way: str, part: str, size: int) -> str:
    runs = results[way]["cpu_us"][part].get(size)
    return f"{Summary.of(runs).median:.0f}" if runs else "-"


def report(results: dict[str, Any], params: Params) -> list[str]:
    lines = [["", "direct p50", "service p50", "ratio", "direct p99", "service p99"]]
    ratios = {}
    for size in params.sizes:
        d = Summary.of(r["p50"] for r in results["direct"]["rtt"][size])
        s = Summary.of(r["p50"] for r in results["service"]["rtt"][size])
        d99 = Summary.of(r["p99"] for r in results["direct"]["rtt"][size])
        s99 = Summary.of(r["p99"] for r in results["service"]["rtt"][size])
        ratios[size] = s.median / d.median
        lines.append([f"RTT {size} B", f"{d.median * 1e6:.1f} us", f"{s.median * 1e6:.1f} us",
                      f"{ratios[size]:.2f}x", f"{d99.median * 1e6:.1f} us",
                      f"{s99.median * 1e6:.1f} us"])
    d_ow = Summary.of(results["direct"]["one_way"])
    s_ow = Summary.of(results["service"]["one_way"])
    lines.append(["one-way 16 B", f"{d_ow.median:,.0f}/s", f"{s_ow.median:,.0f}/s",
                  f"{d_ow.median / s_ow.median:.2f}x slower", "", ""])
    for size in HANDOVER_SIZES:
        d = Summary.of(results["direct"]["handover"][size])
        s = Summary.of(results["service"]["handover"][size])
        lines.append([f"hand-over {size >> 10} KiB", f"{d.median * 1e6:.0f} us",
                      f"{s.median * 1e6:.0f} us", f"{(s.median - d.median) * 1e6:+.0f} us",
                      "", ""])
    d = Summary.of(r["p50"] for r in results["direct"]["keembay_rtt"])
    s = Summary.of(r["p50"] for r in results["service"]["keembay_rtt"])
    d99 = Summary.of(r["p99"] for r in results["direct"]["keembay_rtt"])
    s99 = Summary.of(r["p99"] for r in results["service"]["keembay_rtt"])
    lines.append(["Keem Bay RTT 16 B", f"{d.median * 1e6:.1f} us", f"{s.median * 1e6:.1f} us",
                  f"{s.median / d.median:.2f}x", f"{d99.median * 1e6:.1f} us",
                  f"{s99.median * 1e6:.1f} us"])
    out = table(lines)
    out.append("")
    cpu = [["CPU us per round trip", "host/client", "service", "firmware"]]
    for way in WAYS:
        for size in params.sizes:
            cpu.append([f"{way} {size} B", *(_cpu(results, way, part, size)
                                             for part in CPU_PARTS)])
    out += table(cpu)
    out.append("(/proc clock ticks of 10 ms: coarse for short runs)")
    verdict = "meets" if ratios[16] <= TARGET_RATIO else "misses"
    out.append(f"16 B RTT through the service / direct = {ratios[16]:.2f}: {verdict} the "
               f"target of {TARGET_RATIO:.1f}x")
    out.append("copies per message through the service: client -> kernel -> service (2), "
               "service -> ring buffer (1, also on a direct link); back: ring -> service "
               "frame (1, also direct), service -> kernel -> client (2). Shared buffers are "
               "lent by reference (the service passes the client's fd to the processor, "
               "which maps it; only 24-byte records travel): a hand-over costs the same for "
               "4 KiB and 4 MiB but for the firmware's own pass over the bytes, which is the "
               "same both ways.")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, quick_help="3 runs of fewer messages (~15 s)",
                       pin_help="(no effect: three processes share the cores)")
    args = parser.parse_args()
    params = chosen_params(parser, args, QUICK, FULL)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="amplink-bench-") as tmp:
        root = Path(tmp) / "rt"
        root.mkdir(mode=0o700)
        with supervisor(root):
            pid = read_pid_file(root)
            assert pid is not None
            progress(f"measuring direct vs service, {params.runs} runs alternating ...")
            results = measure(params, root, pid)
    meta = {"mode": "quick" if args.quick else "full", "seconds": time.perf_counter() - t0,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(f"amplink service relay vs direct link ({meta['mode']}, {params.runs} runs, "
          f"{params.rtt_count} round trips per run; python {meta['python']}, "
          f"{meta['cpus']} CPUs, load {load_before[0]:.2f} -> {meta['load_average_after'][0]:.2f}"
          f", {meta['seconds']:.0f} s)")
    for line in report(results, params):
        print(line)
    if args.json:
        write_json(args.json, {"meta": meta, "params": params.__dict__, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
