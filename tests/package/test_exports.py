"""The packages' public names are imported on first use, and every one of them resolves."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

PACKAGES = ["amplink", "amplink.memory", "amplink.remoteproc"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_resolves_and_is_listed(name: str) -> None:
    package = importlib.import_module(name)
    assert set(package._EXPORTS) == set(package.__all__)  # the two lists agree
    for export in package.__all__:
        value = getattr(package, export)
        assert getattr(package, export) is value  # cached after the first lookup
        assert export in dir(package)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from amplink import *", namespace)  # noqa: S102
    import amplink

    assert {n for n in namespace if not n.startswith("__")} == set(amplink.__all__)


def test_firmware_does_not_load_the_host_side() -> None:
    # a fresh interpreter: this one has imported everything already
    code = ("import json, sys; import amplink.firmware.examples.echo; "
            "print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                           capture_output=True, text=True,
                                           timeout=60).stdout))
    assert "amplink.firmware" in loaded
    host_side = {"elftools", "asyncio", "amplink.remoteproc.core",
                 "amplink.remoteproc.elf_loader", "amplink.platforms.sim",
                 "amplink.platforms.linux", "amplink.service"}
    assert not host_side & loaded
