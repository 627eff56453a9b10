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


def test_main_job_anonymises_every_bundled_sample(tmp_path: Path) -> None:
    """``./dev run``'s command, with the generator-free mechanism to keep the suite fast."""
    from dpface.models.store import assets_dir

    samples = sorted((assets_dir() / "samples").iterdir())
    result = runner.invoke(app, ["demo", "-o", str(tmp_path), "-m", "dp-pix", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["inputs"] == summary["images"] == len(samples) == 16
    assert summary["faces"] == summary["pixelized"] >= 30 and summary["masked"] == 0
    assert summary["problems"] == [] and summary["seeded"] is False
    assert set(summary["stage_seconds"]) >= {"detect", "charge", "privatise"}
    for s in samples:
        assert (tmp_path / s.name).with_suffix(".png").is_file()
        receipt = json.loads((tmp_path / s.name).with_suffix(".receipt.json").read_text())
        assert receipt["schema"] == "dpface.receipt/1" and receipt["faces"]
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["releases"] >= 30


def test_contact_sheet_command_writes_the_grid_and_refuses_bad_faces(tmp_path: Path) -> None:
    import cv2

    out = tmp_path / "sheet.png"
    res = runner.invoke(app, ["contact-sheet", "-o", str(out), "--faces", "21,26",
                              "--epsilons", "inf,1"])
    assert res.exit_code == 0, res.output
    sheet = cv2.imread(str(out))
    assert sheet.shape == (2 * 256, 3 * 256, 3)  # 2 faces × (input + 2 epsilons)
    # the outputs differ from the input tile (the face was replaced)
    assert float(abs(sheet[:, 256:512].astype(int) - sheet[:, :256]).mean()) > 3
    bad = runner.invoke(app, ["contact-sheet", "-o", str(tmp_path / "x.png"), "--faces", "99"])
    assert bad.exit_code == 2 and not (tmp_path / "x.png").exists()


def test_encoder_choices_that_cannot_work_are_usage_errors(tmp_path: Path) -> None:
    from dpface.models import store

    photo = str(store.path("samples/fr-obama.jpg"))
    cases = [
        (["--encoder", "arcface-onnx"], "--encoder-model"),
        (["--encoder", "arcface-onnx", "--encoder-model", str(tmp_path / "none.onnx")],
         "not found"),
        (["--encoder-model", str(tmp_path / "x.onnx")], "only for --encoder arcface-onnx"),
        (["--encoder", "dlib"], "evaluation attacker"),
        (["--encoder", "nope"], "unknown encoder"),
        (["--swap-latent-map", "graph"], "needs --swap-model"),
    ]
    for extra, why in cases:
        res = runner.invoke(app, ["anonymize", photo, "-o", str(tmp_path / "o"), *extra])
        assert res.exit_code == 2, (extra, res.output)
        flat = " ".join(res.output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())
        assert why in flat, (extra, res.output)
    assert not (tmp_path / "o" / "fr-obama.png").exists()
