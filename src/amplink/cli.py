"""The ``amplink`` command.

Each subcommand is added by a ``register_*`` function that gets the subparsers object
and sets ``func`` (called with the parsed arguments, returns the exit status); new
commands are appended to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import __version__, cli_rproc, cli_vhost
from .errors import AmplinkError, EndpointClosed, LinkDown, ReceiveTimeout
from .perf import (
    PayloadMismatch,
    format_percentiles,
    make_payloads,
    measure_one_way,
    measure_round_trip,
    percentiles,
)
from .platforms.openamp import (
    DEFAULT_PEER_TIMEOUT,
    DEMO_SERVICE,
    OPENAMP_SHM_NAME,
    OPENAMP_SOCKET_PATH,
    EchoRun,
    OpenAmpConfig,
    OpenAmpLink,
    Role,
    serve_echo,
)
from .platforms.openamp.echo import DEMO_FILL, DEMO_HEADER, DEMO_MAX_SIZE
from .platforms.sim import SimProcessor
from .platforms.sim_layout import ENV_LOG
from .rpmsg.bus import RpmsgBus
from .rpmsg.endpoint import Endpoint

log = logging.getLogger(__name__)

EXAMPLES = "amplink.firmware.examples"
DEMO_FIRMWARE = f"{EXAMPLES}.two_services"
SINK_FIRMWARE = f"{EXAMPLES}.sink"
DEMO_SIZES = (16, 496)

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A failure the command reports as one clear line (exit status 1)."""


# -- helpers ------------------------------------------------------------------------------------
def _out(*parts: object) -> None:
    print(*parts, flush=True)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="amplink %(levelname)s %(name)s: %(message)s")
    if verbose > 0:
        # the firmware runtime reads its log level from the environment it inherits
        os.environ.setdefault(ENV_LOG, logging.getLevelName(level))


def _mode(poll: bool) -> str:
    return "polling" if poll else "blocking"


def _channel_lines(link: RpmsgBus) -> list[str]:
    channels = link.channels()
    if not channels:
        return ["  (no channels announced)"]
    width = max(len(c.name) for c in channels)
    return [f"  {c.name:<{width}}  remote address 0x{c.dst:x}" for c in channels]


