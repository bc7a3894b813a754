"""amplink.perf: statistics and the timing loops (in one process, over a LinkPair)."""

from __future__ import annotations

import threading
from collections import deque

import pytest

from amplink.firmware.examples.sink import SERVICE as SINK
from amplink.firmware.examples.sink import SinkCounter
from amplink.perf import (
    PayloadMismatch,
    Summary,
    make_payloads,
    measure_one_way,
    measure_round_trip,
    percentile,
    percentiles,
    time_round_trips,
)
from amplink.platforms.inprocess import LinkPair


def test_percentiles_interpolate() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    p = percentiles([5.0, 1.0, 3.0, 2.0, 4.0])
    assert list(p) == ["p50", "p90", "p99", "p99.9", "max"]
    assert p["max"] == 5.0 and p["p90"] == pytest.approx(4.6)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary() -> None:
    s = Summary.of([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (s.n, s.median, s.q1, s.q3, s.minimum, s.maximum) == (5, 3.0, 2.0, 4.0, 1.0, 5.0)
    assert s.iqr == 2.0
    assert s.format(1e6, "us") == "3,000,000.0 us [2,000,000.0-4,000,000.0]"
    assert Summary.from_dict(s.as_dict()) == s


def test_payloads_are_distinct_and_sized() -> None:
    payloads = make_payloads(496)
    assert all(len(p) == 496 for p in payloads)
    assert len(set(payloads)) == len(payloads)
    assert make_payloads(0) == [b""]


def test_round_trips_check_replies() -> None:
    queue: deque[bytes] = deque()
    samples = time_round_trips(queue.append, queue.popleft, make_payloads(16), 50, 5)
    assert len(samples) == 50 and all(s >= 0 for s in samples)
    with pytest.raises(PayloadMismatch):
        time_round_trips(queue.append, lambda: b"wrong", make_payloads(16), 3)


@pytest.fixture
def pair_with_services():
    with LinkPair.create() as pair:
        device = pair.device
        device.create_endpoint("rpmsg-echo", announce=True,
                               callback=lambda ep, data, src: ep.sendto(data, src))
        device.create_endpoint(SINK, announce=True, callback=SinkCounter().on_message)
        stop = threading.Event()
        worker = threading.Thread(target=device.run, args=(stop.is_set,), daemon=True)
        worker.start()
        try:
            yield pair.host
        finally:
            stop.set()
            worker.join(5)


def test_measure_over_a_link(pair_with_services) -> None:
    host = pair_with_services
    echo = host.open_channel("rpmsg-echo", timeout=5)
    assert len(measure_round_trip(echo, 496, 100, 10)) == 100
    sink = host.open_channel(SINK, timeout=5)
    result = measure_one_way(sink, 16, 600, warmup=50)
    assert result.messages == 600 and result.size == 16
    assert result.messages_per_second > 0
    assert result.megabytes_per_second == pytest.approx(result.messages_per_second * 16 / 1e6)
