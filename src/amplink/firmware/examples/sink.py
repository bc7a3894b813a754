"""Sink firmware: announces "rpmsg-sink", counts what it receives, and reports on request.

Every non-empty message is counted (messages and payload bytes) and dropped. An empty
message is the control message: the firmware answers its sender with the counts since
the last report (:data:`REPORT`, two little-endian u64: messages, bytes) and starts
counting afresh. The host uses this to measure one-way throughput
(:func:`amplink.perf.measure_one_way`).
"""

from __future__ import annotations

from amplink.link import Link
from amplink.link.endpoint import Endpoint
from amplink.perf import SINK_REPORT as REPORT
from amplink.perf import SINK_SERVICE as SERVICE


class SinkCounter:
    """Counts messages and bytes; an empty message gets the counts as the answer."""

    __slots__ = ("messages", "bytes")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    def on_message(self, ep: Endpoint, payload: bytes, src: int) -> None:
        n = len(payload)
        if n:
            self.messages += 1
            self.bytes += n
            return
        ep.sendto(REPORT.pack(self.messages, self.bytes), src)
        self.messages = self.bytes = 0


def main(link: Link) -> None:
    counter = SinkCounter()
    link.create_endpoint(SERVICE, announce=True, callback=counter.on_message)
    link.run()