@contextmanager
def _booted(firmware: str, *, name: str = "sim0", poll: bool = False, native: bool = False,
            args: list[str] | None = None, boot_timeout: float = 20.0,
            quiet: bool = False) -> Iterator[SimProcessor]:
    """A started simulated processor, stopped on exit (the exit status is checked)."""
    proc = SimProcessor(firmware, name=name, poll_mode=poll, native=native, args=args or (),
                        boot_timeout=boot_timeout)
    t0 = time.perf_counter()
    proc.start()
    if not quiet:
        _out(f"{name}: firmware {firmware} up in {time.perf_counter() - t0:.2f} s "
             f"({_mode(poll)} mode, MTU {proc.link.mtu} B)")
    try:
        yield proc
    finally:
        code = proc.stop()
        if not quiet:
            _out(f"{name}: stopped, firmware exit status {code}")
        if code and sys.exc_info()[0] is None:
            raise CommandError(f"{name}: firmware {firmware} exited with status {code}")


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Name the step that failed in the error message."""
    try:
        yield
    except (AmplinkError, PayloadMismatch, TimeoutError) as exc:
        raise CommandError(f"{what}: {exc}") from exc


def _print_statistics(proc: SimProcessor) -> list[str]:
    """Print the link's counters; return the problems they show."""
    stats = proc.link.statistics()
    transport = stats.transport
    faults = dict(transport.get("protocol_faults", {}))
    nfaults = sum(faults.values())
    malformed = int(transport.get("malformed_rx", 0))
    _out(f"  {stats.name}: state {stats.state}, sent {stats.messages_sent}, received "
         f"{stats.messages_received}, sleeps {stats.sleeps}, safety-net wake-ups "
         f"{stats.safety_net_wakeups}, kicks sent {transport.get('kicks_sent', 0)}")
    _out(f"  {stats.name}: protocol faults {nfaults}{' ' + repr(faults) if faults else ''}, "
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


def _verbose_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: without -v after the command, the value given before it stays
    parent.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log more (-v: info, -vv: debug)")
    return parent


def add_command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with the options every command has (``-v``)."""
    kwargs.setdefault("parents", []).append(_verbose_option())
    return sub.add_parser(name, **kwargs)


# -- demo ---------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    count = args.count
    if count < 1:
        raise CommandError("--count must be at least 1")
    problems: list[str] = []
    with _booted(DEMO_FIRMWARE, name="sim0", poll=args.poll) as proc:
        link = proc.link
        link.wait_channel("rpmsg-echo", timeout=5.0)
        link.wait_channel("rpmsg-upper", timeout=5.0)
        _out("channels announced by sim0:")
        for line in _channel_lines(link):
            _out(line)

        echo = link.open_channel("rpmsg-echo", timeout=5.0)
        _out(f"echo: {count} round trips each of {' and '.join(f'{s} B' for s in DEMO_SIZES)},"
             " every reply checked")
        for size in DEMO_SIZES:
            with _step(f"rpmsg-echo, {size} B round trips"):
                samples = measure_round_trip(echo, size, count, warmup=min(200, count))
            _out(f"  RTT {size:>3} B: {format_percentiles(samples)}")
        echo.close()

        upper = link.open_channel("rpmsg-upper", timeout=5.0)
        for text in (b"hello from the host", b"rpmsg over virtio, in Python"):
            with _step(f"rpmsg-upper, request {text!r}"):
                upper.send(text)
                reply = upper.recv(5.0)
                if reply != text.upper():
                    raise PayloadMismatch(f"answered {reply!r}")
            _out(f"upper: {text.decode()!r} -> {reply.decode()!r}")
        upper.close()
        _out("link statistics:")
        problems += _print_statistics(proc)

    # a second processor (sim0 is stopped first: in polling mode it would spin on a core)
    with _booted(SINK_FIRMWARE, name="sim1", poll=args.poll) as sink:
        sink_ep = sink.link.open_channel("rpmsg-sink", timeout=5.0)
        messages = max(1000, 10 * count)
        _out(f"one-way to sim1 rpmsg-sink (remote address 0x{sink_ep.dst:x}): {messages} "
             "messages per size, the count confirmed by the firmware")
        for size in DEMO_SIZES:
            with _step(f"rpmsg-sink, one-way {size} B"):
                result = measure_one_way(sink_ep, size, messages, warmup=min(1000, messages))
            _out(f"  one-way {size:>3} B: {result.messages_per_second:>10,.0f} msg/s  "
                 f"{result.megabytes_per_second:7.2f} MB/s  "
                 f"({result.messages} in {result.seconds * 1e3:.1f} ms)")
        sink_ep.close()
        _out("link statistics:")
        problems += _print_statistics(sink)
    if problems:
        raise CommandError("; ".join(problems))
    _out("demo: OK")
    return 0


def register_demo(sub: Any) -> None:
    p = add_command(
        sub, "demo", help="boot the example firmware and show echo, latency and throughput",
        description="Boot the two-service example firmware (rpmsg-echo, rpmsg-upper) and "
                    "the sink firmware in simulated processors; list the announced channels, "
                    "time checked echo round trips (16 B and 496 B) and one-way throughput, "
                    "use rpmsg-upper, print the link statistics and shut down.",
    )
    p.add_argument("--poll", action="store_true",
                   help="polling mode: both sides spin on the rings instead of sleeping")
    p.add_argument("--count", type=int, default=2000, metavar="N",
                   help="round trips per payload size (default 2000); one-way sends 10*N")
    p.set_defaults(func=cmd_demo)


# -- run ----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    proc = SimProcessor(args.firmware, name=args.name, poll_mode=args.poll, native=args.native,
                        args=args.args, boot_timeout=args.boot_timeout)
    proc.start()
    firmware_exited = False
    try:
        link = proc.link
        pid = proc.process.pid if proc.process is not None else "?"
        _out(f"{proc.name}: firmware {args.firmware} is up ({_mode(args.poll)} mode, "
             f"pid {pid}); Ctrl-C stops it")

        def snapshot() -> set[tuple[str, int]]:
            return {(c.name, c.dst) for c in link.channels()}

        try:
            link.run(timeout=args.settle)  # let the first announcements arrive
            known = snapshot()
            _out("channels:")
            for line in _channel_lines(link):
                _out(line)

            def changed() -> bool:
                return snapshot() != known

            while True:
                link.run(until=changed, timeout=0.5)
                now = snapshot()
                for name, dst in sorted(now - known):
                    _out(f"+ {name}  remote address 0x{dst:x}")
                for name, dst in sorted(known - now):
                    _out(f"- {name}  remote address 0x{dst:x} (removed by the firmware)")
                known = now
        except KeyboardInterrupt:
            _out(f"\n{proc.name}: stopping")
        except LinkDown as exc:
            firmware_exited = True
            log.info("%s", exc)
    finally:
        code = proc.stop()
    if firmware_exited:
        _out(f"{proc.name}: the firmware exited (status {code})")
        return 0 if code == 0 else 1
    _out(f"{proc.name}: stopped (firmware exit status {code})")
    return 0


def _add_firmware_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("firmware", metavar="FIRMWARE",
                   help="Python module or .py file (optionally :function, default main), e.g. "
                        f"{EXAMPLES}.echo; with --native, an executable")
    p.add_argument("--poll", action="store_true",
                   help="polling mode: both sides spin on the rings instead of sleeping")
    p.add_argument("--native", action="store_true",
                   help="FIRMWARE is an executable following the sim_layout convention")
    p.add_argument("--name", default="sim0", help="the processor's name (default sim0)")
    p.add_argument("--boot-timeout", type=float, default=20.0, metavar="S",
                   help="how long the firmware may take to come up (default 20 s)")


def register_run(sub: Any) -> None:
    p = add_command(
        sub, "run", help="boot firmware and watch its announcements until Ctrl-C",
        description="Boot FIRMWARE in a simulated processor, print the channels it "
                    "announces (and removes) as they come, until Ctrl-C or until the "
                    "firmware exits.",
    )
    _add_firmware_options(p)
    p.add_argument("--settle", type=float, default=0.2, metavar="S",
                   help="wait this long for announcements before the first listing")
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="arguments for the firmware (put them after --)")
    p.set_defaults(func=cmd_run)


# -- ping ---------------------------------------------------------------------------------------
def cmd_ping(args: argparse.Namespace) -> int:
    if args.count < 0 or args.size < 0 or args.interval < 0:
        raise CommandError("--count, --size and --interval must not be negative")
    with _booted(args.firmware, name=args.name, poll=args.poll, native=args.native,
                 args=args.args, boot_timeout=args.boot_timeout, quiet=True) as proc:
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
    service = f"{args.service} (0x{ep.dst:x})"
    _out(f"PING {service} on {proc_name}: {args.size} data bytes")
    base = make_payloads(args.size, 1)[0]
    rtts: list[float] = []
    sent = differ = 0
    t_start = time.perf_counter()
    seq = 0
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
                _out(f"no answer from {service}: seq={seq} (timeout {args.timeout} s)")
                continue
            rtt = (time.perf_counter_ns() - t0) * 1e-9
            rtts.append(rtt)
            note = ""
            if reply != payload:
                differ += 1
                note = " (reply differs from the request)"
            _out(f"{len(reply)} bytes from {service}: seq={seq} time={rtt * 1e3:.3f} ms{note}")
    except KeyboardInterrupt:
        pass
    except (LinkDown, EndpointClosed) as exc:
        _out(f"{service}: {exc}")
    elapsed = time.perf_counter() - t_start
    received = len(rtts)
    loss = 100.0 * (sent - received) / sent if sent else 0.0
    _out(f"--- {args.service} ping statistics ---")
    _out(f"{sent} messages transmitted, {received} received, {loss:.0f}% loss, "
         f"{differ} differing, time {elapsed * 1e3:.0f} ms")
    if rtts:
        mean = sum(rtts) / received
        mdev = (sum((r - mean) ** 2 for r in rtts) / received) ** 0.5
        _out(f"rtt min/avg/max/mdev = {min(rtts) * 1e3:.3f}/{mean * 1e3:.3f}/"
             f"{max(rtts) * 1e3:.3f}/{mdev * 1e3:.3f} ms")
        pct = percentiles(rtts)
        _out("rtt " + "  ".join(f"{k} {v * 1e6:.1f}" for k, v in pct.items()) + " us")
    return 0 if received else 1


def register_ping(sub: Any) -> None:
    p = add_command(
        sub, "ping", help="boot firmware and time round trips to one of its services",
        description="Boot FIRMWARE, open the channel --service and send --count messages "
                    "of --size bytes, printing each reply's round-trip time like ping(8), "
                    "then a summary. The service should answer each message (an echo); "
                    "replies that differ from the request are flagged.",
    )
    _add_firmware_options(p)
    p.add_argument("--service", "-s", required=True, metavar="NAME",
                   help="the announced channel to ping, e.g. rpmsg-echo")
    p.add_argument("--count", "-c", type=int, default=10, metavar="N",
                   help="messages to send (default 10; 0: until Ctrl-C)")
    p.add_argument("--size", type=int, default=56, metavar="N",
                   help="payload bytes (default 56, at most the MTU)")
    p.add_argument("--interval", "-i", type=float, default=0.2, metavar="S",
                   help="seconds between messages (default 0.2)")
    p.add_argument("--timeout", "-W", type=float, default=2.0, metavar="S",
                   help="how long to wait for each reply (default 2 s)")
    p.add_argument("--wait", type=float, default=5.0, metavar="S",
                   help="how long to wait for the service to be announced (default 5 s)")
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="arguments for the firmware (put them after --)")
    p.set_defaults(func=cmd_ping)


# -- openamp ------------------------------------------------------------------------------------
def _openamp_link(args: argparse.Namespace, role: Role) -> OpenAmpLink:
    if args.timeout < 0 or args.count < 0:
        raise CommandError("--timeout and --count must not be negative")
    try:
        config = OpenAmpConfig(shm_name=args.shm, socket_path=args.socket)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    end = "server" if args.server else "client"
    _out(f"openamp {role}: socket {end} on {config.socket_path}, shared memory "
         f"{config.shm_path} (0x{config.shm_size:x} B), waiting up to {args.timeout:g} s "
         "for the other side")
    link = OpenAmpLink.open(role, server=args.server, config=config, timeout=args.timeout,
                            poll_mode=args.poll)
    _out(f"openamp {role}: link up ({_mode(args.poll)} mode, MTU {link.mtu} B)")
    return link


def cmd_openamp_host(args: argparse.Namespace) -> int:
    link = _openamp_link(args, "host")
    try:
        ep = link.create_service(args.service)
        with _step(f"waiting for the remote's {args.service!r}"):
            dst = link.wait_peer(ep, args.timeout)
        _out(f"openamp host: {args.service!r}: local 0x{ep.addr:x}, remote 0x{dst:x}")
        run = EchoRun(ep, args.timeout)
        _out(f"echo: {args.count} messages of {DEMO_HEADER.size} B + 1..{run.max_size} B of "
             f"0x{DEMO_FILL:02X}, one in flight, every echo checked")
        try:
            run.run(args.count)
        except (AmplinkError, TimeoutError) as exc:
            what = "link down" if isinstance(exc, LinkDown) else "echo stopped"
            raise CommandError(f"{what} after {run.sent} of {args.count} messages: "
                               f"{exc}") from exc
        if run.rtts:
            _out(f"  RTT: {format_percentiles(run.rtts)}")
        _out(f"  errors: {run.errors}")
        for problem in run.problems:
            _out(f"    {problem}")
        ep.close()
        sent = " (name-service destroy sent)" if link.bus.is_up else ""
        _out(f"openamp host: endpoint 0x{ep.addr:x} destroyed{sent}")
    finally:
        link.close()
    if run.errors:
        raise CommandError(f"{run.errors} of {run.sent} echoes were wrong")
    _out("openamp host: OK")
    return 0


def cmd_openamp_remote(args: argparse.Namespace) -> int:
    link = _openamp_link(args, "remote")
    try:
        ep = link.create_service(args.service)
        _out(f"openamp remote: serving {args.service!r} at 0x{ep.addr:x}, echoing every "
             "message to its sender")
        try:
            served = serve_echo(ep, args.count)
        except LinkDown as exc:
            raise CommandError(f"link down: {exc}") from exc
    finally:
        link.close()
    why = {"destroyed": "the host destroyed its endpoint",
           "shutdown": "the host sent the shutdown message",
           "count": f"--count {args.count} reached"}[served.reason]
    _out(f"openamp remote: echoed {served.echoed} messages; {why}: done")
    return 0


def register_openamp(sub: Any) -> None:
    p = add_command(
        sub, "openamp", help="OpenAMP's Linux-userspace profile: be its host or its remote",
        description="Play either role of OpenAMP's Linux-userspace machine (POSIX shared "
                    "memory openamp.shm, kicks over the Unix socket /tmp/openamp.event.0) "
                    "against OpenAMP's demo programs or another amplink: `host` runs "
                    "OpenAMP's echo demo and reports errors and round-trip times, `remote` "
                    "echoes every message back until the host destroys its endpoint.",
    )
    roles = p.add_subparsers(dest="role", metavar="ROLE")
    roles.required = True
    for role, func, text, count_help in (
        ("host", cmd_openamp_host,
         "the virtio driver: run the echo demo (sizes 1..480) and time it",
         f"messages to send (default {DEMO_MAX_SIZE}: sizes 1..{DEMO_MAX_SIZE} once)"),
        ("remote", cmd_openamp_remote,
         "the virtio device: echo every message until the host ends the run",
         "stop after N echoes (default 0: when the host destroys its endpoint)"),
    ):
        r = roles.add_parser(role, help=text, description=f"OpenAMP {role}: {text}.",
                             parents=[_verbose_option()])
        end = r.add_mutually_exclusive_group(required=True)
        end.add_argument("--server", action="store_true",
                         help="write the resource table, listen and accept the other side "
                              "(OpenAMP's instance 0)")
        end.add_argument("--client", action="store_true",
                         help="connect to the other side, retrying until --timeout "
                              "(OpenAMP's instance 1)")
        r.add_argument("--service", default=DEMO_SERVICE, metavar="NAME",
                       help=f"the service (endpoint) name (default {DEMO_SERVICE})")
        r.add_argument("--shm", default=OPENAMP_SHM_NAME, metavar="NAME",
                       help=f"POSIX shared memory name (default {OPENAMP_SHM_NAME})")
        r.add_argument("--socket", default=OPENAMP_SOCKET_PATH, metavar="PATH",
                       help=f"Unix socket path (default {OPENAMP_SOCKET_PATH})")
        r.add_argument("--count", type=int, default=DEMO_MAX_SIZE if role == "host" else 0,
                       metavar="N", help=count_help)
        r.add_argument("--timeout", type=float, default=DEFAULT_PEER_TIMEOUT, metavar="S",
                       help="how long to wait for the other side: connection, DRIVER_OK, "
                            f"announcement, each echo (default {DEFAULT_PEER_TIMEOUT:g} s, "
                            "as OpenAMP's client)")
        r.add_argument("--poll", action="store_true",
                       help="spin on the rings instead of sleeping (OpenAMP busy-polls)")
        r.set_defaults(func=func)


# -- the command --------------------------------------------------------------------------------
#: subcommand registration functions, in the order ``--help`` lists them
COMMANDS: list[Callable[[Any], None]] = [
    register_demo, register_run, register_ping, register_openamp, cli_rproc.register,
    cli_vhost.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amplink",
        description="amplink: rpmsg over virtio rings in shared memory, with simulated "
                    "remote processors.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug); also sets AMPLINK_LOG for "
                             "firmware")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the command like Ctrl-C, so processors are stopped and memory freed
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    handler: Handler = args.func
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("amplink: interrupted", file=sys.stderr)
        return 130
    except (CommandError, AmplinkError, PayloadMismatch, TimeoutError, OSError) as exc:
        if args.verbose > 0:
            log.exception("%s failed", args.command)
        print(f"amplink {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
