"""Where amplink keeps its per-user files: the runtime directory, private to the user.

The runtime directory is ``$AMPLINK_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/amplink`` when
the session has an ``$XDG_RUNTIME_DIR`` (it is the login manager's to create: a missing
one is not created here), else ``/tmp/amplink-$UID``. It holds the supervisor's control
tree and sockets, and ``coredumps/``.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .errors import AmplinkError

log = logging.getLogger(__name__)

ENV_RUNTIME_DIR = "AMPLINK_RUNTIME_DIR"
#: the coredumps of simulated processors, in the runtime directory
COREDUMP_DIR = "coredumps"


class PrivateDirError(AmplinkError, OSError):
    """A per-user directory cannot be made, or others could write to it."""


def runtime_dir() -> Path:
    """$AMPLINK_RUNTIME_DIR, else $XDG_RUNTIME_DIR/amplink, else /tmp/amplink-$UID."""
    override = os.environ.get(ENV_RUNTIME_DIR)
    if override:
        return Path(override).absolute()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        if os.path.isdir(xdg):
            return Path(xdg) / "amplink"
        log.info("$XDG_RUNTIME_DIR (%s) does not exist: using /tmp/amplink-%d", xdg,
                 os.getuid())
    return Path(f"/tmp/amplink-{os.getuid()}")


def private_dir(path: Path | str) -> Path:
    """Create directory ``path`` (mode 0700; its parent must exist) or check that it is a
    directory of this user that nobody else can write to; :class:`PrivateDirError` with
    what to do otherwise."""
    path = Path(path).absolute()
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise PrivateDirError(exc.errno, f"cannot create the directory {path}: {exc.strerror}; "
                              f"set {ENV_RUNTIME_DIR} to a directory of yours") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PrivateDirError(f"{path} is not a directory (a symlink?): remove it or set "
                              f"{ENV_RUNTIME_DIR}")
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PrivateDirError(f"{path} belongs to uid {st.st_uid} or others can write to it "
                              f"(mode {stat.S_IMODE(st.st_mode):o}): others could tamper with "
                              f"your processors' files; remove it or set {ENV_RUNTIME_DIR}")
    return path


def coredump_dir() -> Path:
    """The default directory of coredumps: ``coredumps/`` in the runtime directory."""
    return private_dir(private_dir(runtime_dir()) / COREDUMP_DIR)
