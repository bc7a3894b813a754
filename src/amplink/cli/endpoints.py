"""The endpoint commands of ``amplink``: send, listen, top.

They talk to a processor's channels through the command's target (:mod:`.links`: the
amplink service by default), as another program would with
:func:`amplink.transports.service.connect_link`. ``amplink.cli`` adds them with
:func:`register`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import EndpointClosed, LinkDown, ReceiveTimeout
from ..transports.service import DEFAULT_TIMEOUT, service_status
from ..transports.service_status import ProcessorStatus, to_json
from .common import (
    EXIT_INTERRUPTED,
    CommandError,
    add_command,
    counter,
    out,
    positive_seconds,
    table,
)
from .links import open_link, target_options

NAME_HELP = "the processor's name (see `amplink ls`) or its remoteprocN device"


# -- payloads -----------------------------------------------------------------------------
def parse_data(text: str, *, hex_: bool) -> bytes:
    """DATA as given: text (UTF-8), hex digits with ``hex_``, or ``@FILE`` (``@@`` for a
    literal ``@``)."""
    if hex_:
        try:
            return bytes.fromhex(text)
        except ValueError as exc:
            raise CommandError(f"--hex: {exc}: give pairs of hex digits, e.g. 'de ad be ef'"
                               ) from None
    if text.startswith("@@"):
        return text[1:].encode()
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            return sys.stdin.buffer.read() if text == "@-" else path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    return text.encode()


def is_text(data: bytes) -> bool:
    """Printable UTF-8 (tabs and newlines allowed)."""
    try:
        decoded = data.decode()
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\n\r" for c in decoded)


def hexdump(data: bytes) -> Iterator[str]:
    """``hexdump -C`` lines."""
    for offset in range(0, len(data), 16):
        chunk = data[offset:offset + 16]
        hex_ = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        yield f"{offset:08x}  {hex_:<47}  |{text}|"


def describe(data: bytes) -> dict[str, Any]:
    """A message for --json: its length, hex, and text if it is text."""
    item: dict[str, Any] = {"length": len(data), "hex": data.hex()}
    if is_text(data):
        item["text"] = data.decode()
    return item


def show(data: bytes, src: int, mode: str, who: str = "") -> None:
    """Print one message: text on one line, else a hexdump (``mode``: auto, text, hex);
    ``who`` names the sender after its address."""
    sender = f"0x{src:x}{f' ({who})' if who else ''}"
    if mode == "text" or (mode == "auto" and is_text(data)):
        out(f"{sender}: {data.decode(errors='replace')}")
    else:
        out(f"{sender}: {len(data)} B")
        for line in hexdump(data):
            out(f"  {line}")


# -- send ---------------------------------------------------------------------------------
def cmd_send(args: argparse.Namespace) -> int:
    """amplink send NAME CHANNEL DATA [--hex] [--reply] [--json]."""
    data = parse_data(args.data, hex_=args.hex)
    link = open_link(args, timeout=args.timeout)
    try:
        ep = link.open_channel(args.channel, timeout=args.timeout)
        ep.send(data, timeout=args.timeout)
        reply: tuple[bytes, int] | None = None
        if args.reply:
            try:
                reply = ep.recvfrom(timeout=args.timeout)
            except ReceiveTimeout:
                raise CommandError(f"sent {len(data)} B, but no reply came within "
                                   f"{args.timeout:g} s") from None
        if args.json:
            result: dict[str, Any] = {
                "processor": args.name, "channel": args.channel, "endpoint": ep.addr,
                "dst": ep.dst, "sent": len(data)}
            if args.reply:
                assert reply is not None
                result["reply"] = {"src": reply[1], **describe(reply[0])}
            out(json.dumps(result))
        else:
            out(f"{args.name}/{args.channel}: sent {len(data)} B from 0x{ep.addr:x} to "
                f"0x{ep.dst:x}")
            if reply is not None:
                show(reply[0], reply[1], "hex" if args.hex else "auto")
    finally:
        link.close()
    return 0


# -- listen -------------------------------------------------------------------------------
def cmd_listen(args: argparse.Namespace) -> int:
    """amplink listen NAME CHANNEL [--mine] [--hex|--text] [--json] [--count N]."""
    link = open_link(args, watch=not args.mine)
    try:
        ep = link.open_channel(args.channel, timeout=args.timeout)
        if not args.json:
            what = ("messages to this endpoint" if args.mine else
                    "every message on the channel, both ways")
            print(f"listening on {args.name}/{args.channel} (endpoint 0x{ep.addr:x}): {what}; "
                  "Ctrl-C stops", file=sys.stderr, flush=True)
        mode = "hex" if args.hex else "text" if args.text else "auto"
        seen = 0
        while args.count is None or seen < args.count:
            try:
                data, src = ep.recvfrom()
            except (LinkDown, EndpointClosed) as exc:
                raise CommandError(f"{args.name}/{args.channel}: {exc}") from exc
            seen += 1
            # the processor's address of the channel; a watched client's message comes
            # from that client's address
            who = "processor" if src == ep.dst else "client"
            if args.json:
                out(json.dumps({"time": time.time(), "src": src, "from": who,
                                **describe(data)}))
            else:
                show(data, src, mode, who)
        return 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        link.close()


# -- top ----------------------------------------------------------------------------------
def _snapshot(args: argparse.Namespace) -> list[ProcessorStatus]:
    status = service_status(args.service, timeout=DEFAULT_TIMEOUT)
    return [p for p in status if args.name is None or args.name in (p.name, p.dev)]


def _counters(status: list[ProcessorStatus]) -> dict[tuple[str, int, str], tuple[int, int]]:
    return {(p.name, link.index, c.name): (c.to_processor, c.from_processor)
            for p in status for link in p.links for c in link.channels}


def top_rows(before: list[ProcessorStatus], now: list[ProcessorStatus],
             seconds: float) -> list[dict[str, Any]]:
    """One row per channel: messages/s each way since ``before``, drops, held buffers."""
    old = _counters(before)
    rows = []
    for p in now:
        for link in p.links:
            for c in link.channels:
                to0, from0 = old.get((p.name, link.index, c.name), (c.to_processor,
                                                                      c.from_processor))
                rows.append({
                    "processor": p.name, "link": link.index, "channel": c.name,
                    "to_per_s": max(0, c.to_processor - to0) / seconds,
                    "from_per_s": max(0, c.from_processor - from0) / seconds,
                    "endpoints": len(c.endpoints), "watchers": len(c.watchers),
                    "dropped": c.dropped, "refused": c.refused,
                    "held": link.rx_held, "max_held": link.max_held,
                    "queued": sum(cl.queued for cl in p.clients),
                })
    return rows


def _print_top(rows: list[dict[str, Any]]) -> None:
    header = ("PROCESSOR", "CHANNEL", "TO/S", "FROM/S", "EPS", "WATCH", "DROPPED", "REFUSED",
              "HELD", "QUEUED")
    lines = [header] + [(r["processor"], r["channel"], f"{r['to_per_s']:.0f}",
                         f"{r['from_per_s']:.0f}", str(r["endpoints"]), str(r["watchers"]),
                         str(r["dropped"]), str(r["refused"]),
                         f"{r['held']}/{r['max_held']}", str(r["queued"])) for r in rows]
    out(time.strftime("%H:%M:%S"))
    for line in table(lines):
        out(line)
    if not rows:
        out("(no channel served)")


def cmd_top(args: argparse.Namespace) -> int:
    """amplink top [NAME] [--interval S] [--count N] [--json]."""
    try:
        before, t0 = _snapshot(args), time.monotonic()
        samples = 0
        while args.count is None or samples < args.count:
            time.sleep(args.interval)
            now, t1 = _snapshot(args), time.monotonic()
            rows = top_rows(before, now, t1 - t0)
            if args.json:
                out(json.dumps({"time": time.time(), "channels": rows,
                                "processors": [to_json(p) for p in now]}))
            else:
                _print_top(rows)
            before, t0 = now, t1
            samples += 1
        return 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# -- registration -------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add send, listen and top to ``sub``."""
    target = target_options()
    p = add_command(sub, "send", cmd_send, parents=[target], help="send a message on a channel",
                    description="Send DATA on CHANNEL of processor NAME, through the amplink "
                                "service (as its policy allows). DATA is text, hex digits "
                                "with --hex, or @FILE (@- reads stdin, @@ starts with a "
                                "literal @); at most one MTU (496 B by default).")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("channel", metavar="CHANNEL", help="the channel's name, e.g. rpmsg-echo")
    p.add_argument("data", metavar="DATA", help="what to send")
    p.add_argument("--hex", action="store_true", help="DATA is hex digits (and show the "
                                                      "reply as a hexdump)")
    p.add_argument("--reply", action="store_true", help="wait for one reply and print it")
    p.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"wait at most S seconds for the channel, a buffer, the reply "
                        f"(default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p = add_command(sub, "listen", cmd_listen, parents=[target],
                    help="print the messages on a processor's channel",
                    description="Print the messages on CHANNEL of processor NAME, both ways "
                                "(what the processor sends to any client, what any client "
                                "sends to it: the 'watch' right), each with its sender, as "
                                "text or a hexdump, until Ctrl-C (exit status 130).")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("channel", metavar="CHANNEL", help="the channel's name")
    p.add_argument("--mine", action="store_true",
                   help="only messages to this listener's own endpoint (no 'watch' right "
                        "needed)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--hex", action="store_true", help="always print hexdumps")
    mode.add_argument("--text", action="store_true", help="always print text")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--count", type=counter(1), default=None, metavar="N",
                   help="exit after N messages")
    p.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"wait at most S seconds for the channel (default {DEFAULT_TIMEOUT:g})")
    p = add_command(sub, "top", cmd_top, parents=[target],
                    help="show message rates, drops and held buffers per channel",
                    description="Every S seconds, per channel the service serves: messages/s "
                                "to and from the processor, clients' endpoints and watchers, "
                                "messages dropped for slow clients, sends refused by the "
                                "policy, receive buffers held, frames queued for clients. "
                                "Until Ctrl-C (130) or --count samples.")
    p.add_argument("name", metavar="NAME", nargs="?", default=None,
                   help="only this processor")
    p.add_argument("--interval", type=positive_seconds, default=1.0, metavar="S",
                   help="seconds between samples (default 1)")
    p.add_argument("--count", type=counter(1), default=None, metavar="N",
                   help="exit after N samples")
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
