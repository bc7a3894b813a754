"""``amplink demo --keembay`` and the Keem Bay side of ``amplink run --keembay``: the
example VPU service in a simulated Keem Bay VPU, driven over its static channels."""

from __future__ import annotations

import argparse
import time
import zlib
from typing import TYPE_CHECKING

from ..transports.keembay.wire import KMB_IPC_MAX_CHANNELS, is_hs
from .common import CommandError, out, step

# The simulator, the transport and the example firmware's protocol are imported when a
# command runs, in the functions that use them: `amplink --help` (building the parser)
# stays fast.
if TYPE_CHECKING:
    from ..link.runtime import Link
    from ..memory import SharedBuffer
    from ..transports.keembay import KmbReference

VPU_FIRMWARE = "amplink.firmware.examples.vpu_service"
#: frames in flight at once (each a buffer of the host's heap)
FRAME_BUFFERS = 4
FRAME_SIZE = 1 << 20
WAIT = 5.0


def vpu_channels(link: Link) -> list[int]:
    """The channels the VPU has open now (its bitmap in the IPC area)."""
    from ..transports.keembay import KeemBayBackend

    backend = link.backend
    assert isinstance(backend, KeemBayBackend)
    return [c for c in range(KMB_IPC_MAX_CHANNELS) if backend.peer_open(c)]


def channel_name(channel: int) -> str:
    return f"channel {channel} ({'HS' if is_hs(channel) else 'GP'})"


def _frame(i: int) -> bytes:
    """Frame ``i``'s pixels: a gradient that moves with ``i`` (cheap, and each differs)."""
    row = bytes((x + 7 * i) & 0xFF for x in range(256))
    return row * (FRAME_SIZE // 256)


def _frames(link: Link, count: int) -> tuple[float, int]:
    """Send ``count`` frames by reference and check every result and thumbnail; returns
    (seconds, bytes)."""
    from ..firmware.examples.vpu_service import (
        FRAMES,
        RESULT,
        RESULTS,
        THUMBNAILS,
        bright_table,
        thumbnail,
    )
    from ..perf import PayloadMismatch
    from ..transports.keembay import heap

    frames = link.create_endpoint(addr=FRAMES)
    results = link.create_endpoint(addr=RESULTS)
    thumbs = link.create_endpoint(addr=THUMBNAILS, hold=True)
    buffers: list[SharedBuffer] = [heap(link).allocate(FRAME_SIZE, name=f"frame{i}")
                                   for i in range(FRAME_BUFFERS)]
    refs: list[KmbReference | None] = [None] * FRAME_BUFFERS
    table = bright_table(128)
    total = 0
    t0 = time.perf_counter()
    try:
        for i in range(count):
            slot = i % FRAME_BUFFERS
            ref = refs[slot]
            if ref is not None and not ref.wait(WAIT):  # the VPU has not released it
                raise CommandError(f"frame {i - FRAME_BUFFERS} was never consumed by the VPU")
            data = _frame(i)
            buffers[slot].write(data)
            refs[slot] = frames.send_reference(buffers[slot], timeout=WAIT)
            number, size, crc, bright, thumb_size = RESULT.unpack(results.recv(WAIT))
            with thumbs.recv_held(WAIT) as thumb:
                if (number, size, crc, bright) != (i + 1, len(data), zlib.crc32(data),
                                                   data.translate(table).count(1)):
                    raise PayloadMismatch(f"frame {i}: the VPU's result differs")
                if thumb_size != len(thumb) or bytes(thumb.view) != thumbnail(data):
                    raise PayloadMismatch(f"frame {i}: the VPU's thumbnail differs")
            total += len(data)
        seconds = time.perf_counter() - t0
        for ref in refs:
            if ref is not None:
                ref.wait(WAIT)
    finally:
        for ep in (frames, results, thumbs):
            ep.close()
        for buf in buffers:
            if buf.owner == "cpu":
                buf.close()
    return seconds, total


def _statistics(link: Link) -> list[str]:
    """Print the link's counters; return the problems they show."""
    stats = link.statistics()
    b = stats.backend
    out(f"  {stats.name}: state {stats.state}, sent {stats.messages_sent}, received "
        f"{stats.messages_received}, kicks sent {b['kicks_sent']}, sleeps {stats.sleeps}, "
        f"safety-net wake-ups {stats.safety_net_wakeups}")
    out(f"  {stats.name}: headers in use {b['headers_allocated']}/{b['headers']}, sends that "
        f"waited {b['queued_sends']}, FIFO full {b['fifo_full']}, no FREE header "
        f"{b['no_header']}, references done {b['references_done']}")
    faults = f" {b['protocol_faults']}" if b["protocol_faults"] else ""
    out(f"  {stats.name}: protocol faults {b['malformed_rx']}{faults}, dropped (closed "
        f"channel) {stats.dropped_unknown_dst}")
    problems = []
    if b["malformed_rx"] or stats.dropped_unknown_dst:
        problems.append(f"{stats.name}: {b['malformed_rx']} protocol faults, "
                        f"{stats.dropped_unknown_dst} messages for closed channels")
    return problems


def cmd_demo(args: argparse.Namespace) -> int:
    """``amplink demo --keembay``."""
    from ..firmware.examples.vpu_service import CONTROL, FRAMES, RESULTS, THUMBNAILS
    from ..perf import format_percentiles, make_payloads, time_round_trips
    from ..platforms.sim.keembay import KeemBayProcessor
    from ..transports.keembay import wait_peer_channel

    t0 = time.perf_counter()
    with KeemBayProcessor(VPU_FIRMWARE, name="vpu0", poll_mode=args.poll) as proc:
        link = proc.link
        out(f"vpu0: firmware {VPU_FIRMWARE} up in {time.perf_counter() - t0:.2f} s "
            f"(Keem Bay IPC, {'polling' if args.poll else 'blocking'} mode, MTU {link.mtu} B)")
        with step("waiting for the VPU's channels"):
            for channel in (CONTROL, FRAMES, RESULTS, THUMBNAILS):
                if not wait_peer_channel(link, channel, WAIT):
                    raise CommandError(f"the VPU did not open {channel_name(channel)}")
        out("channels open on the VPU: " + ", ".join(channel_name(c)
                                                     for c in vpu_channels(link)))
        control = link.create_endpoint(addr=CONTROL)
        pings = [b"ping " + p[5:] for p in make_payloads(16)]
        with step("control, ping round trips"):
            samples = time_round_trips(lambda data: control.send(data, timeout=WAIT),
                                       lambda: control.recv(WAIT), pings, args.count,
                                       warmup=min(200, args.count))
        out(f"control ({channel_name(CONTROL)}): {args.count} checked pings of 16 B, "
            f"RTT {format_percentiles(samples)}")
        frames = max(8, args.count // 50)
        with step("frames by reference"):
            seconds, total = _frames(link, frames)
        out(f"frames ({channel_name(FRAMES)}): {frames} frames of {FRAME_SIZE >> 20} MiB by "
            f"reference, {frames / seconds:.0f} frames/s ({total / seconds / 1e6:.0f} MB/s); "
            "every CRC-32, count and thumbnail (by reference from the VPU) checked")
        with step("control, stats"):
            control.send(b"stats", timeout=WAIT)
            out(f"control: stats -> {control.recv(WAIT).decode(errors='replace')}")
        out("link statistics:")
        problems = _statistics(link)
    if problems:
        raise CommandError("; ".join(problems))
    out("demo --keembay: OK")
    return 0
