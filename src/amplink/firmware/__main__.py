"""``python -m amplink.firmware SPEC [ARGS...]``: run Python firmware in a simulated processor.

SPEC is a module name or a ``.py`` path, optionally followed by ``:function``
(default ``main``). The function gets the device-role link (and ARGS, if it takes
a second parameter). Link down (the host went away) ends the firmware normally.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from types import ModuleType

from ..errors import EndpointClosed, LinkDown
from . import connect


def load_entry(spec: str):
    target, _, func = spec.partition(":")
    module: ModuleType
    if target.endswith(".py") or os.sep in target:
        mod_spec = importlib.util.spec_from_file_location("amplink_firmware_main", target)
        if mod_spec is None or mod_spec.loader is None:
            raise SystemExit(f"amplink.firmware: cannot load {target!r}")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    entry = getattr(module, func or "main", None)
    if not callable(entry):
        raise SystemExit(f"amplink.firmware: {target!r} has no function {func or 'main'!r}")
    return entry


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=os.environ.get("AMPLINK_LOG", "WARNING"),
                        format="firmware %(levelname)s %(name)s: %(message)s")
    entry = load_entry(argv[0])
    link = connect()
    try:
        if len(inspect.signature(entry).parameters) >= 2:
            entry(link, argv[1:])
        else:
            entry(link)
    except (LinkDown, EndpointClosed):
        pass  # the host went away or closed the channel: a normal end for firmware
    finally:
        link.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
