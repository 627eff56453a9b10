"""Head protection (``dpface.head``, ``Anonymizer(head=...)``) on real photos and models.

What must hold: the head box is released from the photo through DP-Pix and charged to the
face's unit (or painted grey); the generated face goes back on top through its own mask,
blended with the released head and never with the photo's pixels; nothing outside the head
box changes; a refusal masks; every face of the photo gets it; the receipt says what is now
covered; a resumed job republishes the same head without charging twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from dpface.generators.base import GeneratedFace, Generator
from dpface.generators.surrogate import SurrogateGenerator
from dpface.head import (
    AROUND_THE_FACE,
    FaceLayer,
    cell_block,
    head_box,
    head_channels,
    smooth_cells,
)
from dpface.ledger import Ledger
from dpface.models import store
from dpface.models.images import load_rgb
from dpface.pipeline import MASK_VALUE, Anonymizer
from mechanisms.budgets import PureDP
from mechanisms.identity import IdentityLaplace
from mechanisms.pixelization import DPPixelization

from .recording import RecordingGenerator

OBAMA = "samples/fr-obama.jpg"
GROUP = "samples/face-api-sample2.jpg"


@pytest.fixture()
def keeping(generator: SurrogateGenerator) -> RecordingGenerator:
    return RecordingGenerator(generator)


def _anon(gen: Generator, ledger: Ledger, **kw: Any) -> Anonymizer:
    mech = IdentityLaplace(epsilon=6.0, dim=gen.identity_dim)
    return Anonymizer(mechanism=mech, generator=gen, ledger=ledger, **kw)


def _outside_unchanged(before: np.ndarray, after: np.ndarray, boxes: list[list[int]]) -> bool:
    keep = np.ones(before.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in boxes:
        keep[y0:y1, x0:x1] = False
    return bool(np.array_equal(before[keep], after[keep]))


def _detail(img: np.ndarray) -> np.ndarray:
    """Per pixel: the absolute horizontal difference to the next pixel, summed over colour."""
    d = np.abs(np.diff(img.astype(np.int32), axis=1)).sum(axis=2)
    return np.asarray(d, dtype=np.float64)


def _alpha_canvas(shape: tuple[int, ...], results: list[GeneratedFace]) -> np.ndarray:
    """Where any generated face shows (alpha > 0), over the whole photo."""
    a = np.zeros(shape[:2], dtype=np.float32)
    for r in results:
        if r.region is not None and r.alpha is not None:
            x0, y0, x1, y1 = r.region
            a[y0:y1, x0:x1] = np.maximum(a[y0:y1, x0:x1], r.alpha)
    return a


# ---------------------------------------------------------------- geometry and composition
def test_the_head_box_is_a_lifted_square_clipped_to_the_photo() -> None:
    assert head_box((100, 100, 200, 200), (1000, 1000, 3)) == (70, 55, 230, 215)
    assert head_box((0, 10, 100, 110), (150, 90, 3)) == (0, 0, 90, 125)
    assert cell_block((0, 0, 160, 160), 8) == 20 and cell_block((0, 0, 10, 10), 8) == 4


def test_a_face_layer_blends_only_its_colours_and_the_canvas() -> None:
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    before = canvas.copy()
    alpha = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (8, 1))
    layer = rng.uniform(0, 255, (8, 10, 3)).astype(np.float32)
    FaceLayer((5, 4, 15, 12), alpha, layer).over(canvas)
    want = np.round(alpha[..., None] * layer + (1 - alpha[..., None]) * before[4:12, 5:15])
    assert np.array_equal(canvas[4:12, 5:15], want.astype(np.uint8))
    outside = np.ones((20, 30), dtype=bool)
    outside[4:12, 5:15] = False
    assert np.array_equal(canvas[outside], before[outside])


def test_smooth_cells_reads_only_the_cell_values() -> None:
    """Drawing a DP-Pix release smoothly is post-processing: it reads one pixel per cell (the
    cell's value), so it cannot bring back anything the release did not contain."""
    rng = np.random.default_rng(3)
    cells = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    flat = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[:30, :37]
    other = flat.copy()
    keep = np.zeros(flat.shape[:2], dtype=bool)
    keep[::8, ::8] = True
    other[~keep] = rng.integers(0, 256, (int((~keep).sum()), 3), dtype=np.uint8)
    assert np.array_equal(smooth_cells(flat, 8), smooth_cells(other, 8))
    out = smooth_cells(flat, 8).astype(np.int32)
    assert out.shape == flat.shape
    # at a cell's centre it is (within 1/16 of the step to the next cell) the cell's value
    assert np.array_equal(out[3, 3], cells[0, 0])
    assert np.abs(out[11, 11] - cells[1, 1].astype(np.int32)).max() <= 16
    assert not np.array_equal(out, flat)  # and not the mosaic


def test_the_receipt_channels_no_longer_call_the_head_raw(generator: SurrogateGenerator) -> None:
    channels = generator.channels(None).as_dict()
    assert any(any(a in c for a in AROUND_THE_FACE) for c in channels["uncovered"])
    out = head_channels(channels, (1, 2, 11, 12), "DP-Pix")
    assert not any(any(a in c for a in AROUND_THE_FACE) for c in out["uncovered"])
    assert "10x10 px at (1, 2)" in out["covered"][-1] and "DP-Pix" in out["covered"][-1]
    assert any("beyond the head box" in c for c in out["uncovered"])


# ---------------------------------------------------------------- the product path
def test_dp_pix_head_is_charged_released_from_the_photo_and_the_face_put_back(
    tmp_path: Path, keeping: RecordingGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon = _anon(keeping, led, head="dp-pix", head_epsilon=2.0)
    photo = load_rgb(store.path(OBAMA))
    res = anon.anonymize(photo, subject="obama")
    face = res.faces[0]
    assert face.status == "replaced" and face.head is not None
    assert face.head["protection"] == "dp-pix"
    events = led.events("obama")
    assert [(e["mechanism"], e["epsilon"]) for e in events] == [
        ("IdentityLaplace", 6.0),
        ("DPPixelization", 2.0),
    ]
    assert face.head["ledger_event"] == events[1]["id"]
    assert face.spent == {"epsilon": 8.0, "delta": 0.0} and face.remaining_epsilon == 22.0
    box = face.head["box"]
    assert res.image is not None and _outside_unchanged(photo, res.image, [box])
    # where no generated face shows, the head box is the released cells drawn smoothly: none
    # of the photo's detail (hair texture, edges) is left
    x0, y0, x1, y1 = box
    shows = _alpha_canvas(photo.shape, keeping.results)[y0:y1, x0:x1] > 0
    far = ~np.asarray(cv2.dilate(shows.astype(np.uint8), np.ones((5, 5), np.uint8)), dtype=bool)
    out_detail = _detail(res.image[y0:y1, x0:x1])[far[:, 1:]].mean()
    photo_detail = _detail(photo[y0:y1, x0:x1])[far[:, 1:]].mean()
    assert far.mean() > 0.4 and out_detail < 2.0 and out_detail < 0.3 * photo_detail, (
        out_detail,
        photo_detail,
    )
    assert not np.array_equal(res.image[y0:y1, x0:x1], photo[y0:y1, x0:x1])
    assert res.receipt["head"] == {
        "mode": "dp-pix",
        "box": "1.6 face widths, square",
        "epsilon": 2.0,
        "cells": 6,
        "m": 16,
    }
    covered = res.receipt["faces"][0]["channels"]["covered"][-1]
    assert covered.startswith("the head box") and "2-DP for any 16 pixel" in covered


def test_a_masked_head_shows_the_generated_face_over_grey_and_nothing_of_the_photo(
    tmp_path: Path, keeping: RecordingGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon = _anon(keeping, led, head="mask")
    photo = load_rgb(store.path(OBAMA))
    res = anon.anonymize(photo, subject="obama")
    face = res.faces[0]
    assert face.head is not None and face.head["protection"] == "mask"
    assert [e["mechanism"] for e in led.events("obama")] == ["IdentityLaplace"]  # head: free
    assert res.image is not None
    (gen,) = keeping.results
    assert gen.region is not None and gen.alpha is not None and gen.layer is not None
    x0, y0, x1, y1 = face.head["box"]
    shows = _alpha_canvas(photo.shape, [gen]) > 0
    head = np.zeros(photo.shape[:2], dtype=bool)
    head[y0:y1, x0:x1] = True
    assert np.all(res.image[head & ~shows] == MASK_VALUE)
    # where the face shows, it blends with the grey only: the photo's pixels never come back
    gx0, gy0, gx1, gy1 = gen.region
    a = gen.alpha[..., None].astype(np.float32)
    want = np.clip(np.round(a * gen.layer + (1 - a) * MASK_VALUE), 0, 255)
    assert np.array_equal(res.image[gy0:gy1, gx0:gx1], want.astype(np.uint8))
    assert _outside_unchanged(photo, res.image, [face.head["box"]])
    assert "everything outside the faces' head boxes" in res.receipt["not_protected"]


def test_every_face_of_a_group_photo_gets_its_head_released_and_charged(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon = _anon(generator, led, head="dp-pix", head_epsilon=1.0)
    photo = load_rgb(store.path(GROUP))
    res = anon.anonymize(photo)
    assert len(res.faces) >= 2
    boxes = []
    for f in res.faces:
        assert f.head is not None and f.head["protection"] == "dp-pix"
        kinds = [(e["mechanism"], e["epsilon"]) for e in led.events(f.subject)]
        assert ("DPPixelization", 1.0) in kinds and len(kinds) == 2, kinds
        boxes += [f.head["box"], list(f.box)]  # the head, and the face's own region
    assert res.image is not None and _outside_unchanged(photo, res.image, boxes)


def test_a_refused_head_is_masked_and_the_refusal_recorded(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(6.0))  # the identity release only
    anon = _anon(generator, led, head="dp-pix", head_epsilon=2.0)
    photo = load_rgb(store.path(OBAMA))
    res = anon.anonymize(photo, subject="obama")
    face = res.faces[0]
    assert face.status == "replaced" and face.head is not None
    assert face.head["protection"] == "mask" and face.head["refused"]
    assert "head release refused" in face.head["reason"]
    assert [e["mechanism"] for e in led.events("obama")] == ["IdentityLaplace"]
    assert len(led.events("obama", kinds=("refusal",))) == 1
    x0, y0 = face.head["box"][:2]
    assert res.image is not None
    corner = res.image[y0 : y0 + 8, x0 : x0 + 8]  # the head box's corner: no face there
    assert np.all(corner == MASK_VALUE)


def test_a_face_whose_own_release_is_refused_gets_a_grey_head_and_no_charge(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(8.0))
    anon = _anon(generator, led, head="dp-pix", head_epsilon=2.0)
    photo = load_rgb(store.path(OBAMA))
    assert anon.anonymize(photo, subject="obama").faces[0].head["protection"] == "dp-pix"  # type: ignore[index]
    res = anon.anonymize(photo, subject="obama")
    face = res.faces[0]
    assert face.status == "masked" and face.refused
    assert face.head is not None and face.head["protection"] == "mask"
    assert len(led.events("obama")) == 2  # the first photo's two releases; nothing new
    x0, y0, x1, y1 = face.head["box"]
    assert res.image is not None and np.all(res.image[y0:y1, x0:x1] == MASK_VALUE)


def test_a_resumed_job_republishes_the_same_head_without_charging_again(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon = _anon(generator, led, head="dp-pix", head_epsilon=2.0)
    photo = load_rgb(store.path(OBAMA))
    first = anon.anonymize(photo, subject="obama", release_key="resume:job:item:digest")
    again = anon.anonymize(photo, subject="obama", release_key="resume:job:item:digest")
    assert first.image is not None and again.image is not None
    assert np.array_equal(first.image, again.image)
    assert len(led.events("obama")) == 2


def test_head_protection_is_refused_where_it_does_not_apply(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    led = Ledger(":memory:")
    with pytest.raises(ValueError, match="identity mechanisms"):
        Anonymizer(mechanism=DPPixelization(epsilon=1.0, block=16, m=16), ledger=led, head="mask")
    with pytest.raises(ValueError, match="head must be one of"):
        _anon(generator, led, head="blur")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head_epsilon"):
        _anon(generator, led, head="dp-pix", head_epsilon=float("inf"))
    anon = _anon(generator, led, head="dp-pix")
    assert anon.head_epsilon == 1.0  # the default (HEAD_EPSILON)


def test_head_protection_uses_the_generator_without_the_photos_pixels(
    tmp_path: Path, generator: SurrogateGenerator
) -> None:
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    anon = _anon(generator, led, head="dp-pix", head_epsilon=2.0)
    used = anon.generator
    assert isinstance(used, SurrogateGenerator) and used is not generator
    assert not used.settings.photo_fill and not used.settings.keep_mouth
    assert used.settings.own_outline
    assert generator.settings.photo_fill and generator.settings.keep_mouth  # not changed
    res = anon.anonymize(load_rgb(store.path(OBAMA)), subject="obama")
    channels = res.receipt["faces"][0]["channels"]
    text = " ".join(channels["uncovered"])
    for gone in ("input's own pixels", "mouth interior", "low-frequency colour", "jaw"):
        assert gone not in text, gone
    assert any(c.startswith("face outline") for c in channels["covered"])
    kept = _anon(generator, led)  # the default keeps the head, and the generator as it was
    assert kept.generator is generator


def test_a_grey_photo_gets_a_grey_head_and_a_colour_photo_a_colour_one(
    tmp_path: Path, keeping: RecordingGenerator
) -> None:
    """DP-Pix noise is drawn per colour channel; on a grey photo the released head is drawn
    in grey (post-processing, decided from the pixels published unchanged)."""
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    colour = load_rgb(store.path(OBAMA))
    grey = np.repeat(colour.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    for photo, want_grey in ((grey, True), (colour, False)):
        keeping.results.clear()
        anon = _anon(keeping, led, head="dp-pix")
        res = anon.anonymize(photo)
        (face,) = res.faces
        assert face.head is not None and face.head["protection"] == "dp-pix"
        x0, y0, x1, y1 = face.head["box"]
        shows = _alpha_canvas(photo.shape, keeping.results)[y0:y1, x0:x1] > 0
        assert res.image is not None
        head = res.image[y0:y1, x0:x1][~shows]
        is_grey = np.array_equal(head[:, 0], head[:, 1]) and np.array_equal(head[:, 1], head[:, 2])
        assert is_grey == want_grey
