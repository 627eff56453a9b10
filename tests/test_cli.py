"""The dpface command line: the mechanisms demo writes a receipt and refuses bad budgets."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dpface.cli import RECEIPT_SCHEMA, app

runner = CliRunner()


def test_demo_writes_receipt_and_releases(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["mechanisms-demo", "--epsilon", "2", "--people", "50", "-o", str(tmp_path), "--seed", "3"],
    )
    assert result.exit_code == 0, result.output
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["schema"] == RECEIPT_SCHEMA
    assert receipt["seeded"] is True
    names = [r["mechanism"] for r in receipt["releases"]]
    assert names == ["laplace", "gaussian", "exponential"]
    assert receipt["releases"][0]["budget"] == "2-DP"
    assert "seeded" in receipt["releases"][0]["randomness"]
    assert receipt["per_subject_spent"]["total"].startswith("(6")
    assert (tmp_path / "releases.npz").exists()
    assert "SEEDED" in result.output


def test_demo_without_seed_says_csprng(tmp_path: Path) -> None:
    result = runner.invoke(app, ["mechanisms-demo", "--people", "5", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["seeded"] is False
    assert all("CSPRNG" in r["randomness"] for r in receipt["releases"])


def test_demo_refuses_bad_budgets(tmp_path: Path) -> None:
    for bad in ["0", "-1", "nan", "inf"]:
        result = runner.invoke(app, ["mechanisms-demo", "--epsilon", bad, "-o", str(tmp_path)])
        assert result.exit_code != 0
        assert "epsilon" in result.output
