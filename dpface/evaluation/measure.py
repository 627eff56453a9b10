"""Image-level utility metrics: SSIM/PSNR, detection near a face, landmark error, skin colour
and texture on a skin mask, and a Fréchet distance between descriptor sets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

Box = tuple[float, float, float, float]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit images (inf when identical)."""
    d = a.astype(np.int64) - b.astype(np.int64)
    mse = float((d * d).sum()) / d.size
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (scikit-image, 7×7 windows) of two 8-bit RGB or gray images.

    Only the part of the images that differs, grown by 8 px, is computed: elsewhere both
    images are identical, so SSIM's local value there is exactly 1 (a large photo with one
    changed face then costs what the face costs)."""
    from skimage.metrics import structural_similarity

    kw = {"channel_axis": 2 if a.ndim == 3 else None, "data_range": 255}
    diff = np.any(a != b, axis=2) if a.ndim == 3 else a != b
    if not diff.any():
        return 1.0
    h, w = diff.shape
    pad, border = 8, 3  # skimage leaves out a (7 - 1) / 2 = 3 px border from the mean
    ys, xs = np.nonzero(diff)
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + 1 + pad)
    if (y1 - y0) * (x1 - x0) > 0.5 * h * w:
        return float(structural_similarity(a, b, **kw))  # type: ignore[no-untyped-call]
    _, smap = structural_similarity(
        a[y0:y1, x0:x1],
        b[y0:y1, x0:x1],  # type: ignore[no-untyped-call]
        full=True,
        **kw,
    )
    if smap.ndim == 3:
        smap = smap.mean(axis=2)
    # keep only the sub-map pixels that lie in the whole image's scored area
    ry0, ry1 = max(border, y0) - y0, min(h - border, y1) - y0
    rx0, rx1 = max(border, x0) - x0, min(w - border, x1) - x0
    deficit = float((1.0 - smap[ry0:ry1, rx0:rx1]).sum())
    return float(1.0 - deficit / ((h - 2 * border) * (w - 2 * border)))


def _window(
    img: np.ndarray, box: Sequence[float], grow: float = 1.0
) -> tuple[np.ndarray, int, int]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    wx0, wy0 = int(max(0, x0 - grow * w)), int(max(0, y0 - grow * h))
    wx1, wy1 = int(min(img.shape[1], x1 + grow * w)), int(min(img.shape[0], y1 + grow * h))
    return np.ascontiguousarray(img[wy0:wy1, wx0:wx1]), wx0, wy0


def detect_near(
    models: Any, img: np.ndarray, box: Sequence[float], min_iou: float = 0.3
) -> tuple[bool, Box]:
    """dlib HOG detection in a window around ``box`` (upsampled when the face is small):
    (found, best box with IoU >= ``min_iou``, else the given box)."""
    win, wx0, wy0 = _window(img, box)
    w = box[2] - box[0]
    # the face is brought to 80-120 px, where dlib's HOG (upsampled once) finds it reliably
    s = 80.0 / max(w, 1.0) if w < 80 else min(1.0, 120.0 / w)
    if s != 1.0:
        interp = cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA
        win = cv2.resize(win, None, fx=s, fy=s, interpolation=interp)
    best: tuple[bool, Box] = (False, (box[0], box[1], box[2], box[3]))
    best_iou = min_iou
    for d in models.detect(win, upsample=1):
        b = (d.box[0] / s + wx0, d.box[1] / s + wy0, d.box[2] / s + wx0, d.box[3] / s + wy0)
        v = iou(b, box)
        if v >= best_iou:
            best, best_iou = (True, b), v
    return best


def blazeface_near(img: np.ndarray, box: Sequence[float], min_iou: float = 0.3) -> bool:
    """BlazeFace finds a face overlapping ``box`` (IoU >= ``min_iou``) in a window around it.

    BlazeFace boxes are tighter than dlib's around the eyes-to-mouth area, so the IoU is taken
    against the dlib box after matching centres loosely: a detection counts when its centre
    lies inside ``box`` and the IoU is at least ``min_iou``/2."""
    from dpface.detect import blazeface_raw

    win, wx0, wy0 = _window(img, box, grow=0.6)
    for b, _, _ in blazeface_raw(win):
        g = (b[0] + wx0, b[1] + wy0, b[2] + wx0, b[3] + wy0)
        cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
        inside = box[0] <= cx <= box[2] and box[1] <= cy <= box[3]
        if inside and iou(g, box) >= min_iou / 2:
            return True
    return False


def landmark_nme(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean point-to-point error of 68 landmarks normalised by the reference's outer
    inter-ocular distance (points 36 and 45)."""
    d = float(np.linalg.norm(ref[36] - ref[45]))
    return float(np.linalg.norm(pred - ref, axis=1).mean() / max(d, 1e-9))


