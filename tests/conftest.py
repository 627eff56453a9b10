"""Shared test set-up.

Every test gets its own default ledger location (``$DPFACE_LEDGER``): a test that runs the CLI
without ``--ledger`` must never read or spend the budgets of the developer's own per-user
ledger, and tests must not see each other's spending.

The face fixtures (``generator``, ``faces``) load models once per session; they import the
face stack lazily so that ``tests/core`` (the torch-free DP core) never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dpface.generators.surrogate import SurrogateGenerator
    from dpface.models.samples import SampleFace


@pytest.fixture(autouse=True)
def _private_default_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "default-ledger" / "ledger.db"
    monkeypatch.setenv("DPFACE_LEDGER", str(path))
    monkeypatch.delenv("DPFACE_DEBUG", raising=False)
    return path


@pytest.fixture(scope="session")
def generator() -> SurrogateGenerator:
    """The default generator (surrogate bank built at set-up), shared by the whole session."""
    from dpface.generators.surrogate import SurrogateGenerator

    return SurrogateGenerator()


@pytest.fixture(scope="session")
def faces() -> tuple[SampleFace, ...]:
    """The bundled sample face set (34 faces, see ``dpface.models.samples``)."""
    from dpface.models.samples import sample_faces

    return sample_faces()
