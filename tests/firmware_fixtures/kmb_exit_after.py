"""Keem Bay VPU firmware that echoes one message on channel 0, then returns from main:
the runtime closes its link (the host sees it torn down) and the process exits 0."""

from __future__ import annotations

from amplink.firmware.keembay import resource_table
from amplink.link import Link

RESOURCE_TABLE = resource_table()


def main(link: Link) -> None:
    ep = link.create_endpoint(addr=0)
    ep.send(ep.recv())
