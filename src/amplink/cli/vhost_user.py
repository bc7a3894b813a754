"""``amplink vhost-user FIRMWARE --socket PATH``: firmware as a virtio-rpmsg device for a VM.

Serves until Ctrl-C (or SIGTERM); each front end that connects (a booting guest) gets
a fresh device and a fresh firmware run.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .common import EXIT_INTERRUPTED, add_command, out

log = logging.getLogger(__name__)


def cmd_vhost_user(args: argparse.Namespace) -> int:
    # imported when the command runs: `amplink --help` stays fast
    from ..platforms.vhost_user import VhostUserServer

    server = VhostUserServer(args.socket, args.firmware, name=args.name, args=args.args)
    out(f"{args.name}: serving {args.firmware} as a vhost-user rpmsg device (virtio id 7) on "
        f"{server.path}; Ctrl-C stops")
    out(f"  e.g. User-Mode Linux: linux ... virtio_uml.device={server.path}:7")
    interrupted = False
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        server.close()
        stats = server.statistics()
        out(f"{args.name}: {stats.connections} connections, {stats.runs_started} firmware "
            f"runs, {stats.protocol_errors} protocol errors, {stats.firmware_errors} "
            f"firmware errors" + (f" (last: {stats.last_error})" if stats.last_error else ""))
    return EXIT_INTERRUPTED if interrupted else 0


def register(sub: Any) -> None:
    """Add ``vhost-user`` to ``sub``."""
    p = add_command(
        sub, "vhost-user", cmd_vhost_user,
        help="serve firmware as a vhost-user virtio-rpmsg device to a VM or User-Mode Linux",
        description="Listen on a Unix socket as the back end of a vhost-user rpmsg device "
                    "(virtio id 7) and run FIRMWARE (a module or .py file with main(link), "
                    "optionally :function) in the device role on the guest's rings, so a "
                    "real Linux kernel's rpmsg stack talks to it. Serves until Ctrl-C; the "
                    "firmware restarts on each new connection. See docs/vhost-user.md.")
    p.add_argument("firmware", metavar="FIRMWARE",
                   help="e.g. amplink.firmware.examples.raw_echo (announces rpmsg-raw)")
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="passed to main(link, args) if it takes two parameters (after --)")
    p.add_argument("--socket", required=True, metavar="PATH",
                   help="the Unix socket to listen on (a stale socket there is replaced)")
    p.add_argument("--name", default="vhost-user", help="the link's name in logs")
