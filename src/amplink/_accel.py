"""Which implementation runs the hot paths: the compiled one or pure Python.

``amplink._speedups`` (C, built by ``pip install`` where a compiler is found) holds the
split rings' halves and the rpmsg backend's sending and receiving. Without it, or with
the environment variable ``AMPLINK_PURE_PYTHON`` set to anything but ``0`` or nothing,
the pure-Python path runs. Both behave the same (the test suite runs against each);
the choice is made once, when amplink is imported.
"""

from __future__ import annotations

import os
from types import ModuleType

#: set to 1 to run the pure-Python path although the C extension is built
PURE_PYTHON_ENV = "AMPLINK_PURE_PYTHON"


def _load() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        from . import _speedups
    except ImportError:  # built without a compiler: the pure-Python path it is
        return None
    return _speedups


#: the C extension module, or None when the pure-Python path runs
speedups = _load()
#: "c" or "python": which implementation runs (shown in backend statistics)
IMPLEMENTATION = "python" if speedups is None else "c"
