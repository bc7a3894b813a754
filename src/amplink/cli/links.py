"""Where the endpoint commands (send, listen) get their link: the command's *target*.

One function, :func:`open_link`, turns a command's target options into a
:class:`~amplink.link.Link` to the processor it names. Today the target is the amplink
service (the supervisor that holds processors started with ``amplink boot``, or any
service directory given with ``--service``); a kernel's ``/dev/rpmsg*`` (``--sysfs
ROOT``) is a second kind of target that plugs in here, beside it, with the commands
unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..link.runtime import Link
from ..paths import ENV_RUNTIME_DIR
from ..transports.service import DEFAULT_TIMEOUT, connect_link


def target_options() -> argparse.ArgumentParser:
    """The options that choose the target (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--service", metavar="DIR", type=Path, default=None,
                        help=f"the amplink service's directory (default: ${ENV_RUNTIME_DIR}, "
                             "else yours: $XDG_RUNTIME_DIR/amplink or /tmp/amplink-$UID); "
                             "another user's service if its policy lets you in")
    return parent


def open_link(args: argparse.Namespace, *, watch: bool = False,
              timeout: float = DEFAULT_TIMEOUT) -> Link:
    """The link to processor ``args.name`` that the target options give.

    ``watch``: also receive copies of what the processor sends to other clients on the
    channels this link opens (the "watch" right of the service's policy).
    """
    return connect_link(args.name, root=args.service, watch=watch, timeout=timeout,
                        name=f"{args.name}@cli")
