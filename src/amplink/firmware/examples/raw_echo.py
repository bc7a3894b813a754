"""Echo firmware for a real Linux kernel: announces "rpmsg-raw" and echoes every message.

"rpmsg-raw" is the name Linux's rpmsg_char driver binds to, so the kernel turns the
announcement into a /dev/rpmsgN device; endpoints created through /dev/rpmsg_ctrl0 that
send to this endpoint's address are answered too (each at its own address).
"""

from __future__ import annotations

from amplink.link import Link

from .echo import echo

SERVICE = "rpmsg-raw"


def main(link: Link) -> None:
    link.create_endpoint(SERVICE, announce=True, callback=echo)
    link.run()
