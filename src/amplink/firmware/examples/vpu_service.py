"""A VPU-like service over Keem Bay IPC: frames in by reference, results out, control on
a high-speed channel. ``amplink demo --keembay`` drives it; ``amplink run --keembay
amplink.firmware.examples.vpu_service`` just runs it.

Channels (static: all open before the firmware reports it is up):

* **0** (high-speed) control, text: ``ping ...`` is echoed; ``stats`` answers
  ``frames=N bytes=N thumbnails=N dropped=N``; ``threshold N`` (0..255) answers ``ok``;
* **10** (general-purpose) frames: each arrives by reference (a shared buffer of the
  host's heap) and is read in place (held: zero copy); releasing it frees the header,
  which gives the host its buffer back;
* **11** results: one :data:`RESULT` record per frame, in frame order;
* **12** thumbnails: every 16th byte of the frame, by reference in a shared buffer of
  the VPU's own heap, which comes back when the host has consumed it.
"""

from __future__ import annotations

import struct
import zlib

from amplink.firmware.keembay import resource_table
from amplink.link import Endpoint, HeldMessage, Link
from amplink.memory import SharedBuffer
from amplink.transports.keembay import KmbReference, heap

#: frames of up to 8 MiB from the host; as much again for the VPU's thumbnails
RESOURCE_TABLE = resource_table(heap_size=8 << 20)
CONTROL, FRAMES, RESULTS, THUMBNAILS = 0, 10, 11, 12
#: frame number, frame size, CRC-32 of the frame, bytes >= threshold, thumbnail size
RESULT = struct.Struct("<IIIII")
THUMBNAIL_STEP = 16
DEFAULT_THRESHOLD = 128


def bright_table(threshold: int) -> bytes:
    """A translation table: 1 for bytes >= ``threshold``, 0 for the others."""
    return bytes(int(b >= threshold) for b in range(256))


def thumbnail(frame: bytes | memoryview) -> bytes:
    """Every 16th byte of ``frame``, from the first."""
    return bytes(memoryview(frame)[::THUMBNAIL_STEP])


class VpuService:
    """The service's state and its channel callbacks."""

    def __init__(self, link: Link) -> None:
        self.heap = heap(link)  # where the thumbnails go
        self.frames = self.bytes = self.thumbnails = self.dropped = 0
        self.table = bright_table(DEFAULT_THRESHOLD)
        self.lent: list[tuple[KmbReference, SharedBuffer]] = []
        self.control = link.create_endpoint(addr=CONTROL, callback=self.on_control)
        self.results = link.create_endpoint(addr=RESULTS)
        self.thumbs = link.create_endpoint(addr=THUMBNAILS)
        link.create_endpoint(addr=FRAMES, hold=True, callback=self.on_frame)

    def on_control(self, ep: Endpoint, payload: bytes, src: int) -> None:
        word, _, rest = payload.partition(b" ")
        if word == b"ping":
            ep.send(payload)
        elif word == b"stats":
            ep.send(b"frames=%d bytes=%d thumbnails=%d dropped=%d"
                    % (self.frames, self.bytes, self.thumbnails, self.dropped))
        elif word == b"threshold" and rest.strip().isdigit() and int(rest) < 256:
            self.table = bright_table(int(rest))
            ep.send(b"ok")
        else:
            ep.send(b"error: unknown request " + payload[:32])

    def on_frame(self, ep: Endpoint, msg: HeldMessage, src: int) -> None:
        view = msg.view
        size = len(view)
        crc = zlib.crc32(view)
        bright = view.tobytes().translate(self.table).count(1)
        thumb = thumbnail(view)
        msg.release()  # the host's frame buffer goes back once its header is freed
        self.frames += 1
        self.bytes += size
        sent = self._send_thumbnail(thumb)
        self.results.send(RESULT.pack(self.frames, size, crc, bright, len(thumb) if sent else 0))

    def _send_thumbnail(self, thumb: bytes) -> bool:
        """Send ``thumb`` by reference from the VPU's heap; False if there is no room (the
        host has not consumed earlier ones): the frame's result says so."""
        self._reap()
        if not thumb:
            return False
        try:
            buf = self.heap.allocate(len(thumb), name="thumbnail", align=64)
        except MemoryError:
            self.dropped += 1
            return False
        buf.write(thumb)
        self.lent.append((self.thumbs.send_reference(buf), buf))
        self.thumbnails += 1
        return True

    def _reap(self) -> None:
        """Close the thumbnails the host has consumed (their buffers are the VPU's again)."""
        still = []
        for ref, buf in self.lent:
            if ref.done or ref.lost:
                buf.close()
            else:
                still.append((ref, buf))
        self.lent = still


def main(link: Link) -> None:
    VpuService(link)
    link.run()
