"""Geometry helpers for the classical generators: landmark extension, a fixed triangle mesh,
piecewise-affine warps by one ``cv2.remap``, soft region masks and masked blurs.

Conventions: points are (x, y) float pixel coordinates; images are (H, W[, C]) arrays.
The 68 landmarks follow the iBUG 300-W order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
outer lips 48-59, inner lips 60-67).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay

JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
LEFT_EYE = np.arange(36, 42)  # image-left eye
RIGHT_EYE = np.arange(42, 48)
INNER_LIPS = np.arange(60, 68)
OUTER_LIPS = np.arange(48, 60)

FOREHEAD_LIFT = 0.22  # forehead points: brows lifted by this share of nose-root-to-chin height


def face_width(lm68: np.ndarray) -> float:
    """Jaw-to-jaw width of the face in pixels (landmarks 0 and 16, at least the x extent)."""
    lm = np.asarray(lm68, dtype=np.float64)
    return max(float(np.linalg.norm(lm[16] - lm[0])), float(np.ptp(lm[:, 0])), 1e-6)


def up_vector(lm68: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit vector from the chin towards the nose root, and that distance in pixels."""
    lm = np.asarray(lm68, dtype=np.float64)
    v = lm[27] - lm[8]
    h = float(np.linalg.norm(v))
    return v / max(h, 1e-9), h


def extend(lm68: np.ndarray) -> np.ndarray:
    """(78, 2): the 68 landmarks plus ten forehead points above the brows, so that the
    mesh covers the brows and a band of forehead."""
    lm = np.asarray(lm68, dtype=np.float64)
    u, h = up_vector(lm)
    forehead = lm[BROWS] + FOREHEAD_LIFT * h * u
    return np.concatenate([lm, forehead])


