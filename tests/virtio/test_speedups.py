"""The compiled ring halves (amplink._speedups): which one runs, and that it is the same.

* The switch: ``AMPLINK_PURE_PYTHON=1`` selects the pure-Python halves, without it the
  C ones run when the extension is built (CI requires it: ``AMPLINK_REQUIRE_SPEEDUPS=1``);
  without the extension (no compiler at install) the pure path runs.
* Equivalence: the same operations on the same bytes, whatever a hostile peer wrote,
  give the same results, faults, breaks and bytes in shared memory on both halves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink._accel import IMPLEMENTATION, PURE_PYTHON_ENV, speedups
from amplink.memory import SharedRegion
from amplink.virtio import DeviceQueue, DriverQueue, VringLayout
from amplink.virtio.device import PyDeviceQueue
from amplink.virtio.driver import PyDriverQueue
from amplink.virtio.ring import (
    DESC,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
)

REQUIRE_ENV = "AMPLINK_REQUIRE_SPEEDUPS"
PURE = os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")

needs_c = pytest.mark.skipif(speedups is None, reason="amplink._speedups is not built here "
                             f"(or {PURE_PYTHON_ENV} is set)")


def _probe(env: dict[str, str], prelude: str = "") -> str:
    """What a fresh interpreter with ``env`` reports about the implementation in use."""
    code = textwrap.dedent(prelude) + textwrap.dedent("""
        from amplink._accel import IMPLEMENTATION
        from amplink.virtio import DeviceQueue, DriverQueue
        from amplink.platforms.inprocess import LinkPair
        with LinkPair.create() as pair:
            ep = pair.device.create_endpoint("probe", addr=1030)
            pair.host.create_endpoint(dst=1030).send(b"ping", timeout=1)
            assert ep.recv(timeout=1) == b"ping"
            backend = pair.host.statistics().backend["implementation"]
        print(IMPLEMENTATION, DriverQueue.__name__, DeviceQueue.__name__, backend)
    """)
    full = {k: v for k, v in os.environ.items() if k != PURE_PYTHON_ENV} | env
    result = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_switch_forces_the_pure_python_path() -> None:
    assert _probe({PURE_PYTHON_ENV: "1"}) == "python PyDriverQueue PyDeviceQueue python"


def test_without_the_switch_the_extension_runs_when_built() -> None:
    built = speedups is not None or PURE
    if not built and os.environ.get(REQUIRE_ENV) != "1":
        pytest.skip("amplink._speedups is not built here")
    assert _probe({PURE_PYTHON_ENV: "0"}) == "c CDriverQueue CDeviceQueue c"


def test_without_the_extension_the_pure_path_runs() -> None:
    # as after an installation without a compiler: the module cannot be imported
    blocked = "import sys; sys.modules['amplink._speedups'] = None\n"
    assert _probe({}, blocked) == "python PyDriverQueue PyDeviceQueue python"


def test_this_run_uses_the_implementation_it_asked_for() -> None:
    if PURE:
        assert IMPLEMENTATION == "python" and DriverQueue is PyDriverQueue
    elif speedups is not None:
        assert IMPLEMENTATION == "c" and DriverQueue is not PyDriverQueue
    elif os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but amplink._speedups cannot be imported")
    else:
        pytest.skip("amplink._speedups is not built here")


@needs_c
@pytest.mark.parametrize("pure, c_base", [(PyDriverQueue, "DriverRing"),
                                          (PyDeviceQueue, "DeviceRing")])
def test_the_c_halves_implement_every_operation_of_the_python_ones(pure, c_base) -> None:
    # the C class inherits the Python one (isinstance, typing): none of the Python
    # operations, which use Python state the C half does not have, may show through
    base = getattr(speedups, c_base)
    public = {name for name in vars(pure) if not name.startswith("__")}
    public -= {"_abc_impl"}
    assert public <= set(vars(base)), sorted(public - set(vars(base)))


# -- the same results on the same bytes ------------------------------------------------------
NUM_CHOICES = [1, 2, 4, 8]
BASE = 0x100
POOL = 0x4000  # buffers the driver posts lie here
DA_BASE = 0x7000_0000
REGION = 0x10000


def _regions():
    return tuple(SharedRegion.memfd(REGION, da_base=DA_BASE) for _ in range(2))


def _outcome(call):
    """A call's result, or the type of what it raised (the texts may differ)."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return ("raised", type(exc).__name__)


