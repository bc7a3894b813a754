"""The rpmsg commands of ``amplink``: send and listen on a processor's channels.

Their target (:mod:`.links`) is the amplink service by default: a processor held by
the supervisor (``amplink boot``), reached as its policy allows, where ``listen`` sees
the channel's traffic both ways (the "watch" right; ``--mine``: only what comes to its
own endpoint). With ``--sysfs ROOT`` (or $AMPLINK_SYSFS) they open the channel through a
real kernel's rpmsg character devices
(:attr:`~amplink.platforms.linux.LinuxRemoteProc.link`).
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ServiceUnavailable
from .common import EXIT_INTERRUPTED, CommandError, add_command, counter, out, positive_seconds
from .links import LinkTarget, kernel_target, open_link, service_options
from .rproc import _target_options

if TYPE_CHECKING:
    from ..link.endpoint import Endpoint

_PRINTABLE = set(string.printable) - set("\x0b\x0c")


def _payload(args: argparse.Namespace) -> bytes:
    """DATA as bytes: text, hex digits with --hex, or the contents of @FILE (@- reads
    stdin; @@ starts a text with a literal @)."""
    data: str = args.data
    if data.startswith("@@"):
        return data[1:].encode()
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            if data == "@-":
                return sys.stdin.buffer.read(0x10000 + 1)
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


def _open(args: argparse.Namespace, *, watch: bool = False) -> tuple[LinkTarget, Endpoint]:
    try:
        target = open_link(args, watch=watch, timeout=args.timeout)
    except ServiceUnavailable as exc:
        raise CommandError(f"{exc}; for a real processor give its remoteproc tree with "
                           "--sysfs") from None
    try:
        return target, target.link.open_channel(args.channel, timeout=args.timeout)
    except BaseException:
        target.close()
        raise


def cmd_send(args: argparse.Namespace) -> int:
    """amplink send NAME CHANNEL DATA [--reply]."""
    payload = _payload(args)
    target, ep = _open(args)
    try:
        ep.send(payload, timeout=args.timeout)
        reply = ep.recvfrom(timeout=args.timeout) if args.reply else None
        if args.json:
            result: dict[str, Any] = {"processor": args.name, "channel": args.channel,
                                      "src": ep.addr, "dst": ep.dst, "bytes": len(payload)}
            if reply is not None:
                result["reply"] = {"src": reply[1], **_record(reply[0], args)}
            out(json.dumps(result))
        else:
            out(f"{target.label}: sent {len(payload)} B on {args.channel} "
                f"(0x{ep.addr:x} -> 0x{ep.dst:x})")
            if reply is not None:
                _show("reply", reply[0], args)
    finally:
        target.close()
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


def _record(data: bytes, args: argparse.Namespace) -> dict[str, Any]:
    text = None if args.hex else _as_text(data)
    record: dict[str, Any] = {"bytes": len(data)}
    record.update({"text": text} if text is not None else {"hex": data.hex()})
    return record


def _show(tag: str, data: bytes, args: argparse.Namespace, sender: str = "") -> None:
    """``[tag] N B[ from sender]: text``, or that line and a hex dump."""
    text = None if args.hex else _as_text(data)
    head = f"[{tag}] {len(data)} B{f' from {sender}' if sender else ''}"
    if text is not None:
        out(f"{head}: {text}")
    else:
        out(f"{head}:")
        for line in hexdump(data):
            out(line)


def cmd_listen(args: argparse.Namespace) -> int:
    """amplink listen NAME CHANNEL: print messages until Ctrl-C (or --count of them)."""
    target, ep = _open(args, watch=not args.mine and not kernel_target(args))
    watching = target.service and not args.mine
    try:
        if not args.json:
            what = "; every message on the channel, both ways" if watching else ""
            out(f"{target.label}: listening on {args.channel} (0x{ep.addr:x} <- "
                f"0x{ep.dst:x}){what}; Ctrl-C stops")
        n = 0
        while args.count is None or n < args.count:
            data, src = ep.recvfrom()
            n += 1
            # a watched client's message comes from that client's address
            sender = (f"{'processor' if src == ep.dst else 'client'} 0x{src:x}"
                      if watching else "")
            if args.json:
                record: dict[str, Any] = {"n": n, **_record(data, args)}
                if watching:
                    record.update({"src": src, "from": sender.split()[0]})
                out(json.dumps(record))
            else:
                _show(str(n), data, args, sender)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        target.close()
    return 0


def register(sub: Any) -> None:
    """Add send and listen to ``sub``."""
    parents = [_target_options(), service_options()]
    for name, func, help_, description in (
            ("send", cmd_send, "send one message on a processor's channel",
             "Send DATA as one message on channel CHANNEL of processor NAME: through the "
             "amplink service (a processor `amplink boot` started; as its policy allows), "
             "or with --sysfs through a real kernel's rpmsg character devices. DATA is text, "
             "hex bytes with --hex, or @FILE for a file's contents (@- stdin, @@ a literal "
             "@); --reply waits for one reply and prints it."),
            ("listen", cmd_listen, "print the messages of a processor's channel",
             "Open channel CHANNEL of processor NAME and print each message as it comes, as "
             "text or a hex dump, until Ctrl-C (exit status 130). Through the amplink "
             "service it prints the channel's traffic both ways, each with its sender (the "
             "'watch' right; --mine: only what comes to its own endpoint); with --sysfs, "
             "through a real kernel's rpmsg character devices."),
    ):
        p = add_command(sub, name, func, parents=list(parents), help=help_,
                        description=description)
        p.add_argument("name", metavar="NAME", help="the processor's name or remoteprocN")
        p.add_argument("channel", metavar="CHANNEL", help="the channel's name, e.g. rpmsg-raw")
        if name == "send":
            p.add_argument("data", metavar="DATA", help="text, hex with --hex, or @FILE")
            p.add_argument("--hex", action="store_true",
                           help="DATA is hex bytes (and a reply is shown as a hex dump)")
            p.add_argument("--reply", action="store_true",
                           help="wait for one reply (up to --timeout) and print it")
        else:
            p.add_argument("--hex", action="store_true",
                           help="print every message as a hex dump")
            p.add_argument("--count", type=counter(1), default=None, metavar="N",
                           help="stop after N messages")
            p.add_argument("--mine", action="store_true",
                           help="through the service: only messages to this listener's own "
                                "endpoint (no 'watch' right needed)")
        p.add_argument("--json", action="store_true", help="print JSON lines")
        p.add_argument("--timeout", type=positive_seconds, default=5.0, metavar="S",
                       help="wait up to S seconds for the channel (and a send's buffer, "
                            "and a reply)")
