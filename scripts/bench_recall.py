"""Detection recall benchmark: how many faces does each detector find, by size and condition?

Run with ``./dev bench recall`` (or ``.venv/bin/python scripts/bench_recall.py``); ``--quick``
runs a small version (a few canvases) that the test suite uses. Not a test: it measures.

The data (fixed seed, rebuilt on every run, nothing downloaded):

* **Composed canvases** (3000×2000 by default): real faces from the bundled sample photos
  (``dpface.models.samples``), cut out with their hair and neck under a soft elliptical mask
  and pasted at face widths 12–256 px onto three kinds of background — flat colour
  gradients, smoothed noise, and real photo regions (scikit-image's bundled photos and the
  face-free lower parts of the sample group photos). Each pasted face gets one condition:
  ``plain``, ``roll15``/``roll30``/``roll45`` (in-plane rotation, either sign), ``blur``,
  ``dark``, ``grey`` or ``cut`` (a third to a half of the face outside the picture).
* **Rotated photos**: composed canvases of plain faces turned by 90°, 180° or 270° as a whole
  (a photo stored on its side or upside down), conditions ``photo90``/``photo180``/``photo270``.
* **Real photos**: the 16 sample photos with hand-checked face boxes, and the six face-api
  group photos scaled to 1/2, 1/4 and 1/8 (faces ~25–130 px), condition ``real``.

A true face counts as found when one detection overlaps its box with IoU ≥ 0.3 or covers
≥ 70 % of it. Detections matching no true face are false positives (per megapixel). Time is
wall-clock seconds per megapixel of input, each detector run in turn in this process with
onnxruntime/torch on one thread.

Detectors: ``default`` (``dpface.detect.DEFAULT_DETECTOR``, the whole ``detect_array`` call
including landmarks and the presence check), each of dpface's detectors alone, and
``deface`` — deface 1.5.0's own ``CenterFace`` class at its command line's defaults
(full-resolution input, threshold 0.2), imported from the installed ``deface`` package (a
dev dependency). Output: a markdown table and JSON in ``docs/results/`` (``recall.md``,
``recall.json``; ``--out`` to change), with the command and date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

# size buckets (face width in photo pixels, [lo, hi))
BUCKETS: tuple[tuple[int, int], ...] = (
    (12, 16),
    (16, 20),
    (20, 24),
    (24, 32),
    (32, 48),
    (48, 64),
    (64, 96),
    (96, 128),
    (128, 257),
)
CONDITIONS = ("plain", "roll15", "roll30", "roll45", "blur", "dark", "grey", "cut")
_CONDITION_P = (0.40, 0.08, 0.08, 0.08, 0.09, 0.09, 0.09, 0.09)
ROTATED = ("photo90", "photo180", "photo270")
IOU_MATCH = 0.3
COVER_MATCH = 0.7
# faces per canvas for each bucket (big ones are placed first)
_PER_CANVAS = (22, 22, 22, 22, 18, 14, 9, 5, 3)
# hand-checked faces the sample photos' cached (HOG) detections miss, (x0, y0, x1, y1)
EXTRA_TRUTH: dict[str, list[tuple[float, float, float, float]]] = {
    "face-api-sample2.jpg": [(357, 135, 518, 428), (908, 290, 1054, 451)],
    "face-api-sample4.jpg": [(258, 203, 425, 432)],
}


@dataclass
class Truth:
    """One true face: box in canvas pixels, width, condition."""

    box: tuple[float, float, float, float]
    width: float
    condition: str


@dataclass
class Canvas:
    """One test picture and its true faces."""

    name: str
    image: np.ndarray = field(repr=False)
    truths: list[Truth]
    background: str

    @property
    def megapixels(self) -> float:
        return self.image.shape[0] * self.image.shape[1] / 1e6


# ----------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class Cutout:
    """A face with context: RGB patch, soft alpha, and the face's box inside the patch."""

    rgb: np.ndarray
    alpha: np.ndarray
    box: tuple[float, float, float, float]
    points: np.ndarray  # 68 landmarks in patch coordinates


