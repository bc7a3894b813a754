"""The remote-processor commands of ``amplink``: boot, stop, state, recovery, coredump,
trace, crash, crashlog, attach, detach (``ls`` is :mod:`.ls`).

By default they act on the simulator: processors held by a supervisor process (see
:mod:`amplink.service.supervisor`) that ``amplink boot`` starts on demand and that
exits when ``amplink stop`` removes its last processor. With ``--sysfs ROOT`` (or
$AMPLINK_SYSFS) they act on that remoteproc tree instead, e.g. the real
``/sys/class/remoteproc``, through the same code
(:class:`~amplink.platforms.linux.LinuxRemoteProc`).

``amplink.cli`` adds these commands with :func:`register`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AmplinkError
from ..platforms.linux_abi import CLASS_ROOT, DEBUG_ROOT, DEV_ROOT
from ..remoteproc.api import CrashReason
from ..remoteproc.coredump import CoredumpMode
from .common import EXIT_INTERRUPTED, CommandError, add_command, out, positive_seconds

# The platform and the supervisor are imported when a command runs, in the functions that
# use them: `amplink --help` (building the parser) stays fast.
if TYPE_CHECKING:
    from ..platforms.linux import ControlTree, LinuxRemoteProc
    from ..service.supervisor import SupervisorClient

ENV_SYSFS = "AMPLINK_SYSFS"
ENV_DEBUGFS = "AMPLINK_DEBUGFS"
ENV_DEV = "AMPLINK_DEV"
NAME_HELP = "the processor's name (see `amplink ls`) or its remoteprocN device"
CRASH_REASONS = {
    "mmufault": CrashReason.MMUFAULT,
    "watchdog": CrashReason.WATCHDOG,
    "fatal-error": CrashReason.FATAL_ERROR,
}


# -- which tree -------------------------------------------------------------------------
@dataclass
class _Target:
    """The tree the command acts on; ``supervisor`` is set for a simulator's tree (whose
    directory ``root`` also holds the endpoint service)."""

    tree: ControlTree | None  # None: the simulator is not running
    supervisor: SupervisorClient | None
    where: str
    root: Path | None = None


def _sysfs_root(args: argparse.Namespace) -> Path | None:
    root = args.sysfs or os.environ.get(ENV_SYSFS)
    return Path(root) if root else None


def open_tree(root: Path, *, debug_root: str | None, dev_root: str) -> ControlTree:
    """The remoteproc tree at ``root`` (:func:`amplink.platforms.linux.open_tree`; tests
    hand the commands a fake kernel's tree here)."""
    from ..platforms.linux import open_tree as open_linux_tree

    return open_linux_tree(root, debug_root=debug_root, dev_root=dev_root)


def _target(args: argparse.Namespace, *, start: bool = False) -> _Target:
    from ..platforms.linux import is_simulator_tree
    from ..service.supervisor import (
        SupervisorClient,
        connect_supervisor,
        ensure_supervisor,
        runtime_dir,
    )

    root = _sysfs_root(args)
    if root is not None:
        debug = args.debugfs or os.environ.get(ENV_DEBUGFS)
        if debug is None and root == CLASS_ROOT:
            debug = str(DEBUG_ROOT)
        dev = args.dev or os.environ.get(ENV_DEV) or str(DEV_ROOT)
        tree = open_tree(root, debug_root=debug, dev_root=dev)
        simulated = is_simulator_tree(root)
        supervisor = SupervisorClient(root) if simulated else None
        return _Target(tree, supervisor, str(root), root if simulated else None)
    where = f"the simulator ({runtime_dir()})"
    client = ensure_supervisor() if start else connect_supervisor()
    return _Target(client.tree if client else None, client, where, runtime_dir())


def _processor(args: argparse.Namespace) -> tuple[LinuxRemoteProc, _Target]:
    from ..platforms.linux import LinuxRemoteProc

    target = _target(args)
    if target.tree is None:
        raise CommandError(f"no processor called {args.name!r}: no simulated processor is "
                           "running (start one with `amplink boot FIRMWARE`, or use --sysfs)")
    return LinuxRemoteProc.find(args.name, target.tree), target


def _field(read: Any) -> str:
    """A value for a listing: '?' when it cannot be read (the reason is not a listing's)."""
    from ..platforms.linux import MalformedAttribute, RprocControlError

    try:
        return str(read())
    except (RprocControlError, MalformedAttribute):
        return "?"


# -- attach, detach -------------------------------------------------------------------
ACCESS_NAMES = {"r": 1, "w": 2, "rw": 3}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    """A positive byte count, with an optional K, M or G suffix."""
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    try:
        value = int(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4096, 64K, 8M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be positive")
    return value


def cmd_attach(args: argparse.Namespace) -> int:
    """amplink attach NAME SIZE [--access r|w|rw]."""
    supervisor, dev, label = _sim_target(args)
    att_id, da = supervisor.attach(dev, args.size, ACCESS_NAMES[args.access])
    out(f"{label}: buffer {att_id} of 0x{args.size:x} bytes attached at da 0x{da:x}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    """amplink detach NAME ID."""
    supervisor, dev, label = _sim_target(args)
    supervisor.detach(dev, args.id)
    out(f"{label}: buffer {args.id} detached")
    return 0


def _sim_target(args: argparse.Namespace) -> tuple[SupervisorClient, str, str]:
    rproc, target = _processor(args)
    if target.supervisor is None:
        raise CommandError("attach and detach work on simulated processors only")
    return target.supervisor, rproc.dev, rproc.label


# -- boot, stop, state ------------------------------------------------------------------
def _firmware_spec(firmware: str) -> str:
    """A ``.py`` path made absolute: the supervisor runs in "/"."""
    target, sep, func = firmware.partition(":")
    if target.endswith(".py") or os.sep in target:
        return os.path.abspath(target) + sep + func
    return firmware


def cmd_boot(args: argparse.Namespace) -> int:
    """amplink boot FIRMWARE [--name NAME]."""
    from ..platforms.linux import LinuxRemoteProc, SupervisorUnavailable, is_simulator_tree

    root = _sysfs_root(args)
    if root is not None and not is_simulator_tree(root):
        if args.rtkit or args.keembay:
            raise CommandError(f"{'--rtkit' if args.rtkit else '--keembay'} boots a simulated "
                               "co-processor: drop --sysfs")
        return _boot_tree(args)
    firmware = _firmware_spec(args.firmware)
    try:
        supervisor, dev, name = _add_processor(args, firmware)
    except SupervisorUnavailable:
        # the supervisor was exiting (its last processor had just gone) as we came
        supervisor, dev, name = _add_processor(args, firmware)
    rproc = LinuxRemoteProc(dev, supervisor.tree)
    t0 = time.monotonic()
    try:
        rproc.boot()
    except BaseException:
        with contextlib.suppress(AmplinkError):
            supervisor.remove(dev)  # a processor that never ran is not kept
        raise
    out(f"{name} ({dev}): running {firmware} (up in {time.monotonic() - t0:.2f} s); "
         f"`amplink stop {name}` stops it")
    return 0


def _add_processor(args: argparse.Namespace, firmware: str) -> tuple[SupervisorClient, str, str]:
    target = _target(args, start=True)
    if target.supervisor is None:
        raise CommandError(f"no supervisor serves {target.where}")
    kind = "rtkit" if args.rtkit else "keembay" if args.keembay else None
    dev, name = target.supervisor.add(firmware, args.name, kind)
    return target.supervisor, dev, name


def _boot_tree(args: argparse.Namespace) -> int:
    from ..platforms.linux import LinuxRemoteProc, list_processors

    target = _target(args)
    assert target.tree is not None
    if args.name is None:
        processors = list_processors(target.tree)
        if len(processors) != 1:
            raise CommandError(f"{target.where} has {len(processors)} processors "
                               f"({', '.join(processors) or 'none'}): say which with --name")
        args.name = next(iter(processors))
    rproc = LinuxRemoteProc.find(args.name, target.tree)
    if rproc.firmware != args.firmware:
        rproc.firmware = args.firmware
    rproc.boot()
    out(f"{rproc.label}: {rproc.state}, firmware {rproc.firmware}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """amplink stop NAME (a simulated processor is also removed)."""
    rproc, target = _processor(args)
    if target.supervisor is not None:
        target.supervisor.remove(rproc.dev)  # stops whatever the state, crashed included
        out(f"{rproc.label}: stopped and removed")
    else:
        rproc.stop()
        out(f"{rproc.label}: {rproc.state}")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    """amplink state NAME."""
    rproc, _ = _processor(args)
    out(rproc.state)
    return 0


# -- recovery, coredump, crash, trace ---------------------------------------------------
def cmd_recovery(args: argparse.Namespace) -> int:
    """amplink recovery NAME [enabled|disabled|recover]."""
    rproc, _ = _processor(args)
    if args.value == "recover":
        rproc.recover()
        out(f"{rproc.label}: {rproc.state}")
    elif args.value is not None:
        rproc.recovery = args.value == "enabled"
    if args.value != "recover":
        out("enabled" if rproc.recovery else "disabled")
    return 0


def cmd_coredump(args: argparse.Namespace) -> int:
    """amplink coredump NAME [disabled|enabled|inline]."""
    rproc, _ = _processor(args)
    if args.value is not None:
        rproc.coredump = CoredumpMode(args.value)
    out(rproc.coredump)
    return 0


def cmd_crash(args: argparse.Namespace) -> int:
    """amplink crash NAME [--reason R]."""
    rproc, _ = _processor(args)
    rproc.crash(CRASH_REASONS[args.reason])
    out(f"{rproc.label}: crash reported ({args.reason}); now {rproc.state} (recovery "
         f"{'enabled' if rproc.recovery else 'disabled'})")
    return 0


def cmd_crashlog(args: argparse.Namespace) -> int:
    """amplink crashlog NAME."""
    rproc, target = _processor(args)
    if target.supervisor is None:
        raise CommandError(f"{rproc.label}: crashlogs are kept for simulated RTKit "
                           "co-processors (`amplink boot --rtkit`), not in a remoteproc tree")
    report = target.supervisor.crashlog(rproc.dev)
    if report:
        sys.stdout.write(report)
        sys.stdout.flush()
    else:
        out(f"{rproc.label} has not crashed")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    """amplink trace NAME [-f]."""
    from ..platforms.linux import ProcessorNotFound, SupervisorUnavailable

    rproc, _ = _processor(args)
    seen = rproc.trace()
    sys.stdout.write(seen)
    sys.stdout.flush()
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(args.interval)
            try:
                text = rproc.trace()
            except (ProcessorNotFound, SupervisorUnavailable):
                out(f"\n{rproc.label} is gone")
                return 0
            # the buffer has no head/tail: print what was appended, or all of a rewrite
            new = text[len(seen):] if text.startswith(seen) else text
            if new:
                sys.stdout.write(new)
                sys.stdout.flush()
            seen = text
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# -- registration -----------------------------------------------------------------------
def _target_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--sysfs", metavar="ROOT", default=None,
                        help=f"act on this remoteproc tree, e.g. {CLASS_ROOT} (default: "
                             f"${ENV_SYSFS}, else the simulator)")
    parent.add_argument("--debugfs", metavar="ROOT", default=None,
                        help=f"its debugfs directory (default: ${ENV_DEBUGFS}; {DEBUG_ROOT} "
                             f"with --sysfs {CLASS_ROOT})")
    parent.add_argument("--dev", metavar="ROOT", default=None,
                        help=f"with --sysfs: the directory of its device nodes (remoteprocN, "
                             f"rpmsg_ctrlN, rpmsgN; default: ${ENV_DEV}, else {DEV_ROOT})")
    return parent


def register(sub: Any) -> None:
    """Add boot, stop, state, recovery, coredump, trace, crash, crashlog, attach and detach
    to ``sub``."""
    target = _target_options()

    def add(name: str, func: Any, help_: str, description: str) -> argparse.ArgumentParser:
        return add_command(sub, name, func, parents=[target], help=help_,
                           description=description)

    p = add("boot", cmd_boot, "boot firmware on a processor that outlives this command",
            "Simulator: create a processor (started by a supervisor process that lives "
            "until the last processor is stopped) and boot FIRMWARE on it. FIRMWARE is a "
            "Python module importable by the supervisor or a .py file, optionally with "
            ":function; or openamp:SHM:SOCKET for a peer of OpenAMP's Linux-userspace "
            "profile, started separately (the boot waits up to 25 s for it to connect). "
            "With --sysfs: set the firmware of processor NAME (it must be "
            "offline; the kernel looks for the file in /lib/firmware) and start it.")
    p.add_argument("firmware", metavar="FIRMWARE",
                   help="e.g. amplink.firmware.examples.echo, or fw.elf with --sysfs")
    p.add_argument("--name", default=None,
                   help="the processor's name (default: the first free simN, rtkitN or "
                        "vpuN; with --sysfs the only processor)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--rtkit", action="store_true",
                      help="FIRMWARE is Apple RTKit firmware (amplink.firmware.rtkit): boot a "
                           "simulated RTKit co-processor behind a mailbox")
    kind.add_argument("--keembay", action="store_true",
                      help="FIRMWARE is Keem Bay VPU firmware (amplink.firmware.keembay): "
                           "boot a simulated VPU; its open channels are served as kmb-N")
    for name, func, help_, description in (
            ("stop", cmd_stop, "stop a processor",
             "Stop processor NAME. A simulated one is also removed (a crashed one too); the "
             "supervisor exits with its last processor. The kernel cannot stop a crashed "
             "processor: recover it first."),
            ("state", cmd_state, "print a processor's state",
             "Print the state of processor NAME: offline, running, crashed, suspended, "
             "attached, detached or deleted."),
    ):
        add(name, func, help_, description).add_argument("name", metavar="NAME", help=NAME_HELP)
    p = add("attach", cmd_attach, "attach a new shared buffer to a simulated processor",
            "Allocate a buffer of SIZE bytes in the supervisor and attach it to simulated "
            "processor NAME through its IOMMU: its firmware sees it at the device address "
            "printed (amplink.firmware.dma). `amplink ls` lists the attached buffers.")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("size", metavar="SIZE", type=_size, help="bytes (suffixes K, M, G)")
    p.add_argument("--access", choices=sorted(ACCESS_NAMES), default="rw",
                   help="what the firmware may do with it (default rw)")
    p = add("detach", cmd_detach, "detach a buffer that amplink attach made",
            "Detach buffer ID from simulated processor NAME (its firmware's mapping goes) "
            "and free it.")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("id", metavar="ID", type=int, help="the buffer's id (see amplink ls)")
    p = add("recovery", cmd_recovery, "show or set crash recovery",
            "Print whether processor NAME recovers from crashes; enabled/disabled set it "
            "(enabling recovers a crashed processor); recover recovers a crashed one now.")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("value", nargs="?", choices=("enabled", "disabled", "recover"))
    p = add("coredump", cmd_coredump, "show or set what a crash dumps",
            "Print or set the coredump mode of processor NAME (not while it is crashed). "
            "Simulated processors write their dumps to coredumps/ in the runtime directory.")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("value", nargs="?", choices=[m.value for m in CoredumpMode])
    p = add("trace", cmd_trace, "print a processor's trace buffer",
            "Print the trace buffer of processor NAME (debugfs trace0: the RSC_TRACE buffer "
            "of its resource table, empty if the firmware has none); -f follows it until "
            "Ctrl-C or until the processor is gone.")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new text")
    p.add_argument("--interval", type=positive_seconds, default=0.5, metavar="S",
                   help="with -f: poll every S seconds (default 0.5)")
    p = add("crashlog", cmd_crashlog, "print an RTKit co-processor's last crashlog",
            "Print the report of the last crash of simulated RTKit co-processor NAME: the "
            "crashlog it wrote (messages, version, time, mailbox history, registers), "
            "parsed, with any problem the host found in it.")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p = add("crash", cmd_crash, "inject a crash",
            "Report a crash of running processor NAME (debugfs crash: root only on real "
            "hardware). With recovery enabled it is restarted; else it stays crashed.")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("--reason", choices=tuple(CRASH_REASONS), default="fatal-error",
                   help="the crash type reported (default fatal-error)")
