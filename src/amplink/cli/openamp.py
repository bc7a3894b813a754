"""``amplink openamp host|remote``: OpenAMP's Linux-userspace profile, either role."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..errors import AmplinkError, LinkDown
from ..platforms.openamp_abi import (
    DEFAULT_PEER_TIMEOUT,
    DEMO_MAX_SIZE,
    DEMO_SERVICE,
    OPENAMP_SHM_NAME,
    OPENAMP_SOCKET_PATH,
)
from .common import CommandError, add_command, counter, out, seconds, step

# The platform is imported when a command runs, in the functions that use it:
# `amplink --help` (building the parser) stays fast.
if TYPE_CHECKING:
    from ..platforms.openamp import OpenAmpLink, Role


def mode_name(poll: bool) -> str:
    return "polling" if poll else "blocking"


def _openamp_link(args: argparse.Namespace, role: Role) -> OpenAmpLink:
    from ..platforms.openamp import OpenAmpConfig, OpenAmpLink

    try:
        config = OpenAmpConfig(shm_name=args.shm, socket_path=args.socket)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    end = "server" if args.server else "client"
    out(f"openamp {role}: socket {end} on {config.socket_path}, shared memory "
         f"{config.shm_path} (0x{config.shm_size:x} B), waiting up to {args.timeout:g} s "
         "for the other side")
    link = OpenAmpLink.open(role, server=args.server, config=config, timeout=args.timeout,
                            poll_mode=args.poll)
    out(f"openamp {role}: link up ({mode_name(args.poll)} mode, MTU {link.mtu} B)")
    return link


def cmd_openamp_host(args: argparse.Namespace) -> int:
    from ..perf import format_percentiles
    from ..platforms.openamp import EchoRun
    from ..platforms.openamp.echo import DEMO_FILL, DEMO_HEADER

    link = _openamp_link(args, "host")
    try:
        ep = link.create_service(args.service)
        with step(f"waiting for the remote's {args.service!r}"):
            dst = link.wait_peer(ep, args.timeout)
        out(f"openamp host: {args.service!r}: local 0x{ep.addr:x}, remote 0x{dst:x}")
        run = EchoRun(ep, args.timeout)
        out(f"echo: {args.count} messages of {DEMO_HEADER.size} B + 1..{run.max_size} B of "
             f"0x{DEMO_FILL:02X}, one in flight, every echo checked")
        try:
            run.run(args.count)
        except (AmplinkError, TimeoutError) as exc:
            what = "link down" if isinstance(exc, LinkDown) else "echo stopped"
            raise CommandError(f"{what} after {run.sent} of {args.count} messages: "
                               f"{exc}") from exc
        if run.rtts:
            out(f"  RTT: {format_percentiles(run.rtts)}")
        out(f"  errors: {run.errors}")
        for problem in run.problems:
            out(f"    {problem}")
        ep.close()
        sent = " (name-service destroy sent)" if link.bus.is_up else ""
        out(f"openamp host: endpoint 0x{ep.addr:x} destroyed{sent}")
    finally:
        link.close()
    if run.errors:
        raise CommandError(f"{run.errors} of {run.sent} echoes were wrong")
    out("openamp host: OK")
    return 0


def cmd_openamp_remote(args: argparse.Namespace) -> int:
    from ..platforms.openamp import serve_echo

    link = _openamp_link(args, "remote")
    try:
        ep = link.create_service(args.service)
        out(f"openamp remote: serving {args.service!r} at 0x{ep.addr:x}, echoing every "
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
    out(f"openamp remote: echoed {served.echoed} messages; {why}: done")
    return 0


def register(sub: Any) -> None:
    """Add ``openamp host|remote`` to ``sub``."""
    p = add_command(
        sub, "openamp", None,
        help="OpenAMP's Linux-userspace profile: be its host or its remote",
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
        r = add_command(roles, role, func, help=text, description=f"OpenAMP {role}: {text}.")
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
        r.add_argument("--count", type=counter(0), default=DEMO_MAX_SIZE if role == "host" else 0,
                       metavar="N", help=count_help)
        r.add_argument("--timeout", type=seconds, default=DEFAULT_PEER_TIMEOUT, metavar="S",
                       help="how long to wait for the other side: connection, DRIVER_OK, "
                            f"announcement, each echo (default {DEFAULT_PEER_TIMEOUT:g} s, "
                            "as OpenAMP's client)")
        r.add_argument("--poll", action="store_true",
                       help="spin on the rings instead of sleeping (OpenAMP busy-polls)")
