"""The privacy report, built from real ledgers charged by real mechanisms (no mocks)."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import re
import sqlite3
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dpface._version import __version__
from dpface.errors import NotALedgerError
from dpface.ledger import BudgetExceeded, Ledger
from dpface.report import (
    CHART_TOP_N,
    REPORT_SCHEMA,
    build_report,
    load_measured,
    plain_epsilon,
    render_html,
    write_report,
)
from mechanisms.base import Mechanism
from mechanisms.budgets import ApproxDP, PureDP
from mechanisms.identity import IdentityGaussian, IdentityLaplace
from mechanisms.pixelization import DPPixelization

ROOT = Path(__file__).resolve().parents[2]
LAP = IdentityLaplace(epsilon=6.0, dim=128)
SEEDED = IdentityLaplace(epsilon=6.0, dim=128, seed=3)


def _charge(led: Ledger, subject: str, mech: Mechanism = LAP) -> None:
    g = mech.guarantee
    led.charge(
        subject,
        mechanism=type(mech).__name__,
        budget=g.budget,
        event=mech.event(),
        note=g.statement(),
        seeded=mech.seeded,
        is_dp=g.is_dp,
    )


def _settings(purpose: str, **extra: Any) -> dict[str, Any]:
    return {
        "dpface_version": "0.1.0",
        "mechanism": "identity-laplace",
        "epsilon": 6.0,
        "delta": 0.0,
        "budget": 12.0,
        "seeded": False,
        "purpose": purpose,
        "model_hashes": {"mobilefacenet": "ab" * 32},
        "channels": {
            "covered": ["identity (privatised embedding)"],
            "uncovered": ["face outline and pose"],
        },
        **extra,
    }


def _two_runs(path: Path) -> tuple[str, str]:
    """Run A: alice twice, then refused; bob; an unnamed face. Run B: carol, seeded."""
    with Ledger(path, default_budget=PureDP(12.0)) as led:
        led.record_run(_settings("handbook photos"))
        _charge(led, "alice")
        _charge(led, "alice")
        with pytest.raises(BudgetExceeded):
            _charge(led, "alice")
        _charge(led, "bob")
        unit = led.face_unit(led.unit_digest(b"photo-1"), (10, 10, 60, 60))
        _charge(led, unit)
        led.finish_run(
            {
                "images": 3,
                "faces": 4,
                "replaced": 3,
                "masked": 1,
                "refused": 1,
                "no_face": 1,
                "failed": 0,
            }
        )
        run_a = led.run_id
    with Ledger(path, default_budget=PureDP(12.0)) as led:
        led.record_run(_settings("press release", seeded=True))
        _charge(led, "carol", SEEDED)
        _charge(led, "bob")
        led.finish_run({"images": 2, "faces": 2, "replaced": 2})
        run_b = led.run_id
    return run_a, run_b


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("report") / "ledger.db"
    run_a, run_b = _two_runs(path)
    return path, run_a, run_b


def _report(path: Path, run_id: str | None = None) -> dict[str, Any]:
    with Ledger(path, create=False) as led:
        return build_report(led, run_id=run_id)


def test_run_report_lists_only_that_runs_subjects(
    two_runs: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, run_a, _ = two_runs
    rep = write_report(path, tmp_path / "a.html", tmp_path / "a.json", run_id=run_a)
    names = {s["subject"] for s in rep["subjects"]}
    assert {"alice", "bob"} <= names and "carol" not in names
    assert len(names) == 3  # alice, bob and the unnamed face
    assert {e["run_id"] for e in rep["events"]} == {run_a}
    assert rep["scope"]["run_id"] == run_a and rep["scope"]["run"] == 1
    assert [r["run_id"] for r in rep["runs"]] == [run_a]
    assert rep["signoff"]["purpose"] == ["handbook photos"]
    assert rep["dpface_version"] == __version__  # the dpface that wrote the report
    page = (tmp_path / "a.html").read_text()
    assert "carol" not in page and "press release" not in page
    assert (
        json.loads((tmp_path / "a.json").read_text())["schema"]
        == REPORT_SCHEMA
        == ("dpface.report/2")
    )
    bob = next(s for s in rep["subjects"] if s["subject"] == "bob")
    assert bob["releases"] == 1 and bob["releases_all_runs"] == 2  # bob spent in run B too
    assert bob["spent"]["epsilon"] == pytest.approx(12.0)  # the ledger's total, all runs
    whole = _report(path)
    assert {"alice", "bob", "carol"} <= {s["subject"] for s in whole["subjects"]}
    assert whole["totals"] == {"subjects": 4, "releases": 6, "refusals": 1}
    with Ledger(path, create=False) as led, pytest.raises(ValueError, match="no run"):
        build_report(led, run_id="not-a-run")


def test_refusals_counts_and_unnamed_units(two_runs: tuple[Path, str, str]) -> None:
    path, run_a, _ = two_runs
    rep = _report(path, run_a)
    assert rep["counts"]["refusals_in_ledger"] == 1 and rep["summary"]["refusals"] == 1
    assert rep["counts"]["replaced"] == 3 and rep["counts"]["no_face"] == 1
    alice = next(s for s in rep["subjects"] if s["subject"] == "alice")
    assert alice["refusals"] == 1 and alice["exhausted"] and alice["remaining_epsilon"] == 0
    assert [e["subject"] for e in rep["refusals"]] == ["alice"]
    assert rep["refusals"][0]["reason"] == (
        "ε used up: 12 of ε = 12 spent (sum of releases), this release needed 6 more"
    )
    assert rep["summary"]["unnamed"] == 1
    page = render_html(rep)
    assert "written out unchanged" in page  # photos without a detected face
    assert "keyed digest of the photo" in page and "not a name" in page
    assert "Refused releases" in page


def test_seeded_release_is_flagged(two_runs: tuple[Path, str, str]) -> None:
    path, run_a, run_b = two_runs
    rep = _report(path, run_b)
    assert rep["summary"]["seeded_releases"] == 1 and rep["summary"]["status"] == "bad"
    assert any("SEEDED" in a["text"] and a["level"] == "bad" for a in rep["summary"]["alerts"])
    carol = next(s for s in rep["subjects"] if s["subject"] == "carol")
    assert carol["seeded"]
    page = render_html(rep)
    assert 'class="alert bad"' in page and "NOT private" in page
    clean = _report(path, run_a)
    assert clean["summary"]["seeded_releases"] == 0 and "SEEDED" not in render_html(clean)


def test_broken_chain_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    run_a, _ = _two_runs(path)
    ok = _report(path)
    assert ok["ledger"]["verification"]["ok"] and ok["signoff"]["chain_ok"]
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE entries SET epsilon = 0.5 WHERE kind = 'release' AND subject = 'bob'")
        con.execute("UPDATE entries SET note = 'edited' WHERE subject = 'carol'")
    con.close()
    run_only = write_report(path, tmp_path / "a.html", tmp_path / "a.json", run_id=run_a)
    assert not run_only["ledger"]["verification"]["ok"]
    assert "carol" not in (tmp_path / "a.html").read_text()  # run B's subject stays unnamed
    assert "carol" not in (tmp_path / "a.json").read_text()
    assert any("'bob'" in p for p in run_only["ledger"]["verification"]["problems"])
    rep = write_report(path, tmp_path / "r.html")
    ver = rep["ledger"]["verification"]
    assert not ver["ok"] and ver["problems"]
    assert rep["summary"]["status"] == "bad" and not rep["signoff"]["chain_ok"]
    page = (tmp_path / "r.html").read_text()
    assert "hash chain BROKEN" in page and "do not sign" in page.lower()
    assert "does not match its hash" in page


def test_epsilon_in_plain_words(two_runs: tuple[Path, str, str]) -> None:
    six = plain_epsilon(6.0)
    assert six["factor"] == pytest.approx(math.exp(6)) and "≈ 403" in six["text"]
    assert six["strength"] == "weak" and "99.8 %" in six["text"]
    one = plain_epsilon(1.0, 1e-6)
    assert one["factor_text"] == "2.72" and "except with probability δ" in one["text"]
    assert one["strength"] == "strong"
    huge = plain_epsilon(5000.0)  # never overflows
    assert huge["factor"] is None and "10^2171" in huge["factor_text"]
    rep = _report(two_runs[0])
    assert [p["epsilon"] for p in rep["epsilon_plain"]["per_release"]] == [6.0]
    totals = {p["epsilon"]: p["subjects"] for p in rep["epsilon_plain"]["subject_totals"]}
    assert totals == {12.0: 2, 6.0: 2}  # alice and bob at 12; carol and the face at 6
    page = render_html(rep)
    assert "e<sup>6</sup> ≈ 403" in page and "e<sup>12</sup> ≈ 162,755" in page


def test_measured_rows_for_every_attacker(two_runs: tuple[Path, str, str]) -> None:
    rep = _report(two_runs[0])
    (match,) = rep["measured"]["matches"]
    assert match["mechanism"] == "IdentityLaplace" and match["exact"]
    assert match["measured_epsilon"] == 6.0
    by_name = {a["attacker"]: a for a in match["attackers"]}
    assert set(by_name) == {"dlib", "FaceRes", "MobileFace", "FaceRes-deep"}
    # the numbers are docs/results/table51.md's (dpface Laplace ε=6), via dpface/data/measured.json
    measured = json.loads((Path(__file__).parents[2] / "dpface/data/measured.json").read_text())
    row = next(
        r for r in measured["rows"] if r["mechanism"] == "IdentityLaplace" and r["epsilon"] == 6.0
    )
    assert by_name["dlib"]["psr"] == row["attackers"]["dlib"]["psr"]
    for a in by_name.values():
        assert a["reidentified"] == pytest.approx(1 - a["psr"])
    assert by_name["MobileFace"]["white_box"]
    prov = rep["measured"]["provenance"]
    assert prov["faces"] == 34 and prov["command"].startswith("dpface evaluate")
    assert "evaluation harness" in prov["harness"]
    assert rep["measured"]["averaging"]["rows"]  # alice and bob have 2 releases each
    page = render_html(rep)
    for name in ("dlib", "FaceRes", "MobileFace"):
        assert f"<td>{name}</td>" in page
    assert "Worst case measured:</b> MobileFace" in page


def test_measured_nearest_epsilon_and_unmeasured_mechanisms() -> None:
    lap3 = IdentityLaplace(epsilon=3.0, dim=128)
    gauss = IdentityGaussian(epsilon=1.0, delta=1e-6, dim=128)
    pix = DPPixelization(epsilon=8.0, block=16, m=16)
    with Ledger(":memory:", default_budget=ApproxDP(50.0, 1e-5)) as led:
        for i, mech in enumerate((lap3, gauss, pix)):
            _charge(led, f"p{i}", mech)
        rep = build_report(led)
    matches = {m["mechanism"]: m for m in rep["measured"]["matches"]}
    lap = matches["IdentityLaplace"]
    assert lap["measured_epsilon"] == 2.0 and not lap["exact"]  # log-nearest to 3
    assert "nearest measured ε is 2" in lap["note"]
    assert not matches["IdentityGaussian"]["measured"]
    assert "dpface evaluate" in matches["IdentityGaussian"]["note"]
    dp_pix = matches["DPPixelization"]
    assert dp_pix["exact"] and len(dp_pix["attackers"]) == 4
    assert not any(a["white_box"] for a in dp_pix["attackers"])  # DP-Pix has no encoder
    deltas = {p["epsilon"]: p["delta"] for p in rep["epsilon_plain"]["per_release"]}
    assert deltas == {1.0: 1e-6, 3.0: 0.0, 8.0: 0.0}
    assert "except with probability δ = 1 × 10<sup>-6</sup>" in render_html(rep)
    with Ledger(":memory:", default_budget=PureDP(50.0)) as led:
        with pytest.raises(BudgetExceeded):
            _charge(led, "dora", gauss)
        (refusal,) = build_report(led)["refusals"]
    assert refusal["reason"] == (
        "the budget is pure ε (δ = 0) and this mechanism needs δ = 1 × 10^-6"
    )


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "measured_from_table", ROOT / "scripts" / "measured_from_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measured_json_agrees_with_the_markdown_table() -> None:
    script = _script()
    table = (ROOT / "docs" / "results" / "table51.md").read_text(encoding="utf-8")
    committed = (ROOT / "dpface" / "data" / "measured.json").read_text(encoding="utf-8")
    assert script.render(table) == committed, "run scripts/measured_from_table.py"
    data = load_measured()
    # spot-check a row against the markdown text itself
    row = next(r for r in data["rows"] if r["method"] == "dpface Laplace ε=1")
    line = next(ln for ln in table.splitlines() if ln.startswith("| dpface Laplace ε=1 |"))
    dlib = row["attackers"]["dlib"]
    assert f"| {dlib['psr']:.3f} ± {dlib['ci95_half_width']:.3f} |" in line
    assert data["provenance"]["date"] in table.splitlines()[0]


def test_signoff_pins_the_ledger_head(two_runs: tuple[Path, str, str], tmp_path: Path) -> None:
    path = two_runs[0]
    rep = write_report(path, tmp_path / "r.html", tmp_path / "r.json")
    with Ledger(path, create=False) as led:
        ver = led.verify()
    assert rep["signoff"]["ledger_head"] == ver.head and len(ver.head) == 64
    assert rep["signoff"]["chain_length"] == ver.entries
    assert rep["signoff"]["fields"] == ["name", "role", "date", "signature"]
    page = (tmp_path / "r.html").read_text()
    assert ver.head in page and f"{ver.entries} entries" in page
    for label in ("Name", "Role", "Date", "Signature", "Purpose of the processing"):
        assert label in page
    assert "handbook photos; press release" in page
    headings = re.findall(r'<h2 id="([a-z]+)">(\d)\.', page)
    assert [h[0] for h in headings] == [
        "summary",
        "provenance",
        "counts",
        "guarantee",
        "epsilon",
        "measured",
        "subjects",
        "charts",
        "signoff",
    ]
    assert json.loads((tmp_path / "r.json").read_text())["signoff"] == rep["signoff"]


def test_a_file_that_is_not_a_ledger_is_refused_and_untouched(tmp_path: Path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_bytes(b"my notes, not a ledger\n")
    before = notes.read_bytes()
    with pytest.raises(NotALedgerError):
        write_report(notes, tmp_path / "r.html")
    assert notes.read_bytes() == before and not (tmp_path / "r.html").exists()
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.close()
    before = other.read_bytes()
    with pytest.raises(NotALedgerError):
        write_report(other, tmp_path / "r.html")
    assert other.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing.db", tmp_path / "r.html")
    assert not (tmp_path / "missing.db").exists()


def test_html_escapes_subject_names(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    with Ledger(tmp_path / "l.db", default_budget=PureDP(12.0)) as led:
        led.record_run(_settings('<img src=x onerror="alert(2)">'))
        _charge(led, evil)
    write_report(tmp_path / "l.db", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    svg = _chart(page, 0)
    assert "&lt;script&gt;" in svg and "<script>" not in svg  # matplotlib escapes too


def _chart(page: str, index: int) -> str:
    blobs = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    return base64.b64decode(blobs[index]).decode("utf-8")


def test_five_hundred_subjects_render_fast_and_legibly() -> None:
    with Ledger(":memory:", default_budget=PureDP(30.0)) as led:
        led.record_run(_settings("large batch"))
        for i in range(500):
            _charge(led, f"person-{i:03d}")
            if i % 50 == 0:  # a few spend more, so the chart has an order
                _charge(led, f"person-{i:03d}")
        led.finish_run({"images": 500, "faces": 510, "replaced": 510})
        start = time.perf_counter()
        rep = build_report(led)
        page = render_html(rep)
        elapsed = time.perf_counter() - start
    assert elapsed < 8.0, f"500 subjects took {elapsed:.1f} s"
    assert len(rep["subjects"]) == 500 and page.count("person-") >= 500
    assert f"The {CHART_TOP_N} of 500 people with the largest share" in page
    bars = _chart(page, 0)
    labels = set(re.findall(r"person-\d{3}", bars))
    assert len(labels) == CHART_TOP_N  # top N only, so each label stays readable
    assert {f"person-{i:03d}" for i in range(0, 500, 50)} <= labels  # the biggest spenders
    height = float(re.search(r'height="([0-9.]+)pt"', bars).group(1))  # type: ignore[union-attr]
    assert height / CHART_TOP_N >= 12  # at least 12 pt per bar: the labels do not overlap
    timeline = _chart(page, 1)
    assert "person-000" in timeline
