"""Checks of amplink's rpmsg_char backend against the real kernel, run in the guest.

Each check takes the link (:func:`amplink.transports.rpmsg_char.rpmsg_char_link` over the
guest's /dev/rpmsg_ctrl0) and a shared state dict and returns a JSON-able result with
``ok``; the host asserts on them. ``conformance:<case>`` runs a case of
tests/conformance/pair_cases.py against the firmware's echo channel.
"""

from __future__ import annotations

import errno
import os
import statistics
import time

from amplink import Link, LinkDown, MessageTooLarge, NotSupported
from amplink.transports.rpmsg_char import rpmsg_char_link

SERVICE = "rpmsg-raw"
ENDPOINTS = 16
ROUND_TRIPS = 1000
CLASS_DIR = "/sys/class/rpmsg"


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def _device(link: Link, addr: int) -> str:
    """The /dev/rpmsgN behind a local address (the backend's own record)."""
    return link.backend._endpoints[addr].path  # type: ignore[attr-defined]


def check_channel(link, state):
    ep = link.open_channel(SERVICE, timeout=5)
    state["channel"] = ep
    channels = [{"name": c.name, "dst": c.dst, "src": c.src} for c in link.channels()]
    path = _device(link, ep.addr)
    # the channel's own device, made by rpmsg_char when the firmware announced it
    own = os.path.basename(os.path.dirname(os.path.dirname(
        os.path.realpath(f"{CLASS_DIR}/{os.path.basename(path)}"))))
    return {"ok": ep.name == SERVICE and own.startswith("virtio0.rpmsg-raw."), "path": path,
            "src": ep.addr, "dst": ep.dst, "channels": channels,
            "ctrl_ioctls": link.statistics().backend["devices_created"]}


def check_emsgsize(link, state):
    """Over the MTU: refused by the link (496 B known), and by the kernel itself when the
    link is told a larger MTU: both MessageTooLarge with EMSGSIZE."""
    ep = state["channel"]
    errs = {}
    try:
        ep.send(pattern(ep.mtu + 1))
    except MessageTooLarge as exc:
        errs["link"] = exc.errno
    wide = rpmsg_char_link("rpmsg_ctrl0", max_payload=4096)
    try:
        wide_ep = wide.create_endpoint("amplink-wide", dst=ep.dst)
        try:
            wide_ep.send(pattern(497))
        except MessageTooLarge as exc:
            errs["kernel"] = exc.errno
            errs["kernel_message"] = str(exc)
        wide_ep.send(pattern(496))
        echoed = wide_ep.recv(timeout=5) == pattern(496)
    finally:
        wide.close()
    return {"ok": errs.get("link") == errs.get("kernel") == errno.EMSGSIZE and echoed, **errs}


def check_ctrl_endpoints(link, state):
    """Endpoints made through the control device answer, and are removed on close."""
    dst = state["channel"].dst
    eps = [link.create_endpoint(f"amplink-ept{i}", dst=dst) for i in range(ENDPOINTS)]
    paths = [_device(link, ep.addr) for ep in eps]
    for i, ep in enumerate(eps):
        ep.send(f"endpoint {i}".encode())
    answers = [ep.recv(timeout=5).decode() for ep in eps]
    ok = answers == [f"endpoint {i}" for i in range(ENDPOINTS)]
    for ep in eps:
        ep.close()
    gone = all(not os.path.exists(f"{CLASS_DIR}/{os.path.basename(p)}") for p in paths)
    return {"ok": ok and gone, "endpoints": ENDPOINTS, "addresses": [ep.addr for ep in eps][:3],
            "answers_ok": ok, "removed_after_close": gone}


def check_flow_control(link, state):
    """Linux 6.1 has no flow-control ioctls: NotSupported with EOPNOTSUPP."""
    ep = state["channel"]
    errs = []
    for call in (lambda: link.backend.outgoing_flow_restricted(ep.addr),
                 lambda: link.backend.set_incoming_flow_control(ep.addr, True)):
        try:
            call()
            errs.append(None)
        except NotSupported as exc:
            errs.append(exc.errno)
    return {"ok": errs == [errno.EOPNOTSUPP] * 2, "errnos": errs}


def check_rtt(link, state):
    ep = state["channel"]
    data = pattern(16)
    for _ in range(50):  # warm-up
        ep.send(data)
        ep.recv(timeout=5)
    samples = []
    for _ in range(ROUND_TRIPS):
        t0 = time.perf_counter_ns()
        ep.send(data)
        back = ep.recv(timeout=5)
        samples.append(time.perf_counter_ns() - t0)
        if back != data:
            return {"ok": False, "error": "echo mismatch"}
    cuts = statistics.quantiles(samples, n=100)
    return {"ok": True, "round_trips": ROUND_TRIPS, "payload": len(data),
            "p50_us": round(cuts[49] / 1000, 1), "p99_us": round(cuts[98] / 1000, 1)}


def check_removal(link, state, announce):
    """The host removes the device while a receive waits: LinkDown, errno kept."""
    ep = state["channel"]
    channel_dev = _device(link, ep.addr)
    made = link.create_endpoint("amplink-blocked", dst=ep.dst)
    announce({"event": "await_removal"})
    t0 = time.monotonic()
    try:
        made.recv(timeout=20)
        error = None
    except LinkDown as exc:
        error = exc
    waited = time.monotonic() - t0
    # The kernel removes the endpoint devices one by one after breaking the virtqueues:
    # a write to the channel's endpoint before its own device is gone may fail with EIO
    # (from the broken virtqueue). The send below checks the state after the removal.
    end = time.monotonic() + 10
    while os.path.exists(channel_dev) and time.monotonic() < end:
        time.sleep(0.01)
    try:
        ep.send(b"after removal")
        send_error = None
    except LinkDown as exc:
        send_error = exc.errno
    ctrl_gone = not os.path.exists("/dev/rpmsg_ctrl0")
    link.close()
    return {"ok": error is not None and error.errno == errno.EPIPE and ctrl_gone
            and send_error is not None and not link.is_up,
            "errno": None if error is None else error.errno, "error": str(error),
            "send_errno": send_error, "ctrl_gone": ctrl_gone, "waited_s": round(waited, 3)}


CHECKS = {
    "channel": check_channel,
    "emsgsize": check_emsgsize,
    "ctrl_endpoints": check_ctrl_endpoints,
    "flow_control": check_flow_control,
    "rtt": check_rtt,
}
