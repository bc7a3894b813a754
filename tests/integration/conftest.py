"""Fixtures of the multi-process tests: simulated processors that are always stopped."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources

import pytest
from sim_kit import stop_quietly

from amplink import SimProcessor

GCC = shutil.which("gcc")


@pytest.fixture
def sim():
    """``sim(firmware, kind=SimProcessor, **options)`` starts a processor of ``kind`` (a
    SimProcessor or a subclass); every one is stopped at the end."""
    started: list[SimProcessor] = []

    def start(firmware: str, kind: type[SimProcessor] = SimProcessor, **options) -> SimProcessor:
        options.setdefault("boot_timeout", 10.0)
        proc = kind(firmware, **options)
        started.append(proc)
        proc.start()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            stop_quietly(proc)


def _build_example(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    """Build ``amplink/firmware/examples/<name>.c`` (and the headers beside it) with gcc,
    once per run; skipped without gcc."""
    if GCC is None:
        pytest.skip(f"gcc is not installed: cannot build the native C firmware {name}.c")
    examples = resources.files("amplink.firmware.examples")
    out = tmp_path_factory.mktemp("native") / name
    with resources.as_file(examples) as folder:
        proc = subprocess.run([GCC, "-O2", "-Wall", "-Wextra", "-Werror", f"-I{folder}",
                               "-o", str(out), str(folder / f"{name}.c")],
                              capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return str(out)


@pytest.fixture(scope="session")
def native_echo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The C example firmware, built once per run with gcc (skipped without gcc)."""
    return _build_example(tmp_path_factory, "native_echo")


@pytest.fixture(scope="session")
def native_frames(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The C firmware that processes handed-over buffers in place (skipped without gcc)."""
    return _build_example(tmp_path_factory, "native_frames")
