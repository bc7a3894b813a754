"""The pair-addressing cases (pair_cases.py) against the rpmsg_char backend over the fake
kernel; tests/kernel runs them against a real kernel too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pair_cases import CASES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transports"))
from fake_rpmsg_char import FakeOps, FakeRpmsgKernel  # noqa: E402

from amplink.transports.rpmsg_char import rpmsg_char_link  # noqa: E402


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_pair_case_on_fake_rpmsg_char(case: str, tmp_path: Path) -> None:
    kernel = FakeRpmsgKernel(tmp_path)
    kernel.announce("rpmsg-raw", 0x400)
    link = rpmsg_char_link("rpmsg_ctrl0", sys_root=kernel.sys, dev_root=kernel.dev,
                           ops=FakeOps(kernel))
    try:
        CASES[case](link, "rpmsg-raw")
    finally:
        link.close()
    assert kernel.open_endpoints() == []
