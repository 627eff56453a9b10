"""The DP core stays free of torch and face code; every module imports on its own."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import mechanisms


def _modules() -> list[str]:
    return sorted(
        f"mechanisms.{m.name}" for m in pkgutil.iter_modules(mechanisms.__path__) if not m.ispkg
    )


def test_importing_every_core_module_leaves_torch_out() -> None:
    names = _modules()
    assert "mechanisms.laplace" in names and "mechanisms.sampling" in names
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'dpface', 'cv2'})\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_package_import_is_torch_free() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import mechanisms, sys; assert 'torch' not in sys.modules"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
