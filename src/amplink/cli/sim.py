"""``amplink demo``, ``run`` and ``ping``: firmware in a simulated processor, started and
stopped by the command."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import EndpointClosed, LinkDown, ReceiveTimeout
from ..platforms.sim_abi import DEFAULT_BOOT_TIMEOUT
from . import keembay
from .common import (
    EXIT_INTERRUPTED,
    CommandError,
    add_command,
    counter,
    out,
    positive_seconds,
    seconds,
    step,
)

# The simulator and the measurements are imported when a command runs, in the functions
# that use them: `amplink --help` (building the parser) stays fast.
if TYPE_CHECKING:
    from ..link.endpoint import Endpoint
    from ..link.runtime import Link
    from ..platforms.sim import SimProcessor

log = logging.getLogger(__name__)

EXAMPLES = "amplink.firmware.examples"
DEMO_FIRMWARE = f"{EXAMPLES}.two_services"
SINK_FIRMWARE = f"{EXAMPLES}.sink"
DEMO_SIZES = (16, 496)


def _mode(poll: bool) -> str:
    return "polling" if poll else "blocking"


def _channel_lines(link: Link) -> list[str]:
    if link.capabilities.addressing == "channel":  # Keem Bay: the VPU's open channels
        opened = keembay.vpu_channels(link)
        return [f"  {keembay.channel_name(c)}" for c in opened] or ["  (no channels open)"]
    channels = link.channels()
    if not channels:
        return ["  (no channels announced)"]
    width = max(len(c.name) for c in channels)
    return [f"  {c.name:<{width}}  remote address 0x{c.dst:x}" for c in channels]


def _processor(args: argparse.Namespace) -> SimProcessor:
    """The processor ``run`` and ``ping`` start, from their common options."""
    from ..platforms.sim import SimProcessor
    from ..platforms.sim.keembay import KeemBayProcessor

    kind = KeemBayProcessor if getattr(args, "keembay", False) else SimProcessor
    return kind(args.firmware, name=args.name, poll_mode=args.poll,
                native=True if args.native else None, args=args.args,
                boot_timeout=args.boot_timeout)


@contextmanager
def _booted(proc: SimProcessor, *, quiet: bool = False) -> Iterator[SimProcessor]:
    """``proc`` started, stopped on exit (a failing exit status is an error)."""
    t0 = time.perf_counter()
    proc.start()
    if not quiet:
        out(f"{proc.name}: firmware {proc.firmware} up in {time.perf_counter() - t0:.2f} s "
            f"({_mode(proc.poll_mode)} mode, MTU {proc.link.mtu} B)")
    failed = True
    try:
        yield proc
        failed = False
    finally:
        code = proc.stop()
        if not quiet:
            out(f"{proc.name}: stopped, firmware exit status {code}")
        if code and not failed:
            raise CommandError(f"{proc.name}: firmware {proc.firmware} exited with status {code}")


def _print_statistics(proc: SimProcessor) -> list[str]:
    """Print the link's counters; return the problems they show."""
    stats = proc.link.statistics()
    transport = stats.backend
    faults = dict(transport.get("protocol_faults", {}))
    nfaults = sum(faults.values())
    malformed = int(transport.get("malformed_rx", 0))
    out(f"  {stats.name}: state {stats.state}, sent {stats.messages_sent}, received "
        f"{stats.messages_received}, sleeps {stats.sleeps}, safety-net wake-ups "
        f"{stats.safety_net_wakeups}, kicks sent {transport.get('kicks_sent', 0)}")
    out(f"  {stats.name}: protocol faults {nfaults}{' ' + repr(faults) if faults else ''}, "
        f"malformed {malformed}, dropped (unknown address) {stats.dropped_unknown_dst}, "
        f"name-service errors {stats.ns_errors}")
    problems = []
    if nfaults or malformed:
        problems.append(f"{stats.name}: {nfaults} protocol faults, {malformed} malformed messages")
    if stats.ns_errors or stats.dropped_unknown_dst:
        problems.append(f"{stats.name}: {stats.ns_errors} name-service errors, "
                        f"{stats.dropped_unknown_dst} messages to unknown addresses")
    if stats.safety_net_wakeups:
        log.warning("%s: %d safety-net wake-ups: a kick was missed (the link still works, "
                    "but slower)", stats.name, stats.safety_net_wakeups)
    return problems


