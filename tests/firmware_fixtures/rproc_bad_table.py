"""Firmware whose RESOURCE_TABLE is malformed (version 2): the host must refuse to boot it."""

RESOURCE_TABLE = b"\x02\0\0\0" + bytes(12)


def main(link):  # pragma: no cover - never started
    raise AssertionError("a firmware with a bad table was started")