def face_box(landmarks68: np.ndarray) -> tuple[float, float, float, float]:
    """The true box of a face: its 68 landmarks' extent (brows to chin, ear to ear)."""
    x0, y0 = landmarks68.min(axis=0)
    x1, y1 = landmarks68.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def cutouts() -> list[Cutout]:
    """One cut-out per usable sample face (whole faces inside their photo, with context)."""
    from dpface.models.samples import sample_faces

    out = []
    for f in sample_faces():
        if f.photo in ("fr-32bit.png", "insightface-Tom_Hanks_54745.png"):
            continue  # a duplicate of fr-obama2.jpg; an aligned crop without context
        lm = np.asarray(f.landmarks68, dtype=np.float64)
        x0, y0, x1, y1 = face_box(lm)
        w = x1 - x0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.15 * w
        half = 1.1 * w
        h_img, w_img = f.image.shape[:2]
        if cx - half < 0 or cy - half < 0 or cx + half > w_img or cy + half > h_img:
            continue  # not enough context around the face (partial face at the edge)
        a, b = round(cx - half), round(cy - half)
        side = round(2 * half)
        rgb = np.ascontiguousarray(f.image[b : b + side, a : a + side])
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
        r = np.hypot((xx - side / 2) / (0.47 * side), (yy - side / 2) / (0.5 * side))
        alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0).astype(np.float32)
        out.append(Cutout(rgb, alpha, (x0 - a, y0 - b, x1 - a, y1 - b), lm - [a, b]))
    return out


def _transform_cutout(
    c: Cutout, width: float, angle: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """The cut-out scaled so its face is ``width`` px wide and turned by ``angle`` degrees
    (counter-clockwise), with its new alpha and true face box."""
    s = width / (c.box[2] - c.box[0])
    side = c.rgb.shape[0]
    out_side = max(
        4,
        math.ceil(
            side * s * (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle))))
        ),
    )
    m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, s)
    m[:, 2] += out_side / 2 - np.array([side / 2, side / 2])
    interp = cv2.INTER_AREA if s < 1 and angle == 0 else cv2.INTER_LINEAR
    if s < 0.5:  # shrink in two steps so small faces are properly anti-aliased
        pre = cv2.resize(c.rgb, None, fx=2 * s, fy=2 * s, interpolation=cv2.INTER_AREA)
        pa = cv2.resize(c.alpha, None, fx=2 * s, fy=2 * s, interpolation=cv2.INTER_AREA)
        m2 = cv2.getRotationMatrix2D((pre.shape[1] / 2, pre.shape[0] / 2), angle, 0.5)
        m2[:, 2] += out_side / 2 - np.array([pre.shape[1] / 2, pre.shape[0] / 2])
        rgb = cv2.warpAffine(pre, m2, (out_side, out_side), flags=cv2.INTER_AREA)
        alpha = cv2.warpAffine(pa, m2, (out_side, out_side), flags=cv2.INTER_LINEAR)
    else:
        rgb = cv2.warpAffine(c.rgb, m, (out_side, out_side), flags=interp)
        alpha = cv2.warpAffine(c.alpha, m, (out_side, out_side), flags=cv2.INTER_LINEAR)
    pts = np.c_[c.points, np.ones(len(c.points))] @ m.T
    return rgb, alpha, face_box(pts)


def _degrade(rgb: np.ndarray, condition: str, width: float, rng: np.random.Generator) -> np.ndarray:
    if condition == "blur":
        sigma = max(0.8, width / 24) * rng.uniform(0.8, 1.3)
        return cv2.GaussianBlur(rgb, (0, 0), sigma)
    if condition == "dark":
        f = rgb.astype(np.float32) / 255.0
        g = (f**1.6) * rng.uniform(0.22, 0.35)
        return np.clip(g * 255.0 + rng.normal(0, 2.0, rgb.shape), 0, 255).astype(np.uint8)
    if condition == "grey":
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return np.dstack([g, g, g])
    return rgb