# -- demo ---------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    if args.keembay:
        return keembay.cmd_demo(args)
    from ..perf import (
        PayloadMismatch,
        format_percentiles,
        measure_one_way,
        measure_round_trip,
    )
    from ..platforms.sim import SimProcessor

    count = args.count
    problems: list[str] = []
    with _booted(SimProcessor(DEMO_FIRMWARE, name="sim0", poll_mode=args.poll)) as proc:
        link = proc.link
        link.wait_channel("rpmsg-echo", timeout=5.0)
        link.wait_channel("rpmsg-upper", timeout=5.0)
        out("channels announced by sim0:")
        for line in _channel_lines(link):
            out(line)

        echo = link.open_channel("rpmsg-echo", timeout=5.0)
        out(f"echo: {count} round trips each of {' and '.join(f'{s} B' for s in DEMO_SIZES)},"
            " every reply checked")
        for size in DEMO_SIZES:
            with step(f"rpmsg-echo, {size} B round trips"):
                samples = measure_round_trip(echo, size, count, warmup=min(200, count))
            out(f"  RTT {size:>3} B: {format_percentiles(samples)}")
        echo.close()

        upper = link.open_channel("rpmsg-upper", timeout=5.0)
        for text in (b"hello from the host", b"rpmsg over virtio, in Python"):
            with step(f"rpmsg-upper, request {text!r}"):
                upper.send(text)
                reply = upper.recv(5.0)
                if reply != text.upper():
                    raise PayloadMismatch(f"answered {reply!r}")
            out(f"upper: {text.decode()!r} -> {reply.decode()!r}")
        upper.close()
        out("link statistics:")
        problems += _print_statistics(proc)

    # a second processor (sim0 is stopped first: in polling mode it would spin on a core)
    with _booted(SimProcessor(SINK_FIRMWARE, name="sim1", poll_mode=args.poll)) as sink:
        sink_ep = sink.link.open_channel("rpmsg-sink", timeout=5.0)
        messages = max(1000, 10 * count)
        out(f"one-way to sim1 rpmsg-sink (remote address 0x{sink_ep.dst:x}): {messages} "
            "messages per size, the count confirmed by the firmware")
        for size in DEMO_SIZES:
            with step(f"rpmsg-sink, one-way {size} B"):
                result = measure_one_way(sink_ep, size, messages, warmup=min(1000, messages))
            out(f"  one-way {size:>3} B: {result.messages_per_second:>10,.0f} msg/s  "
                f"{result.megabytes_per_second:7.2f} MB/s  "
                f"({result.messages} in {result.seconds * 1e3:.1f} ms)")
        sink_ep.close()
        out("link statistics:")
        problems += _print_statistics(sink)
    if problems:
        raise CommandError("; ".join(problems))
    out("demo: OK")
    return 0


# -- run ----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    proc = _processor(args)
    proc.start()  # a firmware that fails to start is one line from main()
    interrupted = firmware_exited = False
    why: LinkDown | None = None
    try:
        # Ctrl-C may come from the moment the "is up" line is out: all of it is in the try
        _watch(args, proc)
    except KeyboardInterrupt:
        interrupted = True
        out(f"\n{proc.name}: stopping")
    except LinkDown as exc:
        firmware_exited = True
        why = exc
    finally:
        code = proc.stop()
    if firmware_exited:
        out(f"{proc.name}: the firmware exited (status {code})")
        if code:
            raise CommandError(f"{proc.name}: the firmware failed: {why}")
        return 0
    out(f"{proc.name}: stopped (firmware exit status {code})")
    return EXIT_INTERRUPTED if interrupted else 0


