"""Keem Bay echo, sink and flood firmware (the VPU node), for benchmarks and tests.

Channels, all opened before the firmware reports it is up:

* 0 (high-speed) and 10 (general-purpose): every message goes back on its channel;
* 20..23 (general-purpose): sinks that count messages and bytes, and answer an empty
  message with the counts since the last report (two little-endian u64, as
  :mod:`.sink`): what :func:`amplink.perf.measure_one_way` expects;
* 1 (high-speed) control: ``flood on`` makes the firmware send 64-byte messages on
  30 and 31 (general-purpose) as fast as the link takes them, ``flood off`` stops it
  and answers the count sent (a little-endian u64); every other request is answered
  ``ok``. While it floods, the firmware still answers the echo channels: it takes in
  and dispatches what arrived between bursts, and a burst ends when the link refuses
  (the general-purpose share of the CPU's FIFO is full); then, for 200 us, it only
  answers what arrives.
"""

from __future__ import annotations

import struct

from amplink.errors import NoBufferAvailable
from amplink.firmware.keembay import resource_table
from amplink.link import Endpoint, Link

from .sink import SinkCounter

RESOURCE_TABLE = resource_table()
ECHO_CHANNELS = (0, 10)
SINK_CHANNELS = (20, 21, 22, 23)
CONTROL = 1
FLOOD_CHANNELS = (30, 31)
FLOOD_SIZE = 64
#: messages per flood channel between two looks at what arrived
BURST = 4
#: how long a flood the link refuses only answers what arrives before it tries again
FULL_WAIT = 0.0002
COUNT = struct.Struct("<Q")


def echo(ep: Endpoint, payload: bytes, src: int) -> None:
    ep.send(payload)


class Flood:
    """The flood's switch, driven from the control channel."""

    def __init__(self) -> None:
        self.on = False
        self.sent = 0

    def on_control(self, ep: Endpoint, payload: bytes, src: int) -> None:
        if payload == b"flood on":
            self.on, self.sent = True, 0
            ep.send(b"ok")
        elif payload == b"flood off":
            self.on = False
            ep.send(COUNT.pack(self.sent))
        else:
            ep.send(b"ok")


def main(link: Link) -> None:
    for channel in ECHO_CHANNELS:
        link.create_endpoint(addr=channel, callback=echo)
    for channel in SINK_CHANNELS:
        link.create_endpoint(addr=channel, callback=SinkCounter().on_message)
    flood = Flood()
    link.create_endpoint(addr=CONTROL, callback=flood.on_control)
    floods = [link.create_endpoint(addr=channel) for channel in FLOOD_CHANNELS]
    payload = bytes(FLOOD_SIZE)
    while True:
        if not flood.on:
            link.run(until=lambda: flood.on)
            continue
        link.poll()  # what arrived meanwhile: echoes first, then the next burst
        if not flood.on:
            continue  # switched off by what arrived: the count it answered is final
        sent = flood.sent
        for ep in floods:
            for _ in range(BURST):
                try:
                    ep.try_send(payload)
                except NoBufferAvailable:
                    break
                flood.sent += 1
        if flood.sent == sent:  # the link is full: answer what arrives for a while
            link.run(timeout=FULL_WAIT)
