"""Firmware that exits with status 3 while being imported: it never comes up."""

import sys

sys.exit(3)


def main(link):  # pragma: no cover - never reached
    pass
