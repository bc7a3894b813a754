"""``rpmsg_bench.py --plot``: the numbers of one run as a PNG (needs matplotlib).

Left, the distribution of every round trip of the smallest payload, per peer (a step
histogram on a logarithmic time axis: the body and the tail at once). Right, one-way
throughput (MB/s of payload, median of the runs) against the payload size.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def check_matplotlib(parser: argparse.ArgumentParser) -> None:
    """Fail at once, not after the run, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("--plot needs matplotlib (pip install matplotlib, or the [plot] extra)")


def plot(data: dict[str, Any], titles: dict[str, str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    colors = {peer: plt.get_cmap("tab10")(i % 10) for i, peer in enumerate(results)}
    sizes = data["meta"]["params"]["sizes"]
    smallest = str(min(sizes))
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(14, 5.5))

    samples = {peer: [ns / 1000 for run in r["rtt"][smallest]["runs"]
                      for ns in run["samples_ns"]] for peer, r in results.items()}
    low = max(0.1, min(min(s) for s in samples.values()))
    high = max(max(s) for s in samples.values())
    edges = [low * (high / low) ** (i / 120) for i in range(121)]
    for peer, values in samples.items():
        lat.hist(values, bins=edges, histtype="step", label=titles[peer], linewidth=1.2,
                 color=colors[peer])
    lat.set_xscale("log")
    lat.set_xlabel(f"round-trip time, {smallest} B payload (us, log scale)")
    lat.set_ylabel("round trips")
    lat.set_title("RTT distribution (all runs)")
    lat.legend(fontsize=8)

    for peer, r in results.items():
        for kind, style in (("one_way", "-"), ("one_way_batched", "--")):
            points = [(int(size), cell["mb_per_s"]["median"])
                      for size, cell in r.get(kind, {}).items()]
            if points:
                points.sort()
                label = titles[peer] + (" send_many" if kind == "one_way_batched" else "")
                thr.plot([p[0] for p in points], [p[1] for p in points], style, marker="o",
                         label=label, color=colors[peer])
    thr.set_xscale("log", base=2)
    thr.set_yscale("log")
    thr.set_xlabel("payload size (B)")
    thr.set_ylabel("one-way throughput (MB/s of payload, median)")
    thr.set_title("throughput by size")
    thr.legend(fontsize=7)
    ymin, ymax = thr.get_ylim()
    if ymin > 0 and math.isfinite(ymax):
        thr.set_ylim(ymin / 1.5, ymax * 1.5)

    meta = data["meta"]
    fig.suptitle(f"amplink rpmsg benchmark ({meta['mode']}, hot path {meta['implementation']}, "
                 f"{meta['cpus']} CPUs, {meta['time']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written to {path}", flush=True)
