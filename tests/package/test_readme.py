"""The README's Python examples type-check as a user's code would (the package ships
py.typed) and run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
#: complete programs (the others are fragments, e.g. a firmware's main)
PROGRAMS = [b for b in BLOCKS if b.startswith(("from amplink", "import"))]


def test_the_readme_has_runnable_examples() -> None:
    assert len(PROGRAMS) >= 2


def test_the_readme_examples_type_check(tmp_path: Path) -> None:
    for i, block in enumerate(BLOCKS):
        (tmp_path / f"example_{i}.py").write_text(block)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / ".cache"),
         "--no-error-summary", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index", range(len(PROGRAMS)))
def test_the_readme_programs_run(tmp_path: Path, index: int) -> None:
    script = tmp_path / "example.py"
    script.write_text(PROGRAMS[index])
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=50)
    assert result.returncode == 0, result.stdout + result.stderr
