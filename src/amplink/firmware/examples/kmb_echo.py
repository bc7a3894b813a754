"""Keem Bay echo and sink firmware (the VPU node), for benchmarks and tests.

Channels, all opened before the firmware reports it is up:

* 0 (high-speed) and 10 (general-purpose): every message goes back on its channel;
* 20..23 (general-purpose): sinks that count messages and bytes, and answer an empty
  message with the counts since the last report (two little-endian u64, as
  :mod:`.sink`): what :func:`amplink.perf.measure_one_way` expects.
"""

from __future__ import annotations

from amplink.firmware.keembay import resource_table
from amplink.link import Link
from amplink.link.endpoint import Endpoint

from .sink import SinkCounter

RESOURCE_TABLE = resource_table()
ECHO_CHANNELS = (0, 10)
SINK_CHANNELS = (20, 21, 22, 23)


def echo(ep: Endpoint, payload: bytes, src: int) -> None:
    ep.send(payload)


def main(link: Link) -> None:
    for channel in ECHO_CHANNELS:
        link.create_endpoint(addr=channel, callback=echo)
    for channel in SINK_CHANNELS:
        link.create_endpoint(addr=channel, callback=SinkCounter().on_message)
    link.run()
