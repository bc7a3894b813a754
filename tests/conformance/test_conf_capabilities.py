"""The registration is honest: the capabilities a backend case declares (which decide
what the suite skips) are the ones its links report; statistics have the common shape."""

from __future__ import annotations

import time

import pytest
from backends import Harness
from conformance_kit import MARGIN

from amplink.link import LinkStatistics

pytestmark = pytest.mark.timeout(30)


def test_declared_capabilities_are_the_links(harness: Harness) -> None:
    assert harness.case is not None
    assert harness.local.capabilities == harness.case.capabilities
    assert harness.local.mtu == harness.case.capabilities.max_payload > 0


def test_the_configuration_is_what_its_id_says(harness: Harness) -> None:
    """Each registered variant really differs (event idx on, poll mode, buffer size...)."""
    assert harness.case is not None
    backend = harness.local.statistics().backend
    for key, value in harness.case.expect.get("backend", {}).items():
        assert backend.get(key) == value, f"statistics().backend[{key!r}]"
    for name, value in harness.case.expect.get("link", {}).items():
        assert getattr(harness.local, name) == value, f"link.{name}"
    if harness.case.expect.get("backend", {}).get("role") is None and "role" in backend:
        expected_role = "driver" if harness.side == "host" else "device"
        assert backend["role"] == expected_role


def test_statistics_snapshot(harness: Harness) -> None:
    t0 = time.monotonic()
    stats = harness.local.statistics()
    assert time.monotonic() - t0 < MARGIN  # it takes no lock: no wait at all
    assert isinstance(stats, LinkStatistics)
    assert stats.state == "up"
    assert stats.mtu == harness.local.mtu
    assert stats.rx_held == 0
    assert stats.max_held >= 1
    assert stats.endpoints == ()
    with pytest.raises(AttributeError):  # a snapshot, not a live view
        stats.messages_sent = 1  # type: ignore[misc]


@pytest.mark.needs("hostile")
def test_statistics_count_protocol_faults(harness: Harness) -> None:
    """A backend whose peer can misbehave counts it where the hostile cases look."""
    backend = harness.local.statistics().backend
    assert isinstance(backend["protocol_faults"], dict)
    assert isinstance(backend["malformed_rx"], int)
