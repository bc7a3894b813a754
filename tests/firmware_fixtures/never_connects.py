"""Firmware that never connects (never sends the ready byte).

It blocks at import, before the runtime calls connect(), and leaves as soon as the
host closes the lifeline, so that the host's clean-up is quick.
"""

import os
import select

_fd = int(os.environ["AMPLINK_LIFELINE_FD"])
select.select([_fd], [], [], 30.0)  # readable at EOF: the host is gone
os._exit(0)


def main(link):  # pragma: no cover - never reached
    pass
