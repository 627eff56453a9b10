"""Face shape from the surrogate, pose and expression from the photo.

The photo's dense FaceMesh (468 points with relative depth) is decomposed into

* **pose**: the 3-D similarity (scale, rotation, translation; 7 numbers) that best maps the
  canonical mean mesh onto the photo's mesh, fitted on the rigid part of the face (nose,
  forehead, upper cheeks: not the mouth, the eyes, the brows or the chin);
* **expression**: per expressive part (upper lip, lower lip, each eye, each brow) a few
  numbers fitted to the part's displacement from the canonical mean after the pose is removed
  (``EXPRESSION_PARAMS``: width scale, vertical offset, tilt, curvature, vertical scale);
  placement that is identity (where the eyes or the mouth sit) is not carried: eyes and lips
  keep only what opens, stretches or bends them, brows only their raise relative to the eyes.
  Every parameter is clipped to a plausible range;
* the **rest** (the photo's own face shape: the identity) is discarded.

The face to render is the surrogate's own shape (the canonical mean mesh moved by the
synthetic identity's landmark offsets) with the photo's expression parameters applied and
posed by the photo's pose. ``decompose`` returns the low-dimensional channel (pose +
expression: what the receipt lists as uncovered), ``compose`` builds the target mesh from it
and the surrogate alone: two photos with the same pose and expression parameters give the same
target shape whatever their identities (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpface.generators.warp import polygon_mask

PARTS = ("upper_lip", "lower_lip", "left_eye", "right_eye", "left_brow", "right_brow")
EXPRESSION_PARAMS = ("width", "offset", "tilt", "curve", "height")
# per part kind: which parameters are carried (the others are set to 0: identity)
CARRIED = {
    "lip": ("width", "offset", "tilt", "curve", "height"),
    "eye": ("curve", "height"),
    "brow": ("offset", "tilt", "curve"),
}
# clip ranges (canonical frame: 384-px ArcFace template; the face is ~200 px wide)
LIMITS = {
    "width": 0.35,  # relative change of the part's width
    "offset": 30.0,  # px
    "tilt": 0.3,  # px per px
    "curve": 0.02,  # px per px^2
    "height": 1.5,  # relative change of the part's height (eyes: -1 closes them)
}


def _kind(part: str) -> str:
    return part.split("_")[1].rstrip("s")


@dataclass(frozen=True)
class PoseExpression:
    """The channel carried from the photo: pose (scale, 3×3 rotation, translation) and the
    expression parameters (part -> ``EXPRESSION_PARAMS`` values)."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    expression: dict[str, np.ndarray]

    def as_vector(self) -> np.ndarray:
        """All carried numbers in one vector (for tests and diagnostics)."""
        return np.concatenate(
            [
                [self.scale],
                self.rotation.reshape(-1),
                self.translation,
                *[self.expression[p] for p in PARTS],
            ]
        )