# a rough generic head in millimetres (x right, y up, z towards the camera; nose tip at the
# origin) at six of the 68 landmarks: nose tip, chin, outer eye corners, mouth corners
_POSE_IDX = np.array([30, 8, 36, 45, 48, 54])
_POSE_MODEL = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.0, -68.0, -14.0],
        [-44.0, 34.0, -28.0],
        [44.0, 34.0, -28.0],
        [-27.0, -30.0, -22.0],
        [27.0, -30.0, -22.0],
    ]
)


def head_pose(lm: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees from 68 landmarks: a scaled-orthographic fit of a
    generic head (least-squares 2×3 projection, rows made orthonormal). The generic model
    biases absolute angles; the evaluation uses differences between two faces."""
    model = _POSE_MODEL * np.array([1.0, -1.0, -1.0])  # image axes: y down, z away
    x3 = model - model.mean(axis=0)
    p = np.asarray(lm, dtype=np.float64)[_POSE_IDX]
    x2 = p - p.mean(axis=0)
    m = np.linalg.lstsq(x3, x2, rcond=None)[0].T  # (2, 3): x2 ~ x3 @ m.T
    r1 = m[0] / max(float(np.linalg.norm(m[0])), 1e-12)
    r2 = m[1] - float(m[1] @ r1) * r1
    r2 = r2 / max(float(np.linalg.norm(r2)), 1e-12)
    r = np.stack([r1, r2, np.cross(r1, r2)])
    yaw = float(np.degrees(np.arcsin(np.clip(r[0, 2], -1.0, 1.0))))
    pitch = float(np.degrees(np.arcsin(np.clip(-r[1, 2], -1.0, 1.0))))
    roll = float(np.degrees(np.arctan2(r[1, 0], r[0, 0])))
    return np.array([yaw, pitch, roll])


def pose_error(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean absolute difference of yaw, pitch and roll (degrees) between two landmark sets."""
    d = head_pose(pred) - head_pose(ref)
    return float(np.abs((d + 180.0) % 360.0 - 180.0).mean())


def skin_mask(shape: tuple[int, ...], lm: np.ndarray) -> np.ndarray:
    """Boolean skin mask: the convex hull of the 68 landmarks without (grown) eyes, brows and
    mouth."""
    face = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(lm.astype(np.float32)).astype(np.int32), 1)
    for part in (range(36, 42), range(42, 48), range(48, 60), range(17, 22), range(22, 27)):
        p = lm[list(part)]
        c = p.mean(axis=0)
        cv2.fillConvexPoly(
            face, cv2.convexHull((c + 1.6 * (p - c)).astype(np.float32)).astype(np.int32), 0
        )
    return face > 0


def skin_colour_texture(inp: np.ndarray, out: np.ndarray, lm: np.ndarray) -> tuple[float, float]:
    """(ΔE2000 between the mean CIE Lab skin colours of input and output, texture ratio).

    Texture: standard deviation of the lightness detail (L minus its Gaussian blur at 2 % of
    the face width) on the skin mask, output over input (1 = same amount of skin texture,
    0 = smoothed away)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    x0, y0 = np.floor(lm.min(axis=0)).astype(int)
    x1, y1 = np.ceil(lm.max(axis=0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, inp.shape[1]), min(y1, inp.shape[0])
    mask = skin_mask((y1 - y0, x1 - x0), lm - [x0, y0])
    if mask.sum() < 16:
        return float("nan"), float("nan")
    a = rgb2lab(inp[y0:y1, x0:x1])
    b = rgb2lab(out[y0:y1, x0:x1])
    de = float(deltaE_ciede2000(a[mask].mean(axis=0), b[mask].mean(axis=0)))  # type: ignore[no-untyped-call]
    sigma = max(0.5, 0.02 * (x1 - x0))

    def detail(lab: np.ndarray) -> float:
        lum = lab[..., 0].astype(np.float32)
        return float((lum - cv2.GaussianBlur(lum, (0, 0), sigma))[mask].std())

    d_in = detail(a)
    return de, float(detail(b) / d_in) if d_in > 1e-6 else float("nan")


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of descriptors (rows):
    |mu_x - mu_y|^2 + tr(Sx + Sy - 2 (Sx Sy)^(1/2)).

    tr((Sx Sy)^(1/2)) is the sum of the singular values of Xc Yc^T / sqrt((n-1)(m-1)) (Xc, Yc
    the centred rows), exact and cheap when there are fewer rows than dimensions. With so few
    rows the value is a small-sample estimate, biased upwards: compare it only between sets
    of equal size."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    n, m = len(x) - 1, len(y) - 1
    cross = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt(n * m)
    val = float(
        ((x.mean(axis=0) - y.mean(axis=0)) ** 2).sum()
        + (xc**2).sum() / n
        + (yc**2).sum() / m
        - 2 * cross
    )
    return max(val, 0.0)
