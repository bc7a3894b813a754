"""Fixtures of the conformance suite: every case against every registered backend.

* ``backend_case``: one per :class:`backends.BackendCase` in the registry;
* ``side``: which end of the link the test process drives ("host", "device");
* ``direction``: for message-flow cases, "h2d" (host -> device) or "d2h";
* ``dispatch``: for callback cases, "thread" or "caller";
* ``harness``: the connected :class:`backends.Harness`, built by the case's factory.

Markers (checked before anything is built; the skip reason names what is missing):

* ``@pytest.mark.needs("tx_loan", "can_kill_peer", ...)``: capabilities or extras;
* ``@pytest.mark.lacks("tx_loan")``: the case checks the error of a backend without it;
* ``@pytest.mark.addressing("rpmsg", "channel", "endpoint")``: the addressing models the
  case works with (a case's own mark overrides its module's).

Every harness that is not pooled is checked for leaks (fds, shared memory mappings,
this run's /dev/shm objects, child processes, threads) after its teardown; pooled ones
after the folder's last case, once their pools are emptied.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conformance_kit
import pytest
from backends import (
    DISPATCH_MODES,
    RUN_PREFIX,
    SIDES,
    BackendCase,
    Harness,
    registered,
    unmet,
)
from common_kit import leaks, snapshot
from conformance_kit import DEATH_LATENCIES, DEATH_LATENCY

CASES = registered()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*names): capabilities / extras a case needs")
    config.addinivalue_line("markers", "lacks(*names): capabilities a case needs absent")
    config.addinivalue_line("markers", "addressing(*models): the addressing models a case "
                                       "works with")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def backend_case(request: pytest.FixtureRequest) -> BackendCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=SIDES)
def side(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["h2d", "d2h"])
def direction(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=DISPATCH_MODES)
def dispatch(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def skip_reason(node: pytest.Item, case: BackendCase, side: str, dispatch: str) -> str | None:
    """Why ``case`` cannot run ``node`` (None if it can)."""
    if case.unavailable is not None and (why := case.unavailable()) is not None:
        return f"{case.id} is unavailable here: {why}"
    needs: tuple[str, ...] = ()
    lacks: tuple[str, ...] = ()
    for mark in node.iter_markers("needs"):
        needs += mark.args
    for mark in node.iter_markers("lacks"):
        lacks += mark.args
    closest = node.get_closest_marker("addressing")  # a case's own mark over its module's
    why = unmet(case, needs, lacks, None if closest is None else closest.args)
    if why is not None:
        return why
    if side not in case.sides:
        return (f"{case.id}: sides={case.sides}, the test process cannot drive the {side} "
                f"side ({case.sides_note})")
    if dispatch not in case.dispatch_modes:
        return f"{case.id}: dispatch_modes={case.dispatch_modes} ({case.dispatch_note})"
    return None


@pytest.fixture
def harness(request: pytest.FixtureRequest, backend_case: BackendCase, side: str
            ) -> Iterator[Harness]:
    dispatch = (request.getfixturevalue("dispatch") if "dispatch" in request.fixturenames
                else "thread")
    reason = skip_reason(request.node, backend_case, side, dispatch)
    if reason is not None:
        pytest.skip(reason)
    bug = backend_case.known_failures.get(request.node.originalname)
    if bug is not None:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=f"known bug: {bug}"))
    conformance_kit.tx_settle = backend_case.extra.get("tx_settle", 0.0)
    pooled = backend_case.cleanup is not None
    before = None if pooled else snapshot(RUN_PREFIX)
    with backend_case.factory(side, dispatch) as h:  # type: ignore[arg-type]
        h.case = backend_case
        assert not h.local.endpoints(), "the factory's link is not fresh: it has endpoints"
        assert h.local.is_up, "the factory's link is not up"
        yield h
        if request.node.stash.get(_FAILED, True):
            h.tainted = True  # a failed case may leave anything behind: never reuse it
        if h.local.closed or not h.local.is_up:
            h.tainted = True
    if before is not None:
        left = leaks(before, RUN_PREFIX)
        assert not left, f"the harness of {backend_case.id} left behind: {left}"


# -- the whole folder's resources ---------------------------------------------------------------
# Pooled harnesses outlive their cases, so what they hold is counted over the run of this
# folder: from the setup of its first case to the teardown of its last (pytest has no
# directory scope: "package" is the session for a folder without __init__.py, and other
# folders' tests must not be counted as ours).
HERE = Path(__file__).resolve().parent
_folder_start: dict[str, object] | None = None


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _folder_start
    if _folder_start is None:
        _folder_start = snapshot(RUN_PREFIX)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Iterator[None]:
    yield  # the fixtures are torn down: pooled harnesses are back in their pools
    global _folder_start
    if _folder_start is None or (nextitem is not None and HERE in nextitem.path.parents):
        return None
    before, _folder_start = _folder_start, None
    for case in CASES:
        if case.cleanup is not None:
            case.cleanup()
    left = leaks(before, RUN_PREFIX, settle=5.0)
    assert not left, f"the conformance cases left behind: {left}"
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Gathers the peer-death measurements (in the controller under pytest-xdist)."""
    for name, value in report.user_properties if report.when == "call" else ():
        if name == DEATH_LATENCY:
            DEATH_LATENCIES.append(value)  # type: ignore[arg-type]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    tr = terminalreporter
    for case in CASES:
        line = case.summary() if case.summary is not None else None
        if line:
            tr.line(f"conformance {case.id}: {line}")
    if not DEATH_LATENCIES:
        return
    tr.section("peer death: LinkDown latency of blocked calls")
    for backend, side, call, latency in sorted(DEATH_LATENCIES):
        tr.line(f"{backend:18} {side:7} {call:22} {latency * 1000:7.2f} ms")
    worst = max(lat for *_, lat in DEATH_LATENCIES)
    tr.line(f"worst: {worst * 1000:.2f} ms over {len(DEATH_LATENCIES)} measurements")