def _same_state(a, b, ra, rb, layout) -> None:
    assert ra.read(layout.base, layout.size) == rb.read(layout.base, layout.size)
    assert dict(a.faults.counts) == dict(b.faults.counts)
    assert a.broken == b.broken


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
# device addresses near the pool, inside and outside the region, and anywhere
da = st.one_of(st.integers(DA_BASE + POOL - 64, DA_BASE + REGION + 64), st.integers(0, 2**64 - 1))
flags = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 6]), u16)

def _weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each ``weight`` times as likely as one of weight 1."""
    picks = [i for i, (weight, _strategy) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda i: choices[i][1])


# mostly an honest driver's offers (whose length, flags and address may be off) and the
# device's work, with hostile writes between them: an index far off breaks the ring for
# good, so those are rare
device_ops = st.lists(_weighted(
    # ("offer", which free head (else this one), where (0-2 in the pool, 3 at the end of
    # the region: 16 bytes left), length, flags (0 right, 1 the wrong direction, 2
    # chained, 3 indirect))
    (8, st.tuples(st.just("offer"), st.integers(0, 9), st.integers(0, 3), st.integers(1, 40),
                  st.just(0))),
    (1, st.tuples(st.just("offer"), st.integers(0, 9), st.integers(0, 3), st.integers(0, 40),
                  st.integers(0, 3))),
    (8, st.tuples(st.just("pop_avail"))),
    (5, st.tuples(st.just("push_used"), st.integers(0, 9),
                  st.one_of(st.sampled_from([0, 1, 16]), st.integers(0, 600)))),
    (1, st.tuples(st.just("avail_bump"), st.integers(0, 10))),
    (1, st.tuples(st.just("avail_entry"), st.integers(0, 7), st.one_of(st.integers(0, 9), u16))),
    (1, st.tuples(st.just("desc"), st.integers(0, 7), da, st.one_of(st.integers(0, 600), u32),
                  flags)),
    (2, st.tuples(st.just("flags"), st.sampled_from(["avail", "used_event"]),
                  st.one_of(st.integers(0, 3), u16))),
    (3, st.tuples(st.sampled_from(["notify_needed", "enable_notify", "disable_notify",
                                   "avail_pending", "returned_unconsumed"]))),
    (1, st.tuples(st.just("avail_idx"), u16)),
), min_size=10, max_size=80)


def _write_device_side(region, layout, num, op) -> None:
    """What the driver (a hostile one) writes: avail ring, descriptors, flags."""
    kind = op[0]
    if kind == "offer":  # as the test resolved it: head, where, length, descriptor flags
        head, where, length, desc_flags = op[1:]
        addr = DA_BASE + (REGION - 16 if where == 3 else POOL + 0x100 * where)
        if head < num:
            region.write(layout.desc + 16 * head, DESC.pack(addr, length, desc_flags, 0))
        idx = region.read_u16(layout.avail + 2)
        region.write_u16(layout.avail_ring + 2 * (idx % num), head)
        region.write_u16(layout.avail + 2, (idx + 1) & 0xFFFF)
    elif kind == "avail_idx":
        region.write_u16(layout.avail + 2, op[1])
    elif kind == "avail_bump":
        region.write_u16(layout.avail + 2, (region.read_u16(layout.avail + 2) + op[1]) & 0xFFFF)
    elif kind == "avail_entry":
        region.write_u16(layout.avail_ring + 2 * (op[1] % num), op[2])
    elif kind == "desc":
        region.write(layout.desc + 16 * (op[1] % num), DESC.pack(op[2], op[3], op[4], 0))
    elif kind == "flags":
        region.write_u16(layout.avail if op[1] == "avail" else layout.used_event, op[2])


@needs_c
@settings(max_examples=300, deadline=None)
@given(num=st.sampled_from(NUM_CHOICES), event_idx=st.booleans(),
       device_writes=st.booleans(), ops=device_ops)
def test_device_halves_agree_on_whatever_the_driver_wrote(num, event_idx, device_writes, ops):
    ra, rb = _regions()
    with ra, rb:
        layout = VringLayout(BASE, num, 16)
        py = PyDeviceQueue(ra, layout, device_writes=device_writes, event_idx=event_idx)
        c = DeviceQueue(rb, layout, device_writes=device_writes, event_idx=event_idx)
        assert type(c) is not PyDeviceQueue
        taken: list[int] = []
        free = list(range(num))  # the heads an honest driver would offer
        right = VRING_DESC_F_WRITE if device_writes else 0
        for op in ops:
            kind = op[0]
            if kind == "offer":
                _, pick, where, length, how = op
                head = free.pop(pick % len(free)) if free else pick
                desc_flags = (right, right ^ VRING_DESC_F_WRITE, VRING_DESC_F_NEXT,
                              VRING_DESC_F_INDIRECT)[how]
                op = ("offer", head, where, length, desc_flags)
            if kind == "pop_avail":
                a, b = _outcome(py.pop_avail), _outcome(c.pop_avail)
                if a[0] == "ok" and a[1] is not None:
                    taken.append(a[1][0])
            elif kind == "push_used":
                head = taken[op[1] % len(taken)] if taken and op[1] < 8 else op[1]
                written = op[2]
                a = _outcome(lambda h=head, w=written: py.push_used(h, w))
                b = _outcome(lambda h=head, w=written: c.push_used(h, w))
                if a[0] == "ok":
                    taken.remove(head)
                    free.append(head)
            elif kind in ("notify_needed", "enable_notify", "disable_notify", "avail_pending",
                          "returned_unconsumed"):
                a, b = _outcome(getattr(py, kind)), _outcome(getattr(c, kind))
            else:
                _write_device_side(ra, layout, num, op)
                _write_device_side(rb, layout, num, op)
                continue
            assert a == b, (op, a, b)
            _same_state(py, c, ra, rb, layout)
        assert py.last_avail == c.last_avail


# mostly the driver's work and an honest device's returns (of the head it was offered,
# or one next to it, with a length that may be off), with hostile writes between them
driver_ops = st.lists(_weighted(
    (8, st.tuples(st.just("add"), st.integers(1, 600), st.booleans())),
    (5, st.tuples(st.just("publish"))),
    # ("return", which avail entry back, the used length: 0 as posted, 1 one more, 2 one
    # less, 3 none, 4 all ones; the id: as offered + 0..2)
    (8, st.tuples(st.just("return"), st.integers(0, 3), st.integers(0, 4),
                  st.sampled_from([0, 0, 0, 1, 2]))),
    (8, st.tuples(st.just("pop_used"))),
    (1, st.tuples(st.just("used_bump"), st.integers(0, 10))),
    (1, st.tuples(st.just("used_entry"), st.integers(0, 7), st.one_of(st.integers(0, 9), u32),
                  st.one_of(st.integers(0, 700), u32))),
    (2, st.tuples(st.sampled_from(["enable_interrupts", "disable_interrupts", "outstanding",
                                   "used_pending", "free_count"]))),
    (2, st.tuples(st.just("flags"), st.sampled_from(["used", "avail_event"]),
                  st.one_of(st.integers(0, 3), u16))),
    (1, st.tuples(st.sampled_from(["reset"]))),
    (1, st.tuples(st.just("used_idx"), u16)),
), min_size=10, max_size=80)


def _write_driver_side(region, layout, num, op) -> None:
    """What the device (a hostile one) writes: used ring, flags, event index."""
    kind = op[0]
    if kind == "return":
        slot, how, skew = op[1:]
        avail_idx = region.read_u16(layout.avail + 2)
        head = region.read_u16(layout.avail_ring + 2 * ((avail_idx - 1 - slot) % num)) + skew
        posted = DESC.unpack(region.read(layout.desc + 16 * (head % num), 16))[1]
        length = (posted, posted + 1, max(0, posted - 1), 0, 0xFFFF_FFFF)[how]
        used_idx = region.read_u16(layout.used + 2)
        elem = layout.used_ring + 8 * (used_idx % num)
        region.write_u32(elem, head)
        region.write_u32(elem + 4, length)
        region.write_u16(layout.used + 2, (used_idx + 1) & 0xFFFF)
    elif kind == "used_idx":
        region.write_u16(layout.used + 2, op[1])
    elif kind == "used_bump":
        region.write_u16(layout.used + 2, (region.read_u16(layout.used + 2) + op[1]) & 0xFFFF)
    elif kind == "used_entry":
        elem = layout.used_ring + 8 * (op[1] % num)
        region.write_u32(elem, op[2])
        region.write_u32(elem + 4, op[3])
    elif kind == "flags":
        region.write_u16(layout.used if op[1] == "used" else layout.avail_event, op[2])


@needs_c
@settings(max_examples=300, deadline=None)
@given(num=st.sampled_from(NUM_CHOICES), event_idx=st.booleans(), ops=driver_ops)
def test_driver_halves_agree_on_whatever_the_device_wrote(num, event_idx, ops):
    ra, rb = _regions()
    with ra, rb:
        layout = VringLayout(BASE, num, 16)
        py = PyDriverQueue(ra, layout, event_idx=event_idx)
        c = DriverQueue(rb, layout, event_idx=event_idx)
        assert type(c) is not PyDriverQueue
        py.reset()
        c.reset()
        token = 0
        for op in ops:
            kind = op[0]
            if kind == "add":
                token += 1
                args = (DA_BASE + POOL + 0x400 * (token % 8), op[1], token)
                a = _outcome(lambda args=args, w=op[2]: py.add(*args, writable=w))
                b = _outcome(lambda args=args, w=op[2]: c.add(*args, writable=w))
                if a[0] == "raised":  # every descriptor out: both refuse, as IndexError
                    assert a[1] == b[1] == "IndexError"
                    continue
            elif kind == "free_count":
                a, b = ("ok", py.free_count), ("ok", c.free_count)
            elif kind in ("publish", "pop_used", "enable_interrupts", "disable_interrupts",
                          "outstanding", "used_pending", "reset"):
                a, b = _outcome(getattr(py, kind)), _outcome(getattr(c, kind))
            else:
                _write_driver_side(ra, layout, num, op)
                _write_driver_side(rb, layout, num, op)
                continue
            assert a == b, (op, a, b)
            _same_state(py, c, ra, rb, layout)


@needs_c
def test_the_c_halves_refuse_what_the_python_ones_refuse() -> None:
    with SharedRegion.memfd(REGION) as region:
        layout = VringLayout(BASE, 4, 16)
        drv = DriverQueue(region, layout)
        with pytest.raises(ValueError, match="token"):
            drv.add(0x4000, 16, None)
        for _ in range(4):
            drv.add(0x4000, 16, "t")
        with pytest.raises(IndexError):
            drv.add(0x4000, 16, "t")
        dev = DeviceQueue(region, layout, device_writes=False)
        with pytest.raises(ValueError, match="not held"):
            dev.push_used(0, 4)
        with pytest.raises(ValueError, match="16 bits"):
            dev.start_at(0x10000)
    with pytest.raises(ValueError, match="closed"):
        drv.publish()  # the region is gone: an error, never a touch of unmapped memory


def test_misaligned_rings_are_refused_on_both_paths() -> None:
    with SharedRegion.memfd(REGION) as region:
        for cls in (PyDriverQueue, DriverQueue):
            with pytest.raises(ValueError, match="aligned"):
                cls(region, VringLayout(BASE + 2, 4, 16))
