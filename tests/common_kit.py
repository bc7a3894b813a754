"""Helpers shared by several test folders: waiting with a deadline, a call run in a
thread, collecting events, accounting of what a test leaves behind.

Importable everywhere under tests/ (tests/conftest.py puts this folder on sys.path).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable

from amplink.remoteproc.api import RprocEvent
from amplink.remoteproc.core import RemoteProc


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Outcome:
    """Runs ``fn`` in a thread; records its result or exception and when it ended."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.ended = time.monotonic()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


class Events:
    """Collects a processor's events; waits for a number of one kind (``timeout``: default)."""

    def __init__(self, rproc: RemoteProc, timeout: float = 10.0) -> None:
        self.items: list[RprocEvent] = []
        self.timeout = timeout
        self._cond = threading.Condition()
        rproc.subscribe(self._add)

    def _add(self, event: RprocEvent) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def kinds(self) -> list[str]:
        with self._cond:
            return [e.kind for e in self.items]

    def of(self, kind: str) -> list[RprocEvent]:
        with self._cond:
            return [e for e in self.items if e.kind == kind]

    def wait(self, kind: str, count: int = 1, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.of(kind)) >= count,
                                       self.timeout if timeout is None else timeout)


# -- leak accounting: count only what this process made -------------------------------------
def open_fds() -> set[str]:
    """Open fds and what they are (0-2 left out: pytest's capture swaps them)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        if name in ("0", "1", "2"):
            continue
        try:
            fds.add(f"{name}->{os.readlink(f'/proc/self/fd/{name}')}")
        except OSError:
            continue  # the listing's own fd
    return fds


def child_pids() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return pids


def shm_entries(prefix: str) -> set[str]:
    """The /dev/shm objects whose names start with ``prefix`` (a test's own; other
    programs on the machine may make and remove theirs as they like)."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def shared_mappings(prefix: str) -> set[str]:
    """This process's mappings of amplink's memfds and of /dev/shm objects of ``prefix``."""
    found = set()
    shm = "/dev/shm/" + prefix
    with open("/proc/self/maps") as f:
        maps = f.read()
    for line in maps.splitlines():
        if "/memfd:amplink" not in line and shm not in line:
            continue  # most mappings: libraries, heaps, stacks (cheap to skip whole)
        fields = line.split(maxsplit=5)
        path = fields[5].strip() if len(fields) == 6 else ""  # anonymous: no path
        if path.startswith("/memfd:amplink") or path.startswith(shm):
            found.add(fields[0] + " " + path)
    return found


def snapshot(prefix: str) -> dict[str, object]:
    """Open fds, mappings of shared memory, /dev/shm objects of ``prefix``, child
    processes and threads of this process."""
    gc.collect()
    return {"fds": open_fds(), "mappings": shared_mappings(prefix),
            "shm": shm_entries(prefix), "children": child_pids(),
            "threads": threading.active_count()}


def leaks(before: dict[str, object], prefix: str, settle: float = 2.0) -> list[str]:
    """What differs from ``before`` (threads and children get ``settle`` s to end)."""
    deadline = time.monotonic() + settle
    pause = 0.001  # most threads and children end within a few ms: look again soon
    while True:
        after = snapshot(prefix)
        found = []
        for key, was in before.items():
            now = after[key]
            if isinstance(was, set):
                assert isinstance(now, set)
                if now != was:
                    found.append(f"{key}: leaked {sorted(now - was)}, lost {sorted(was - now)}")
            elif now != was and not (key == "threads" and now < was):  # type: ignore[operator]
                found.append(f"{key}: {was} -> {now}")
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
