"""Makes the helpers shared by several test folders (common_kit.py, here) importable.

The test folders are not packages: each imports its own helper modules by name from
its folder; this puts tests/ itself on sys.path for the helpers they share.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

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
