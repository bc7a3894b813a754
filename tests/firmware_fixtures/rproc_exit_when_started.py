"""sys.exit(3) when started as firmware, not when the host reads its (default) table."""

import os
import sys

if "AMPLINK_LIFELINE_FD" in os.environ:
    sys.exit(3)


def main(link):  # pragma: no cover - never reached
    pass
