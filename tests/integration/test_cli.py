"""The dpface command line: exit codes, options checked before any work, safe outputs, the
ledger commands, and the demo. Runs use ``-m dp-pix`` on one or two small sample photos
(the mechanism does not matter here) and a ledger in ``tmp_path``."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpface.cli import MECHANISMS_DEMO_SCHEMA, app, main
from dpface.config import AnonymizeConfig
from dpface.ledger import Ledger
from dpface.models.store import assets_dir

runner = CliRunner()
SAMPLES = assets_dir() / "samples"
SMALL = ("skimage-astronaut.png", "fr-obama2.jpg")  # one face each, quick to detect


def _flat(text: str) -> str:
    """CLI output without rich's panel borders and line wrapping."""
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in SMALL:
        shutil.copy(SAMPLES / name, folder / name)
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------- mechanisms-demo
def test_mechanisms_demo_writes_receipt_and_releases(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["mechanisms-demo", "--epsilon", "2", "--people", "50", "-o", str(tmp_path), "--seed", "3"],
    )
    assert result.exit_code == 0, result.output
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["schema"] == MECHANISMS_DEMO_SCHEMA
    assert receipt["seeded"] is True
    names = [r["mechanism"] for r in receipt["releases"]]
    assert names == ["laplace", "gaussian", "exponential"]
    assert receipt["releases"][0]["budget"] == "2-DP"
    assert "seeded" in receipt["releases"][0]["randomness"]
    assert receipt["per_subject_spent"]["total"].startswith("(6")
    assert (tmp_path / "releases.npz").exists()
    assert "SEEDED" in result.output


