"""Hostile clients of the endpoint service: garbage, huge frames, file descriptors,
floods, clients that never read. Each gets a typed error and loses its connection; the
service and its other clients go on, and it keeps no fd of theirs."""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
from pathlib import Path

import pytest
from common_kit import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loop_kit import TIMEOUT, LoopService, loop_service
from raw_kit import RawClient

from amplink.service import endpoints as E
from amplink.service.session import MAX_CONTROL_EXTRA, MAX_QUEUED
from amplink.transports import service_wire as W
from amplink.transports.service import service_status


@pytest.fixture
def service(tmp_path: Path):
    with loop_service(tmp_path) as s:
        s.boot()
        yield s


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def still_serves(service: LoopService) -> None:
    """Another client is answered as usual."""
    ep = service.link().open_channel("rpmsg-echo", timeout=TIMEOUT)
    ep.send(b"still here")
    assert ep.recv(timeout=TIMEOUT) == b"still here"


def cut_off_with(raw: RawClient, err: int) -> None:
    """The service said why (an error event) and closed the connection."""
    event = raw.event()
    assert event["event"] == "error" and event["errno"] == err, event
    assert raw.closed_by_service()


@pytest.mark.parametrize("packet", [
    b"",                                              # shorter than a header
    b"\x00" * 7,
    b"garbage that is no frame at all, just bytes",   # kind 'g'
    W.header(99) + b"x",                              # unknown kind
    W.header(W.KIND_RESPONSE),                        # a kind clients do not send
    W.header(W.KIND_DATA, flags=0x80) + b"x",         # unknown flags
    bytes([W.KIND_DATA, 0, 1, 0]) + bytes(16),        # reserved bits set
], ids=["empty", "short", "garbage", "kind-99", "response", "flags", "reserved"])
def test_a_malformed_frame_is_a_protocol_error(service: LoopService, packet: bytes) -> None:
    with RawClient(service.root) as raw:
        raw.sock.send(packet)
        if not packet:  # an empty packet reads as the end of the connection
            assert raw.closed_by_service()
        else:
            cut_off_with(raw, errno.EPROTO)
    still_serves(service)


def test_a_huge_frame_is_refused(service: LoopService) -> None:
    with RawClient(service.root) as raw:
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        raw.sock.send(W.header(W.KIND_REQUEST) + b"{" * (W.MAX_FRAME + 100))
        cut_off_with(raw, errno.EMSGSIZE)
    still_serves(service)


