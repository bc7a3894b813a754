#!/usr/bin/env python3
"""Echo round trips over OpenAMP's Linux-userspace profile: amplink host vs amplink remote.

The remote is a separate process (``amplink openamp remote --server``), the host is
this process (socket client); they share a POSIX shared memory object laid out as
OpenAMP's (vrings at 0x4000/0x8000, 512 B buffers) and kick each other with one byte
over a Unix socket, exactly as OpenAMP's programs do, so the numbers can be set
against OpenAMP's own C demos on the same machine (see bench/README.md).

Per mode (``blocking``: the waiting side sleeps on the socket; ``polling``: both spin
on the rings, as OpenAMP does) and per run:

* the echo demo sweep: 480 messages of 16 B + 1..480 B of 0xA5, one in flight, each
  echo checked (OpenAMP's echo demo);
* fixed-size round trips of 16 B and 496 B payloads (``amplink.perf``), replies checked.

Cells show the median of the runs and their interquartile range (of the per-run p50
or p99). This is a benchmark, not a test: ``python3 bench/openamp_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

# the benchmarks' shared helpers (bench/ is sys.path[0]); first: it finds amplink
from benchkit import (
    HOST_CORE,
    PEER_CORE,
    Params,
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

from amplink.perf import Summary, measure_round_trip, percentiles
from amplink.platforms.openamp import (
    DEMO_SERVICE,
    EchoRun,
    OpenAmpConfig,
    OpenAmpLink,
)
from amplink.platforms.openamp.echo import DEMO_MAX_SIZE

MODES = ("blocking", "polling")
PEER_TIMEOUT = 30.0

FULL = Params(runs=5, sizes=(16, 496), rtt_count=10_000, rtt_warmup=1000)
QUICK = Params(runs=3, sizes=(16, 496), rtt_count=1000, rtt_warmup=200)


@contextmanager
def remote_process(config: OpenAmpConfig, poll: bool) -> Iterator[subprocess.Popen[bytes]]:
    """``amplink openamp remote --server`` on ``config``; must exit 0 when the host is done."""
    argv = [sys.executable, "-m", "amplink.cli", "openamp", "remote", "--server",
            "--shm", config.shm_name, "--socket", config.socket_path,
            "--timeout", str(PEER_TIMEOUT), *(["--poll"] if poll else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        yield proc
        code = proc.wait(PEER_TIMEOUT)
        if code:
            raise RuntimeError(f"the remote exited with status {code}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def measure_mode(mode: str, params: Params, pin: bool) -> dict[str, Any]:
    poll = mode == "polling"
    key = f"amplink-bench-{uuid.uuid4().hex[:12]}"
    config = OpenAmpConfig(shm_name=f"{key}.shm", socket_path=f"/tmp/{key}.sock")
    result: dict[str, Any] = {"rtt": {}, "sweep": {}, "statistics": {}, "pinned": False}
    runs: dict[str, list[dict[str, float]]] = {str(s): [] for s in params.sizes}
    sweeps: list[dict[str, float]] = []
    try:
        with remote_process(config, poll) as remote:
            link = OpenAmpLink.open("host", server=False, config=config, timeout=PEER_TIMEOUT,
                                    poll_mode=poll)
            try:
                ep = link.create_service(DEMO_SERVICE)
                link.wait_peer(ep, PEER_TIMEOUT)
                with pinned(remote.pid, pin) as ok:
                    result["pinned"] = ok
                    EchoRun(ep, PEER_TIMEOUT).run(DEMO_MAX_SIZE)  # warm-up
                    for _run in range(params.runs):
                        sweep = EchoRun(ep, PEER_TIMEOUT)
                        with quiet_gc():
                            sweep.run(DEMO_MAX_SIZE)
                        if sweep.errors:
                            raise RuntimeError(f"{sweep.errors} wrong echoes: {sweep.problems}")
                        sweeps.append(percentiles(sweep.rtts))
                        for size in params.sizes:
                            with quiet_gc():
                                samples = measure_round_trip(ep, size, params.rtt_count,
                                                             params.rtt_warmup)
                            runs[str(size)].append(
                                {**percentiles(samples), "mean": sum(samples) / len(samples)})
                s = link.statistics()
                result["statistics"] = {
                    "safety_net_wakeups": s.safety_net_wakeups, "sleeps": s.sleeps,
                    "messages_sent": s.messages_sent, "kicks_sent": s.backend["kicks_sent"],
                    "protocol_faults": sum(s.backend["protocol_faults"].values()),
                    "malformed_rx": s.backend["malformed_rx"]}
                ep.close()  # the name-service destroy ends the remote
            finally:
                link.close()
    finally:
        with suppress(FileNotFoundError):
            os.unlink(config.shm_path)
    for size_key, size_runs in runs.items():
        result["rtt"][size_key] = summarized(size_runs)
    result["sweep"] = summarized(sweeps)
    return result


def _cell(d: dict[str, float]) -> str:
    return Summary.from_dict(d).format(1e6, digits=1)


def report(data: dict[str, Any], params: Params) -> str:
    meta, results = data["meta"], data["results"]
    modes = [m for m in MODES if m in results]
    out = [
        f"amplink over OpenAMP's Linux profile ({meta['mode']}): {params.runs} runs per cell; "
        f"each run: the echo demo sweep ({DEMO_MAX_SIZE} messages) and {params.rtt_count} "
        "round trips per size",
        describe_run(meta, "host/remote", "pinned"),
        "cells: median of the runs [interquartile range of the runs], microseconds",
        "",
    ]
    lines = [["metric"] + [f"amplink {m}" for m in modes]]
    for key in ("p50", "p99"):
        lines.append([f"echo demo sweep RTT {key} (17..496 B)"]
                     + [_cell(results[m]["sweep"][key]) for m in modes])
        for size in params.sizes:
            lines.append([f"RTT {key} {size:>3} B"]
                         + [_cell(results[m]["rtt"][str(size)][key]) for m in modes])
    out += table(lines)
    out += ["", "link statistics (host side, all runs of a mode):"]
    for m in modes:
        s = results[m]["statistics"]
        out.append(f"  {m:<8} sent {s['messages_sent']}, kicks sent {s['kicks_sent']}, sleeps "
                   f"{s['sleeps']}, safety-net wake-ups {s['safety_net_wakeups']}, protocol "
                   f"faults {s['protocol_faults']}, malformed {s['malformed_rx']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Echo round trips over OpenAMP's Linux-userspace profile (shared memory "
                    "+ Unix-socket kicks), amplink host vs amplink remote, blocking and "
                    "polling.")
    add_common_options(
        parser, quick_help="fewer runs and round trips",
        pin_help=f"do not pin host and remote to cores {HOST_CORE} and {PEER_CORE}")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {','.join(MODES)}")
    args = parser.parse_args(argv)
    params = chosen_params(parser, args, QUICK, FULL)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    data = measure_all(args, params, {m: f"amplink {m}" for m in MODES if m in modes},
                       measure_mode, pinned_key="pinned")
    print(report(data, params))
    if args.json:
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
