"""Static checks CI enforces: ruff lint and format; mypy strict on mechanisms/ and dpface/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    assert found, f"{name} is not installed; run ./dev setup"
    return found


def test_ruff_is_clean() -> None:
    proc = subprocess.run(
        [_tool("ruff"), "check", "mechanisms", "dpface", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


FORMATTED = ("mechanisms", "dpface", "tests", "scripts", "notebooks", "docs/_hooks.py")


def test_ruff_format_is_clean() -> None:
    """The code is as ``ruff format`` writes it (``./dev lint`` checks the same)."""
    proc = subprocess.run(
        [_tool("ruff"), "format", "--check", *FORMATTED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_on_mechanisms_and_dpface() -> None:
    proc = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
