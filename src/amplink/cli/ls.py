"""``amplink ls [--json]``: the remote processors, their settings and what they carry.

For each processor: its state, recovery, coredump and firmware; for the simulator's (or
any supervisor's) processors also their kind (sim, rtkit, keembay, openamp), crashes,
the rpmsg channels the service serves with each client's endpoints, rights and
counters, the watchers and the connected clients (from the endpoint service,
:func:`amplink.transports.service.service_status`), and the buffers attached to them;
with ``--sysfs`` a real processor's rpmsg channels as the kernel lists them in sysfs.
``--json`` prints the same as one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from ..errors import AmplinkError
from ..platforms.linux_abi import CLASS_ROOT
from ..rpmsg.wire import RPMSG_ADDR_ANY
from .common import add_command, out, table
from .rproc import _field, _Target, _target, _target_options

# The platform and the service's client are imported when the command runs, in the
# functions that use them: `amplink --help` (building the parser) stays fast.
if TYPE_CHECKING:
    from ..platforms.linux import LinuxRemoteProc
    from ..service.supervisor import SupervisorClient
    from ..transports.service_status import ProcessorStatus


def cmd_ls(args: argparse.Namespace) -> int:
    """amplink ls [--json]."""
    from ..platforms.linux import LinuxRemoteProc, ProcessorNotFound, list_processors

    target = _target(args)
    if target.tree is None:
        if args.json:
            out("[]")
        else:
            out("no simulated processors (start one with `amplink boot FIRMWARE`; for "
                f"hardware: `amplink ls --sysfs {CLASS_ROOT}`)")
        return 0
    processors = list_processors(target.tree)
    served = _served(target)
    listing = []
    for name, dev in processors.items():
        try:
            rproc = LinuxRemoteProc(dev, target.tree)
        except ProcessorNotFound:
            continue  # removed while listing
        item: dict[str, Any] = {
            "name": name, "dev": dev, "state": _field(lambda r=rproc: r.state),
            "recovery": _field(lambda r=rproc: "enabled" if r.recovery else "disabled"),
            "coredump": _field(lambda r=rproc: r.coredump),
            "firmware": _field(lambda r=rproc: r.firmware)}
        if target.supervisor is not None:
            item.update(_supervised(target.supervisor, dev, served.get(name)))
        else:
            item.update(_kernel_channels(rproc))
        listing.append(item)
    if args.json:
        out(json.dumps(listing, indent=2))
    elif not listing:
        out(f"no remote processors in {target.where}")
    else:
        _print(listing)
    return 0


# -- what is listed ---------------------------------------------------------------------
def _served(target: _Target) -> dict[str, ProcessorStatus]:
    """What the target's endpoint service serves, by processor name ({} if none answers)."""
    from ..transports.service import service_status

    if target.root is None:
        return {}
    try:
        return {p.name: p for p in service_status(target.root)}
    except (AmplinkError, OSError):
        return {}  # an older supervisor, or one on its way out: the control tree still tells


def _supervised(supervisor: SupervisorClient, dev: str,
                served: ProcessorStatus | None) -> dict[str, Any]:
    """A supervised processor's crashes, channels (served, with endpoints), buffers."""
    from ..platforms.linux import RprocControlError
    from ..service.supervisor import SupervisorError
    from ..transports.service_status import to_json

    details: dict[str, Any] = {}
    try:
        details["kind"] = supervisor.kind(dev)
    except (RprocControlError, SupervisorError):
        pass  # gone meanwhile, or an older supervisor
    try:
        details["crashes"] = supervisor.crashes(dev)._asdict()
    except RprocControlError:
        pass  # gone meanwhile, or a processor that does not count crashes
    if served is not None:
        details["links"] = [to_json(link) for link in served.links]
        details["clients"] = [to_json(client) for client in served.clients]
    else:
        try:
            details["channels"] = [c._asdict() for c in supervisor.channels(dev)]
        except RprocControlError:
            pass  # this processor cannot list its channels
    try:
        details["buffers"] = [dataclasses.asdict(b) for b in supervisor.buffers(dev)]
    except RprocControlError:
        pass  # not a simulated processor
    return details


def _kernel_channels(rproc: LinuxRemoteProc) -> dict[str, Any]:
    """A real processor's rpmsg channels, as the kernel lists them in sysfs."""
    try:
        sysfs, controls = rproc.rpmsg_sysfs()
        channels = []
        for ctrl in controls:
            own = sysfs.channel_endpoints(ctrl)
            for channel in sysfs.channels(ctrl.transport):
                ept = own.get(channel.path)
                channels.append({"name": channel.name, "src": channel.src, "dst": channel.dst,
                                 "device": None if ept is None else ept.node,
                                 "ctrl": ctrl.node})
        return {"channels": channels}
    except (AmplinkError, OSError) as exc:
        return {"channels_error": str(exc)}


