"""The guest's init: mount, run the checks named on the command line, power off.

Results go to the console as lines ``AMPLINK-JSON {...}``; the host parses them.
Runs with the host's Python on the host's root file system (hostfs, read-only), so
amplink is imported from the checkout.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "conformance"))

import checks  # noqa: E402
from pair_cases import CASES  # noqa: E402

from amplink.transports.rpmsg_char import rpmsg_char_link  # noqa: E402

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


def run(name: str, link, state: dict) -> dict:
    t0 = time.monotonic()
    if name == "removal":
        result = checks.check_removal(link, state, emit)
    elif name.startswith("conformance:"):
        result = {"ok": True, **CASES[name.removeprefix("conformance:")](link, checks.SERVICE)}
    else:
        result = checks.CHECKS[name](link, state)
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result


def main(names: list[str]) -> None:
    try:
        mount("proc", "/proc", "proc")
        mount("sysfs", "/sys", "sysfs")
        deadline = time.monotonic() + 10
        while not os.path.exists("/dev/rpmsg_ctrl0") and time.monotonic() < deadline:
            time.sleep(0.01)
        link = rpmsg_char_link("rpmsg_ctrl0")
        state: dict = {}
        for name in names:
            try:
                result = run(name, link, state)
            except Exception as exc:  # noqa: BLE001 - reported to the host as a failed check
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                          "trace": traceback.format_exc(limit=4)}
            emit({"check": name, **result})
        link.close()
    except Exception as exc:  # noqa: BLE001 - the host must hear of it
        emit({"event": "failed", "error": f"{type(exc).__name__}: {exc}",
              "trace": traceback.format_exc(limit=4)})
    finally:
        emit({"event": "done"})
        libc.reboot(LINUX_REBOOT_CMD_POWER_OFF)


if __name__ == "__main__":
    main(sys.argv[1:])
