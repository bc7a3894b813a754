"""The echo-channel cases (``pair_cases.py``) against every backend that can offer an
echo channel: written for "pair" addressing, where the far side is firmware on a
channel and not a second link, they need only a link and the name of a channel whose
far side echoes every message to its sender; the same cases run unchanged inside a
real kernel (tests/kernel)."""

from __future__ import annotations

import pytest
from backends import Harness
from conformance_kit import echo_channel
from pair_cases import CASES

pytestmark = pytest.mark.timeout(60)

#: messages a case keeps in flight before it reads any (it needs that many buffers)
IN_FLIGHT = {"many_endpoints": 64}
#: the cases that send nothing (the others send payloads of any length from 0 bytes)
SEND_NOTHING = {"receive_timeout"}


# The host side only: these cases exercise the side under test's channel API, which the
# test_conf_* cases already run in both roles; once per backend keeps the suite fast.
@pytest.mark.parametrize("side", ["host"])
@pytest.mark.parametrize("case", list(CASES))
def test_echo_channel_case(harness: Harness, case: str, side: str) -> None:
    caps = harness.local.capabilities
    assert harness.case is not None
    if not (caps.name_service or caps.channel_discovery):
        pytest.skip(f"{harness.case.id} declares neither name_service nor channel_discovery: "
                    "the case opens a channel by name")
    if case == "many_endpoints" and caps.addressing in ("channel", "endpoint"):
        pytest.skip(f"{harness.case.id}: capability addressing={caps.addressing!r}: a channel's "
                    "one number is both ends, so one endpoint per channel")
    if case == "pair_addressing" and caps.addressing != "pair":
        pytest.skip(f"{harness.case.id}: capability addressing={caps.addressing!r}, the case "
                    "needs 'pair'")
    if caps.min_payload and case not in SEND_NOTHING:
        pytest.skip(f"{harness.case.id}: capability min_payload={caps.min_payload}, the case "
                    "sends shorter payloads (it runs unchanged in a real kernel too)")
    need = IN_FLIGHT.get(case, 0)
    if caps.rx_buffers and caps.rx_buffers < need:
        pytest.skip(f"{harness.case.id}: capability rx_buffers={caps.rx_buffers}, the case keeps "
                    f"{need} messages in flight")
    CASES[case](harness.local, echo_channel(harness))