def test_file_descriptors_are_closed_and_refused(service: LoopService) -> None:
    before = open_fds()
    for _ in range(20):  # a flood: 20 connections, each sending many fds
        with RawClient(service.root) as raw:
            fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(64)]
            try:
                raw.sock.sendmsg([W.header(W.KIND_REQUEST) + b'{"op":"status"}'],
                                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            finally:
                for fd in fds:
                    os.close(fd)
            cut_off_with(raw, errno.EBADF)
    # the service took at most one of each message's fds, and closed it
    assert wait_for(lambda: open_fds() <= before, TIMEOUT), (before, open_fds())
    still_serves(service)


@pytest.mark.parametrize(("body", "complaint"), [
    (b"not json", "not a JSON body"),
    (b"[1, 2]", "must be an object"),
    (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
    (b'{"op": 3}', "field 'op' must be str"),
    (b'{"op": "explode"}', "unknown operation"),
    (b'{"op": "attach", "processor": "loop0", "link": "0", "watch": false, "version": 1}',
     "field 'link' must be int"),
    (b'{"op": "open", "name": "x"}', "attach to a processor first"),
    (b'\xff\xfe{}', "not a JSON body"),
], ids=["text", "list", "deep", "op-type", "unknown-op", "field-type", "order", "utf8"])
def test_a_bad_request_gets_an_error_and_the_connection_stays(
        service: LoopService, body: bytes, complaint: str) -> None:
    with RawClient(service.root) as raw:
        raw.sock.send(W.header(W.KIND_REQUEST, 7) + body)
        frame = raw.frame()
        answer = W.decode_json(frame.body)
        assert frame.kind == W.KIND_RESPONSE and frame.a == 7
        assert not answer["ok"] and complaint in answer["error"], answer
        assert answer["errno"] in (errno.EINVAL, errno.ENOTCONN)
        assert raw.request("status")["ok"]  # the same connection goes on


@pytest.mark.parametrize(("fields", "err"), [
    ({"name": "rpmsg-echo", "addr": -1, "dst": None}, errno.EINVAL),
    ({"name": "rpmsg-echo", "addr": 2**32, "dst": None}, errno.EINVAL),
    ({"name": "x" * 40, "addr": None, "dst": None}, errno.EINVAL),
    ({"name": "", "addr": None, "dst": None}, errno.EINVAL),
    ({"name": "rpmsg-nope", "addr": None, "dst": None}, errno.ENOENT),
    ({"name": "rpmsg-echo", "addr": 53, "dst": None}, errno.EADDRINUSE),
])
def test_open_checks_every_field(service: LoopService, fields: dict, err: int) -> None:
    with RawClient(service.root) as raw:
        assert raw.request("attach", processor="loop0", link=0, watch=False, version=1)["ok"]
        answer = raw.request("open", **fields)
        assert not answer["ok"] and answer["errno"] == err, answer


def test_sending_without_credit_cuts_the_client_off(service: LoopService) -> None:
    rproc = service.boot("still", echo=False)  # its firmware's side never drains: the
    rproc.announce("rpmsg-sink")                # ring fills, and nothing more is passed on
    assert wait_for(lambda: service.serves("still", "rpmsg-sink"), TIMEOUT)
    with RawClient(service.root) as raw:
        assert raw.request("attach", processor="still", link=0, watch=False, version=1)["ok"]
        window = E.WINDOW
        opened = raw.request("open", name="rpmsg-sink", addr=None, dst=None)
        for _ in range(window * 4):
            try:
                raw.send_data(opened["addr"], opened["dst"], b"z" * 64)
            except (BrokenPipeError, ConnectionResetError):
                break
        assert raw.closed_by_service()
        error = [W.decode_json(f.body) for f in raw.other if f.kind == W.KIND_EVENT][-1]
        assert error["errno"] == errno.EPROTO and "window" in error["error"]
    still_serves(service)


def test_data_before_attach_cuts_the_client_off(service: LoopService) -> None:
    with RawClient(service.root) as raw:
        raw.send_data(1024, 1024, b"who am I")
        cut_off_with(raw, errno.ENOTCONN)


def test_a_client_that_never_reads_is_cut_off(service: LoopService) -> None:
    with RawClient(service.root) as raw:
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(MAX_QUEUED + MAX_CONTROL_EXTRA + 2000):  # answers it never reads
            try:
                raw.sock.send(W.header(W.KIND_REQUEST) + b'{"op":"explode"}')
            except (BrokenPipeError, ConnectionResetError):
                break
        assert wait_for(lambda: not _connected(service), TIMEOUT)
    still_serves(service)


def _connected(service: LoopService) -> int:
    return service.supervisor.endpoints.session_count  # type: ignore[union-attr]


def test_too_many_connections_are_refused(service: LoopService, monkeypatch) -> None:
    monkeypatch.setattr(E, "MAX_SESSIONS", 8)
    clients = [RawClient(service.root) for _ in range(8)]
    try:
        for raw in clients:
            assert raw.request("status")["ok"]
        with RawClient(service.root) as extra:
            cut_off_with(extra, errno.EUSERS)
    finally:
        for raw in clients:
            raw.close()
    assert wait_for(lambda: _connected(service) == 0, TIMEOUT)
    still_serves(service)


def test_a_storm_of_connections_leaves_nothing_behind(service: LoopService) -> None:
    before = open_fds()
    for i in range(200):
        raw = RawClient(service.root)
        if i % 2:
            raw.request("attach", processor="loop0", link=0, watch=True, version=1)
            raw.request("open", name="rpmsg-echo", addr=None, dst=None)
        raw.close()  # no goodbye
    assert wait_for(lambda: _connected(service) == 0, TIMEOUT)
    assert wait_for(lambda: open_fds() <= before, TIMEOUT)
    host = service.made["loop0"].links[0]
    assert wait_for(lambda: not host.endpoints(), TIMEOUT)
    assert not service_status(service.root)[0].links[0].channels[0].watchers
    still_serves(service)


# -- a fuzzing client ---------------------------------------------------------------------------
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2, max_value=3),
    st.integers(min_value=-(1 << 64), max_value=1 << 64), st.text(max_size=40),
    st.sampled_from(["loop0", "rpmsg-echo", "", "x" * 300]),
    st.lists(st.integers(min_value=-1, max_value=1 << 33), max_size=3))
_FIELDS = st.sampled_from(["op", "version", "processor", "link", "watch", "name", "addr",
                           "dst", "size", "access", "id", "ids", "timeout", "zzz"])
_OPS = st.sampled_from(["status", "attach", "open", "close", "attach_buffer",
                        "detach_buffer", "nonsense"])
_REQUEST = st.builds(lambda op, extra: {"op": op, **extra}, _OPS,
                     st.dictionaries(_FIELDS, _VALUES, max_size=5))
_U32 = st.one_of(st.integers(min_value=0, max_value=3),
                 st.integers(min_value=1020, max_value=1030),
                 st.integers(min_value=0, max_value=0xFFFFFFFF))
_STEP = st.one_of(
    st.tuples(st.just("request"), _REQUEST),
    st.tuples(st.just("data"), st.tuples(_U32, _U32, st.binary(max_size=600))),
    st.tuples(st.just("frame"), st.tuples(st.integers(min_value=0, max_value=6), _U32,
                                          st.binary(max_size=64))))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=1, max_size=12))
def test_whatever_a_client_sends_costs_the_service_nothing(
        service: LoopService, caplog: pytest.LogCaptureFixture, steps: list) -> None:
    """Random requests (known and unknown operations, fields of every type), messages of
    any size and address, frames of any kind, after a valid attach and open: the client
    gets answers, refusals or its connection cut; the service meets no fault of its own
    (no internal error, nothing logged as failed) and serves its other clients on."""
    caplog.clear()
    with RawClient(service.root) as raw:
        answer = raw.request("attach", version=W.PROTOCOL_VERSION, processor="loop0", link=0,
                             watch=True)
        assert answer["ok"], answer
        opened = raw.request("open", name="rpmsg-echo")
        assert opened["ok"], opened
        try:
            for kind, value in steps:
                if kind == "request":
                    raw.send_json(value)
                elif kind == "data":
                    raw.send_data(*value)
                else:
                    frame_kind, a, body = value
                    raw.sock.send(W.header(frame_kind, a) + body)
            raw.request("status")  # answered once the service has read all of it
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass  # cut off: fine
    faults = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR or "internal error" in r.getMessage()]
    assert not faults, faults
    assert not any(
        f.kind == W.KIND_RESPONSE and b"internal error" in f.body for f in raw.other)
    still_serves(service)
