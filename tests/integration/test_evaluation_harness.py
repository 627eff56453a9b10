"""Evaluation harness on real models and the bundled sample faces: the no-op scores as
unprotected, a black mask defeats detection, results are seeded and cached, and the CLI
writes its table and plots. (That the dpface rows are the product's own output is
tests/integration/test_evaluation_product_path.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpface.evaluation import anonymisers as A
from dpface.evaluation.aggregate import summarise
from dpface.evaluation.faces import EvalFace, sample_faces
from dpface.evaluation.runner import RunConfig, run_all, run_task
from dpface.ledger import Ledger
from mechanisms.budgets import PureDP

CFG = RunConfig(
    seed=11, draws=1, attackers=("dlib", "faceres", "mobileface"), averaging=(), parrot=False
)


@pytest.fixture(scope="module")
def faces() -> list[EvalFace]:
    fs = sample_faces()
    # two large frontal faces from different photos: Obama and Biden
    by_photo = {Path(f.source).name: f for f in fs}
    return [by_photo["fr-obama.jpg"], by_photo["fr-biden.jpg"]]


def _load(p: Path) -> dict[str, np.ndarray]:
    return dict(np.load(p))


def test_identity_transform_is_not_protected(faces: list[EvalFace], tmp_path: Path) -> None:
    files = run_task(A.original(), faces[:1], CFG, tmp_path)
    z = _load(files[faces[0].key])
    assert z["e_dlib"].shape == (1, 128)
    np.testing.assert_allclose(z["e_dlib"][0], z["i_dlib"], atol=1e-12)
    s = summarise(A.original(), faces[:1], files, CFG)["metrics"]
    assert s["psr_dlib"][0] == 0.0 and s["iddis_dlib"][0] == pytest.approx(0.0, abs=1e-9)
    assert s["ssim_face"][0] == 1.0 and s["detected_hog"][0] == 1.0
    assert s["emotion_agrees"][0] == 1.0 and s["nme"][0] == 0.0


def test_black_mask_is_not_detected_and_not_recognised(
    faces: list[EvalFace], tmp_path: Path
) -> None:
    mask = next(c for c in A.baselines() if c.name == "mask")
    for f in faces:
        z = _load(run_task(mask, [f], CFG, tmp_path)[f.key])
        assert z["s_found"][0] == 1.0  # the product found the face: the mask covers it
        assert z["s_detected_hog"][0] == 0.0
        assert z["s_detected_blazeface"][0] == 0.0
        assert np.linalg.norm(z["e_dlib"][0] - z["i_dlib"]) >= 0.6
        assert z["s_ssim_face"][0] < 0.6


def test_seeded_releases_are_deterministic_and_seeds_matter(
    faces: list[EvalFace], tmp_path: Path
) -> None:
    from dpface.evaluation.runner import release_seed, stream_seed

    cond = A.identity("identity-laplace", 2.0)
    f = faces[0]
    s11 = release_seed(11, cond, f, 0)
    assert s11 == stream_seed(11, cond.name, f.photo_key, "release 0")
    assert s11 != release_seed(12, cond, f, 0) and s11 != release_seed(11, cond, f, 1)
    with Ledger(tmp_path / "l.db", default_budget=PureDP(100.0)) as led:
        a = A.release_photo(cond, f.source, s11, led)
        b = A.release_photo(cond, f.source, s11, led)
        c = A.release_photo(cond, f.source, release_seed(12, cond, f, 0), led)
        assert [o.protection for o in a.faces] == ["generator"]
        np.testing.assert_array_equal(a.image, b.image)
        assert not np.array_equal(a.image, c.image)
        assert not np.array_equal(a.image, f.image)
        assert led.spent(led.subjects()[0]).epsilon == pytest.approx(6.0)  # 3 releases charged


def test_noise_baseline_is_seeded_and_acts_on_the_product_regions(faces: list[EvalFace]) -> None:
    noise = next(c for c in A.baselines() if c.name == "noise-49")
    f = faces[1]
    out1 = A.release_photo(noise, f.source, 3)
    out2 = A.release_photo(noise, f.source, 3)
    np.testing.assert_array_equal(out1.image, out2.image)
    regions = A.product_regions(f.source)  # Biden's face (and a small doubtful find)
    assert [o.region for o in out1.faces] == list(regions)
    face = A.outcome_of(out1.faces, f.box)
    assert face is not None
    outside = np.ones(f.image.shape[:2], bool)
    for x0, y0, x1, y1 in regions:
        outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out1.image[outside], f.image[outside])  # only the faces
    x0, y0, x1, y1 = face.region
    assert not np.array_equal(out1.image[y0:y1, x0:x1], f.image[y0:y1, x0:x1])


def test_resume_recomputes_nothing(faces: list[EvalFace], tmp_path: Path) -> None:
    conds = [A.original(), next(c for c in A.baselines() if c.name == "pixelate-16x16")]
    first, computed = run_all(conds, faces, CFG, tmp_path, workers=1)
    assert computed == 4 and len(first) == 4
    stamps = {k: p.stat().st_mtime_ns for k, p in first.items()}
    again, computed2 = run_all(conds, faces, CFG, tmp_path, workers=1)
    assert computed2 == 0 and again == first
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == stamps


def test_cli_smoke_on_a_folder(faces: list[EvalFace], tmp_path: Path) -> None:
    from dpface.cli import app

    folder = tmp_path / "photos"
    folder.mkdir()
    for f in faces:
        shutil.copy(f.source, folder / Path(f.source).name)
    out = tmp_path / "res"
    args = [
        "evaluate",
        str(folder),
        "--mechanisms",
        "mask,identity-laplace",
        "--epsilons",
        "2",
        "--draws",
        "1",
        "--averaging",
        "",
        "--seed",
        "5",
        "--workers",
        "1",
        "-o",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "seed 5" in res.output
    table = (out / "table51.md").read_text()
    assert "identities are unknown" in table
    assert "| Black mask |" in table and "dpface Laplace ε=2" in table
    for name in ("psr_vs_ssim.png", "psr_vs_epsilon.png", "table51.html", "summaries.json"):
        assert (out / name).stat().st_size > 0
    res2 = CliRunner().invoke(app, args)
    assert res2.exit_code == 0 and "0 task(s) computed, 4 reused" in res2.output


def test_cache_key_follows_the_product_code(
    faces: list[EvalFace], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed product (pipeline, detection, generator, mechanisms) must not reuse results
    cached for the old one; every row but the original reads it (baselines use its regions)."""
    from dpface.evaluation import runner

    product = [
        A.generator_inf(),
        A.identity("identity-laplace", 6.0),
        A.dp_pix(2.0),
        A.baselines()[0],
    ]
    before = {c.name: runner.task_key(c, faces[0], CFG) for c in [A.original(), *product]}
    monkeypatch.setattr(runner, "product_fingerprint", lambda: "changed")
    after = {c.name: runner.task_key(c, faces[0], CFG) for c in [A.original(), *product]}
    assert all(before[c.name] != after[c.name] for c in product)
    assert before["original"] == after["original"]


