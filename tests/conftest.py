"""Shared test set-up.

Every test gets its own default ledger location (``$DPFACE_LEDGER``): a test that runs the CLI
without ``--ledger`` must never read or spend the budgets of the developer's own per-user
ledger, and tests must not see each other's spending.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_default_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "default-ledger" / "ledger.db"
    monkeypatch.setenv("DPFACE_LEDGER", str(path))
    return path
