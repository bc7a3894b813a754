"""The guest's init: mount, run the checks named on the command line, power off.

Results go to the console as lines ``AMPLINK-JSON {...}``; the host parses them.
Runs with the host's Python on the host's root file system (hostfs, read-only).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks  # noqa: E402
from rpmsg_os import OsRpmsg  # noqa: E402

PREFIX = "AMPLINK-JSON "
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC

libc = ctypes.CDLL(None, use_errno=True)


def emit(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def mount(source: str, target: str, fstype: str) -> None:
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        if err != 16:  # EBUSY: already mounted
            raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def main(names: list[str]) -> None:
    try:
        mount("proc", "/proc", "proc")
        mount("sysfs", "/sys", "sysfs")
        rpmsg = OsRpmsg()
        state: dict = {}
        for name in names:
            try:
                if name == "removal":
                    result = checks.check_removal(rpmsg, state, emit)
                else:
                    result = checks.CHECKS[name](rpmsg, state)
            except Exception as exc:  # noqa: BLE001 - reported to the host as a failed check
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                          "trace": traceback.format_exc(limit=3)}
            emit({"check": name, **result})
    finally:
        emit({"event": "done"})
        libc.reboot(LINUX_REBOOT_CMD_POWER_OFF)


if __name__ == "__main__":
    main(sys.argv[1:])