def fit_similarity_3d(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares 3-D similarity dst ~ s R src + t (Umeyama; proper rotation)."""
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    a0, b0 = a - ma, b - mb
    cov = b0.T @ a0 / len(a)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    r = u @ np.diag(d) @ vt
    var = float((a0**2).sum() / len(a))
    s = float((sv * d).sum() / max(var, 1e-12))
    return s, r, mb - s * r @ ma


class ShapeModel:
    """Part membership and rigid points of the canonical mesh (built once per bank)."""

    def __init__(self, mesh3d: np.ndarray, shape68: np.ndarray, size: int) -> None:
        self.mesh3d = np.asarray(mesh3d, dtype=np.float64)
        self.shape68 = np.asarray(shape68, dtype=np.float64)
        xy = self.mesh3d[:, :2]
        ij = np.clip(np.round(xy).astype(int), 0, size - 1)

        def inside(poly: np.ndarray, grow: float = 1.0) -> np.ndarray:
            c = poly.mean(axis=0)
            m = polygon_mask((size, size), c + grow * (poly - c))
            return np.asarray(m[ij[:, 1], ij[:, 0]] > 0.5)

        lm = self.shape68
        mouth = inside(lm[48:60], 1.15)
        # upper / lower lip: above / below the line through the mouth corners and the
        # middle of the inner lips
        mid_y = np.interp(xy[:, 0], [lm[48, 0], lm[54, 0]], [lm[48, 1], lm[54, 1]])
        mid_y = mid_y + (lm[[62, 66], 1].mean() - (lm[48, 1] + lm[54, 1]) / 2.0)
        brow_band = np.array([0.0, 0.06 * float(np.ptp(lm[:, 0]))])
        self.parts: dict[str, np.ndarray] = {
            "upper_lip": np.where(mouth & (xy[:, 1] <= mid_y))[0],
            "lower_lip": np.where(mouth & (xy[:, 1] > mid_y))[0],
            "left_eye": np.where(inside(lm[36:42], 1.35))[0],
            "right_eye": np.where(inside(lm[42:48], 1.35))[0],
            "left_brow": np.where(
                inside(np.concatenate([lm[17:22] - brow_band, lm[21:16:-1] + brow_band]))
            )[0],
            "right_brow": np.where(
                inside(np.concatenate([lm[22:27] - brow_band, lm[26:21:-1] + brow_band]))
            )[0],
        }
        for name, idx in self.parts.items():
            if len(idx) < 6:
                raise ValueError(f"the canonical mesh has too few points in the {name}")
        used = np.zeros(len(xy), dtype=bool)
        for idx in self.parts.values():
            used[idx] = True
        # rigid points: above the mouth, inside the jaw's width, not on a part
        top_mouth = float(lm[48:60, 1].min())
        face = inside(np.concatenate([lm[0:17], lm[26:16:-1]]), 0.9)
        self.rigid = np.where(face & ~used & (xy[:, 1] < top_mouth - 4.0))[0]
        self.frame = {name: self._frame(xy[idx]) for name, idx in self.parts.items()}

    @staticmethod
    def _frame(pts: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(centre, half width, half height) of a part."""
        c = pts.mean(axis=0)
        return c, max(float(np.ptp(pts[:, 0])) / 2.0, 1.0), max(float(np.ptp(pts[:, 1])) / 2.0, 1.0)

    # ------------------------------------------------------------------ decomposition

    def decompose(self, mesh3d: np.ndarray) -> PoseExpression:
        """Pose and expression parameters of a photo's FaceMesh (photo pixels)."""
        m = np.asarray(mesh3d, dtype=np.float64)
        s, r, t = fit_similarity_3d(self.mesh3d[self.rigid], m[self.rigid])
        canon = ((m - t) @ r) / s  # the photo's mesh in the canonical frame
        disp = canon[:, :2] - self.mesh3d[:, :2]
        params: dict[str, np.ndarray] = {}
        for name, idx in self.parts.items():
            params[name] = self._fit_part(name, self.mesh3d[idx, :2], disp[idx])
        # brows: their raise relative to the eyes (the eyes' own offset is not carried)
        for side in ("left", "right"):
            eye = self.parts[f"{side}_eye"]
            params[f"{side}_brow"][1] -= float(disp[eye, 1].mean())
        # lips: the opening, not where the mouth sits
        mean_off = (params["upper_lip"][1] + params["lower_lip"][1]) / 2.0
        params["upper_lip"][1] -= mean_off
        params["lower_lip"][1] -= mean_off
        for name in PARTS:
            keep = CARRIED[_kind(name)]
            for k, pname in enumerate(EXPRESSION_PARAMS):
                lim = LIMITS[pname]
                params[name][k] = (
                    float(np.clip(params[name][k], -lim, lim)) if pname in keep else 0.0
                )
        return PoseExpression(s, r, t, params)

    def _fit_part(self, name: str, pts: np.ndarray, disp: np.ndarray) -> np.ndarray:
        c = self.frame[name][0]
        x = pts[:, 0] - c[0]
        y = pts[:, 1] - c[1]
        # dx = width * x ; dy = offset + tilt * x + curve * x^2 + height * y
        width = float(np.dot(x, disp[:, 0]) / max(float(np.dot(x, x)), 1e-9))
        a = np.stack([np.ones_like(x), x, x**2, y], axis=1)
        sol = np.linalg.lstsq(a, disp[:, 1], rcond=None)[0]
        return np.array([width, sol[0], sol[1], sol[2], sol[3]])

    # ------------------------------------------------------------------ composition

    def part_displacement(self, xy: np.ndarray, pe: PoseExpression) -> np.ndarray:
        """(N, 2) expression displacement of canonical points ``xy``: each part's own
        points move by its parameters (evaluated around the part's canonical frame), the
        rest follows smoothly (Gaussian weights of the part points' displacements that
        fade out away from the parts)."""
        out = np.zeros_like(xy)
        src: list[np.ndarray] = []
        vec: list[np.ndarray] = []
        for name, idx in self.parts.items():
            c, _, _ = self.frame[name]
            w, off, tilt, curve, height = pe.expression[name]
            x = xy[idx, 0] - c[0]
            y = xy[idx, 1] - c[1]
            d = np.stack([w * x, off + tilt * x + curve * x**2 + height * y], axis=1)
            out[idx] = d
            src.append(xy[idx])
            vec.append(d)
        p = np.concatenate(src)
        v = np.concatenate(vec)
        free = np.ones(len(xy), dtype=bool)
        for idx in self.parts.values():
            free[idx] = False
        sigma = 0.08 * float(np.ptp(self.shape68[:, 0]))
        d2 = ((xy[free, None, :] - p[None, :, :]) ** 2).sum(axis=2)
        k = np.exp(-d2 / (2.0 * sigma**2))
        out[free] = (k @ v) / (k.sum(axis=1, keepdims=True) + 1.0)
        return out

    def compose(self, identity_offset: np.ndarray, pe: PoseExpression) -> np.ndarray:
        """(468, 2) target mesh in photo pixels: the canonical mean mesh + the surrogate's
        shape offset (canonical px, (468, 2)) + the expression, posed."""
        xy = self.mesh3d[:, :2] + identity_offset
        xy = xy + self.part_displacement(xy, pe)
        pts = np.concatenate([xy, self.mesh3d[:, 2:3]], axis=1)
        return np.asarray((pe.scale * pts @ pe.rotation.T + pe.translation)[:, :2])


def interpolate_offsets(
    src: np.ndarray, offsets: np.ndarray, at: np.ndarray, sigma: float
) -> np.ndarray:
    """Offsets known at points ``src`` spread to points ``at`` by normalised Gaussian
    weights (a smooth displacement field)."""
    d2 = ((at[:, None, :] - src[None, :, :]) ** 2).sum(axis=2)
    k = np.exp(-(d2 - d2.min(axis=1, keepdims=True)) / (2.0 * sigma**2))
    return np.asarray((k @ offsets) / k.sum(axis=1, keepdims=True))
