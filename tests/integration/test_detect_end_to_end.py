"""Recall as the product delivers it: every face in a picture is protected by ``Anonymizer``.

Issue 15's acceptance tests, through the default detector and the default mechanism
(IdentityLaplace with the surrogate generator): a large composed picture with real faces at
24-160 px, photos stored on their side or upside down, a face too small for the generator
(DP fallback, charged), and that nothing outside the faces changes. The recall numbers
themselves are measured by ``scripts/bench_recall.py`` (docs/results/recall.md), not here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dpface.detect import detect_array
from dpface.generators.surrogate import SurrogateGenerator
from dpface.ledger import Ledger
from dpface.models import store
from dpface.models.images import load_rgb
from dpface.pipeline import AnonymizationResult, Anonymizer
from mechanisms.budgets import PureDP
from mechanisms.identity import IdentityLaplace

SIZES = (24, 32, 48, 64, 96, 128, 160)
SOURCES = ("fr-obama.jpg", "fr-biden.jpg", "fr-obama2.jpg")


def _anonymizer(gen: SurrogateGenerator, ledger: Ledger) -> Anonymizer:
    mech = IdentityLaplace(epsilon=6.0, dim=gen.identity_dim)
    return Anonymizer(mechanism=mech, generator=gen, ledger=ledger)


def _crops() -> list[tuple[np.ndarray, tuple[float, float, float, float]]]:
    """(crop with context, face box inside the crop) for the most confident face of each
    source photo: the face with 60 % of its width of surroundings on every side."""
    out = []
    for name in SOURCES:
        img = load_rgb(store.path(f"samples/{name}"))
        face = max(detect_array(img).faces, key=lambda f: f.score)
        x0, y0, x1, y1 = face.box
        m = 0.6 * (x1 - x0)
        cx0, cy0 = max(0, int(x0 - m)), max(0, int(y0 - m))
        cx1, cy1 = min(img.shape[1], int(x1 + m)), min(img.shape[0], int(y1 + m))
        out.append((img[cy0:cy1, cx0:cx1].copy(), (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0)))
    return out


def _composed() -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A 3000x2000 picture (smooth background) with two faces at each of SIZES."""
    rng = np.random.default_rng(20261207)
    h, w = 2000, 3000
    yy, xx = np.mgrid[0:h, 0:w]
    canvas = np.stack([90 + 60 * xx / w, 110 + 50 * yy / h, 140 - 40 * xx / w], axis=-1).astype(
        np.uint8
    )
    crops = _crops()
    truths = []
    slots = [(x, y) for y in range(80, h - 400, 420) for x in range(80, w - 400, 420)]
    order = rng.permutation(len(slots))
    k = 0
    for size in SIZES:
        for _ in range(2):
            crop, (fx0, fy0, fx1, fy1) = crops[k % len(crops)]
            s = size / (fx1 - fx0)
            small = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            x, y = slots[order[k]]
            ph, pw = small.shape[:2]
            canvas[y : y + ph, x : x + pw] = small
            truths.append((x + fx0 * s, y + fy0 * s, x + fx1 * s, y + fy1 * s))
            k += 1
    return canvas, truths


def _covered(truth: tuple[float, ...], box: tuple[int, ...]) -> float:
    """The share of the true face box inside a protected region."""
    ix = max(0.0, min(truth[2], box[2]) - max(truth[0], box[0]))
    iy = max(0.0, min(truth[3], box[3]) - max(truth[1], box[1]))
    return ix * iy / ((truth[2] - truth[0]) * (truth[3] - truth[1]))


def _assert_every_face_protected(
    res: AnonymizationResult, before: np.ndarray, truths: list[tuple[float, ...]]
) -> None:
    assert res.ok and res.image is not None
    for truth in truths:
        cover = [(f, _covered(truth, f.box)) for f in res.faces]
        best, share = max(cover, key=lambda c: c[1])
        assert share >= 0.7, f"face at {truth} not protected (best cover {share:.2f})"
        assert best.status in ("replaced", "pixelized"), best
        assert best.ledger_event is not None or best.identity == "reused pseudonym"
        x0, y0, x1, y1 = (round(v) for v in truth)
        diff = np.abs(res.image[y0:y1, x0:x1].astype(int) - before[y0:y1, x0:x1]).mean()
        assert diff > 3.0, f"face at {truth} barely changed ({diff:.1f})"


