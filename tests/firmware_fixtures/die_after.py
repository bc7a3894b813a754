"""Echo firmware that dies (os._exit(7)) after echoing N messages (its argument)."""

import os

from amplink.link import Link


def main(link: Link, args: list[str]) -> None:
    limit = int(args[0]) if args else 1
    count = 0

    def echo(ep, payload, src):
        nonlocal count
        ep.sendto(payload, src)
        count += 1
        if count >= limit:
            os._exit(7)

    link.create_endpoint("rpmsg-echo", announce=True, callback=echo)
    link.run()
