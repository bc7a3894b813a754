"""What the docs promise firmware authors, run as written."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from rproc_sim_kit import TIMEOUT, echo
from sim_kit import fixture_firmware

import amplink.firmware
from amplink import SimProcessor, SimRemoteProc


def _first_code_block(doc: str) -> str:
    """The first ``::`` literal block of a docstring."""
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert match, "no code block"
    return textwrap.dedent(match.group(1))


def test_the_firmware_runtime_docstring_example_serves_and_ends(tmp_path: Path) -> None:
    fw = tmp_path / "documented_echo.py"
    fw.write_text(_first_code_block(amplink.firmware.__doc__ or ""))
    with SimProcessor(str(fw), boot_timeout=TIMEOUT) as proc:
        ep = proc.link.open_channel("rpmsg-echo", timeout=TIMEOUT)
        for payload in (b"as", b"documented"):
            ep.send(payload, timeout=TIMEOUT)
            assert ep.recv(timeout=TIMEOUT) == payload
    assert proc.process is not None and proc.process.returncode == 0  # it ended by itself


TRACING = '''
from amplink.firmware import serve, trace

def main(link):
    trace("a first line")  # the default table has no trace buffer: nothing, no crash
    link.create_endpoint("rpmsg-echo", announce=True,
                         callback=lambda ep, data, src: ep.sendto(data, src))
    serve(link)
'''


@pytest.mark.parametrize("start", ["SimProcessor", "SimRemoteProc"])
def test_trace_without_a_trace_buffer_is_a_no_op(tmp_path: Path, start: str) -> None:
    fw = tmp_path / "tracing.py"
    fw.write_text(TRACING)
    if start == "SimProcessor":
        with SimProcessor(str(fw), boot_timeout=TIMEOUT, stderr=subprocess.PIPE) as proc:
            ep = proc.link.open_channel("rpmsg-echo", timeout=TIMEOUT)
            ep.send(b"still up", timeout=TIMEOUT)
            assert ep.recv(timeout=TIMEOUT) == b"still up"
            assert proc.running
    else:
        rproc = SimRemoteProc(str(fw))
        with rproc.acquire():
            echo(rproc)
            assert rproc.crash_count == 0 and rproc.trace() == ""


def test_every_way_of_starting_firmware_uses_its_resource_table() -> None:
    """A firmware written as docs/remoteproc.md says (its own RESOURCE_TABLE with a trace
    buffer and a carveout) works under SimProcessor (amplink run/ping) as under boot."""
    with SimProcessor(fixture_firmware("rproc_traced.py"), boot_timeout=TIMEOUT) as proc:
        ep = proc.link.open_channel("rpmsg-echo", timeout=TIMEOUT)
        ep.send(b"trace:hello from run", timeout=TIMEOUT)
        assert ep.recv(timeout=TIMEOUT) == b"ok"
        assert "hello from run" in proc.rproc.trace()
