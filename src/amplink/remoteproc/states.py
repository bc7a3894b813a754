"""Remote processor states (the sysfs ``state`` strings) and the transitions between them.

The table follows Linux's remoteproc core:

* offline -> running: boot (load the firmware, start).
* running -> offline: shutdown (the last user is gone); the vdevs go with it.
* running -> crashed: a crash report (watchdog, fatal error, MMU fault, ...).
* crashed -> running: recovery (stop, optional coredump, reload, start).
* crashed -> offline: shutdown of a crashed processor (recovery disabled).
* crashed -> detached: first half of attach-on-recovery (the processor kept running);
  detached -> attached completes it.
* running -> suspended -> running: power management; a suspended processor may also
  crash or be shut down.
* detached -> attached: attach to a processor started by someone else (a bootloader).
* attached -> detached: detach, leaving it running; running -> detached likewise.
* attached -> offline: shutdown of an attached processor; attached -> crashed.
* offline -> deleted, detached -> deleted: removal. A running, attached, suspended or
  crashed processor is shut down or detached first, so removal never skips a stop.
  deleted is final.

Staying in the same state is not a transition (a second boot only counts a user).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Self

from ..errors import AmplinkError


class RprocState(enum.StrEnum):
    """The state of a remote processor, valued as its sysfs string."""

    OFFLINE = "offline"
    SUSPENDED = "suspended"
    RUNNING = "running"
    CRASHED = "crashed"
    DELETED = "deleted"
    ATTACHED = "attached"
    DETACHED = "detached"

    @classmethod
    def from_sysfs(cls, text: str) -> Self:
        """Parse a sysfs ``state`` value (one trailing newline allowed); ValueError otherwise."""
        return cls(text.removesuffix("\n"))


class InvalidTransition(AmplinkError, ValueError):
    """A state change the remoteproc state machine does not allow."""


_S = RprocState
ALLOWED_TRANSITIONS: Mapping[RprocState, frozenset[RprocState]] = MappingProxyType({
    _S.OFFLINE: frozenset({_S.RUNNING, _S.DELETED}),
    _S.RUNNING: frozenset({_S.OFFLINE, _S.CRASHED, _S.SUSPENDED, _S.DETACHED}),
    _S.SUSPENDED: frozenset({_S.RUNNING, _S.OFFLINE, _S.CRASHED}),
    _S.CRASHED: frozenset({_S.RUNNING, _S.OFFLINE, _S.DETACHED}),
    _S.ATTACHED: frozenset({_S.DETACHED, _S.OFFLINE, _S.CRASHED}),
    _S.DETACHED: frozenset({_S.ATTACHED, _S.DELETED}),
    _S.DELETED: frozenset(),
})


def check_transition(old: RprocState, new: RprocState) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is in the table."""
    if new not in ALLOWED_TRANSITIONS[old]:
        raise InvalidTransition(f"remote processor cannot go from {old} to {new}")