def _watch(args: argparse.Namespace, proc: SimProcessor) -> None:
    """Print the firmware's channels, then each change, until Ctrl-C or link down."""
    link = proc.link
    pid = proc.process.pid if proc.process is not None else "?"
    out(f"{proc.name}: firmware {args.firmware} is up ({_mode(args.poll)} mode, "
        f"pid {pid}); Ctrl-C stops it")

    def snapshot() -> set[tuple[str, int]]:
        if link.capabilities.addressing == "channel":  # Keem Bay: static channels
            return {(keembay.channel_name(c), c) for c in keembay.vpu_channels(link)}
        return {(c.name, c.dst) for c in link.channels()}

    link.run(timeout=args.settle)  # let the first announcements arrive
    known = snapshot()
    out("channels:")
    for line in _channel_lines(link):
        out(line)

    def changed() -> bool:
        return snapshot() != known

    while True:
        link.run(until=changed, timeout=0.5)
        now = snapshot()
        for name, dst in sorted(now - known):
            out(f"+ {name}  remote address 0x{dst:x}")
        for name, dst in sorted(known - now):
            out(f"- {name}  remote address 0x{dst:x} (removed by the firmware)")
        known = now


def _add_firmware_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("firmware", metavar="FIRMWARE",
                   help="Python module or .py file (optionally :function, default main), e.g. "
                        f"{EXAMPLES}.echo, or an executable following amplink.platforms.sim_abi "
                        "convention (recognised by its ELF header)")
    p.add_argument("--poll", action="store_true",
                   help="polling mode: both sides spin on the rings instead of sleeping")
    p.add_argument("--native", action="store_true",
                   help="FIRMWARE is an executable even if it does not look like one")
    p.add_argument("--name", default="sim0", help="the processor's name (default sim0)")
    p.add_argument("--boot-timeout", type=positive_seconds, default=DEFAULT_BOOT_TIMEOUT,
                   metavar="S", help="how long the firmware may take to come up "
                                     f"(default {DEFAULT_BOOT_TIMEOUT:g} s)")
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="arguments for the firmware's main(link, args); put them after -- "
                        "when one starts with -")


# -- ping ---------------------------------------------------------------------------------------
def cmd_ping(args: argparse.Namespace) -> int:
    with _booted(_processor(args), quiet=True) as proc:
        link = proc.link
        if args.size > link.mtu:
            raise CommandError(f"--size {args.size} exceeds the link's MTU of {link.mtu} B")
        try:
            ep = link.open_channel(args.service, timeout=args.wait)
        except TimeoutError:
            names = ", ".join(c.name for c in link.channels()) or "none"
            raise CommandError(f"{proc.name}: service {args.service!r} was not announced "
                               f"within {args.wait} s (announced: {names})") from None
        return _ping_loop(args, ep, proc.name)


def _ping_loop(args: argparse.Namespace, ep: Endpoint, proc_name: str) -> int:
    from ..perf import make_payloads, percentiles

    service = f"{args.service} (0x{ep.dst:x})"
    out(f"PING {service} on {proc_name}: {args.size} data bytes")
    base = make_payloads(args.size, 1)[0]
    rtts: list[float] = []
    sent = differ = 0
    t_start = time.perf_counter()
    seq = 0
    interrupted = False
    try:
        while args.count == 0 or seq < args.count:
            seq += 1
            if seq > 1 and args.interval:
                time.sleep(args.interval)
            while ep.try_recvfrom() is not None:  # late replies of earlier pings
                pass
            payload = (seq.to_bytes(4, "little") + base[4:]) if args.size >= 4 else base
            t0 = time.perf_counter_ns()
            ep.send(payload)
            sent += 1
            try:
                reply = ep.recv(args.timeout)
            except ReceiveTimeout:
                out(f"no answer from {service}: seq={seq} (timeout {args.timeout} s)")
                continue
            rtt = (time.perf_counter_ns() - t0) * 1e-9
            rtts.append(rtt)
            note = ""
            if reply != payload:
                differ += 1
                note = " (reply differs from the request)"
            out(f"{len(reply)} bytes from {service}: seq={seq} time={rtt * 1e3:.3f} ms{note}")
    except KeyboardInterrupt:
        interrupted = True
    except (LinkDown, EndpointClosed) as exc:
        out(f"{service}: {exc}")
    elapsed = time.perf_counter() - t_start
    received = len(rtts)
    loss = 100.0 * (sent - received) / sent if sent else 0.0
    out(f"--- {args.service} ping statistics ---")
    out(f"{sent} messages transmitted, {received} received, {loss:.0f}% loss, "
        f"{differ} differing, time {elapsed * 1e3:.0f} ms")
    if rtts:
        mean = sum(rtts) / received
        mdev = (sum((r - mean) ** 2 for r in rtts) / received) ** 0.5
        out(f"rtt min/avg/max/mdev = {min(rtts) * 1e3:.3f}/{mean * 1e3:.3f}/"
            f"{max(rtts) * 1e3:.3f}/{mdev * 1e3:.3f} ms")
        pct = percentiles(rtts)
        out("rtt " + "  ".join(f"{k} {v * 1e6:.1f}" for k, v in pct.items()) + " us")
    if interrupted:
        return EXIT_INTERRUPTED
    return 0 if received else 1


