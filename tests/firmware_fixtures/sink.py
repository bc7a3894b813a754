"""Firmware that announces "sink" and never reads a message, until the host is gone."""

import os
import select

from amplink.link import Link


def main(link: Link) -> None:
    link.create_endpoint("sink", announce=True)
    fd = int(os.environ["AMPLINK_LIFELINE_FD"])
    select.select([fd], [], [], 60.0)  # EOF: the host closed the link
