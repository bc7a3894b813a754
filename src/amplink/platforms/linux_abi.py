"""Where Linux's remoteproc interface lives: the remoteproc class in sysfs
(Documentation/ABI/testing/sysfs-class-remoteproc), its debugfs directory, the device
nodes, and where the kernel looks for firmware files; :mod:`.linux` drives them.

Constants alone, importing nothing of amplink: the ``amplink`` command names them in
its ``--help`` without loading the platform.
"""

from __future__ import annotations

from pathlib import Path

CLASS_ROOT = Path("/sys/class/remoteproc")
DEBUG_ROOT = Path("/sys/kernel/debug/remoteproc")
DEV_ROOT = Path("/dev")
FIRMWARE_DIR = Path("/lib/firmware")
