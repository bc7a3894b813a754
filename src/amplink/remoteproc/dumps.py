"""Taking the coredump of a crashed processor: one ELF core file per crash.

The two modes follow Linux's remoteproc coredump setting, mapped onto files:

* ``enabled``: the segments are **copied** out of device memory (so the processor's
  memory may be reloaded at once) and the file is written by a background thread;
  recovery does not wait for the disk. Costs a copy of every segment in host RAM.
* ``inline``: the file is written **straight from device memory**, synchronously,
  before the memory is reused; recovery waits until the file is complete. No copy,
  but the restart is delayed by the write.

Either way the file appears under its final name only when complete (written to a
private temporary file and linked to its name, which must not exist: two dumps never
overwrite each other), and ``on_done`` reports the name it got. :func:`prune_coredumps`
keeps the newest dumps of a processor and deletes the rest.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .coredump import CoredumpMode, write_coredump
from .devmem import Allocation

log = logging.getLogger(__name__)

#: ``on_done(path, error)``: exactly one of them is None
_MAX_SUFFIX = 1000
DoneCallback = Callable[[Path | None, Exception | None], None]


def coredump_path(directory: str | os.PathLike[str], name: str, crash_count: int) -> Path:
    """``DIRECTORY/NAME-crashN-YYYYmmddTHHMMSS.ffffff.core`` (the name a dump asks for; a
    taken one gets a ``-2``, ``-3``, ... suffix when written)."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    return Path(directory) / f"{name}-crash{crash_count}-{stamp}.core"


def prune_coredumps(directory: str | os.PathLike[str], name: str, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest dumps of processor ``name``; return the deleted."""
    dumps = sorted(Path(directory).glob(f"{glob.escape(name)}-crash*.core"),
                   key=lambda p: p.stat().st_mtime_ns if p.exists() else 0)
    doomed = dumps[:max(0, len(dumps) - keep)]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return doomed


def _elfclass(segments: Sequence[Allocation], elfclass: int | None) -> int:
    if elfclass is not None:
        return elfclass
    return 32 if all(s.da + s.length <= 1 << 32 for s in segments) else 64


def _write(path: Path, segments: Sequence[tuple[int, bytes | memoryview]], machine: int,
           elfclass: int) -> Path:
    """Write the dump and give it ``path``, or the first free ``path-N``; return the name."""
    fd, part = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write_coredump(Path(part), segments, machine=machine, elfclass=elfclass)
        for n in range(1, _MAX_SUFFIX + 1):
            final = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            try:
                os.link(part, final)  # fails if the name is taken: never overwrites
                return final
            except FileExistsError:
                continue
        raise FileExistsError(f"{path} and {_MAX_SUFFIX - 1} variants of it exist")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(part)


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
                written = _write(path, views, machine, cls)
        except (OSError, ValueError) as exc:
            on_done(None, exc)
        else:
            on_done(written, None)
        return None
    snapshot = [(s.da, s.read()) for s in segments]

    def writer() -> None:
        try:
            written = _write(path, snapshot, machine, cls)
        except (OSError, ValueError) as exc:
            on_done(None, exc)
        else:
            on_done(written, None)

    thread = threading.Thread(target=writer, name=f"amplink-coredump-{path.name}", daemon=True)
    thread.start()
    return thread