def _paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    h, w = canvas.shape[:2]
    ph, pw = rgb.shape[:2]
    a0, b0 = max(0, -x), max(0, -y)
    a1, b1 = min(pw, w - x), min(ph, h - y)
    if a1 <= a0 or b1 <= b0:
        return
    dst = canvas[y + b0 : y + b1, x + a0 : x + a1].astype(np.float32)
    al = alpha[b0:b1, a0:a1, None]
    src = rgb[b0:b1, a0:a1].astype(np.float32)
    canvas[y + b0 : y + b1, x + a0 : x + a1] = np.round(al * src + (1 - al) * dst).astype(np.uint8)


# ----------------------------------------------------------------------------- backgrounds


def _photo_regions() -> list[np.ndarray]:
    """Real photo material without faces: scikit-image's bundled photos and the parts of
    the face-api group photos below everyone's chin."""
    import warnings

    from skimage import data

    from dpface.models import store
    from dpface.models.images import load_rgb
    from dpface.models.samples import sample_faces

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in (
            "coffee",
            "chelsea",
            "rocket",
            "hubble_deep_field",
            "immunohistochemistry",
            "brick",
            "grass",
            "gravel",
            "clock",
            "coins",
            "retina",
            "page",
            "text",
        ):
            try:
                a = np.asarray(getattr(data, name)())
            except Exception:
                continue
            if a.ndim == 2:
                a = np.dstack([a, a, a])
            out.append(np.ascontiguousarray(a[..., :3].astype(np.uint8)))
    faces = sample_faces()
    for k in range(1, 7):
        photo = f"face-api-sample{k}.jpg"
        img = load_rgb(store.path(f"samples/{photo}"))
        bottom = max([f.box[3] for f in faces if f.photo == photo], default=0.0)
        for _x0, _y0, _x1, y1 in EXTRA_TRUTH.get(photo, []):
            bottom = max(bottom, y1)
        top = int(bottom + 150)
        if img.shape[0] - top > 200:
            out.append(np.ascontiguousarray(img[top:]))
    return out


