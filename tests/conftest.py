"""Set-up shared by the whole suite.

The test folders are not packages: each imports its own helper modules by name from
its folder; this puts tests/ itself on sys.path for the helpers they share (common_kit.py).
It also gives the suite the same start whatever launched it (SIGINT), keeps the
garbage collections of the leak checks short, and has pytest-xdist steal work.
"""

from __future__ import annotations

import gc
import signal
import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# A test runner started in the background of a non-interactive shell inherits SIGINT
# ignored, and a Python started that way (this process, or any command a test starts)
# never raises KeyboardInterrupt: the Ctrl-C tests would test the launcher, not amplink.
# A handler here is reset to the default at exec, so the commands get the terminal's
# behaviour too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freezes what exists once the tests are collected (modules, the collected items).

    The leak checks collect garbage before they count fds and mappings, and a full
    collection walks every object of the process: with thousands of collected items that
    was most of the time of a short case (the suite ran 2x faster with this). Frozen objects
    are never collected again, so only what the tests create is walked.
    """
    gc.collect()
    gc.freeze()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With ``-n``, xdist's default distribution ("load") is work stealing here: an idle
    worker takes tests queued for a busy one (the run ends on a few long tests: the whole
    suite on 2 cores 116 s -> 108 s). Another ``--dist`` is left as asked."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)
