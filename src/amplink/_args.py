"""Argument checks shared by the public API: each failure names the argument.

Every public call checks its arguments up front with these, so that misuse raises
:class:`~amplink.errors.InvalidArgument` (a ``ValueError``) or
:class:`~amplink.errors.InvalidArgumentType` (a ``TypeError``) before anything is
taken from a ring or a processor, never a raw error from deep inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import InvalidArgument, InvalidArgumentType

#: timeouts at or above this many seconds (about 31 years) mean "wait forever": lock and
#: poll primitives overflow on the huge values (``math.inf``, 1e10) callers use for that
FOREVER = 1e9

Payload = bytes | bytearray | memoryview


def _type_name(value: object) -> str:
    return type(value).__name__


def number_arg(value: object, name: str, *, minimum: float = 0.0,
               exclusive: bool = False) -> float:
    """A real number (not a bool, not NaN) >= ``minimum`` (> with ``exclusive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentType(f"{name} must be a number, got {_type_name(value)} {value!r}")
    if math.isnan(value) or value < minimum or (exclusive and value == minimum):
        bound = ">" if exclusive else ">="
        raise InvalidArgument(f"{name} must be a number {bound} {minimum:g}, got {value!r}")
    return float(value)


def timeout_arg(value: object, name: str = "timeout") -> float | None:
    """None (forever) or seconds >= 0; :data:`FOREVER` and above (``math.inf``) become None."""
    if value is None:
        return None
    if type(value) is float and 0.0 <= value < FOREVER:  # the common case, checked fast
        return value
    seconds = number_arg(value, name)
    return None if seconds >= FOREVER else seconds


def finite_seconds_arg(value: object, name: str, *, positive: bool = False) -> float:
    """Seconds >= 0 (> 0 with ``positive``) that must be finite (a period, a spin time)."""
    seconds = number_arg(value, name, exclusive=positive)
    if math.isinf(seconds):
        raise InvalidArgument(f"{name} must be a finite number of seconds, got {value!r}")
    return seconds


def int_arg(value: object, name: str, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """An int (not a bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{name} must be an int, got {_type_name(value)} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "" if minimum is None else f"{minimum:#x}" if minimum > 9 else str(minimum)
        hi = "" if maximum is None else f"{maximum:#x}" if maximum > 9 else str(maximum)
        raise InvalidArgument(f"{name} must be in {lo}..{hi}, got {value!r}")
    return value


def str_arg(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentType(f"{name} must be a str, got {_type_name(value)} {value!r}")
    return value


def callable_arg(value: Any, name: str) -> Callable[..., Any] | None:
    """None or a callable."""
    if value is not None and not callable(value):
        raise InvalidArgumentType(f"{name} must be callable or None, got "
                                  f"{_type_name(value)} {value!r}")
    return value


def payload_arg(data: object, name: str = "data") -> Payload:
    """``data`` as contiguous bytes or a byte view of it (no copy).

    Any object with the buffer protocol is accepted if it is C-contiguous; a view of
    wider items (``array('I')``, a numpy array) is cast to its bytes.
    """
    kind = type(data)
    if kind is bytes or kind is bytearray:
        return data  # type: ignore[return-value]
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentType(
            f"{name} must be a bytes-like object (bytes, bytearray, memoryview, array, "
            f"mmap, ...), got {_type_name(data)}: encode text first (e.g. text.encode())"
        ) from None
    if not view.c_contiguous:
        raise InvalidArgumentType(
            f"{name} is a non-contiguous buffer: pass a contiguous one (e.g. bytes(view))")
    if view.itemsize != 1 or view.ndim != 1:
        view = view.cast("B")
    return view
