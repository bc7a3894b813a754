#!/usr/bin/env python3
"""A simulated Apple RTKit co-processor: boot time and message round trips.

With ``amplink.firmware.examples.rtkit_echo`` in an :class:`RtkitRemoteProc` (a separate
process behind the shared-memory mailbox), per run:

* **boot**: ``boot()`` then ``shutdown()``, ``--boots`` times. Two numbers per boot:
  HELLO to AP ON (the RTKit handshake: HELLO, endpoint map, STARTEP, buffer requests and
  syslog INIT, IOP ON ack, AP ON and its ack), timed by the host from the arrival of
  HELLO; and the whole ``boot()`` (spawning the Python firmware process included);
* **application-endpoint RTT**: one 64-bit message to endpoint 0x20 and its echo
  (``RtkitEndpoint.send`` / ``recv``), each timed with ``perf_counter_ns`` and checked;
* **management ping RTT**: ``ping()`` (PING to PONG on endpoint 0).

The host process (its caller and dispatcher threads) and the firmware process are pinned
to cores 0 and 1 when both are available (``--no-pin`` turns it off). Cells are the
median of the runs and their interquartile range (of each run's p50 or p99), in
microseconds; ``--json`` writes every number.

This is a benchmark, not a test: ``python3 bench/rtkit_bench.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import benchkit  # first: it finds amplink in a checkout
from benchkit import (
    HOST_CORE,
    PEER_CORE,
    can_pin,
    pinned,
    progress,
    quiet_gc,
    table,
    write_json,
)

from amplink.perf import Summary, percentiles
from amplink.platforms.rtkit import RtkitRemoteProc

FIRMWARE = "amplink.firmware.examples.rtkit_echo"
ECHO = 0x20


def measure_boots(count: int) -> dict[str, list[float]]:
    rproc = RtkitRemoteProc(FIRMWARE, name="bench-boot")
    handshake, whole = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        rproc.boot()
        whole.append(time.perf_counter() - t0)
        stats = rproc.rtkit_statistics()
        assert stats is not None and stats.boot_time is not None
        handshake.append(stats.boot_time)
        rproc.shutdown()
    return {"hello_to_ap_on": handshake, "boot_call": whole}


def measure_rtts(count: int, warmup: int, pin: bool) -> dict[str, Any]:
    rproc = RtkitRemoteProc(FIRMWARE, name="bench-rtt")
    with rproc.acquire():
        ep = rproc.open_endpoint(ECHO)
        assert rproc.process is not None
        with pinned(rproc.process.pid, pin, whole_host=True) as was_pinned:
            for i in range(warmup):
                ep.send(i)
                ep.recv(timeout=5)
            app: list[float] = []
            ping: list[float] = []
            clock = time.perf_counter_ns
            with quiet_gc():
                for i in range(count):
                    value = (i * 0x9E37_79B9_7F4A_7C15) & 0xFFFF_FFFF_FFFF_FFFF
                    t0 = clock()
                    ep.send(value)
                    got = ep.recv(timeout=5)
                    app.append((clock() - t0) / 1e9)
                    if got != value:
                        raise AssertionError(f"echo of 0x{value:x} came back as 0x{got:x}")
                for _ in range(max(1, count // 10)):
                    ping.append(rproc.ping())
        stats = rproc.rtkit_statistics()
    return {"app": app, "ping": ping, "pinned": was_pinned,
            "drops": {} if stats is None else stats.drops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchkit.add_common_options(parser, quick_help="3 runs, 5 boots and 2000 round trips each",
                                pin_help="do not pin the host and the firmware to cores")
    parser.add_argument("--boots", type=int, help="boots per run (default 20, quick 5)")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 5)
    boots = args.boots or (5 if args.quick else 20)
    count, warmup = (2000, 200) if args.quick else (10000, 1000)
    if runs < 1 or boots < 1:
        parser.error("--runs and --boots must be at least 1")
    pin = can_pin() and not args.no_pin
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    results: dict[str, list[Any]] = {"boots": [], "rtts": []}
    for run in range(runs):
        progress(f"run {run + 1}/{runs}: {boots} boots, {count} round trips ...")
        results["boots"].append(measure_boots(boots))
        results["rtts"].append(measure_rtts(count, warmup, pin))

    def cell(samples_per_run: list[list[float]], key: str) -> str:
        return Summary.of(percentiles(s)[key] for s in samples_per_run).format(1e6, digits=1)

    rows = [["measurement (us)", "p50 [q1-q3 of runs]", "p99 [q1-q3 of runs]"]]
    for label, samples in (
            ("boot: HELLO to AP ON", [b["hello_to_ap_on"] for b in results["boots"]]),
            ("boot: whole boot() (process start)", [b["boot_call"] for b in results["boots"]]),
            ("RTT: endpoint 0x20 echo", [r["app"] for r in results["rtts"]]),
            ("RTT: management ping", [r["ping"] for r in results["rtts"]])):
        rows.append([label, cell(samples, "p50"), cell(samples, "p99")])
    pinned_all = pin and all(r["pinned"] for r in results["rtts"])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {runs} runs, {boots} boots "
          f"and {count} round trips per run; pinned to cores {HOST_CORE}/{PEER_CORE}: "
          f"{pinned_all}; took {time.perf_counter() - t_start:.1f} s; 1-min load average "
          f"before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print("\n".join(table(rows)))
    drops = [r["drops"] for r in results["rtts"] if r["drops"]]
    print(f"dropped messages: {drops or 'none'}")
    if args.json:
        write_json(args.json, {"runs": runs, "boots": boots, "count": count,
                               "pinned": pinned_all, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