def test_mechanisms_demo_without_seed_says_csprng(tmp_path: Path) -> None:
    result = runner.invoke(app, ["mechanisms-demo", "--people", "5", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["seeded"] is False
    assert all("CSPRNG" in r["randomness"] for r in receipt["releases"])


def test_mechanisms_demo_refuses_bad_budgets(tmp_path: Path) -> None:
    for bad in ["0", "-1", "nan", "inf"]:
        result = runner.invoke(app, ["mechanisms-demo", "--epsilon", bad, "-o", str(tmp_path)])
        assert result.exit_code == 2
        assert "epsilon" in result.output


# ---------------------------------------------------------------------- the main job
def test_main_job_anonymises_every_bundled_sample(tmp_path: Path) -> None:
    """``./dev run``'s command, with the generator-free mechanism to keep the suite fast."""
    samples = sorted(SAMPLES.iterdir())
    ledger = tmp_path / "demo-ledger.db"
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["demo", "-o", str(out), "-m", "dp-pix", "--ledger", str(ledger), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["inputs"] == summary["images"] == len(samples) == 16
    assert summary["faces"] == summary["pixelized"] >= 30 and summary["masked"] == 0
    assert summary["problems"] == [] and summary["seeded"] is False
    assert summary["ledger"] == str(ledger) and ledger.is_file()
    assert set(summary["stage_seconds"]) >= {"detect", "charge", "privatise", "write"}
    for s in samples:
        assert (out / s.name).with_suffix(".png").is_file()
        receipt = json.loads((out / s.name).with_suffix(".receipt.json").read_text())
        assert receipt["schema"].startswith("dpface.receipt/") and receipt["faces"]
        assert receipt["output"] == s.with_suffix(".png").name
    assert (out / "report.html").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["totals"]["releases"] >= 30
    assert not (out / "ledger.db").exists()  # the ledger outlives output folders


def test_head_protection_from_the_command_line_is_charged_and_in_every_receipt(
    photos: Path, tmp_path: Path
) -> None:
    ledger, out = tmp_path / "l.db", tmp_path / "out"
    res = runner.invoke(
        app,
        [
            *("anonymize", str(photos), "-o", str(out), "--ledger", str(ledger)),
            *("--head", "dp-pix", "--head-epsilon", "2", "--workers", "1", "--json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["problems"] == []
    for name in SMALL:
        receipt = json.loads((out / name).with_suffix(".receipt.json").read_text())
        assert receipt["head"]["mode"] == "dp-pix" and receipt["head"]["epsilon"] == 2.0
        (face,) = receipt["faces"]
        assert face["head"]["protection"] == "dp-pix"
        assert face["spent"]["epsilon"] == 8.0  # the identity release and the head release
        assert face["remaining_epsilon"] == 32.0  # default budget: 5 photos at 6 + 2
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["releases"] == 2 * len(SMALL)


def test_the_demo_takes_the_head_options_through_the_same_checks(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["demo", "-o", str(tmp_path / "o"), "-m", "dp-pix", "--head", "mask", "--json"]
    )
    assert res.exit_code == 2 and "identity mechanism" in _flat(res.output), res.output
    assert not (tmp_path / "o").exists()


def test_the_summary_prints_the_ledger_path(
    photos: Path, tmp_path: Path, _private_default_ledger: Path
) -> None:
    res = runner.invoke(
        app, ["anonymize", str(photos / SMALL[0]), "-o", str(tmp_path / "o"), "-m", "dp-pix"]
    )
    assert res.exit_code == 0, res.output
    assert (
        f"Ledger (budgets persist here across runs and output folders): "
        f"{_private_default_ledger}" in res.output
    )
    assert _private_default_ledger.is_file()  # the default ledger is the per-user one


# ---------------------------------------------------------------------- options first
BAD_OPTIONS = [
    (["--detector", "foo"], "--detector"),
    (["--block", "0"], "--block"),
    (["--block", "-4"], "--block"),
    (["--block", "100000"], "--block"),
    (["--pixels", "0"], "--pixels"),
    (["--seed", "-1"], "--seed"),
    (["--epsilon", "1e-300"], "--epsilon"),
    (["--epsilon", "nan"], "--epsilon"),
    (["-m", "identity-vmf", "--epsilon", "1e300"], "--epsilon"),
    (["-m", "gaussian-blur"], "--mechanism"),
    (["--delta", "2"], "--delta"),
    (["--budget", "0"], "--budget"),
    (["--composition", "sum"], "--composition"),
    (["--pseudonym", "sometimes"], "--pseudonym"),
    (["--names", "secret"], "--names"),
    (["--max-megapixels", "0"], "--max-megapixels"),
    (["--subject", ""], "--subject"),
    (["--subject", "   "], "--subject"),
    (["--subjects", "no-such-map.csv"], "--subjects"),
    (["--subject", "ann", "--subjects", "SELF"], "--subjects"),
    (["--encoder", "nope"], "unknown encoder"),
    (["--encoder", "dlib"], "evaluation attacker"),
    (["--encoder", "arcface-onnx"], "--encoder-model"),
    (["--encoder-model", "x.onnx"], "only for --encoder arcface-onnx"),
    (["--swap-latent-map", "graph"], "needs --swap-model"),
    (["-m", "dp-pix", "--swap-model", "x.onnx"], "identity mechanism"),
    (["--head", "blur"], "--head"),
    (["-m", "dp-pix", "--head", "mask"], "identity mechanism"),
    (["--head-epsilon", "2"], "give --head dp-pix"),
    (["--head", "dp-pix", "--head-epsilon", "0"], "--head-epsilon"),
    (["--head", "dp-pix", "--head-epsilon", "2", "--budget", "7"], "--head-epsilon 2"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_OPTIONS, ids=lambda v: str(v))
def test_a_bad_option_is_exit_2_naming_it_and_charges_nothing(
    photos: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    smap = tmp_path / "map.csv"
    smap.write_text("file,subject\nskimage-astronaut.png,ann\n")
    args = [str(smap) if a == "SELF" else a for a in args]
    ledger, out = tmp_path / "l.db", tmp_path / "out"
    res = runner.invoke(
        app, ["anonymize", str(photos), "-o", str(out), "--ledger", str(ledger), *args]
    )
    assert res.exit_code == 2, (args, res.output)
    assert needle in _flat(res.output), (args, res.output)
    assert "Traceback" not in res.output
    assert not ledger.exists() and not out.exists()


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_an_output_folder_overlapping_the_input_is_exit_2_and_inputs_unchanged(
    photos: Path, tmp_path: Path, where: str
) -> None:
    shutil.copy(SAMPLES / SMALL[1], photos / "fr-obama2.png")  # a.jpg's output would be a.png
    before = _snapshot(tmp_path)
    out = {"same": photos, "inside": photos / "anon", "containing": tmp_path}[where]
    res = runner.invoke(
        app,
        [
            "anonymize",
            str(photos),
            "-o",
            str(out),
            "-m",
            "dp-pix",
            "--ledger",
            str(tmp_path / "l.db"),
        ],
    )
    assert res.exit_code == 2 and "output folder" in _flat(res.output), res.output
    assert _snapshot(tmp_path) == before


def test_no_images_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    res = runner.invoke(app, ["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no image files" in res.output and "notes.txt" in res.output
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_not_a_ledger_is_exit_2_and_untouched(photos: Path, tmp_path: Path) -> None:
    fake = tmp_path / "notes.db"
    fake.write_bytes(b"my notes, not a ledger\n" * 10)
    res = runner.invoke(
        app,
        [
            "anonymize",
            str(photos),
            "-o",
            str(tmp_path / "o"),
            "-m",
            "dp-pix",
            "--ledger",
            str(fake),
        ],
    )
    assert res.exit_code == 2 and "ledger" in res.output
    assert fake.read_bytes() == b"my notes, not a ledger\n" * 10


# ---------------------------------------------------------------------- outputs
def test_same_names_never_share_an_output_or_a_receipt(tmp_path: Path) -> None:
    """x.jpg + x.png, and a/x.png + b/x.png: four inputs, four outputs, four receipts."""
    src = tmp_path / "in"
    for sub in ("a", "b"):
        (src / sub).mkdir(parents=True)
        shutil.copy(SAMPLES / "insightface-Tom_Hanks_54745.png", src / sub / "x.png")
    shutil.copy(SAMPLES / SMALL[1], src / "x.jpg")
    shutil.copy(SAMPLES / SMALL[0], src / "x.png")
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "anonymize",
            str(src),
            "-o",
            str(out),
            "-m",
            "dp-pix",
            "--json",
            "--ledger",
            str(tmp_path / "l.db"),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["images"] == 4 and summary["pixelized"] == 4
    written = sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and not p.name.startswith("report.") and ".dpface-job" not in p.parts
    )
    assert written == [
        "a/x.png",
        "a/x.receipt.json",
        "b/x.png",
        "b/x.receipt.json",
        "x.jpg.png",
        "x.jpg.receipt.json",
        "x.png.png",
        "x.png.receipt.json",
    ]
    sources = {
        json.loads((out / n).read_text())["source"] for n in written if n.endswith(".receipt.json")
    }
    assert sources == {"a/x.png", "b/x.png", "x.jpg", "x.png"}
    with Ledger(tmp_path / "l.db", create=False) as led:
        assert len(led.events()) == 4  # four photos charged, four written


def test_an_unwritable_output_is_one_problem_and_exit_0(photos: Path, tmp_path: Path) -> None:
    (photos / "sub").mkdir()
    shutil.copy(SAMPLES / SMALL[0], photos / "sub" / "y.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the output subfolder must go")
    res = runner.invoke(
        app,
        [
            "anonymize",
            str(photos / "sub"),
            str(photos / SMALL[1]),
            "-o",
            str(out),
            "-m",
            "dp-pix",
            "--json",
            "--ledger",
            str(tmp_path / "l.db"),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["images"] == 1 and summary["failed"] == 1
    assert any("cannot be written" in p["reason"] for p in summary["problems"])
    assert (out / "fr-obama2.png").is_file()


def test_a_too_large_image_is_a_per_image_problem(photos: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "anonymize",
            str(photos),
            "-o",
            str(tmp_path / "o"),
            "-m",
            "dp-pix",
            "--max-megapixels",
            "0.5",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["images"] == 1 and summary["failed"] == 1  # 626×1200 > 0.5 MP > 512×512
    (problem,) = summary["problems"]
    assert problem["input"].endswith("fr-obama2.jpg") and "megapixels" in problem["reason"]


# ---------------------------------------------------------------------- exit 3
def test_an_internal_error_is_exit_3_with_one_line(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dpface.batch

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated defect\nsecond line")

    monkeypatch.setattr(dpface.batch, "run", broken)
    args = ["anonymize", str(photos), "-o", str(tmp_path / "o"), "-m", "dp-pix"]
    res = runner.invoke(app, args)
    assert res.exit_code == 3, res.output
    assert "this is a bug; please report it" in res.output and "simulated defect" in res.output
    assert "Traceback" not in res.output and "second line" not in res.output
    monkeypatch.setenv("DPFACE_DEBUG", "1")
    debug = runner.invoke(app, args)
    assert debug.exit_code == 3 and "Traceback" in debug.output


def test_main_maps_exit_codes(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["dpface", "anonymize", str(photos), "--block", "0"])
    with pytest.raises(SystemExit) as bad:
        main()
    assert bad.value.code == 2
    monkeypatch.setattr(sys, "argv", ["dpface", "version"])
    with pytest.raises(SystemExit) as ok:
        main()
    assert ok.value.code in (0, None)


def test_the_executable_module_exits_2_without_a_traceback(photos: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpface.cli",
            "anonymize",
            str(photos),
            "-o",
            str(tmp_path / "o"),
            "--ledger",
            str(tmp_path / "l.db"),
            "--seed",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--seed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "l.db").exists()


# ---------------------------------------------------------------------- ledger & report
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A ledger with two runs: alice in the first, bob in the second."""
    base = tmp_path_factory.mktemp("ledger")
    photo = base / SMALL[0]
    shutil.copy(SAMPLES / SMALL[0], photo)
    config = AnonymizeConfig(mechanism="dp-pix", epsilon=2.0, ledger=base / "l.db")
    ids = [
        config.run([photo], base / f"o{i}", subject=who).run_id
        for i, who in enumerate(("alice", "bob"))
    ]
    return base / "l.db", ids


def test_report_of_one_run_and_of_the_whole_ledger(
    two_runs: tuple[Path, list[str]], tmp_path: Path
) -> None:
    ledger, (first, _) = two_runs
    whole = runner.invoke(
        app,
        [
            "report",
            str(ledger),
            "-o",
            str(tmp_path / "all.html"),
            "--json",
            str(tmp_path / "all.json"),
        ],
    )
    assert whole.exit_code == 0, whole.output
    assert "2 subject(s)" in whole.output
    one = runner.invoke(
        app,
        [
            "report",
            str(ledger),
            "-o",
            str(tmp_path / "one.html"),
            "--json",
            str(tmp_path / "one.json"),
            "--run",
            first,
        ],
    )
    assert one.exit_code == 0, one.output
    text = (tmp_path / "one.json").read_text()
    assert "alice" in text and "bob" not in text
    unknown = runner.invoke(app, ["report", str(ledger), "--run", "no-such-run"])
    assert unknown.exit_code == 2 and "no run" in unknown.output


def test_report_refuses_missing_and_foreign_files_untouched(tmp_path: Path) -> None:
    missing = runner.invoke(
        app, ["report", str(tmp_path / "nope.db"), "-o", str(tmp_path / "r.html")]
    )
    assert missing.exit_code == 2 and "no ledger" in missing.output
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "r.html").exists()
    fake = tmp_path / "fake.db"
    fake.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    before = fake.read_bytes()
    foreign = runner.invoke(app, ["report", str(fake), "-o", str(tmp_path / "r.html")])
    assert foreign.exit_code == 2 and "ledger" in foreign.output
    assert fake.read_bytes() == before and not (tmp_path / "r.html").exists()


def test_ledger_show_verify_backup(two_runs: tuple[Path, list[str]], tmp_path: Path) -> None:
    ledger, ids = two_runs
    show = runner.invoke(app, ["ledger", "show", str(ledger), "--json"])
    assert show.exit_code == 0, show.output
    data = json.loads(show.stdout)
    assert {s["subject"] for s in data["subjects"]} == {"alice", "bob"}
    assert [r["run_id"] for r in data["runs"]] == ids
    one = runner.invoke(app, ["ledger", "show", str(ledger), "alice"])
    assert one.exit_code == 0 and "release" in one.output
    assert runner.invoke(app, ["ledger", "show", str(ledger), "carol"]).exit_code == 2
    ok = runner.invoke(app, ["ledger", "verify", str(ledger)])
    assert ok.exit_code == 0 and "ok" in ok.output
    copy = tmp_path / "copy.db"
    backup = runner.invoke(app, ["ledger", "backup", str(ledger), str(copy)])
    assert backup.exit_code == 0 and copy.is_file()
    again = runner.invoke(app, ["ledger", "backup", str(ledger), str(copy)])
    assert again.exit_code == 2 and "already exists" in again.output
    with Ledger(copy, create=False) as led:
        assert led.subjects() == ["alice", "bob"]


def test_ledger_verify_exit_1_on_a_tampered_chain(
    two_runs: tuple[Path, list[str]], tmp_path: Path
) -> None:
    ledger = tmp_path / "t.db"
    shutil.copy(two_runs[0], ledger)
    con = sqlite3.connect(ledger)
    con.execute("UPDATE entries SET epsilon=0.001 WHERE kind='release'")
    con.commit()
    con.close()
    res = runner.invoke(app, ["ledger", "verify", str(ledger)])
    assert res.exit_code == 1 and "NOT OK" in res.output and "does not match" in res.output
    missing = runner.invoke(app, ["ledger", "verify", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and not (tmp_path / "none.db").exists()


def test_ledger_set_budget_changes_on_purpose_never_below_spent(
    two_runs: tuple[Path, list[str]], tmp_path: Path
) -> None:
    ledger = tmp_path / "b.db"
    shutil.copy(two_runs[0], ledger)
    res = runner.invoke(
        app,
        [
            "ledger",
            "set-budget",
            str(ledger),
            "alice",
            "--epsilon",
            "50",
            "--reason",
            "consent renewed",
        ],
    )
    assert res.exit_code == 0, res.output
    with Ledger(ledger, create=False) as led:
        assert led.budget("alice").epsilon == 50.0
        notes = [e["note"] for e in led.events("alice", kinds=("budget",))]
        assert "consent renewed" in notes
    below = runner.invoke(app, ["ledger", "set-budget", str(ledger), "alice", "--epsilon", "1"])
    assert below.exit_code == 2 and "spent" in below.output
    bad = runner.invoke(app, ["ledger", "set-budget", str(ledger), "alice", "--epsilon", "-1"])
    assert bad.exit_code == 2


# ---------------------------------------------------------------------- other commands
def test_contact_sheet_command_writes_the_grid_and_refuses_bad_faces(tmp_path: Path) -> None:
    import cv2

    out = tmp_path / "sheet.png"
    res = runner.invoke(
        app, ["contact-sheet", "-o", str(out), "--faces", "21,26", "--epsilons", "inf,1"]
    )
    assert res.exit_code == 0, res.output
    sheet = cv2.imread(str(out))
    assert sheet.shape == (2 * 256, 3 * 256, 3)  # 2 faces × (input + 2 epsilons)
    # the outputs differ from the input tile (the face was replaced)
    assert float(abs(sheet[:, 256:512].astype(int) - sheet[:, :256]).mean()) > 3
    bad = runner.invoke(app, ["contact-sheet", "-o", str(tmp_path / "x.png"), "--faces", "99"])
    assert bad.exit_code == 2 and not (tmp_path / "x.png").exists()


def test_help_documents_the_exit_codes() -> None:
    res = runner.invoke(app, ["--help"])
    text = _flat(res.output)
    for words in (
        "0 the run completed",
        "1 an audit refuted",
        "2 unusable command line",
        "3 internal error",
    ):
        assert words in text, words


def test_link_charges_an_unnamed_face_to_the_enrolled_subject(photos: Path, tmp_path: Path) -> None:
    ledger, templates = tmp_path / "l.db", tmp_path / "templates.db"
    photo = photos / SMALL[0]
    base = [
        "anonymize",
        str(photo),
        "-m",
        "dp-pix",
        "--ledger",
        str(ledger),
        "--link",
        str(templates),
        "--json",
    ]
    named = runner.invoke(app, [*base, "-o", str(tmp_path / "o1"), "--subject", "Annabel-Q"])
    assert named.exit_code == 0, named.output
    unnamed = runner.invoke(app, [*base, "-o", str(tmp_path / "o2")])
    assert unnamed.exit_code == 0, unnamed.output
    with Ledger(ledger, create=False) as led:
        assert len(led.events("Annabel-Q")) == 2 and led.subjects() == ["Annabel-Q"]
    receipt = (tmp_path / "o2" / "skimage-astronaut.receipt.json").read_text()
    assert "Annabel" not in receipt  # a linked face's subject is not shown beside the output
    same = runner.invoke(
        app,
        [
            "anonymize",
            str(photo),
            "-m",
            "dp-pix",
            "--ledger",
            str(ledger),
            "--link",
            str(ledger),
            "-o",
            str(tmp_path / "o3"),
        ],
    )
    assert same.exit_code == 2 and "different file" in _flat(same.output)
