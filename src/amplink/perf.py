"""Measurement helpers shared by ``amplink demo`` and the benchmarks in ``bench/``.

Round trips are timed one by one with :func:`time.perf_counter_ns`; one-way throughput
is timed from the first send until the receiver confirmed the count (so messages still
in flight are not counted as delivered). The helpers take plain ``send``/``recv``
callables so that the benchmarks time other transports (pipes) with the same loop.
"""

from __future__ import annotations

import math
import statistics
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import AmplinkError

__all__ = [
    "PERCENTILES", "SINK_REPORT", "SINK_SERVICE", "OneWayResult", "PayloadMismatch", "Summary",
    "format_percentiles", "make_payloads", "measure_one_way",
    "measure_round_trip", "percentile", "percentiles", "time_one_way", "time_round_trips",
]

#: the percentiles reported for latencies (plus the maximum)
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)

DEFAULT_TIMEOUT = 10.0

#: the service of a sink (``amplink.firmware.examples.sink``): it counts what it gets and
#: answers an empty message with the counts since its last answer
SINK_SERVICE = "rpmsg-sink"
#: that answer: messages and payload bytes, two little-endian u64
SINK_REPORT = struct.Struct("<QQ")


class PayloadMismatch(AmplinkError, RuntimeError):
    """A reply differed from what was expected (lost, reordered or corrupted message)."""


class _Endpoint(Protocol):
    def send(self, data: bytes, timeout: float | None = ...) -> None: ...
    def recv(self, timeout: float | None = ...) -> bytes: ...


