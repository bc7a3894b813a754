"""``amplink frames``: frames handed to a simulated processor by reference, processed in
place, handed back; the throughput, and every frame checked."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from .common import CommandError, add_command, out, step
from .rproc import _size

# The simulator and the hand-over are imported when the command runs, in the function
# that uses them: `amplink --help` (building the parser) stays fast.
if TYPE_CHECKING:
    from ..handover import BufferChannel

FRAMES_FIRMWARE = "amplink.firmware.examples.frames"


def cmd_frames(args: argparse.Namespace) -> int:
    """amplink frames [--size SIZE] [--count N] [--depth D] [--touch] [--firmware FW]."""
    from ..handover import BufferChannel
    from ..memory import Access, allocate_buffer
    from ..platforms.sim import SimRemoteProc

    mode = "touch" if args.touch else "invert"
    rproc = SimRemoteProc(args.firmware, name="sim0", args=[mode])
    frames = [allocate_buffer(args.size, name=f"frame{i}") for i in range(args.depth)]
    try:
        for i, frame in enumerate(frames):
            with frame.cpu_access(Access.WRITE) as view:
                view[:] = bytes([i % 256]) * len(view)  # every page touched before timing
        with rproc.acquire():
            channel = BufferChannel(rproc.link.open_channel("rpmsg-frames", timeout=5.0),
                                    port=rproc.buffers)
            out(f"sim0 ({args.firmware}): {mode} {args.count} frames of {args.size:,} B, "
                f"{args.depth} in flight, handed over by reference (no copy)")
            with step("hand-over"):
                seconds = _run(channel, frames, args.count)
            for a in rproc.attached()[:4]:
                out(f"  attached: {a.name} 0x{a.length:x} bytes at da 0x{a.da:x} ({a.access})")
            rate = args.count / seconds
            out(f"  {rate:,.0f} frames/s, {rate * args.size / 1e9:,.2f} GB/s processed in place "
                f"({seconds * 1e3:.1f} ms)")
            stats = channel.statistics()
            if stats.faults or stats.in_flight:
                raise CommandError(f"peer faults {stats.faults}, {stats.in_flight} in flight")
        if mode == "invert":
            for i, frame in enumerate(frames):
                flips = len(range(i, args.count, args.depth))
                want = (i % 256) ^ (0xFF if flips % 2 else 0)
                if frame.read(0, 1)[0] != want or frame.read(args.size - 1, 1)[0] != want:
                    raise CommandError(f"{frame.name}: not inverted {flips} times")
            out("  every frame checked: inverted in place as often as it was sent")
    finally:
        for frame in frames:
            frame.close()
    out("frames: OK")
    return 0


def _run(channel: BufferChannel, frames: list[Any], count: int) -> float:
    t0 = time.perf_counter()
    sent = 0
    for frame in frames[:count]:
        channel.send(frame)
        sent += 1
    for _ in range(count):
        back = channel.wait_done(timeout=10.0)
        if sent < count:
            channel.send(back.buffer)
            sent += 1
    return time.perf_counter() - t0


def register(sub: Any) -> None:
    """Add ``frames``."""
    p = add_command(sub, "frames", cmd_frames, help="frames processed in place by reference",
                    description="Hand frames (shared buffers) to a simulated processor by "
                    "reference; its firmware inverts each in place (or, with --touch, reads "
                    "one byte) and hands it back. Prints the throughput and checks every frame.")
    p.add_argument("--size", type=_size, default=8 << 20, help="bytes per frame (default 8M)")
    p.add_argument("--count", type=int, default=200, help="frames to process (default 200)")
    p.add_argument("--depth", type=int, default=4, help="frames in flight (default 4)")
    p.add_argument("--touch", action="store_true",
                   help="the firmware touches one byte instead of inverting the frame")
    p.add_argument("--firmware", default=FRAMES_FIRMWARE,
                   help="the firmware serving rpmsg-frames, given 'invert' or 'touch' as its "
                        "argument: a Python module or file, or a native executable such as a "
                        f"build of native_frames.c (default {FRAMES_FIRMWARE})")
