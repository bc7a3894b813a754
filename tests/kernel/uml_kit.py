"""Booting the cached User-Mode Linux kernel against amplink's vhost-user device.

:func:`kernel_or_skip` finds the kernel tools/uml/build.py built (it never builds: CI
builds it before pytest); on a machine that cannot run the tests they are skipped with
the reason, unless AMPLINK_REQUIRE_UML=1, which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tools" / "uml" / "build.py"
GUEST = Path(__file__).resolve().parent / "guest" / "boot.py"
PREFIX = "AMPLINK-JSON "
REQUIRE_ENV = "AMPLINK_REQUIRE_UML"


def unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the UML kernel tests cannot run: {reason}")
    pytest.skip(reason)


def kernel_or_skip() -> Path:
    """The built kernel's path, or skip (fail under AMPLINK_REQUIRE_UML=1) with the reason."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        unavailable("User-Mode Linux tests need an x86_64 Linux host")
    found = subprocess.run([sys.executable, str(BUILD), "--cached"], capture_output=True,
                           text=True, timeout=120)
    if found.returncode != 0:
        unavailable("no UML kernel built for this machine: run tools/uml/build.py "
                    f"({found.stderr.strip() or found.stdout.strip()})")
    kernel = Path(found.stdout.strip())
    if not os.access(kernel, os.X_OK):
        unavailable(f"{kernel} is not executable")
    return kernel


class Guest:
    """A booted UML guest: its console lines, parsed results, and the process."""

    def __init__(self, kernel: Path, socket_path: str, checks: list[str], workdir: Path,
                 *, mem: str = "256M") -> None:
        init = workdir / "init.sh"
        init.write_text(f"#!/bin/sh\nexec {sys.executable} {GUEST} {' '.join(checks)}\n")
        init.chmod(0o755)
        self.lines: list[str] = []
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        env = dict(os.environ, TMPDIR=str(workdir))  # UML's memory file
        self.proc = subprocess.Popen(
            [str(kernel), f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/",
             "ro", f"init={init}", f"virtio_uml.device={socket_path}:7", "con0=fd:0,fd:1",
             "con=null", f"uml_dir={workdir}", "quiet"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, cwd=workdir)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            at = line.find(PREFIX)
            if at >= 0:
                try:
                    self.events.put(json.loads(line[at + len(PREFIX):]))
                except ValueError:
                    self.lines.append(f"(unparsable result line: {line!r})")
        self.events.put({"event": "console closed"})

    def next_event(self, timeout: float) -> dict[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no result from the guest within {timeout} s; console:\n"
                                 + self.console()) from None

    def results(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Every check result until the guest is done."""
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.1, deadline - time.monotonic()))
            if "check" in event:
                found[event["check"]] = event
            elif event.get("event") in ("done", "console closed"):
                return found

    def console(self) -> str:
        return "\n".join(self.lines[-60:])

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the guest did not power off within {timeout} s; "
                                 f"console:\n{self.console()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
