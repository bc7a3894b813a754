"""What every ``amplink`` subcommand shares: its error type, output, option types.

Errors reach the user as one line: a usage error (a bad option value) exits with 2, as
argparse does; a failure exits with 1; Ctrl-C exits with 130 after the command has
stopped what it started.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import AmplinkError
from ..platforms.sim_abi import ENV_LOG

#: the exit status after Ctrl-C (128 + SIGINT), whichever command was interrupted
EXIT_INTERRUPTED = 130


class CommandError(AmplinkError):
    """A failure the command reports as one clear line (exit status 1)."""


def out(*parts: object) -> None:
    """Print a line of the command's output at once (output may be piped)."""
    print(*parts, flush=True)


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned columns (the last column is not padded)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
            for row in rows]


@contextmanager
def step(what: str, *errors: type[BaseException]) -> Iterator[None]:
    """Name the step that failed in the error message."""
    try:
        yield
    except (AmplinkError, TimeoutError, *errors) as exc:  # type: ignore[misc]
        raise CommandError(f"{what}: {exc}") from exc


# -- option types: a bad value is a usage error (exit status 2), in one line ----------------
def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if math.isnan(value) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds >= 0."""
    value = _number(text, "a number of seconds >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative: give a number of seconds >= 0")
    return value


def positive_seconds(text: str) -> float:
    """A duration in seconds > 0."""
    value = _number(text, "a number of seconds > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds > 0")
    return value


def counter(minimum: int) -> Callable[[str], int]:
    """An integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is less than {minimum}")
        return value
    return parse


# -- options every command has ------------------------------------------------------------
def verbose_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: without -v after the command, the value given before it stays
    parent.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log more (-v: info, with the firmware's tracebacks; -vv: debug)")
    return parent


def add_command(sub: Any, name: str, func: Callable[[argparse.Namespace], int] | None,
                **kwargs: Any) -> argparse.ArgumentParser:
    """Add subcommand ``name`` run by ``func`` with the options every command has (``-v``);
    ``func`` is None for a group whose own subcommands run."""
    kwargs.setdefault("parents", []).append(verbose_option())
    parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def setup_logging(verbose: int) -> None:
    """Log at WARNING, INFO (-v) or DEBUG (-vv); firmware started from now on logs alike."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="amplink %(levelname)s %(name)s: %(message)s")
    if verbose > 0:
        # the firmware runtime reads its log level from the environment it inherits
        os.environ.setdefault(ENV_LOG, logging.getLevelName(level))
