"""Random bytes written at random offsets of the vrings between well-formed exchanges.

Whatever is written, every call either returns or raises an amplink error, within its
timeout (plus scheduling slack); nothing hangs (pytest-timeout) and close never fails.
"""

from __future__ import annotations

import time

import pytest
from hostile_kit import close_link, open_link
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amplink import AmplinkError
from amplink.platforms.sim.layout import LinkConfig

CALL_TIMEOUT = 0.02
SLACK = 1.0  # a shared 2-core machine: generous, still far from a hang

# align=16 packs each ring tightly, so random offsets land on live fields
CONFIGS = [LinkConfig(num_buffers=4, align=16),
           LinkConfig(num_buffers=4, align=16, event_idx=True)]
BUF_SIZE = CONFIGS[0].buf_size

write = st.tuples(
    st.sampled_from(["vr0", "vr1", "vr0", "vr1", "pool"]),
    st.integers(min_value=0, max_value=1 << 16),
    st.binary(min_size=1, max_size=8),
)
steps = st.lists(st.lists(write, min_size=1, max_size=6), min_size=1, max_size=4)


def _apply(link, where: str, pos: int, data: bytes) -> None:
    if where == "pool":
        start, size = link.pool_offset, 2 * link.n * BUF_SIZE
        # mostly the rpmsg headers, sometimes anywhere in a buffer
        buf = (pos >> 5) % (2 * link.n)
        inner = pos % 32 if pos & 1 else pos % BUF_SIZE
        offset = start + buf * BUF_SIZE + inner
        offset = min(offset, start + size - len(data))
    else:
        vr = link.vr0 if where == "vr0" else link.vr1
        offset = vr.base + pos % (vr.size - len(data) + 1)
    link.region.write(offset, data)


def _timed(call, timeout: float = CALL_TIMEOUT):
    t0 = time.monotonic()
    try:
        result = call()
    except AmplinkError as exc:
        result = exc
    elapsed = time.monotonic() - t0
    assert elapsed < timeout + SLACK, f"call took {elapsed:.3f} s with a {timeout} s timeout"
    return result


def _exchange(link, i: int) -> None:
    host_ep, dev_ep = link.host_ep, link.dev_ep
    host_addr = host_ep.addr
    payload = b"fuzz-%d" % i
    _timed(lambda: host_ep.send(payload, timeout=CALL_TIMEOUT))
    _timed(lambda: link.device.poll(), 0)
    _timed(lambda: dev_ep.recvfrom(timeout=CALL_TIMEOUT))
    _timed(lambda: dev_ep.sendto(payload, host_addr, timeout=CALL_TIMEOUT))
    _timed(lambda: dev_ep.try_sendto(payload, host_addr), 0)
    _timed(lambda: link.host.poll(), 0)
    _timed(lambda: host_ep.recvfrom(timeout=CALL_TIMEOUT))
    _timed(lambda: host_ep.try_send(payload), 0)
    _timed(lambda: link.host.statistics(), 0)
    _timed(lambda: link.device.statistics(), 0)


@pytest.mark.timeout(120)
@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(config=st.sampled_from(CONFIGS), plan=steps)
def test_random_writes_into_the_rings(config, plan):
    link = open_link(config)
    assert link.host.statistics().backend["event_idx"] == config.event_idx
    try:
        for i, writes in enumerate(plan):
            for where, pos, data in writes:
                _apply(link, where, pos, data)
            _exchange(link, i)
    finally:
        t0 = time.monotonic()
        close_link(link)
        assert time.monotonic() - t0 < SLACK
