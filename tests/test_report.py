"""Reports rendered from a real ledger: JSON schema, HTML content, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpface.cli import app
from dpface.ledger import BudgetExceeded, Ledger
from dpface.report import REPORT_SCHEMA, build_report, write_report
from mechanisms.budgets import ApproxDP, PureDP
from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace


def _ledger(path: Path) -> None:
    lap = Laplace(epsilon=1.0, sensitivity=1.0)
    gau = Gaussian(epsilon=0.5, delta=1e-7, sensitivity=2.0)
    with Ledger(path) as led:
        led.set_budget("alice", PureDP(3.0))
        led.set_budget("bob", ApproxDP(2.0, 1e-6))
        for _ in range(3):
            led.charge(
                "alice",
                mechanism="laplace",
                budget=lap.guarantee.budget,
                event=lap.event(),
                note=lap.guarantee.statement(),
            )
        with pytest.raises(BudgetExceeded):
            led.charge("alice", mechanism="laplace", budget=lap.guarantee.budget, event=lap.event())
        led.charge(
            "bob",
            mechanism="gaussian",
            budget=gau.guarantee.budget,
            event=gau.event(),
            note=gau.guarantee.statement(),
        )


def test_json_report_has_schema_and_per_subject_totals(tmp_path: Path) -> None:
    _ledger(tmp_path / "l.db")
    with Ledger(tmp_path / "l.db") as led:
        rep = build_report(led)
    assert rep["schema"] == REPORT_SCHEMA
    subjects = {s["subject"]: s for s in rep["subjects"]}
    assert subjects["alice"]["releases"] == 3
    assert subjects["alice"]["spent"]["epsilon"] == pytest.approx(3.0)
    assert subjects["alice"]["remaining_epsilon"] == pytest.approx(0.0)
    assert subjects["bob"]["spent"] == {"epsilon": 0.5, "delta": 1e-7}
    assert rep["mechanisms"]["laplace"]["releases"] == 3
    assert any("L1" in g for g in rep["mechanisms"]["laplace"]["guarantees"])
    assert len(rep["events"]) == 4
    json.dumps(rep)  # serialisable


def test_html_report_is_self_contained_and_readable(tmp_path: Path) -> None:
    _ledger(tmp_path / "l.db")
    rep = write_report(tmp_path / "l.db", tmp_path / "r.html", tmp_path / "r.json")
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "alice" in page and "bob" in page and "gaussian" in page
    assert "before" in page  # explains charge-before-noise
    assert json.loads((tmp_path / "r.json").read_text())["totals"] == rep["totals"]


def test_cli_report(tmp_path: Path) -> None:
    _ledger(tmp_path / "l.db")
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(tmp_path / "l.db"), "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert "2 subject(s), 4 release(s)" in res.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2
    assert not (tmp_path / "nope.db").exists()
