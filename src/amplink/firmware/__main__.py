"""``python -m amplink.firmware SPEC [ARGS...]``: run Python firmware in a simulated processor.

SPEC is a module name or a ``.py`` path, optionally followed by ``:function``
(default ``main``). The function gets the device-role link (and ARGS, if it takes
a second parameter). Link down (the host went away) ends the firmware normally.

``python -m amplink.firmware --resource-table SPEC`` writes the module's
``RESOURCE_TABLE`` (a ResourceTable or bytes) to stdout, or nothing if it declares none:
the host reads the table this way without importing firmware code itself.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType

from ..errors import EndpointClosed, LinkDown
from ..platforms import sim_abi as L
from ..remoteproc.rsc_table import ResourceTable
from . import connect, report_failure

log = logging.getLogger("amplink.firmware")


def load_module(target: str) -> ModuleType:
    """Import the firmware module named by a module name or a ``.py`` path."""
    if target.endswith(".py") or os.sep in target:
        mod_spec = importlib.util.spec_from_file_location("amplink_firmware_main", target)
        if mod_spec is None or mod_spec.loader is None:
            raise ImportError(f"cannot load {target!r} as a Python module")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)


def load_entry(spec: str):
    target, _, func = spec.partition(":")
    module = load_module(target)
    entry = getattr(module, func or "main", None)
    if not callable(entry):
        raise AttributeError(f"{target!r} has no function {func or 'main'!r}")
    return entry


def usage(argv: list[str], doc: str) -> int | None:
    """The exit status after printing ``doc`` if ``argv`` is empty or asks for help, else
    None; also sets up the firmware's logging (its level from the host's AMPLINK_LOG)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        return 0 if argv else 2
    logging.basicConfig(level=os.environ.get(L.ENV_LOG, "WARNING"),
                        format="firmware %(levelname)s %(name)s: %(message)s")
    return None


def call_entry(entry: Callable[..., object], target: object, args: list[str]) -> None:
    """``entry(target, args)`` if the entry takes a second parameter, else ``entry(target)``."""
    if len(inspect.signature(entry).parameters) >= 2:
        entry(target, args)
    else:
        entry(target)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    status = usage(argv, __doc__ or "")
    if status is not None:
        return status
    if argv[0] == "--resource-table":
        if len(argv) != 2:
            print("usage: python -m amplink.firmware --resource-table SPEC", file=sys.stderr)
            return 2
        return write_resource_table(argv[1])
    try:
        entry = load_entry(argv[0])
        link = connect()
    except Exception as exc:  # noqa: BLE001 - reported to the host in one line
        return _failed(exc)
    try:
        call_entry(entry, link, argv[1:])
    except (LinkDown, EndpointClosed):
        pass  # the host went away or closed the channel: a normal end for firmware
    except Exception as exc:  # noqa: BLE001 - reported to the host in one line
        return _failed(exc)
    finally:
        link.close()
    return 0


def _failed(exc: Exception) -> int:
    """Tell the host why the firmware fails (a fatal error on the lifeline, one line); the
    traceback is logged at INFO level (``amplink -v`` shows it)."""
    log.info("firmware failed", exc_info=exc)
    report_failure(f"{type(exc).__name__}: {exc}")
    return 1


def write_resource_table(spec: str) -> int:
    """Write the RESOURCE_TABLE of firmware ``spec`` to stdout (nothing if it has none)."""
    target = spec.partition(":")[0]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the table alone
        try:
            module = load_module(target)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (target == exc.name
                                        or target.startswith(exc.name + ".")):
                raise  # a module the firmware imports is missing: the firmware is broken
            print(f"amplink.firmware: no module named {target!r}", file=sys.stderr)
            return L.TABLE_READER_NO_MODULE
    table = getattr(module, "RESOURCE_TABLE", None)
    if isinstance(table, ResourceTable):
        raw = table.build()
    elif isinstance(table, (bytes, bytearray)):
        raw = bytes(table)
    elif table is None:
        raw = b""
    else:
        print(f"RESOURCE_TABLE is a {type(table).__name__}, not a ResourceTable or bytes",
              file=sys.stderr)
        return L.TABLE_READER_BAD_TABLE
    sys.stdout.buffer.write(raw)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
