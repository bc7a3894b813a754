"""Misuse of the public API: a typed amplink error that names the argument, raised before
anything happens (no buffer taken, no process started), and also the matching built-in."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from amplink import (
    RPMSG_ADDR_ANY,
    AmplinkError,
    EndpointClosed,
    LinkConfig,
    RpmsgDriver,
    SimProcessor,
    SimRemoteProc,
)
from amplink.platforms.inprocess import LinkPair

ECHO = "amplink.firmware.examples.echo"


@pytest.fixture
def pair():
    p = LinkPair.create(LinkConfig(num_buffers=4))
    try:
        yield p
    finally:
        p.close()


def _refused(call: Callable[[], object], kind: type[Exception], argument: str) -> None:
    with pytest.raises(AmplinkError) as info:
        call()
    assert isinstance(info.value, kind), repr(info.value)
    assert argument in str(info.value), str(info.value)


def test_link_calls(pair) -> None:
    host = pair.host
    ep = host.create_endpoint(dst=1024)
    _refused(lambda: host.create_endpoint(5), TypeError, "name")  # type: ignore[arg-type]
    _refused(lambda: host.create_endpoint("x" * 40), ValueError, "name")
    _refused(lambda: host.create_endpoint(callback=5), TypeError, "callback")  # type: ignore[arg-type]
    _refused(lambda: host.create_endpoint(addr=-2), ValueError, "addr")
    _refused(lambda: ep.sendto(b"x", RPMSG_ADDR_ANY), ValueError, "RPMSG_ADDR_ANY")
    _refused(lambda: ep.send_offchannel(RPMSG_ADDR_ANY, 5, b"x"), ValueError, "RPMSG_ADDR_ANY")
    _refused(lambda: host.add_static_channel("svc", RPMSG_ADDR_ANY), ValueError, "dst")
    _refused(lambda: host.open_channel(7, timeout=0), TypeError, "name")  # type: ignore[arg-type]
    _refused(lambda: host.register_driver("svc"), TypeError, "driver")  # type: ignore[arg-type]
    _refused(lambda: RpmsgDriver("svc"), TypeError, "id_table")
    _refused(lambda: RpmsgDriver(["svc"], probe=3), TypeError, "probe")  # type: ignore[arg-type]
    host.close()
    with pytest.raises(EndpointClosed):
        host.register_driver(RpmsgDriver(["svc"]))


@pytest.mark.parametrize("options, kind, argument", [
    ({"num_buffers": 3}, ValueError, "num_buffers"),
    ({"num_buffers": 0}, ValueError, "num_buffers"),
    ({"num_buffers": 2.0}, TypeError, "num_buffers"),
    ({"buf_size": 12}, ValueError, "buf_size"),
    ({"buf_size": 500}, ValueError, "buf_size"),
    ({"align": 3}, ValueError, "align"),
    ({"event_idx": "yes"}, TypeError, "event_idx"),
])
def test_link_config(options, kind, argument) -> None:
    _refused(lambda: LinkConfig(**options), kind, argument)


COMMON_OPTIONS = [
    ({"spin": -1}, ValueError, "spin"),
    ({"spin": math.inf}, ValueError, "spin"),
    ({"boot_timeout": math.nan}, ValueError, "boot_timeout"),
    ({"boot_timeout": 0}, ValueError, "boot_timeout"),
    ({"boot_timeout": -1}, ValueError, "boot_timeout"),
    ({"watchdog": 0}, ValueError, "watchdog"),
    ({"name": 5}, TypeError, "name"),
    ({"args": ["ok", 5]}, TypeError, "args"),
    ({"config": {"num_buffers": 4}}, TypeError, "config"),
    ({"firmware": ""}, ValueError, "firmware"),
]
REMOTEPROC_OPTIONS = [
    ({"memory_size": 100}, ValueError, "memory_size"),
    ({"coredump": "sometimes"}, ValueError, "coredump"),
    ({"coredump_keep": 0}, ValueError, "coredump_keep"),
]


@pytest.mark.parametrize("cls, options, kind, argument",
                         [(SimProcessor, *case) for case in COMMON_OPTIONS]
                         + [(SimRemoteProc, *case) for case in COMMON_OPTIONS + REMOTEPROC_OPTIONS])
def test_simulated_processor_options(cls, options, kind, argument) -> None:
    options = dict(options)
    firmware = options.pop("firmware", ECHO)
    _refused(lambda: cls(firmware, **options), kind, argument)


def test_trace_index() -> None:
    rproc = SimRemoteProc(ECHO)
    _refused(lambda: rproc.trace("a"), TypeError, "index")  # type: ignore[arg-type]
    _refused(lambda: rproc.trace(-1), ValueError, "index")
    assert rproc.trace(3) == ""  # no such buffer (the processor is off): nothing
