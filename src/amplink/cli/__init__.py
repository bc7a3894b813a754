"""The ``amplink`` command.

One module per group of subcommands (:mod:`.sim`: demo, run, ping; :mod:`.openamp`;
:mod:`.vhost_user`; :mod:`.frames`; :mod:`.ls`; :mod:`.rproc`: the remote-processor
commands; :mod:`.rpmsg`: send and listen on a processor's channels, whose link
:mod:`.links` resolves (the amplink service, or a kernel's /dev/rpmsg* with --sysfs);
:mod:`.top`: the service's rates and drops); each has a
``register(sub)`` that adds its commands. What they share (errors, output, option
types) is in :mod:`.common`.

Building the parser imports only these modules, the standard library and amplink's small
constant modules (:mod:`amplink.platforms.sim_abi`, ``openamp_abi``, ``linux_abi``, ...):
each command imports the machinery it runs on (the simulator, the supervisor, the
platforms, the transports) in its own functions, when it runs, so that ``amplink
--help`` and every command's start stay fast (tests/cli/test_cli_startup.py checks it).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..errors import AmplinkError
from . import frames, ls, openamp, rpmsg, rproc, sim, top, vhost_user
from .common import EXIT_INTERRUPTED, setup_logging

log = logging.getLogger(__name__)

#: subcommand registration functions, in the order ``--help`` lists them
COMMANDS: list[Callable[[Any], None]] = [
    sim.register, frames.register, openamp.register, vhost_user.register, ls.register,
    rproc.register, rpmsg.register, top.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amplink",
        description="amplink: rpmsg over virtio rings in shared memory, with simulated "
                    "remote processors.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, with the firmware's tracebacks; -vv: "
                             "debug); also sets AMPLINK_LOG for firmware")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``amplink`` command; returns its exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after "--" is the firmware's (argparse cannot take a positional list after
    # options that follow a subcommand's positionals).
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if extra:
        if not isinstance(getattr(args, "args", None), list):
            parser.error(f"amplink {args.command} takes no arguments after --")
        args.args += extra
    setup_logging(args.verbose)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the command like Ctrl-C, so processors are stopped and memory freed
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        status: int = args.func(args)
        return status
    except KeyboardInterrupt:
        print("amplink: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (AmplinkError, TimeoutError, OSError) as exc:
        if args.verbose > 0:
            log.exception("%s failed", args.command)
        print(f"amplink {args.command}: error: {exc}", file=sys.stderr)
        return 1
