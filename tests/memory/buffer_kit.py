"""Helpers of the shared-buffer tests: unique names, and leak checks that count only
what a test created (its fds and mappings, found by the names the test gave them)."""

from __future__ import annotations

import gc
import os
import uuid


def unique(prefix: str) -> str:
    """A name no other test (or process) uses: leak checks look for it."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def fds_named(tag: str) -> list[str]:
    """This process's fds whose target contains ``tag`` (e.g. ``/memfd:TAG (deleted)``)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd of the listing itself
        if tag in target:
            found.append(f"{name}->{target}")
    return found


def mappings_named(tag: str) -> list[str]:
    """This process's mappings (/proc/self/maps lines) whose path contains ``tag``."""
    with open("/proc/self/maps") as f:
        return [line.rstrip() for line in f if tag in line]


def assert_nothing_left(tag: str) -> None:
    """No fd and no mapping named ``tag`` is left in this process."""
    gc.collect()
    assert fds_named(tag) == []
    assert mappings_named(tag) == []
