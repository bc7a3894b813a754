"""What the benchmarks in this folder share: options, core pinning, the run loop, output.

Imported by the benchmark scripts as a sibling module (a script's folder is
``sys.path[0]``). Importing it makes ``amplink`` importable from a checkout that is not
installed, so the scripts import it before ``amplink``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

try:
    import amplink  # noqa: F401
except ImportError:  # run from a checkout without installing: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from amplink.perf import Summary  # noqa: E402

HOST_CORE, PEER_CORE = 0, 1


@dataclass(frozen=True)
class Params:
    """How much every benchmark measures: runs per cell, payload sizes, round trips per run."""

    runs: int
    sizes: tuple[int, ...]
    rtt_count: int
    rtt_warmup: int


P = TypeVar("P", bound=Params)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- options ------------------------------------------------------------------------------------
def add_common_options(parser: argparse.ArgumentParser, *, quick_help: str,
                       pin_help: str) -> None:
    """``--quick``, ``--runs``, ``--no-pin`` and ``--json``."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--runs", type=int, help="repetitions per cell (default 5, quick 3)")
    parser.add_argument("--no-pin", action="store_true", help=pin_help)
    parser.add_argument("--json", metavar="PATH", help="write every number to PATH as JSON")


def chosen_params(parser: argparse.ArgumentParser, args: argparse.Namespace, quick: P,
                  full: P) -> P:
    """``quick`` or ``full`` as ``--quick`` says, with ``--runs`` applied."""
    params = quick if args.quick else full
    if args.runs is not None:
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        params = replace(params, runs=args.runs)
    return params


# -- core pinning -------------------------------------------------------------------------------
def can_pin() -> bool:
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        return {HOST_CORE, PEER_CORE} <= os.sched_getaffinity(0)
    except OSError:
        return False


@contextmanager
def pinned(peer_pid: int, enabled: bool, *, whole_host: bool = False) -> Iterator[bool]:
    """Pin this thread (``whole_host``: every thread of this process) to HOST_CORE and
    every thread of ``peer_pid`` to PEER_CORE."""
    if not enabled:
        yield False
        return
    saved = os.sched_getaffinity(0)
    hosts = [int(t) for t in os.listdir(f"/proc/{os.getpid()}/task")] if whole_host else [0]
    ok = True
    try:
        for tid in hosts:
            os.sched_setaffinity(tid, {HOST_CORE})
        for tid in os.listdir(f"/proc/{peer_pid}/task"):
            os.sched_setaffinity(int(tid), {PEER_CORE})
    except OSError as exc:
        progress(f"  (could not pin: {exc})")
        ok = False
    try:
        yield ok
    finally:
        for tid in hosts:
            os.sched_setaffinity(tid, saved)


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
def measure_all(args: argparse.Namespace, params: P, titles: Mapping[str, str],
                measure: Callable[[str, P, bool], dict[str, Any]], *,
                pinned_key: str) -> dict[str, Any]:
    """``measure(name, params, pin)`` for each of ``titles`` in order, with progress.

    Returns ``{"meta": ..., "results": {name: result}}``; ``meta[pinned_key]`` says
    whether every result's ``pinned_key`` is true (pinning is tried unless ``--no-pin``).
    """
    pin = can_pin() and not args.no_pin
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for name, title in titles.items():
        progress(f"measuring {title} ...")
        t = time.perf_counter()
        results[name] = measure(name, params, pin)
        progress(f"  done in {time.perf_counter() - t:.1f} s")
    return _measured(args, params, results, pin, pinned_key, load_before, t0)


def measure_interleaved(args: argparse.Namespace, params: P, titles: Mapping[str, str],
                        measure_run: Callable[[str, P, bool], dict[str, Any]],
                        combine: Callable[[str, list[dict[str, Any]]], dict[str, Any]], *,
                        pinned_key: str) -> dict[str, Any]:
    """Run ``i`` of every peer before run ``i + 1`` of any: ``measure_run(name, params,
    pin)`` ``params.runs`` times per name, round-robin, then ``combine(name, runs)``.

    A machine whose load changes during the benchmark then weighs on every peer alike
    (the peers are compared by the medians of their runs). Returns what
    :func:`measure_all` returns.
    """
    pin = can_pin() and not args.no_pin
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in titles}
    for i in range(params.runs):
        progress(f"run {i + 1} of {params.runs}:")
        for name, title in titles.items():
            t = time.perf_counter()
            runs[name].append(measure_run(name, params, pin))
            progress(f"  {title}: {time.perf_counter() - t:.1f} s")
    results = {name: combine(name, name_runs) for name, name_runs in runs.items()}
    return _measured(args, params, results, pin, pinned_key, load_before, t0)


def _measured(args: argparse.Namespace, params: Params, results: dict[str, Any], pin: bool,
              pinned_key: str, load_before: tuple[float, float, float],
              t0: float) -> dict[str, Any]:
    return {
        "meta": {
            "mode": "quick" if args.quick else "full", "params": asdict(params),
            "python": platform.python_version(), "machine": platform.platform(),
            "cpus": os.cpu_count(),
            pinned_key: pin and all(r[pinned_key] for r in results.values()),
            "seconds": time.perf_counter() - t0, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
        },
        "results": results,
    }


def summarized(runs: list[dict[str, Any]], keys: Sequence[str] = ("p50", "p99")) -> dict[str, Any]:
    """``{"runs": runs, key: the Summary (as a dict) of each run's key, ...}``."""
    return {"runs": runs, **{key: Summary.of(r[key] for r in runs).as_dict() for key in keys}}


# -- output -------------------------------------------------------------------------------------
def describe_run(meta: dict[str, Any], pinned_what: str, pinned_key: str) -> str:
    """The report's line on the interpreter, the machine, pinning, duration and load."""
    return (f"python {meta['python']}, {meta['machine']}, {meta['cpus']} CPUs; {pinned_what} "
            f"pinned to cores {HOST_CORE}/{PEER_CORE}: {meta[pinned_key]}; took "
            f"{meta['seconds']:.1f} s; 1-min load average before "
            f"{meta['load_average_before'][0]:.2f}, after {meta['load_average_after'][0]:.2f}")


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


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    progress(f"raw numbers written to {path}")
