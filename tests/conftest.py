"""Makes the helpers shared by several test folders (common_kit.py, here) importable.

The test folders are not packages: each imports its own helper modules by name from
its folder; this puts tests/ itself on sys.path for the helpers they share.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
