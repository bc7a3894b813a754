"""``amplink top``: the amplink service's channels, sampled: message rates, drops, held
buffers (from :func:`amplink.transports.service.service_status`). ``amplink.cli`` adds
it with :func:`register`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from ..transports.service_wire import DEFAULT_TIMEOUT
from .common import EXIT_INTERRUPTED, add_command, counter, out, positive_seconds, table
from .links import service_options

# The service's client is imported when the command runs, in the functions that use it:
# `amplink --help` (building the parser) stays fast.
if TYPE_CHECKING:
    from ..transports.service_status import ProcessorStatus


def _snapshot(args: argparse.Namespace) -> list[ProcessorStatus]:
    from ..transports.service import service_status

    status = service_status(args.service, timeout=DEFAULT_TIMEOUT)
    return [p for p in status if args.name is None or args.name in (p.name, p.dev)]


def _counters(status: list[ProcessorStatus]) -> dict[tuple[str, int, str], tuple[int, int]]:
    return {(p.name, link.index, c.name): (c.to_processor, c.from_processor)
            for p in status for link in p.links for c in link.channels}


def top_rows(before: list[ProcessorStatus], now: list[ProcessorStatus],
             seconds: float) -> list[dict[str, Any]]:
    """One row per channel: messages/s each way since ``before``, drops, held buffers."""
    old = _counters(before)
    rows = []
    for p in now:
        for link in p.links:
            for c in link.channels:
                to0, from0 = old.get((p.name, link.index, c.name), (c.to_processor,
                                                                      c.from_processor))
                rows.append({
                    "processor": p.name, "link": link.index, "channel": c.name,
                    "to_per_s": max(0, c.to_processor - to0) / seconds,
                    "from_per_s": max(0, c.from_processor - from0) / seconds,
                    "endpoints": len(c.endpoints), "watchers": len(c.watchers),
                    "dropped": c.dropped, "refused": c.refused,
                    "held": link.rx_held, "max_held": link.max_held,
                    "queued": sum(cl.queued for cl in p.clients),
                })
    return rows


def _print_top(rows: list[dict[str, Any]]) -> None:
    header = ("PROCESSOR", "CHANNEL", "TO/S", "FROM/S", "EPS", "WATCH", "DROPPED", "REFUSED",
              "HELD", "QUEUED")
    lines = [header] + [(r["processor"], r["channel"], f"{r['to_per_s']:.0f}",
                         f"{r['from_per_s']:.0f}", str(r["endpoints"]), str(r["watchers"]),
                         str(r["dropped"]), str(r["refused"]),
                         f"{r['held']}/{r['max_held']}", str(r["queued"])) for r in rows]
    out(time.strftime("%H:%M:%S"))
    for line in table(lines):
        out(line)
    if not rows:
        out("(no channel served)")


def cmd_top(args: argparse.Namespace) -> int:
    """amplink top [NAME] [--interval S] [--count N] [--json]."""
    from ..transports.service_status import to_json

    try:
        before, t0 = _snapshot(args), time.monotonic()
        samples = 0
        while args.count is None or samples < args.count:
            time.sleep(args.interval)
            now, t1 = _snapshot(args), time.monotonic()
            rows = top_rows(before, now, t1 - t0)
            if args.json:
                out(json.dumps({"time": time.time(), "channels": rows,
                                "processors": [to_json(p) for p in now]}))
            else:
                _print_top(rows)
            before, t0 = now, t1
            samples += 1
        return 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def register(sub: Any) -> None:
    """Add top to ``sub``."""
    p = add_command(sub, "top", cmd_top, parents=[service_options()],
                    help="show message rates, drops and held buffers per channel",
                    description="Every S seconds, per channel the service serves: messages/s "
                                "to and from the processor, clients' endpoints and watchers, "
                                "messages dropped for slow clients, sends refused by the "
                                "policy, receive buffers held, frames queued for clients. "
                                "Until Ctrl-C (130) or --count samples.")
    p.add_argument("name", metavar="NAME", nargs="?", default=None,
                   help="only this processor")
    p.add_argument("--interval", type=positive_seconds, default=1.0, metavar="S",
                   help="seconds between samples (default 1)")
    p.add_argument("--count", type=counter(1), default=None, metavar="N",
                   help="exit after N samples")
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
