"""The environment an RTKit firmware process gets, and what the firmware side imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from amplink.platforms import sim_abi as L
from amplink.platforms.rtkit import layout as R
from amplink.platforms.rtkit.layout import RtkitEnv

FULL = RtkitEnv(mbox_fd=3, mbox_size=0x1000, data_rx_fd=4, data_tx_fd=5, space_rx_fd=6,
                space_tx_fd=7, dma_fd=8, sram_fd=9, sram_size=0x10000,
                sram_base=0x2_0000_0000, lifeline_fd=10, name="fw7")


def test_round_trip():
    env = FULL.to_env()
    assert RtkitEnv.from_env(env) == FULL
    assert env[L.ENV_LIFELINE_FD] == "10" and env[L.ENV_NAME] == "fw7"
    assert env[R.ENV_SRAM_BASE] == str(0x2_0000_0000)
    assert FULL.pass_fds() == (3, 4, 5, 6, 7, 8, 9, 10)


@pytest.mark.parametrize("key", [R.ENV_MBOX_FD, R.ENV_DMA_FD, R.ENV_SRAM_SIZE,
                                 L.ENV_LIFELINE_FD])
def test_a_missing_value_is_named(key):
    env = FULL.to_env()
    del env[key]
    with pytest.raises(RuntimeError, match=f"{key} is not set"):
        RtkitEnv.from_env(env)


@pytest.mark.parametrize(("key", "value"), [(R.ENV_MBOX_FD, "x"), (R.ENV_MBOX_SIZE, "0"),
                                            (R.ENV_SRAM_SIZE, "0"), (R.ENV_DMA_FD, "-1")])
def test_a_bad_value_is_named(key, value):
    env = FULL.to_env()
    env[key] = value
    with pytest.raises(ValueError, match=key):
        RtkitEnv.from_env(env)


def test_rtkit_firmware_does_not_load_the_host_side():
    code = ("import json, sys; import amplink.firmware.examples.rtkit_echo; "
            "print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                           capture_output=True, text=True,
                                           timeout=60).stdout))
    assert "amplink.firmware.rtkit" in loaded and "amplink.rtkit.coproc" in loaded
    host_side = {"elftools", "asyncio", "amplink.remoteproc.core", "amplink.platforms.sim",
                 "amplink.platforms.rtkit.runtime", "amplink.platforms.rtkit.rproc",
                 "amplink.platforms.rtkit.buffers", "amplink.service"}
    assert not host_side & loaded