def test_exclude_own_keeps_the_photos_people_out_of_the_bank(
    faces: list[EvalFace], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--exclude-own: the Obama photo gets a generator without any synthetic identity an
    Obama photo contributed to, and its results are cached under their own key."""
    from dataclasses import replace

    from dpface.evaluation import runner

    obama = faces[0]
    labels = A.photo_labels([obama])
    assert "fr-obama.jpg#0" in labels and len(labels) >= 6  # every Obama photo
    gen = A.generator_excluding(labels)
    full = A.generator_excluding(frozenset())
    assert len(gen.bank) < len(full.bank)
    assert all(not labels.intersection(c) for c in gen.bank.contributors)
    cond = A.identity("identity-laplace", 6.0)
    ex = replace(CFG, exclude_own=True)
    assert runner.task_key(cond, obama, CFG) != runner.task_key(cond, obama, ex)
    base = A.baselines()[0]
    assert runner.task_key(base, obama, CFG) == runner.task_key(base, obama, ex)
    asked: list[frozenset[str]] = []

    def spy(lab: frozenset[str]) -> object:
        asked.append(lab)
        return gen

    monkeypatch.setattr(A, "generator_excluding", spy)
    with Ledger(tmp_path / "l.db", default_budget=PureDP(100.0)) as led:
        anon = A.product_anonymizer(cond, 3, led, exclude=labels)
        assert asked == [labels] and anon.generator is gen
        A.product_anonymizer(cond, 3, led)
    assert asked == [labels]  # without the option the product's own generator is used
