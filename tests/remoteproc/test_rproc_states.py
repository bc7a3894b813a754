"""Remote processor states and their transition table."""

from __future__ import annotations

import pytest

from amplink.errors import AmplinkError
from amplink.remoteproc.states import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    RprocState,
    check_transition,
)

S = RprocState


def test_sysfs_strings() -> None:
    assert [s.value for s in RprocState] == [
        "offline", "suspended", "running", "crashed", "deleted", "attached", "detached",
    ]
    for state in RprocState:
        assert RprocState.from_sysfs(state.value) is state
        assert RprocState.from_sysfs(state.value + "\n") is state
        assert str(state) == state.value


@pytest.mark.parametrize("text", ["", "Running", "running\n\n", " running", "invalid", "start"])
def test_from_sysfs_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        RprocState.from_sysfs(text)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.OFFLINE, S.RUNNING),  # boot
        (S.RUNNING, S.OFFLINE),  # shutdown
        (S.RUNNING, S.CRASHED),  # crash report
        (S.CRASHED, S.RUNNING),  # recovery
        (S.CRASHED, S.OFFLINE),  # shutdown of a crashed processor
        (S.CRASHED, S.DETACHED),  # attach-on-recovery, first half
        (S.RUNNING, S.DETACHED),
        (S.ATTACHED, S.DETACHED),  # detach
        (S.DETACHED, S.ATTACHED),  # attach
        (S.ATTACHED, S.OFFLINE),
        (S.ATTACHED, S.CRASHED),
        (S.RUNNING, S.SUSPENDED),
        (S.SUSPENDED, S.RUNNING),
        (S.OFFLINE, S.DELETED),
        (S.DETACHED, S.DELETED),
    ],
)
def test_allowed(old: RprocState, new: RprocState) -> None:
    check_transition(old, new)
    assert new in ALLOWED_TRANSITIONS[old]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.OFFLINE, S.CRASHED),
        (S.OFFLINE, S.ATTACHED),
        (S.RUNNING, S.DELETED),  # must be shut down first
        (S.CRASHED, S.DELETED),
        (S.DETACHED, S.RUNNING),
        (S.DELETED, S.OFFLINE),
        (S.DELETED, S.RUNNING),
        (S.RUNNING, S.RUNNING),  # a second boot only counts a user
    ],
)
def test_refused(old: RprocState, new: RprocState) -> None:
    with pytest.raises(InvalidTransition, match=f"from {old} to {new}"):
        check_transition(old, new)


def test_table_shape() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(RprocState)
    assert ALLOWED_TRANSITIONS[S.DELETED] == frozenset()
    assert all(s not in targets for s, targets in ALLOWED_TRANSITIONS.items())
    with pytest.raises(TypeError):
        ALLOWED_TRANSITIONS[S.OFFLINE] = frozenset()  # type: ignore[index]
    assert issubclass(InvalidTransition, AmplinkError) and issubclass(InvalidTransition, ValueError)
