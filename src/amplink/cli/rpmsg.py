"""The rpmsg commands of ``amplink`` for real processors: send and listen.

They open a channel of processor NAME through the kernel's rpmsg character devices
(:attr:`~amplink.platforms.linux.LinuxRemoteProc.link`), so they need ``--sysfs ROOT``
(or $AMPLINK_SYSFS): a simulated processor's link lives in its supervisor.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path
from typing import Any

from ..link.endpoint import Endpoint
from ..link.runtime import Link
from ..platforms.linux import LinuxRemoteProc
from .common import EXIT_INTERRUPTED, CommandError, add_command, counter, out, positive_seconds
from .rproc import _processor, _sysfs_root, _target_options

_PRINTABLE = set(string.printable) - set("\x0b\x0c")


def _payload(args: argparse.Namespace) -> bytes:
    """DATA as bytes: text, hex digits with --hex, or the contents of @FILE."""
    data: str = args.data
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            with path.open("rb") as f:
                return f.read(0x10000 + 1)  # more than any rpmsg MTU: refused by the send
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    if args.hex:
        try:
            return bytes.fromhex(data)
        except ValueError:
            raise CommandError(f"{data!r} is not hex bytes (e.g. 'de ad be ef')") from None
    return data.encode()


def _open(args: argparse.Namespace) -> tuple[LinuxRemoteProc, Link, Endpoint]:
    if _sysfs_root(args) is None:
        raise CommandError(f"amplink {args.command} talks to a real kernel's rpmsg devices: "
                           "give the remoteproc tree with --sysfs (e.g. /sys/class/remoteproc)")
    rproc, _ = _processor(args)
    link = rproc.link
    return rproc, link, link.open_channel(args.channel, timeout=args.timeout)


def cmd_send(args: argparse.Namespace) -> int:
    """amplink send NAME CHANNEL DATA."""
    payload = _payload(args)
    rproc, link, ep = _open(args)
    try:
        ep.send(payload, timeout=args.timeout)
        if args.json:
            out(json.dumps({"processor": rproc.name, "channel": args.channel, "src": ep.addr,
                            "dst": ep.dst, "bytes": len(payload)}))
        else:
            out(f"{rproc.label}: sent {len(payload)} B on {args.channel} "
                f"(0x{ep.addr:x} -> 0x{ep.dst:x})")
    finally:
        rproc.close()
    return 0


def hexdump(data: bytes) -> list[str]:
    """16 bytes a line: offset, hex, printable ASCII."""
    return [f"  {i:04x}  {data[i:i + 16].hex(' '):<47}  "
            + "".join(chr(b) if 32 <= b < 127 else "." for b in data[i:i + 16])
            for i in range(0, len(data), 16)] or ["  (empty)"]


def _as_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if all(c in _PRINTABLE for c in text) else None


def _show(n: int, data: bytes, args: argparse.Namespace) -> None:
    text = None if args.hex else _as_text(data)
    if args.json:
        record: dict[str, Any] = {"n": n, "bytes": len(data)}
        record.update({"text": text} if text is not None else {"hex": data.hex()})
        out(json.dumps(record))
    elif text is not None:
        out(f"[{n}] {len(data)} B: {text}")
    else:
        out(f"[{n}] {len(data)} B:")
        for line in hexdump(data):
            out(line)


def cmd_listen(args: argparse.Namespace) -> int:
    """amplink listen NAME CHANNEL: print messages until Ctrl-C (or --count of them)."""
    rproc, link, ep = _open(args)
    try:
        if not args.json:
            out(f"{rproc.label}: listening on {args.channel} (0x{ep.addr:x} <- 0x{ep.dst:x}); "
                "Ctrl-C stops")
        n = 0
        while args.count is None or n < args.count:
            data = ep.recv()
            n += 1
            _show(n, data, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        rproc.close()
    return 0


def register(sub: Any) -> None:
    """Add send and listen to ``sub``."""
    target = _target_options()
    for name, func, help_, description in (
            ("send", cmd_send, "send one message on a channel of a real processor",
             "Send DATA as one message on channel CHANNEL of processor NAME, through the "
             "kernel's rpmsg character devices (needs --sysfs). DATA is text, hex bytes with "
             "--hex, or @FILE for a file's contents."),
            ("listen", cmd_listen, "print the messages of a channel of a real processor",
             "Open channel CHANNEL of processor NAME through the kernel's rpmsg character "
             "devices (needs --sysfs) and print each message as it comes, as text or a hex "
             "dump, until Ctrl-C (exit status 130)."),
    ):
        p = add_command(sub, name, func, parents=[target], help=help_, description=description)
        p.add_argument("name", metavar="NAME", help="the processor's name or remoteprocN")
        p.add_argument("channel", metavar="CHANNEL", help="the channel's name, e.g. rpmsg-raw")
        if name == "send":
            p.add_argument("data", metavar="DATA", help="text, hex with --hex, or @FILE")
            p.add_argument("--hex", action="store_true", help="DATA is hex bytes")
        else:
            p.add_argument("--hex", action="store_true",
                           help="print every message as a hex dump")
            p.add_argument("--count", type=counter(1), default=None, metavar="N",
                           help="stop after N messages")
        p.add_argument("--json", action="store_true", help="print JSON lines")
        p.add_argument("--timeout", type=positive_seconds, default=5.0, metavar="S",
                       help="wait up to S seconds for the channel (and a send's buffer)")
