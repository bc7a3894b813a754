"""Firmware that never connects (never sends the ready byte).

Started as firmware, it blocks at import, before the runtime calls connect(), and leaves
as soon as the host closes the lifeline, so that the host's clean-up is quick. (The
host's table reader imports it too, without a lifeline: then it does nothing.)
"""

import os
import select

if "AMPLINK_LIFELINE_FD" in os.environ:
    _fd = int(os.environ["AMPLINK_LIFELINE_FD"])
    select.select([_fd], [], [], 30.0)  # readable at EOF: the host is gone
    os._exit(0)


def main(link):  # pragma: no cover - never reached
    pass
