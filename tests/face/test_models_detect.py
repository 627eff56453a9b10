"""Detection on real photos and per-image handling of bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpface.detect import detect_array, detect_batch, detect_file
from dpface.face import Face
from dpface.models import store
from dpface.models.dlib_models import DlibFaceModels
from dpface.models.images import ImageError, load_rgb


@pytest.fixture(scope="module")
def obama_small() -> np.ndarray:
    img = Image.fromarray(load_rgb(store.path("samples/fr-obama.jpg")))
    img.thumbnail((400, 400))
    return np.asarray(img)


def _sure(faces: list[Face]) -> list[Face]:
    """The confident detections (uncertain ones are protected too, but may not be faces)."""
    return [f for f in faces if not f.uncertain]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / ua


def test_group_photo_every_detector() -> None:
    path = store.path("samples/insightface-t1.jpg")
    hog = detect_file(path, detector="hog")
    blaze = detect_file(path, detector="blazeface")
    full = detect_file(path)  # the default
    assert hog.ok and blaze.ok and full.ok
    assert len(hog.faces) == 6
    assert len(blaze.faces) >= 5
    for f in blaze.faces:  # every BlazeFace face is one of dlib's (box conventions differ)
        assert max(_iou(f.box, g.box) for g in hog.faces) > 0.4
    # the default finds the six people confidently, with usable landmarks; anything else it
    # returns is flagged uncertain (protected all the same, never dropped)
    sure = [f for f in full.faces if not f.uncertain]
    assert len(sure) == 6 and all(f.landmarks_ok for f in sure)
    for g in hog.faces:
        assert max(_iou(f.box, g.box) for f in sure) > 0.3
    assert full.min_face_px is not None and full.min_face_px <= 20
    for f in hog.faces + sure:
        assert f.landmarks68.shape == (68, 2)
        x0, y0, x1, y1 = f.box
        inside = (
            (f.landmarks68[:, 0] > x0 - 20)
            & (f.landmarks68[:, 0] < x1 + 20)
            & (f.landmarks68[:, 1] > y0 - 20)
            & (f.landmarks68[:, 1] < y1 + 40)
        )
        assert inside.mean() > 0.9


def test_landmarks_5_and_68(obama_small: np.ndarray) -> None:
    m = DlibFaceModels()
    det = m.detect(obama_small)
    assert len(det) == 1
    lm5 = m.landmarks(obama_small, det[0].box, points=5)
    lm68 = m.landmarks(obama_small, det[0].box)
    assert lm5.shape == (5, 2) and lm68.shape == (68, 2)
    # dlib's 5-point eye corners agree with the 68-point ones (points 36, 39, 42, 45)
    assert np.abs(lm5[[2, 3, 1, 0]] - lm68[[36, 39, 42, 45]]).max() < 6
    with pytest.raises(ValueError, match="5 or 68"):
        m.landmarks(obama_small, det[0].box, points=7)


def test_dlib_published_rule_on_real_pairs() -> None:
    m = DlibFaceModels()
    desc = {}
    for name in ("fr-obama.jpg", "fr-obama2.jpg", "fr-biden.jpg"):
        img = load_rgb(store.path(f"samples/{name}"))
        face = detect_array(img).faces[0]
        desc[name] = m.descriptor(img, face.landmarks68)
    assert np.linalg.norm(desc["fr-obama.jpg"] - desc["fr-obama2.jpg"]) < 0.6
    assert np.linalg.norm(desc["fr-obama.jpg"] - desc["fr-biden.jpg"]) > 0.6


def test_no_face_is_a_result_not_an_error() -> None:
    from skimage import data

    r = detect_array(data.coffee(), source="coffee")
    assert r.ok and _sure(r.faces) == [] and r.note
    if not r.faces:
        assert "no face" in r.note
    assert r.rotations_tried == (0, 90, 180, 270)  # unsure: the turned copies were searched


def test_color_modes_and_depths(obama_small: np.ndarray, tmp_path: Path) -> None:
    gray = np.asarray(Image.fromarray(obama_small).convert("L"))
    rgba = np.dstack([obama_small, np.full(obama_small.shape[:2], 255, np.uint8)])
    deep = gray.astype(np.uint16) * 257
    for arr in (gray, rgba, deep, obama_small.astype(np.float32) / 255.0):
        r = detect_array(arr)
        assert r.ok and len(_sure(r.faces)) == 1, arr.dtype
    # the same through files: 16-bit gray PNG and RGBA PNG
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    for name in ("deep.png", "rgba.png"):
        loaded = load_rgb(tmp_path / name)
        assert loaded.dtype == np.uint8 and loaded.shape == obama_small.shape
        assert len(_sure(detect_file(tmp_path / name).faces)) == 1


def test_exif_orientation_is_applied(obama_small: np.ndarray, tmp_path: Path) -> None:
    stored = Image.fromarray(obama_small).transpose(Image.Transpose.ROTATE_90)  # on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer must rotate 90° clockwise to show it upright
    stored.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = load_rgb(tmp_path / "rotated.jpg")
    assert upright.shape == obama_small.shape
    assert np.abs(upright.astype(int) - obama_small.astype(int)).mean() < 8
    assert len(_sure(detect_file(tmp_path / "rotated.jpg").faces)) == 1
    # without applying EXIF the HOG detector sees a sideways face and finds nothing
    assert detect_array(np.asarray(stored), detector="hog").faces == []


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_turned_photo_face_is_found_upright(obama_small: np.ndarray, turns: int) -> None:
    """A photo stored on its side or upside down (no EXIF): the default detector finds the
    face, confidently, with landmarks fitted in the upright copy (the generator can take it),
    and maps them back onto the turned photo."""
    upright = detect_array(obama_small).faces
    main = max(upright, key=lambda f: f.score)
    turned = np.ascontiguousarray(np.rot90(obama_small, turns))
    found = [f for f in detect_array(turned).faces if not f.uncertain]
    assert len(found) == 1 and found[0].landmarks_ok
    h, w = obama_small.shape[:2]
    # the eyes land where the upright eyes go under the same turn
    want = np.asarray(main.points5[:2], dtype=np.float64)
    for _ in range(turns):  # np.rot90 maps (x, y) of an (h, w) image to (y, w - x)
        want = np.stack([want[:, 1], w - want[:, 0]], axis=1)
        h, w = w, h
    got = found[0].points5[:2]
    eye_dist = float(np.linalg.norm(want[1] - want[0]))
    assert np.linalg.norm(got - want, axis=1).max() < 0.25 * eye_dist


def test_bad_inputs_give_per_image_errors(obama_small: np.ndarray, tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(obama_small).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    tiny = np.zeros((12, 12, 3), np.uint8)
    weird = np.zeros((40, 40, 2), np.uint8)
    results = detect_batch(
        [good, truncated, tmp_path / "missing.png", text, tiny, weird, obama_small]
    )
    assert len(results) == 7
    assert [r.ok for r in results] == [True, False, False, False, False, False, True]
    assert len(_sure(results[0].faces)) == 1 and len(_sure(results[6].faces)) == 1
    assert "truncated" in (results[1].error or "")
    assert "no such file" in (results[2].error or "")
    assert "not an image" in (results[3].error or "")
    assert "at least 32 px" in (results[4].error or "")
    assert "shape" in (results[5].error or "")
    with pytest.raises(ImageError):
        load_rgb(truncated)


def test_tiny_face_is_reported_not_crashed(obama_small: np.ndarray) -> None:
    small = np.asarray(Image.fromarray(obama_small).resize((48, 48)))
    r = detect_array(small)
    assert r.ok
    if not r.faces:
        assert r.note and "no face" in r.note


def test_facemesh_468_landmarks_agree_with_dlib() -> None:
    from dpface.detect import mesh_landmarks

    r = detect_file(store.path("samples/insightface-t1.jpg"))
    faces = _sure(r.faces)
    mesh = mesh_landmarks(faces[0].image, [f.landmarks68 for f in faces])
    assert mesh.shape == (6, 468, 3)
    # FaceMesh index -> dlib index: eye outer corners, nose tip, mouth corners, chin
    pairs = [(33, 36), (263, 45), (1, 30), (61, 48), (291, 54), (152, 8)]
    errs = np.array(
        [
            [np.linalg.norm(m[a, :2] - f.landmarks68[b]) / (f.box[2] - f.box[0]) for a, b in pairs]
            for f, m in zip(faces, mesh, strict=True)
        ]
    )
    assert np.median(errs) < 0.06
    assert errs.max() < 0.2


def test_huge_image_is_refused_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (600, 600)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 600×600 > 2× this limit
    r = detect_batch([big])[0]
    assert not r.ok and "too large" in (r.error or "")
