"""Where ``send`` and ``listen`` get their link: the command's *target*, in one place.

:func:`open_link` turns a command's target options into a :class:`LinkTarget`: a
:class:`~amplink.link.Link` to the processor the command names, and how to let it go.

* the amplink service (the default): a processor held by the supervisor (``amplink
  boot``), through its endpoint socket, as the service's policy allows; ``--service
  DIR`` or ``--sysfs DIR`` of a simulator's tree for another service than yours;
* a real kernel's rpmsg devices: ``--sysfs ROOT`` (e.g. ``/sys/class/remoteproc``), the
  processor's ``/dev/rpmsg*`` (:attr:`~amplink.platforms.linux.LinuxRemoteProc.link`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..paths import ENV_RUNTIME_DIR
from ..transports.service_wire import DEFAULT_TIMEOUT
from .rproc import _processor, _sysfs_root

# The platform and the service's client are imported when a command runs, in the
# functions that use them: `amplink --help` (building the parser) stays fast.
if TYPE_CHECKING:
    from ..link.runtime import Link


@dataclass
class LinkTarget:
    """A link the command uses, the processor's name for messages, and its release."""

    link: Link
    label: str
    close: Callable[[], None]
    #: the link is the service's, and may watch channels (the kernel's cannot)
    service: bool


def service_options() -> argparse.ArgumentParser:
    """The option that names another service than one's own (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--service", metavar="DIR", type=Path, default=None,
                        help=f"the amplink service's directory (default: ${ENV_RUNTIME_DIR}, "
                             "else yours: $XDG_RUNTIME_DIR/amplink or /tmp/amplink-$UID); "
                             "another user's service if its policy lets you in")
    return parent


def kernel_target(args: argparse.Namespace) -> bool:
    """Whether the target is a real kernel's rpmsg devices (not a service)."""
    from ..platforms.linux import is_simulator_tree

    root = _sysfs_root(args)
    return root is not None and not is_simulator_tree(root)


def open_link(args: argparse.Namespace, *, watch: bool = False,
              timeout: float = DEFAULT_TIMEOUT) -> LinkTarget:
    """The link to processor ``args.name`` that the target options give.

    ``watch`` (the service only): also receive copies of the channel's other traffic
    (the "watch" right of the service's policy).
    """
    from ..transports.service import connect_link

    if kernel_target(args):
        rproc, _ = _processor(args)
        try:
            link = rproc.link
        except BaseException:
            rproc.close()
            raise
        return LinkTarget(link, rproc.label, rproc.close, service=False)
    root = _sysfs_root(args)  # a simulator's tree, if any: its supervisor serves it
    service = root if root is not None else args.service
    link = connect_link(args.name, root=service, watch=watch, timeout=timeout,
                        name=f"{args.name}@cli")
    return LinkTarget(link, args.name, link.close, service=True)
