"""Test firmware: writes one line to its trace (its output), then serves rpmsg-echo."""

from amplink.firmware.examples.echo import main as echo
from amplink.rpmsg.bus import RpmsgBus

TRACE_LINE = "trace firmware: up"


def main(link: RpmsgBus) -> None:
    print(TRACE_LINE, flush=True)
    echo(link)
