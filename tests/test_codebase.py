"""The codebase's own rules, checked where CI runs: ruff clean, no source file over 600 lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("edgeres", "tests", "tools", "calibration")
MAX_LINES = 600


def _ruff() -> list[str]:
    """ruff from this interpreter's environment (the venv `make setup` builds), else PATH."""
    local = Path(sys.executable).with_name("ruff")
    if local.exists():
        return [str(local)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed (pip install -e '.[dev]')")


def test_ruff_is_clean() -> None:
    done = subprocess.run([*_ruff(), "check", *CHECKED], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_source_file_is_over_the_line_budget() -> None:
    long = {str(p.relative_to(ROOT)): n for d in CHECKED for p in (ROOT / d).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these (more than {MAX_LINES} lines): {long}"