def test_a_large_picture_has_every_face_from_24_to_160_px_protected(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    canvas, truths = _composed()
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    res = _anonymizer(generator, led).anonymize(canvas, name="composed.png")
    _assert_every_face_protected(res, canvas, truths)
    # faces big enough for the generator were replaced by it, not merely pixelated
    for truth in truths:
        if truth[2] - truth[0] >= 64:
            best = max(res.faces, key=lambda f: _covered(truth, f.box))
            assert best.status == "replaced" and best.protection == "generator"
    # nothing outside the protected regions changed
    assert res.image is not None
    changed = np.any(res.image != canvas, axis=2)
    inside = np.zeros_like(changed)
    for f in res.faces:
        inside[f.box[1] : f.box[3], f.box[0] : f.box[2]] = True
    assert not changed[~inside].any()
    assert res.receipt["detection"]["min_face_px"] <= 24


@pytest.mark.parametrize("turns", [1, 2])
def test_a_photo_stored_turned_has_its_face_replaced(
    tmp_path: Path, generator: SurrogateGenerator, turns: int
) -> None:
    """90° (on its side) and 180° (upside down), no EXIF to say so."""
    photo = np.ascontiguousarray(np.rot90(load_rgb(store.path("samples/fr-obama.jpg")), turns))
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    res = _anonymizer(generator, led).anonymize(photo, name="turned.png", subject="obama")
    named = [f for f in res.faces if f.subject == "obama"]
    assert len(named) == 1 and named[0].status == "replaced"
    assert named[0].protection == "generator" and named[0].ledger_event is not None
    assert len(led.events("obama")) == 1


def _small_face_canvas() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A grey 600×400 picture with one real face 22 px wide: found, but too small for
    reliable landmarks; and the face's true box."""
    crop, (fx0, fy0, fx1, fy1) = _crops()[0]
    s = 22 / (fx1 - fx0)
    small = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    canvas = np.full((400, 600, 3), 120, np.uint8)
    canvas[100 : 100 + small.shape[0], 200 : 200 + small.shape[1]] = small
    return canvas, (200 + fx0 * s, 100 + fy0 * s, 200 + fx1 * s, 100 + fy1 * s)


def test_a_face_too_small_for_the_generator_gets_the_charged_dp_fallback(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    canvas, truth = _small_face_canvas()
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    res = _anonymizer(generator, led).anonymize(canvas, name="small.png")
    _assert_every_face_protected(res, canvas, [truth])
    face = max(res.faces, key=lambda f: _covered(truth, f.box))
    assert face.status == "pixelized" and face.protection == "dp-fallback"
    assert face.ledger_event is not None
    assert any(e["id"] == face.ledger_event for e in led.events(face.subject))
    assert res.receipt["faces"][face.index]["channels"]["notes"][0].startswith("DP fallback")


def test_a_seeded_run_reproduces_its_fallback_regions_too(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    """Seeded runs are for experiments (and labelled NOT private): the DP fallback of an unsure
    detection draws from the same seeded stream, so the whole output repeats."""
    photo, _truth = _small_face_canvas()  # its face gets the DP fallback
    outs = []
    for k in range(2):
        mech = IdentityLaplace(epsilon=6.0, dim=generator.identity_dim, seed=5)
        led = Ledger(tmp_path / f"l{k}.db", default_budget=PureDP(30.0))
        res = Anonymizer(mechanism=mech, generator=generator, ledger=led).anonymize(photo)
        assert any(f.protection == "dp-fallback" for f in res.faces)
        assert res.receipt["seeded"] is True
        outs.append(res.image)
    assert outs[0] is not None and np.array_equal(outs[0], outs[1])