# -- registration ---------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add ``demo``, ``run`` and ``ping`` to ``sub``."""
    p = add_command(
        sub, "demo", cmd_demo,
        help="boot the example firmware and show echo, latency and throughput",
        description="Boot the two-service example firmware (rpmsg-echo, rpmsg-upper) and "
                    "the sink firmware in simulated processors; list the announced channels, "
                    "time checked echo round trips (16 B and 496 B) and one-way throughput, "
                    "use rpmsg-upper, print the link statistics and shut down.",
    )
    p.add_argument("--poll", action="store_true",
                   help="polling mode: both sides spin on the rings instead of sleeping")
    p.add_argument("--count", type=counter(1), default=2000, metavar="N",
                   help="round trips per payload size (default 2000); one-way sends 10*N")
    p.add_argument("--keembay", action="store_true",
                   help="the Keem Bay IPC demo instead: the example VPU service "
                        f"({keembay.VPU_FIRMWARE}) in a simulated VPU; N pings on the "
                        "high-speed control channel, N/50 (at least 8) frames of 1 MiB by "
                        "reference on a general-purpose one, every result checked")

    p = add_command(
        sub, "run", cmd_run, help="boot firmware and watch its announcements until Ctrl-C",
        description="Boot FIRMWARE in a simulated processor, print the channels it "
                    "announces (and removes) as they come, until Ctrl-C or until the "
                    "firmware exits. Example: amplink run fw.py --poll -- --rate 10",
    )
    _add_firmware_options(p)
    p.add_argument("--settle", type=seconds, default=0.2, metavar="S",
                   help="wait this long for announcements before the first listing")
    p.add_argument("--keembay", action="store_true",
                   help="FIRMWARE talks Keem Bay IPC (its table has the 'keembay-ipc' "
                        "carveout): list the channels it opens instead of announcements, "
                        f"e.g. amplink run --keembay {keembay.VPU_FIRMWARE}")

    p = add_command(
        sub, "ping", cmd_ping, help="boot firmware and time round trips to one of its services",
        description="Boot FIRMWARE, open the channel --service and send --count messages "
                    "of --size bytes, printing each reply's round-trip time like ping(8), "
                    "then a summary. The service should answer each message (an echo); "
                    "replies that differ from the request are flagged.",
    )
    _add_firmware_options(p)
    p.add_argument("--service", "-s", required=True, metavar="NAME",
                   help="the announced channel to ping, e.g. rpmsg-echo")
    p.add_argument("--count", "-c", type=counter(0), default=10, metavar="N",
                   help="messages to send (default 10; 0: until Ctrl-C)")
    p.add_argument("--size", type=counter(0), default=56, metavar="N",
                   help="payload bytes (default 56, at most the MTU)")
    p.add_argument("--interval", "-i", type=seconds, default=0.2, metavar="S",
                   help="seconds between messages (default 0.2)")
    p.add_argument("--timeout", "-W", type=seconds, default=2.0, metavar="S",
                   help="how long to wait for each reply (default 2 s)")
    p.add_argument("--wait", type=seconds, default=5.0, metavar="S",
                   help="how long to wait for the service to be announced (default 5 s)")
