"""Taking the coredump of a crashed processor: one ELF core file per crash.

The two modes follow Linux's remoteproc coredump setting, mapped onto files:

* ``enabled``: the segments are **copied** out of device memory (so the processor's
  memory may be reloaded at once) and the file is written by a background thread;
  recovery does not wait for the disk. Costs a copy of every segment in host RAM.
* ``inline``: the file is written **straight from device memory**, synchronously,
  before the memory is reused; recovery waits until the file is complete. No copy,
  but the restart is delayed by the write.

Either way the file appears under its final name only when complete (written to a
``.part`` name and renamed), and ``on_done`` reports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .coredump import CoredumpMode, write_coredump
from .devmem import Allocation

log = logging.getLogger(__name__)

#: ``on_done(path, error)``: exactly one of them is None
DoneCallback = Callable[[Path | None, Exception | None], None]


def coredump_path(directory: str | os.PathLike[str], name: str, crash_count: int) -> Path:
    """``DIRECTORY/NAME-crashN-YYYYmmddTHHMMSS.core``."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Path(directory) / f"{name}-crash{crash_count}-{stamp}.core"


def _elfclass(segments: Sequence[Allocation], elfclass: int | None) -> int:
    if elfclass is not None:
        return elfclass
    return 32 if all(s.da + s.length <= 1 << 32 for s in segments) else 64


def _write(path: Path, segments: Sequence[tuple[int, bytes | memoryview]], machine: int,
           elfclass: int) -> None:
    part = path.with_name(path.name + ".part")
    try:
        write_coredump(part, segments, machine=machine, elfclass=elfclass)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


def take_coredump(
    mode: CoredumpMode,
    segments: Sequence[Allocation],
    path: Path,
    on_done: DoneCallback,
    *,
    machine: int,
    elfclass: int | None = None,
) -> threading.Thread | None:
    """Dump ``segments`` to ``path`` according to ``mode``.

    ``inline`` returns once the file is written (None); ``enabled`` returns the writer
    thread after the copy. ``on_done`` runs in the thread that wrote the file.
    """
    if mode is CoredumpMode.DISABLED:
        raise ValueError("coredumps are disabled")
    cls = _elfclass(segments, elfclass)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is CoredumpMode.INLINE:
        try:
            with contextlib.ExitStack() as stack:
                views = [(s.da, stack.enter_context(s.region.view(s.offset, s.length)))
                         for s in segments]
                _write(path, views, machine, cls)
        except (OSError, ValueError) as exc:
            on_done(None, exc)
        else:
            on_done(path, None)
        return None
    snapshot = [(s.da, s.read()) for s in segments]

    def writer() -> None:
        try:
            _write(path, snapshot, machine, cls)
        except (OSError, ValueError) as exc:
            on_done(None, exc)
        else:
            on_done(path, None)

    thread = threading.Thread(target=writer, name=f"amplink-coredump-{path.name}", daemon=True)
    thread.start()
    return thread
