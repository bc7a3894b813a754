"""``python -m amplink.firmware.rtkit SPEC [ARGS...]``: run RTKit firmware in a simulated
co-processor.

SPEC is a module name or a ``.py`` path, optionally followed by ``:function`` (default
``main``). The function gets the runtime (and ARGS, if it takes a second parameter);
the runtime runs once it returns, until the host stops the processor. A crash (an
exception escaping a handler, ``fw.crash``) leaves the process halted until the host
stops it; a failure before the firmware said HELLO is reported on the lifeline.
"""

from __future__ import annotations

import logging
import sys

from ...errors import LinkDown
from .. import report_failure
from ..__main__ import call_entry, load_entry, usage
from . import Halted, connect

log = logging.getLogger("amplink.firmware.rtkit")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    status = usage(argv, __doc__ or "")
    if status is not None:
        return status
    try:
        entry = load_entry(argv[0])
        fw = connect()
    except Exception as exc:  # noqa: BLE001 - reported to the host in one line
        log.info("firmware failed", exc_info=exc)
        report_failure(f"{type(exc).__name__}: {exc}")
        return 1
    try:
        call_entry(entry, fw, argv[1:])
        fw.run()
    except Halted:
        fw.halt()  # a crashed co-processor runs nothing until the host stops it
    except LinkDown:
        pass  # the host went away: a normal end
    except Exception as exc:  # noqa: BLE001 - a failure outside any handler
        log.info("firmware failed", exc_info=exc)
        if fw.started:
            try:
                fw.crash(f"{type(exc).__name__}: {exc}")
            except Halted:
                fw.halt()
        else:
            report_failure(f"{type(exc).__name__}: {exc}")
            return 1
    finally:
        fw.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
