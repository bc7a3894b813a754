"""Helpers of the platform and service tests: rigs, process accounting (and wait_for)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common_kit import wait_for
from fake_sysfs import FakeRemoteprocKernel

from amplink.platforms.linux import ControlTree
from amplink.service.supervisor import process_alive

HERE = Path(__file__).resolve().parent
ECHO = "amplink.firmware.examples.echo"
TRACE_FIRMWARE = str(HERE / "trace_firmware.py")
MISSING_MODULE = "amplink.firmware.examples.no_such_firmware"

__all__ = ["ECHO", "MISSING_MODULE", "TRACE_FIRMWARE", "Rig", "children_of", "process_alive",
           "wait_for"]


@dataclass
class Rig:
    """A processor ``name`` (offline, firmware ``firmware``) at ``dev`` of ``tree``."""

    kind: str
    tree: ControlTree
    dev: str
    name: str
    firmware: str
    other_firmware: str  # also bootable
    missing_firmware: str  # boot fails with ENOENT
    trace_text: str  # appears in the trace while running
    kernel: FakeRemoteprocKernel | None = None


def children_of(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != b"Z":
            children.add(int(entry))
    return children