def triangulate(points: np.ndarray) -> np.ndarray:
    """(m, 3) Delaunay triangles of a (canonical) point set, dropping sliver triangles."""
    pts = np.asarray(points, dtype=np.float64)
    tri = Delaunay(pts).simplices
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    area = 0.5 * np.abs(
        (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    )
    return np.asarray(tri[area > 1e-3], dtype=np.int64)


def signed_areas(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Signed area of each triangle (the sign flips when a warp folds a triangle over)."""
    p = np.asarray(points, dtype=np.float64)
    a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    return np.asarray(
        0.5
        * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))
    )


def piecewise_affine_maps(
    dst_pts: np.ndarray, src_pts: np.ndarray, tri: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remap tables for a piecewise-affine warp: for every pixel of a (H, W) destination
    inside the mesh drawn at ``dst_pts``, the source coordinates from the same triangle
    placed at ``src_pts``. Returns (map_x, map_y, inside) with map = -1 outside the mesh.
    Triangles are drawn in order of increasing destination area, so a fold shows the
    larger (visible) triangle."""
    h, w = shape
    index = np.full((h, w), -1, dtype=np.int32)
    dst = np.asarray(dst_pts, dtype=np.float64)
    src = np.asarray(src_pts, dtype=np.float64)
    order = np.argsort(np.abs(signed_areas(dst, tri)))
    mats = np.zeros((len(tri), 2, 3), dtype=np.float64)
    for t in order:
        d = dst[tri[t]].astype(np.float32)
        s = src[tri[t]].astype(np.float32)
        if abs(float(signed_areas(dst, tri[t : t + 1])[0])) < 1e-6:
            continue
        mats[t] = cv2.getAffineTransform(d, s)
        cv2.fillConvexPoly(
            index, np.round(d * 16).astype(np.int32), int(t), lineType=cv2.LINE_8, shift=4
        )
    inside = index >= 0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    m = mats[np.maximum(index, 0)].astype(np.float32)
    map_x = m[..., 0, 0] * xs + m[..., 0, 1] * ys + m[..., 0, 2]
    map_y = m[..., 1, 0] * xs + m[..., 1, 1] * ys + m[..., 1, 2]
    map_x[~inside] = -1.0
    map_y[~inside] = -1.0
    return map_x, map_y, inside


def warp_piecewise(
    src_img: np.ndarray,
    src_pts: np.ndarray,
    dst_pts: np.ndarray,
    tri: np.ndarray,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``src_img`` so that its mesh at ``src_pts`` lands on ``dst_pts`` in a (H, W)
    output; returns (warped float32 image, inside mask)."""
    mx, my, inside = piecewise_affine_maps(dst_pts, src_pts, tri, shape)
    out = cv2.remap(
        np.asarray(src_img, dtype=np.float32),
        mx,
        my,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out, inside


def polygon_mask(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    """float32 {0, 1} mask of a filled polygon (sub-pixel vertices)."""
    m = np.zeros(shape, dtype=np.uint8)
    p = np.round(np.asarray(poly, dtype=np.float64) * 16).astype(np.int32)
    if len(p) >= 3:
        cv2.fillPoly(m, [p], 1, lineType=cv2.LINE_AA, shift=4)
    return m.astype(np.float32)


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A soft mask that is 0 on and outside the hard mask's edge: erode by ~2 sigma, then
    blur with ``sigma``."""
    if sigma <= 0:
        return mask.astype(np.float32)
    r = max(1, round(2.0 * sigma))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    eroded = cv2.erode(mask.astype(np.float32), k)
    return np.asarray(cv2.GaussianBlur(eroded, (0, 0), sigma), dtype=np.float32)


def masked_blur(img: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: the Gaussian-weighted mean of ``img`` over pixels where
    ``weight`` > 0 (so dark eyes, mouth or background do not bleed into skin averages)."""
    w = np.asarray(weight, dtype=np.float32)
    x = np.asarray(img, dtype=np.float32)
    wx = x * (w[..., None] if x.ndim == 3 else w)
    num = cv2.GaussianBlur(wx, (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    den = np.maximum(den, 1e-4)
    return np.asarray(num / (den[..., None] if x.ndim == 3 else den), dtype=np.float32)


def rgb_to_lab(img: np.ndarray) -> np.ndarray:
    """uint8 or 0..255 float RGB -> float32 CIE Lab (OpenCV needs float32 in 0..1)."""
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    return np.asarray(cv2.cvtColor(np.clip(x, 0.0, 1.0), cv2.COLOR_RGB2Lab), dtype=np.float32)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float32 Lab -> float32 RGB in 0..255 (unclipped rounding left to the caller)."""
    rgb = cv2.cvtColor(np.asarray(lab, dtype=np.float32), cv2.COLOR_Lab2RGB)
    return np.asarray(rgb * np.float32(255.0), dtype=np.float32)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points
    onto ``dst`` (Umeyama's closed form; deterministic), as a 2×3 matrix."""
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    ms, md = s.mean(axis=0), d.mean(axis=0)
    a, b = s - ms, d - md
    var = float((a**2).sum())
    if var <= 0:
        raise ValueError("degenerate points: cannot fit a similarity")
    # complex-number form: b ~ z * a with z = scale * e^{i theta}
    za = a[:, 0] + 1j * a[:, 1]
    zb = b[:, 0] + 1j * b[:, 1]
    z = complex(np.sum(np.conj(za) * zb) / var)
    m = np.array([[z.real, -z.imag, 0.0], [z.imag, z.real, 0.0]])
    m[:, 2] = md - m[:, :2] @ ms
    return m


def ring(lm68: np.ndarray, scale: float = 1.25, n: int = 16) -> np.ndarray:
    """(n, 2) points on an ellipse around the face (its landmarks' centre and spread,
    enlarged by ``scale``): fixed anchors for smooth geometry warps."""
    lm = np.asarray(lm68, dtype=np.float64)
    c = (lm.min(axis=0) + lm.max(axis=0)) / 2.0
    r = (lm.max(axis=0) - lm.min(axis=0)) / 2.0 * scale
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([c[0] + r[0] * np.cos(t), c[1] + r[1] * np.sin(t)], axis=1)
