"""SimEnv: the environment a simulated processor's host passes to its firmware."""

from __future__ import annotations

import pytest

from amplink.platforms import sim_abi as L
from amplink.platforms.sim_abi import SimEnv

FULL = SimEnv(shm_fd=3, shm_size=0x10000, da_base=0x8000_0000, table_offset=0x2000,
              table_size=0x60, lifeline_fd=4, buf_size=512, kicks=((5, 6), (7, 8)),
              name="sim7", poll_mode=True, spin=0.000_25, watchdog=0.5)


def test_round_trip():
    env = FULL.to_env()
    assert SimEnv.from_env(env) == FULL
    assert env[L.ENV_KICK_RX_FD] == "5" and env[L.ENV_KICK_TX_FD] == "6"
    assert env[L.ENV_VDEV_KICK_RX_FD.format(index=1)] == "7"
    assert env[L.ENV_SPIN_US] == "250" and env[L.ENV_WATCHDOG_MS] == "500"


def test_optional_values_and_the_unnumbered_kick_pair():
    env = FULL.to_env()
    for key in (L.ENV_NAME, L.ENV_POLL, L.ENV_SPIN_US, L.ENV_WATCHDOG_MS,
                *(k.format(index=i) for i in (0, 1)
                  for k in (L.ENV_VDEV_KICK_RX_FD, L.ENV_VDEV_KICK_TX_FD))):
        del env[key]
    sim = SimEnv.from_env(env)
    assert (sim.name, sim.poll_mode, sim.spin, sim.watchdog) == ("firmware", False, 0.0, None)
    assert sim.kicks == ((5, 6),) and sim.kick_fds(0) == (5, 6)
    with pytest.raises(RuntimeError, match="AMPLINK_VDEV1_KICK_RX_FD is not set"):
        sim.kick_fds(1)


@pytest.mark.parametrize("key", [L.ENV_SHM_FD, L.ENV_SHM_SIZE, L.ENV_DA_BASE, L.ENV_RSC_TABLE,
                                 L.ENV_RSC_SIZE, L.ENV_LIFELINE_FD, L.ENV_BUF_SIZE])
def test_a_missing_value_is_named(key):
    env = FULL.to_env()
    del env[key]
    with pytest.raises(RuntimeError, match=f"{key} is not set"):
        SimEnv.from_env(env)


@pytest.mark.parametrize(("key", "value"), [
    (L.ENV_SHM_FD, "three"), (L.ENV_SHM_SIZE, "0"), (L.ENV_LIFELINE_FD, "-1"),
    (L.ENV_SPIN_US, "-5"), (L.ENV_WATCHDOG_MS, "1.5"), (L.ENV_POLL, "yes"),
    (L.ENV_VDEV_KICK_TX_FD.format(index=1), ""),
])
def test_a_bad_value_is_named(key, value):
    env = FULL.to_env()
    env[key] = value
    with pytest.raises(ValueError, match=key):
        SimEnv.from_env(env)