# -- payloads ---------------------------------------------------------------------------------
def make_payloads(size: int, variants: int = 64) -> list[bytes]:
    """``variants`` distinct payloads of ``size`` bytes (a lost or stale reply shows up)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if size == 0:
        return [b""]
    pattern = bytes(range(256)) * (size // 256 + 2)
    return [bytes([0x41 + i % 26]) + pattern[i:i + size - 1] for i in range(variants)]


# -- timing loops -------------------------------------------------------------------------------
def time_round_trips(
    send: Callable[[bytes], object],
    recv: Callable[[], bytes],
    payloads: Sequence[bytes],
    count: int,
    warmup: int = 0,
    *,
    expect: Callable[[bytes], bytes] | None = None,
    check: bool = True,
) -> list[float]:
    """Time ``count`` round trips (after ``warmup`` untimed ones); seconds per round trip.

    Each reply must equal ``expect(payload)`` (the payload itself by default) when
    ``check`` is true; the comparison is outside the timed window.
    """
    if count < 0 or warmup < 0:
        raise ValueError("count and warmup must be >= 0")
    if not payloads:
        raise ValueError("payloads must not be empty")
    expected = [expect(p) for p in payloads] if expect is not None else list(payloads)
    nvar = len(payloads)
    clock = time.perf_counter_ns
    samples = [0] * count
    for i in range(-warmup, count):
        k = i % nvar
        data = payloads[k]
        t0 = clock()
        send(data)
        reply = recv()
        t1 = clock()
        if i >= 0:
            samples[i] = t1 - t0
        if check and reply != expected[k]:
            raise PayloadMismatch(
                f"round trip {i + warmup + 1}: sent {len(data)} B, got {len(reply)} B back "
                f"that differ from what was expected ({bytes(reply[:16])!r}...)"
            )
    return [s * 1e-9 for s in samples]


def measure_round_trip(
    endpoint: _Endpoint,
    size: int,
    count: int,
    warmup: int = 100,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    expect: Callable[[bytes], bytes] | None = None,
    check: bool = True,
) -> list[float]:
    """Round trips of ``size`` bytes to an echoing rpmsg endpoint: seconds per round trip.

    ``timeout`` bounds each wait for a reply (a ReceiveTimeout is raised). Replies are
    checked against the payload (or ``expect(payload)``); see :func:`time_round_trips`.
    """
    send = endpoint.send
    recv = endpoint.recv

    def recv_reply() -> bytes:
        return recv(timeout)

    return time_round_trips(send, recv_reply, make_payloads(size), count, warmup,
                            expect=expect, check=check)


@dataclass(frozen=True, slots=True)
class OneWayResult:
    """``messages`` of ``size`` bytes sent and confirmed by the receiver in ``seconds``."""

    messages: int
    size: int
    seconds: float

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else math.inf

    @property
    def bytes_per_second(self) -> float:
        return self.messages * self.size / self.seconds if self.seconds > 0 else math.inf

    @property
    def megabytes_per_second(self) -> float:
        """Payload throughput in MB/s (10**6 bytes)."""
        return self.bytes_per_second / 1e6


def time_one_way(
    send: Callable[[bytes], object],
    finish: Callable[[], tuple[int, int]],
    data: bytes,
    count: int,
) -> OneWayResult:
    """Send ``data`` ``count`` times, then ``finish()`` (the receiver's ``(messages, bytes)``).

    The clock stops when the receiver confirmed; a wrong count raises PayloadMismatch.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(count):
        send(data)
    messages, nbytes = finish()
    t1 = clock()
    if messages != count or nbytes != count * len(data):
        raise PayloadMismatch(
            f"the receiver counted {messages} messages / {nbytes} B, "
            f"the sender sent {count} / {count * len(data)} B"
        )
    return OneWayResult(count, len(data), (t1 - t0) * 1e-9)


def measure_one_way(
    endpoint: _Endpoint,
    size: int,
    count: int,
    warmup: int = 1000,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> OneWayResult:
    """One-way throughput to the sink firmware (``amplink.firmware.examples.sink``).

    ``endpoint`` is bound to its "rpmsg-sink" channel. ``count`` messages of ``size``
    bytes (1..MTU) are sent; an empty control message then asks the firmware for its
    count, which must match. ``warmup`` messages go first, untimed.
    """
    if size < 1:
        raise ValueError("one-way messages need at least 1 byte (an empty one is the control)")
    send = endpoint.send

    def finish() -> tuple[int, int]:
        send(b"", timeout)
        reply = endpoint.recv(timeout)
        if len(reply) != SINK_REPORT.size:
            raise PayloadMismatch(f"the sink answered {len(reply)} B, not a count report")
        messages, nbytes = SINK_REPORT.unpack(reply)
        return messages, nbytes

    data = make_payloads(size, 1)[0]
    if warmup:
        time_one_way(send, finish, data, warmup)
    return time_one_way(send, finish, data, count)


# -- statistics ---------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100, in steps of 0.1), linearly interpolated."""
    return percentiles(values, (q,))[f"p{q:g}"]


def percentiles(values: Iterable[float],
                qs: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ..., "p99.9": ..., "max": ...}`` of ``values``."""
    data = list(values)
    if not data:
        raise ValueError("no values")
    for q in qs:
        if not 0 < q < 100 or abs(q * 10 - round(q * 10)) > 1e-9:
            raise ValueError(f"percentiles are taken in 0.1 steps strictly inside 0..100: {q}")
    # the standard library's "inclusive" method is the usual linear interpolation
    cuts = (statistics.quantiles(data, n=1000, method="inclusive") if len(data) > 1
            else data * 999)
    result = {f"p{q:g}": cuts[round(q * 10) - 1] for q in qs}
    result["max"] = max(data)
    return result


def format_percentiles(values: Iterable[float], scale: float = 1e6, unit: str = "us",
                       digits: int = 1) -> str:
    """``p50 12.3 us  p90 ...  max ...`` for latencies in seconds."""
    return "  ".join(f"{k} {v * scale:.{digits}f}" for k, v in percentiles(values).items()) \
        + f" {unit}"


@dataclass(frozen=True, slots=True)
class Summary:
    """The middle and spread of repeated measurements: median and interquartile range."""

    n: int
    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        data = list(values)
        if not data:
            raise ValueError("no values")
        q1, median, q3 = (statistics.quantiles(data, n=4, method="inclusive") if len(data) > 1
                          else data * 3)
        return cls(len(data), median, q1, q3, min(data), max(data))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def format(self, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
        """``12.3 us [11.9-13.0]``: median and interquartile range, times ``scale``."""
        u = f" {unit}" if unit else ""
        return (f"{self.median * scale:,.{digits}f}{u} "
                f"[{self.q1 * scale:,.{digits}f}-{self.q3 * scale:,.{digits}f}]")

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "median": self.median, "q1": self.q1, "q3": self.q3,
                "min": self.minimum, "max": self.maximum}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> Summary:
        """The summary :meth:`as_dict` gave (e.g. read back from JSON)."""
        return cls(int(d["n"]), d["median"], d["q1"], d["q3"], d["min"], d["max"])
