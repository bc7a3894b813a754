"""Checks of the real kernel's rpmsg stack against amplink firmware, run in the guest.

Each check takes the rpmsg API object (:class:`rpmsg_os.OsRpmsg` for now) and a shared
state dict, and returns a JSON-able result with ``ok``. The host asserts on them.
"""

from __future__ import annotations

import errno
import os
import statistics
import time

SERVICE = "rpmsg-raw"
MTU = 496
ENDPOINTS = 16
ROUND_TRIPS = 1000


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def check_channel(rpmsg, state):
    ep = rpmsg.open_channel(SERVICE)
    state["channel"] = ep
    return {"ok": ep.name == SERVICE, "path": ep.path, "src": ep.src, "dst": ep.dst}


def check_echo_sizes(rpmsg, state):
    ep = state["channel"]
    bad = []
    for n in range(MTU + 1):
        data = pattern(n, n)
        ep.send(data)
        back = ep.recv()
        if back != data:
            bad.append({"size": n, "got": len(back)})
    return {"ok": not bad, "sizes": MTU + 1, "bad": bad[:5], "bad_count": len(bad)}


def check_emsgsize(rpmsg, state):
    ep = state["channel"]
    try:
        ep.send(pattern(MTU + 1))
    except OSError as exc:
        return {"ok": exc.errno == errno.EMSGSIZE, "errno": exc.errno}
    return {"ok": False, "error": f"a {MTU + 1}-byte write succeeded"}


def check_ctrl_endpoints(rpmsg, state):
    dst = state["channel"].dst  # the firmware's echo endpoint
    eps = [rpmsg.create_endpoint(f"amplink-ept{i}", dst) for i in range(ENDPOINTS)]
    try:
        for i, ep in enumerate(eps):
            ep.send(f"endpoint {i}".encode())
        # each answer comes back to its own endpoint (the firmware replies to the src)
        answers = [ep.recv().decode() for ep in eps]
        ok = answers == [f"endpoint {i}" for i in range(ENDPOINTS)]
    finally:
        paths = [ep.path for ep in eps]
        for ep in eps:
            ep.destroy()
            ep.close()
    gone = all(not os.path.exists(f"/sys/class/rpmsg/{os.path.basename(p)}") for p in paths)
    return {"ok": ok and gone, "endpoints": ENDPOINTS, "answers_ok": ok,
            "removed_after_destroy": gone}


def check_rtt(rpmsg, state):
    ep = state["channel"]
    data = pattern(16)
    for _ in range(50):  # warm-up
        ep.send(data)
        ep.recv()
    samples = []
    for _ in range(ROUND_TRIPS):
        t0 = time.perf_counter_ns()
        ep.send(data)
        back = ep.recv()
        samples.append(time.perf_counter_ns() - t0)
        if back != data:
            return {"ok": False, "error": "echo mismatch"}
    cuts = statistics.quantiles(samples, n=100)
    return {"ok": True, "round_trips": ROUND_TRIPS, "payload": len(data),
            "p50_us": round(cuts[49] / 1000, 1), "p99_us": round(cuts[98] / 1000, 1)}


def check_removal(rpmsg, state, announce):
    """The host removes the device (closes the vhost-user connection): the devices go."""
    ep = state["channel"]
    announce({"event": "await_removal"})
    deadline = time.monotonic() + 10
    while os.path.exists("/dev/rpmsg_ctrl0") and time.monotonic() < deadline:
        time.sleep(0.01)
    ctrl_gone = not os.path.exists("/dev/rpmsg_ctrl0")
    try:
        os.write(ep.fd, b"after removal")
        write_error = None
    except OSError as exc:
        write_error = exc.errno
    ep.close()
    channels_left = sorted(rpmsg.channel_devices())
    return {"ok": ctrl_gone and write_error is not None and not channels_left,
            "ctrl_gone": ctrl_gone, "write_errno": write_error, "channels_left": channels_left}


CHECKS = {
    "channel": check_channel,
    "echo_sizes": check_echo_sizes,
    "emsgsize": check_emsgsize,
    "ctrl_endpoints": check_ctrl_endpoints,
    "rtt": check_rtt,
}
