"""The wait engine's choices between spinning and sleeping."""

from __future__ import annotations

import pytest

from amplink.errors import ReceiveTimeout
from amplink.transports.loopback import loopback_pair


def test_a_spin_that_keeps_finding_nothing_sleeps_on_the_doorbell() -> None:
    """A backend whose cheap check says "work" while a drain takes nothing (a hung-up
    socket reads as readable) must not keep a spinning waiter from the doorbell, which is
    where such ends are noticed: after a spin that brought nothing it sleeps."""
    host, device = loopback_pair(spin=0.5)  # a spin longer than the receive's wait
    try:
        host.backend.rx_pending = lambda: True  # type: ignore[method-assign]
        host.backend.arm = lambda *, rx, tx: False  # type: ignore[method-assign]
        ep = host.create_endpoint(addr=1, dst=2)
        with pytest.raises(ReceiveTimeout):
            ep.recv(timeout=1.0)
        # ~20 sleeps of the 50 ms safety period; spinning round, it slept once (the
        # first sleep after the express spin comes without one)
        assert host.statistics().sleeps >= 3
    finally:
        host.close()
        device.close()
