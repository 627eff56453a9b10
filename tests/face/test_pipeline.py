"""The anonymiser end to end on real sample photos: faces, ledger, receipts, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import dpface
from dpface.cli import app
from dpface.ledger import Ledger
from dpface.models import store
from dpface.pipeline import RECEIPT_SCHEMA, Anonymizer
from mechanisms.budgets import PureDP
from mechanisms.pixelization import DPPixelization


@pytest.fixture(scope="module")
def group_photo() -> Path:
    return store.path("samples/face-api-sample1.jpg")


@pytest.fixture(scope="module")
def single_photo() -> Path:
    return store.path("samples/fr-obama2.jpg")  # one face, nothing else the detector doubts


def _pix(ledger: Ledger) -> Anonymizer:
    return Anonymizer(mechanism=DPPixelization(epsilon=1.0, block=16, m=16), ledger=ledger)


def test_dp_pix_covers_every_face_and_nothing_else(tmp_path: Path, group_photo: Path) -> None:
    from dpface.models.images import load_rgb

    led = Ledger(tmp_path / "l.db", default_budget=PureDP(5.0))
    res = _pix(led).anonymize(group_photo)
    assert res.ok and res.image is not None
    assert len(res.faces) == 3 and all(f.status == "pixelized" for f in res.faces)
    original = load_rgb(group_photo)
    changed = np.any(res.image != original, axis=2)
    inside = np.zeros_like(changed)
    for f in res.faces:
        x0, y0, x1, y1 = f.box
        inside[y0:y1, x0:x1] = True
    assert not changed[~inside].any()  # outside the face regions: untouched
    assert changed[inside].mean() > 0.5
    # one ledger event per face, each its own (unlinked) privacy unit
    assert len(led.events()) == 3
    assert len({f.subject for f in res.faces}) == 3
    r = res.receipt
    assert r["schema"] == RECEIPT_SCHEMA and r["mechanism"]["budget_per_release"] == "1-DP"
    assert r["dpface_version"] == dpface.__version__  # the package's one version constant
    assert "CSPRNG" in r["mechanism"]["randomness"]
    assert all(face["ledger_event"] is not None for face in r["faces"])


def test_budget_refusal_masks_the_face_and_draws_no_noise(
    tmp_path: Path, single_photo: Path
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(1.5))
    anon = _pix(led)
    first = anon.anonymize(single_photo, subject="obama")
    assert [f.status for f in first.faces] == ["pixelized"]
    second = anon.anonymize(single_photo, subject="obama")
    face = second.faces[0]
    assert face.status == "masked" and "budget refused" in (face.reason or "")
    assert "left" in (face.reason or "")
    x0, y0, x1, y1 = face.box
    assert second.image is not None and np.all(second.image[y0:y1, x0:x1] == 128)
    assert len(led.events("obama")) == 1  # the refused release was not recorded


def test_subject_on_a_group_photo_is_refused_with_advice(group_photo: Path) -> None:
    res = _pix(Ledger(":memory:", default_budget=PureDP(5.0))).anonymize(group_photo, subject="x")
    assert not res.ok and "subjects=" in (res.error or "")


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00trunc"])
def test_bad_files_give_a_per_image_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    res = _pix(Ledger(":memory:", default_budget=PureDP(5.0))).anonymize(bad)
    assert not res.ok and res.image is None and res.error
    assert res.receipt["error"] == res.error
    assert res.receipt["dpface_version"] == dpface.__version__


def test_photo_without_faces_is_returned_unchanged(tmp_path: Path) -> None:
    img = np.full((120, 160, 3), 200, dtype=np.uint8)
    res = _pix(Ledger(":memory:", default_budget=PureDP(5.0))).anonymize(img)
    assert res.ok and res.faces == [] and np.array_equal(res.image, img)
    assert res.receipt["detection_note"]


def test_identity_mechanism_requires_a_matching_generator() -> None:
    from mechanisms.identity import IdentityLaplace

    with pytest.raises(ValueError, match="generator"):
        Anonymizer(mechanism=IdentityLaplace(epsilon=6, dim=256))
    with pytest.raises(TypeError):
        Anonymizer(mechanism=object())  # type: ignore[arg-type]


def test_cli_end_to_end_with_bad_inputs_listed(tmp_path: Path, single_photo: Path) -> None:
    bad = tmp_path / "in" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"garbage")
    (tmp_path / "in" / "notes.txt").write_text("hello")
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "in" / "anim.gif")  # a format we do not take
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "anonymize",
            str(single_photo),
            str(tmp_path / "in"),
            str(tmp_path / "missing"),
            "-o",
            str(out),
            "-m",
            "dp-pix",
            "--epsilon",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["inputs"] == 2 and summary["images"] == 1 and summary["pixelized"] == 1
    reasons = {Path(p["input"]).name: p["reason"] for p in summary["problems"]}
    assert set(reasons) == {"broken.jpg", "notes.txt", "missing", "anim.gif"}
    assert "unsupported file type '.gif'" in reasons["anim.gif"] and "no such" in reasons["missing"]
    assert "could not read" in reasons["broken.jpg"]
    assert (out / "fr-obama2.png").exists() and (out / "fr-obama2.receipt.json").exists()
    assert json.loads((out / "in" / "broken.receipt.json").read_text())["error"]
    assert (out / "report.html").exists()
    assert not Image.open(out / "fr-obama2.png").info.get("exif")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--epsilon", "0"], "epsilon"),
        (["--epsilon", "nan"], "epsilon"),
        (["-m", "gaussian-blur"], "gaussian-blur"),
        (["--delta", "2"], "delta"),
        (["--composition", "sum"], "composition"),
        (["--pseudonym", "sometimes"], "pseudonym"),
    ],
)
def test_cli_whole_run_errors_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    res = CliRunner().invoke(app, ["anonymize", str(tmp_path), "-o", str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and needle in res.output


def test_cli_no_images_exit_2(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no image" in res.output


def test_a_killed_batch_leaves_only_complete_outputs_and_its_charges(tmp_path: Path) -> None:
    """SIGKILL mid-batch: every visible output decodes, every receipt's event is in the ledger,
    and the ledger holds at least one charge per face written (charge comes before noise)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    from dpface.models.store import assets_dir

    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "dpface.cli",
        "anonymize",
        str(assets_dir() / "samples"),
        "-o",
        str(out),
        "-m",
        "dp-pix",
        "--epsilon",
        "1",
        "--ledger",
        str(tmp_path / "l.db"),
    ]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob("*.receipt.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    receipts = sorted(out.glob("*.receipt.json"))
    assert 3 <= len(receipts) < 16  # killed mid-batch
    pngs = [p for p in out.glob("*.png") if not p.name.startswith(".")]
    for p in pngs:
        with Image.open(p) as im:
            im.load()  # raises on a truncated file
    led = Ledger(tmp_path / "l.db", create=False)
    ids = {e["id"] for e in led.events()}
    faces = [f for r in receipts for f in json.loads(r.read_text())["faces"]]
    assert faces and {f["ledger_event"] for f in faces} <= ids
    assert len(ids) >= len(faces)
