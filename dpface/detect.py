"""Face detection with per-image results: a batch never loses or silently skips an image.

Two detectors:

* ``"hog"`` (default): dlib's HOG detector on a copy scaled to at most ``max_side`` pixels
  (upsampled once, so faces down to ~40 px at that scale are found), 68 dlib landmarks at
  full resolution, and a FaceMesh face-presence check that drops false detections.
* ``"blazeface"``: the BlazeFace back-camera model (256×256 letterboxed input, 896 anchors)
  with weighted non-maximum suppression, then the same landmark step.

``detect_file``/``detect_array`` return an ``ImageFaces`` whose ``error`` says, per image,
why nothing could be done (unreadable, truncated, too small); "no face" is a valid result
with an explanatory note, not an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import torch

from dpface.align import loose_crop, loose_crop_matrix
from dpface.models.dlib_models import DlibFaceModels, arcface_points
from dpface.models.images import ImageError, array_to_rgb8, load_rgb

MIN_SIDE = 32  # smaller images cannot hold a detectable face


@dataclass(frozen=True)
class Face:
    """One detected face with 68 landmarks (x, y) in the photo's pixel coordinates."""

    image: np.ndarray = field(repr=False)
    box: tuple[float, float, float, float]
    score: float
    landmarks68: np.ndarray = field(repr=False)

    @property
    def points5(self) -> np.ndarray:
        """ArcFace's five alignment points."""
        return arcface_points(self.landmarks68)


@dataclass(frozen=True)
class ImageFaces:
    """The outcome for one input image."""

    source: str
    faces: list[Face]
    error: str | None = None
    note: str | None = None
    size: tuple[int, int] | None = None  # (height, width)

    @property
    def ok(self) -> bool:
        """True when the image was read and searched (it may contain no face)."""
        return self.error is None


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
    return [(tuple(v / s for v in d.box), d.score)
            for d in _dlib_models().detect(np.ascontiguousarray(small), upsample=1)]


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


def blazeface_raw(img: np.ndarray, min_score: float = 0.6, iou: float = 0.3
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
        merged.append((tuple(float(v) for v in box), si, kps))  # type: ignore[arg-type]
    return merged


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# ----------------------------------------------------------------------------- entry points


def detect_array(img: np.ndarray, *, source: str = "<array>", detector: str = "hog",
                 max_side: int = 960, min_presence: float = 0.5) -> ImageFaces:
    """Detect faces in an in-memory image (gray/RGB/RGBA; uint8, uint16 or float)."""
    try:
        rgb = array_to_rgb8(img)
    except ImageError as err:
        return ImageFaces(source, [], error=str(err))
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    if min(size) < MIN_SIDE:
        return ImageFaces(source, [], error=f"image is {size[1]}×{size[0]} px; faces need at"
                          f" least {MIN_SIDE} px", size=size)
    if detector == "hog":
        boxes = _hog_boxes(rgb, max_side)
    elif detector == "blazeface":
        boxes = [(b, s) for b, s, _ in blazeface_raw(rgb)]
    else:
        raise ValueError(f"unknown detector {detector!r}; use 'hog' or 'blazeface'")
    models = _dlib_models()
    lms = [models.landmarks(rgb, b) for b, _ in boxes]  # type: ignore[arg-type]
    presence = face_presence(rgb, lms)
    faces = [Face(rgb, tuple(b), s, lm)  # type: ignore[arg-type]
             for (b, s), lm, p in zip(boxes, lms, presence, strict=True) if p >= min_presence]
    faces.sort(key=lambda f: f.box[0])
    note = None
    if not faces:
        note = ("no face found (frontal faces of at least ~40 px at the detection scale are"
                " found; very small, strongly turned or occluded faces may be missed)")
    return ImageFaces(source, faces, note=note, size=size)


def detect_file(path: str | Path, **kwargs: object) -> ImageFaces:
    """Read (EXIF-upright) and detect; unreadable files give an error result, not raise."""
    try:
        img = load_rgb(path)
    except ImageError as err:
        return ImageFaces(str(path), [], error=str(err))
    return detect_array(img, source=str(path), **kwargs)  # type: ignore[arg-type]


def detect_batch(inputs: Iterable[str | Path | np.ndarray], **kwargs: object
                 ) -> list[ImageFaces]:
    """One ``ImageFaces`` per input, in order; a bad input never stops the batch."""
    out = []
    for k, item in enumerate(inputs):
        try:
            if isinstance(item, np.ndarray):
                res = detect_array(item, source=f"<array {k}>", **kwargs)  # type: ignore[arg-type]
                out.append(res)
            else:
                out.append(detect_file(item, **kwargs))
        except Exception as err:
            out.append(ImageFaces(str(item) if not isinstance(item, np.ndarray)
                                  else f"<array {k}>", [], error=f"{type(err).__name__}: {err}"))
    return out
