"""Says HELLO with versions 13..15, which the host (11..12) does not speak."""


def main(fw):
    fw.versions = (13, 15)