def _background(
    kind: str, h: int, w: int, rng: np.random.Generator, regions: list[np.ndarray]
) -> np.ndarray:
    if kind == "flat":
        c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
        t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
        img = c0 * (1 - t) + c1 * t
        return np.broadcast_to(img, (h, w, 3)).astype(np.uint8).copy()
    if kind == "noise":
        out = np.zeros((h, w, 3), np.float32)
        for scale, amp in ((64, 60.0), (16, 30.0), (4, 15.0), (1, 8.0)):
            small = rng.normal(0, 1, (max(2, h // scale), max(2, w // scale), 3)).astype(np.float32)
            out += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        return np.clip(out + rng.uniform(70, 180, 3), 0, 255).astype(np.uint8)
    # real photo regions: a mosaic of 2×2 to 3×3 scaled photos
    rows, cols = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    ys = np.linspace(0, h, rows + 1).astype(int)
    xs = np.linspace(0, w, cols + 1).astype(int)
    img = np.zeros((h, w, 3), np.uint8)
    for i in range(rows):
        for j in range(cols):
            src = regions[int(rng.integers(len(regions)))]
            img[ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = cv2.resize(
                src, (xs[j + 1] - xs[j], ys[i + 1] - ys[i]), interpolation=cv2.INTER_LINEAR
            )
    return img


# ----------------------------------------------------------------------------- canvases


def compose(
    rng: np.random.Generator,
    faces: list[Cutout],
    regions: list[np.ndarray],
    *,
    size: tuple[int, int] = (2000, 3000),
    background: str = "noise",
    per_bucket: Iterable[int] = _PER_CANVAS,
    conditions: bool = True,
    name: str = "canvas",
) -> Canvas:
    """One canvas (h, w) = ``size`` with faces per size bucket; with ``conditions`` each
    face draws a condition, otherwise all are plain."""
    h, w = size
    img = _background(background, h, w, rng, regions)
    plan = []
    for (lo, hi), n in zip(BUCKETS, per_bucket, strict=True):
        for _ in range(n):
            plan.append(float(np.exp(rng.uniform(np.log(lo), np.log(hi - 0.01)))))
    plan.sort(reverse=True)
    taken: list[tuple[float, float, float, float]] = []
    truths: list[Truth] = []
    for width in plan:
        cond = str(rng.choice(CONDITIONS, p=_CONDITION_P)) if conditions else "plain"
        angle = 0.0
        if cond.startswith("roll"):
            angle = float(cond[4:]) * float(rng.choice([-1.0, 1.0]))
        c = faces[int(rng.integers(len(faces)))]
        rgb, alpha, box = _transform_cutout(c, width, angle)
        rgb = _degrade(rgb, cond, width, rng)
        ph, pw = rgb.shape[:2]
        for _ in range(200):
            if cond == "cut":  # a third to a half of the face outside the picture
                side = int(rng.integers(4))
                frac = rng.uniform(0.33, 0.5)
                fw, fh = box[2] - box[0], box[3] - box[1]
                if side == 0:
                    x = round(-box[0] - frac * fw)
                    y = int(rng.integers(0, max(1, h - ph)))
                elif side == 1:
                    x = round(w - box[2] + frac * fw)
                    y = int(rng.integers(0, max(1, h - ph)))
                elif side == 2:
                    y = round(-box[1] - frac * fh)
                    x = int(rng.integers(0, max(1, w - pw)))
                else:
                    y = round(h - box[3] + frac * fh)
                    x = int(rng.integers(0, max(1, w - pw)))
            else:
                x = int(rng.integers(0, max(1, w - pw)))
                y = int(rng.integers(0, max(1, h - ph)))
            rect = (x, y, x + pw, y + ph)
            if all(
                rect[2] <= t[0] or rect[0] >= t[2] or rect[3] <= t[1] or rect[1] >= t[3]
                for t in taken
            ):
                break
        else:
            continue  # no room left for this face
        taken.append(rect)
        _paste(img, rgb, alpha, x, y)
        b = (box[0] + x, box[1] + y, box[2] + x, box[3] + y)
        vis = (max(0.0, b[0]), max(0.0, b[1]), min(float(w), b[2]), min(float(h), b[3]))
        truths.append(Truth(vis, width, cond))
    return Canvas(name, img, truths, background)


def rotate_canvas(c: Canvas, quarter_turns: int, condition: str) -> Canvas:
    """The canvas turned counter-clockwise by 90° × ``quarter_turns`` (np.rot90), truths
    mapped, every face relabelled ``condition``."""
    h, w = c.image.shape[:2]
    img = np.ascontiguousarray(np.rot90(c.image, quarter_turns))
    truths = []
    for t in c.truths:
        x0, y0, x1, y1 = t.box
        ww, hh = w, h
        for _ in range(quarter_turns % 4):  # one turn: (x, y) -> (y, W - x)
            x0, y0, x1, y1 = y0, ww - x1, y1, ww - x0
            ww, hh = hh, ww
        truths.append(Truth((x0, y0, x1, y1), t.width, condition))
    return Canvas(f"{c.name}-rot{90 * quarter_turns}", img, truths, c.background)


def real_photos(scales: tuple[float, ...] = (0.5, 0.25, 0.125)) -> list[Canvas]:
    """The sample photos with their faces (cached sample detections + hand-checked extras),
    and the face-api group photos downscaled."""
    from dpface.models import store
    from dpface.models.images import load_rgb
    from dpface.models.samples import sample_faces

    faces = sample_faces()
    out = []
    for name in store.names("samples/"):
        photo = name.removeprefix("samples/")
        img = load_rgb(store.path(name))
        boxes = [tuple(float(v) for v in f.box) for f in faces if f.photo == photo]
        boxes += EXTRA_TRUTH.get(photo, [])
        h, w = img.shape[:2]
        boxes = [
            (max(0.0, b[0]), max(0.0, b[1]), min(float(w), b[2]), min(float(h), b[3]))
            for b in boxes
        ]
        out.append(Canvas(photo, img, [Truth(b, b[2] - b[0], "real") for b in boxes], "real"))
        if photo.startswith("face-api"):
            for s in scales:
                small = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
                tr = [
                    Truth(tuple(v * s for v in b), (b[2] - b[0]) * s, "real")  # type: ignore[arg-type]
                    for b in boxes
                ]
                out.append(Canvas(f"{photo}@{s:g}", small, tr, "real"))
    return out


def dataset(*, quick: bool = False, seed: int = 20240615) -> list[Canvas]:
    """All benchmark pictures (``quick``: a handful, for the test suite)."""
    rng = np.random.default_rng(seed)
    faces = cutouts()
    regions = _photo_regions()
    kinds = ("flat", "noise", "photo")
    n_mixed = 3 if quick else 24
    size = (1000, 1500) if quick else (2000, 3000)
    per = tuple(max(1, n // 3) for n in _PER_CANVAS) if quick else _PER_CANVAS
    out = [
        compose(
            rng,
            faces,
            regions,
            size=size,
            background=kinds[k % 3],
            per_bucket=per,
            name=f"mixed{k:02d}-{kinds[k % 3]}",
        )
        for k in range(n_mixed)
    ]
    n_rot = 1 if quick else 2
    for turns, cond in ((1, "photo90"), (2, "photo180"), (3, "photo270")):
        for k in range(n_rot):
            base = compose(
                rng,
                faces,
                regions,
                size=size,
                background=kinds[(k + turns) % 3],
                per_bucket=tuple(n // 2 for n in per),
                conditions=False,
                name=f"rot{turns}{k}-{kinds[(k + turns) % 3]}",
            )
            out.append(rotate_canvas(base, turns, cond))
    out += real_photos(() if quick else (0.5, 0.25, 0.125))[: 4 if quick else None]
    return out


# ----------------------------------------------------------------------------- scoring


def _match(truths: list[Truth], boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """Per truth: found?; and the number of detections that match no truth."""
    found = np.zeros(len(truths), dtype=bool)
    used = np.zeros(len(boxes), dtype=bool)
    for i, t in enumerate(truths):
        tx0, ty0, tx1, ty1 = t.box
        ta = max(1e-9, (tx1 - tx0) * (ty1 - ty0))
        for j, b in enumerate(boxes):
            iw = max(0.0, min(tx1, b[2]) - max(tx0, b[0]))
            ih = max(0.0, min(ty1, b[3]) - max(ty0, b[1]))
            inter = iw * ih
            if inter <= 0:
                continue
            union = ta + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if inter / union >= IOU_MATCH or inter / ta >= COVER_MATCH:
                found[i] = True
                used[j] = True
    # a detection that merely overlaps a true face (e.g. a second box on it) is not an FP
    for j, b in enumerate(boxes):
        if used[j]:
            continue
        for t in truths:
            iw = max(0.0, min(t.box[2], b[2]) - max(t.box[0], b[0]))
            ih = max(0.0, min(t.box[3], b[3]) - max(t.box[1], b[1]))
            if iw * ih > 0.3 * max(1e-9, (b[2] - b[0]) * (b[3] - b[1])):
                used[j] = True
                break
    return found, int((~used).sum())


def _bucket(width: float) -> str:
    for lo, hi in BUCKETS:
        if lo <= width < hi:
            return f"{lo}-{hi - 1 if hi == 257 else hi}"
    return "≥257" if width >= 257 else "<12"


def bucket_labels() -> list[str]:
    return [f"{lo}-{hi - 1 if hi == 257 else hi}" for lo, hi in BUCKETS]


# ----------------------------------------------------------------------------- detectors


Detector = Callable[[np.ndarray], np.ndarray]  # RGB image -> (n, 4) boxes


def _ours(name: str, **kw: object) -> Detector:
    from dpface.detect import detect_array

    def run(img: np.ndarray) -> np.ndarray:
        r = detect_array(img, detector=name, **kw)  # type: ignore[arg-type]
        return np.array([f.box for f in r.faces], dtype=np.float64).reshape(-1, 4)

    return run


def _deface() -> Detector | None:
    """deface's own CenterFace at its defaults (full-resolution input, threshold 0.2)."""
    try:
        import contextlib
        import io

        from deface.centerface import CenterFace
    except ImportError:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the execution provider
        net = CenterFace(in_shape=None, backend="auto")

    def run(img: np.ndarray) -> np.ndarray:
        dets, _ = net(img, threshold=0.2)
        return np.asarray(dets, dtype=np.float64)[:, :4].reshape(-1, 4)

    return run


def detectors(names: Iterable[str] | None = None) -> dict[str, Detector]:
    from dpface.detect import DEFAULT_DETECTOR, DETECTORS

    out: dict[str, Detector] = {"default": _ours(DEFAULT_DETECTOR)}
    for d in DETECTORS:
        if d != DEFAULT_DETECTOR:
            out[d] = _ours(d)
    out["hog-full"] = _ours("hog", max_side=100_000)
    dfc = _deface()
    if dfc is not None:
        out["deface"] = dfc
    if names is not None:
        want = list(names)
        out = {k: v for k, v in out.items() if k in want}
    return out


# ----------------------------------------------------------------------------- running


@dataclass
class Tally:
    found: int = 0
    total: int = 0

    @property
    def recall(self) -> float | None:
        return self.found / self.total if self.total else None


def run(
    canvases: list[Canvas], dets: dict[str, Detector], *, progress: bool = True
) -> dict[str, object]:
    """Every detector on every canvas; recall tallies, FP/MP and s/MP per detector."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    results: dict[str, object] = {}
    for name, det in dets.items():
        det(canvases[0].image[:256, :256].copy())  # load models outside the timing
        by_size: dict[str, Tally] = {}
        by_cond: dict[str, Tally] = {}
        by_cond_size: dict[str, Tally] = {}
        fps, secs, mps = 0, 0.0, 0.0
        per_canvas = []
        for c in canvases:
            t0 = time.perf_counter()
            boxes = det(c.image)
            dt = time.perf_counter() - t0
            found, fp = _match(c.truths, boxes)
            secs += dt
            mps += c.megapixels
            fps += fp if c.background != "real" else 0
            per_canvas.append(
                {
                    "canvas": c.name,
                    "faces": len(c.truths),
                    "found": int(found.sum()),
                    "fp": fp,
                    "seconds": round(dt, 3),
                }
            )
            for t, ok in zip(c.truths, found, strict=True):
                b = _bucket(t.width)
                coarse = "<20" if t.width < 20 else ("20-32" if t.width < 32 else "≥32")
                for table, key in (
                    (by_size, b if t.condition == "plain" else None),
                    (by_cond, t.condition),
                    (by_cond_size, f"{t.condition}|{coarse}"),
                    (by_cond_size, f"all|{b}"),
                ):
                    if key is None:
                        continue
                    tl = table.setdefault(key, Tally())
                    tl.total += 1
                    tl.found += int(ok)
            if progress:
                print(
                    f"  {name:<10} {c.name:<28} {int(found.sum()):>3}/{len(c.truths):<3}"
                    f" fp {fp:<3} {dt:6.2f} s",
                    file=sys.stderr,
                )
        synth_mp = sum(c.megapixels for c in canvases if c.background != "real")
        results[name] = {
            "by_size_plain": {k: asdict(v) for k, v in by_size.items()},
            "by_condition": {k: asdict(v) for k, v in by_cond.items()},
            "by_condition_size": {k: asdict(v) for k, v in by_cond_size.items()},
            "fp_per_mp": fps / synth_mp if synth_mp else None,
            "seconds": secs,
            "megapixels": mps,
            "s_per_mp": secs / mps if mps else None,
            "per_canvas": per_canvas,
        }
    return results


def _fmt(t: dict[str, int] | None) -> str:
    if not t or not t["total"]:
        return "–"
    return f"{t['found'] / t['total']:.3f}"


def markdown(results: dict[str, dict], canvases: list[Canvas], command: str) -> str:
    names = list(results)
    n_faces = sum(len(c.truths) for c in canvases)
    mp = sum(c.megapixels for c in canvases)
    lines = [
        "# Detection recall benchmark",
        "",
        f"Command: `{command}` — {_dt.date.today().isoformat()}, {platform.machine()},"
        f" {os.cpu_count()} cores, one thread per detector. {len(canvases)} pictures,"
        f" {mp:.0f} MP, {n_faces} true faces. A face is found when a detection has IoU ≥"
        f" {IOU_MATCH} with its box or covers ≥ {COVER_MATCH:.0%} of it. Columns:"
        " `default` is dpface's default detector (the whole `detect_array` call), `deface` is"
        " deface 1.5.0's CenterFace at its defaults (full resolution, threshold 0.2).",
        "",
        "## Recall by face width (plain upright faces on composed canvases)",
        "",
        "| width px | n | " + " | ".join(names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for b in bucket_labels():
        n = max((results[k]["by_size_plain"].get(b, {}).get("total", 0) for k in names), default=0)
        lines.append(
            f"| {b} | {n} | "
            + " | ".join(_fmt(results[k]["by_size_plain"].get(b)) for k in names)
            + " |"
        )
    lines += [
        "",
        "## Recall by face width (all conditions)",
        "",
        "| width px | n | " + " | ".join(names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for b in bucket_labels():
        key = f"all|{b}"
        n = max(
            (results[k]["by_condition_size"].get(key, {}).get("total", 0) for k in names), default=0
        )
        lines.append(
            f"| {b} | {n} | "
            + " | ".join(_fmt(results[k]["by_condition_size"].get(key)) for k in names)
            + " |"
        )
    lines += [
        "",
        "## Recall by condition (all sizes; < 20 / 20–32 / ≥ 32 px)",
        "",
        "| condition | n | " + " | ".join(names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    conds = [
        c
        for c in (*CONDITIONS, *ROTATED, "real")
        if any(c in results[k]["by_condition"] for k in names)
    ]
    for c in conds:
        n = max(results[k]["by_condition"].get(c, {}).get("total", 0) for k in names)
        cells = []
        for k in names:
            parts = [
                _fmt(results[k]["by_condition_size"].get(f"{c}|{s}"))
                for s in ("<20", "20-32", "≥32")
            ]
            cells.append(f"**{_fmt(results[k]['by_condition'].get(c))}** ({' / '.join(parts)})")
        lines.append(f"| {c} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Cost",
        "",
        "| | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
        "| false positives per MP (composed canvases) | "
        + " | ".join(f"{results[k]['fp_per_mp']:.2f}" for k in names)
        + " |",
        "| seconds per MP | " + " | ".join(f"{results[k]['s_per_mp']:.3f}" for k in names) + " |",
        "| seconds in all | " + " | ".join(f"{results[k]['seconds']:.1f}" for k in names) + " |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few small canvases (for tests)")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "results",
        help="folder for recall.md and recall.json",
    )
    ap.add_argument(
        "--detectors",
        default=None,
        help="comma-separated subset of: default,<each detector>,hog-full,deface",
    )
    ap.add_argument("--seed", type=int, default=20240615)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    command = "./dev bench recall" + (" --quick" if args.quick else "")
    t0 = time.perf_counter()
    canvases = dataset(quick=args.quick, seed=args.seed)
    print(
        f"[bench_recall] {len(canvases)} pictures,"
        f" {sum(len(c.truths) for c in canvases)} faces built in"
        f" {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    dets = detectors(args.detectors.split(",") if args.detectors else None)
    results = run(canvases, dets, progress=not args.quiet)
    md = markdown(results, canvases, command)  # type: ignore[arg-type]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "recall-quick" if args.quick else "recall"
    (args.out / f"{stem}.md").write_text(md)
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "command": command,
                "date": _dt.date.today().isoformat(),
                "seed": args.seed,
                "pictures": len(canvases),
                "faces": sum(len(c.truths) for c in canvases),
                "results": results,
            },
            indent=1,
            ensure_ascii=False,
        )
    )
    print(md)
    print(f"[bench_recall] wrote {args.out / (stem + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
