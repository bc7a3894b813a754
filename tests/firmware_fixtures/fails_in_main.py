"""Firmware whose main() raises before it announces anything."""


def main(link):
    raise ValueError("firmware fixture: bad configuration")