# -- printing ---------------------------------------------------------------------------
def _print(listing: list[dict[str, Any]]) -> None:
    kinds = any("kind" in p for p in listing)  # a supervisor's processors: it knows their kind
    rows = [("NAME", "DEVICE", *(("KIND",) if kinds else ()), "STATE", "RECOVERY", "COREDUMP",
             "FIRMWARE")]
    rows += [(p["name"], p["dev"], *((p.get("kind", "-"),) if kinds else ()), p["state"],
              p["recovery"], p["coredump"], p["firmware"])
             for p in listing]
    for item, line in zip([None, *listing], table(rows), strict=True):
        out(line)
        if item is not None:
            for detail in _detail_lines(item):
                out(detail)


def _detail_lines(item: dict[str, Any]) -> list[str]:
    lines = []
    crashes = item.get("crashes")
    if crashes and crashes["total"]:
        lines.append(f"    crashes: {crashes['total']}, last: {crashes['last']}")
        if crashes["recovery_stopped"]:
            lines.append(f"    automatic recovery stopped: {crashes['recovery_stopped']}")
    for channel in item.get("channels", []):
        local = ("no local endpoint" if channel["src"] == RPMSG_ADDR_ANY
                 else f"local endpoint 0x{channel['src']:x}")
        where = ""
        if "ctrl" in channel:  # the kernel's: its device node and control device
            device = f" (/dev/{channel['device']})" if channel["device"] else ""
            where = f"{device} [{channel['ctrl']}]"
        elif channel["src"] == RPMSG_ADDR_ANY:
            local = "no local endpoint open"
        lines.append(f"    channel {channel['name']}: remote endpoint 0x{channel['dst']:x}, "
                     f"{local}{where}")
    if "channels_error" in item:
        lines.append(f"    channels: cannot be listed: {item['channels_error']}")
    clients = {c["id"]: c for c in item.get("clients", [])}
    for link in item.get("links", []):
        lines += _link_lines(link, clients)
    for client in clients.values():
        lines.append(f"    client {client['id']}: {client['user']} (uid {client['uid']}) pid "
                     f"{client['pid']}, {client['endpoints']} endpoint(s)"
                     f"{', watching' if client['watch'] else ''}; {client['queued']} queued, "
                     f"{client['dropped']} dropped, {client['refused']} refused")
    for b in item.get("buffers", []):
        holder = "the host" if b["holder"] == "local" else b["holder"]
        lines.append(f"    buffer {b['id']} {b['name']}: 0x{b['length']:x} bytes at da "
                     f"0x{b['da']:x}, {b['access'].lower()}, held by {holder}")
    return lines


def _link_lines(link: dict[str, Any], clients: dict[int, dict[str, Any]]) -> list[str]:
    def who(cid: int) -> str:
        client = clients.get(cid)
        return f"client {cid}" + (f" ({client['user']} pid {client['pid']})" if client else "")

    lines = []
    prefix = f"link {link['index']} " if link["index"] else ""
    for c in link["channels"]:
        count = len(c["endpoints"])
        local = (f"{count} local endpoint{'s' if count != 1 else ''}" if count
                 else "no local endpoint open")
        lines.append(f"    {prefix}channel {c['name']}: remote endpoint 0x{c['dst']:x}, "
                     f"{local}; {c['to_processor']} messages to the processor, "
                     f"{c['from_processor']} from it, {c['dropped']} dropped, "
                     f"{c['refused']} refused")
        for ep in c["endpoints"]:
            lines.append(f"      endpoint 0x{ep['addr']:x}: {who(ep['client'])}, "
                         f"{'+'.join(ep['rights'])}; {ep['sent']} sent, {ep['received']} "
                         "received")
        if c["watchers"]:
            lines.append(f"      watched by {', '.join(who(w) for w in c['watchers'])}")
    return lines


def register(sub: Any) -> None:
    """Add ls to ``sub``."""
    p = add_command(sub, "ls", cmd_ls, parents=[_target_options()],
                    help="list remote processors",
                    description="List the remote processors with their state, recovery and "
                                "coredump settings and firmware; for the service's "
                                "(simulated) ones also their rpmsg channels with the "
                                "clients' endpoints, the connected clients and the attached "
                                "buffers; with --sysfs the rpmsg channels as the kernel "
                                "lists them in /sys/bus/rpmsg.")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
