"""Face alignment: the standard ArcFace 5-point similarity warp (via insightface).

``arcface_crop`` maps the five ArcFace points (eye centres, nose tip, mouth corners) onto
insightface's 112×112 template; larger sizes scale the template, as insightface does.
``loose_crop`` gives a square crop around the landmarks for models trained on looser crops
(faceres, emotion, facemesh).
"""

from __future__ import annotations

import warnings

import numpy as np


def arcface_crop(img: np.ndarray, points5: np.ndarray, size: int = 112) -> np.ndarray:
    """Aligned (size, size, 3) uint8 crop in the ArcFace convention (size: multiple of 112
    or 128)."""
    from insightface.utils import face_align  # imported lazily: pulls in cv2 and skimage

    pts = np.asarray(points5, dtype=np.float32).reshape(5, 2)
    with warnings.catch_warnings():
        # insightface 2.1 calls a scikit-image API that 0.26 deprecates; harmless here
        warnings.simplefilter("ignore", FutureWarning)
        return np.ascontiguousarray(face_align.norm_crop(img, pts, image_size=size))


def loose_crop_matrix(landmarks: np.ndarray, size: int, scale: float = 1.6) -> np.ndarray:
    """2×3 affine (photo -> crop) of ``loose_crop``: a square centred on the landmarks'
    bounding box, side ``scale`` × its longer edge, mapped onto (size, size)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    (x0, y0), (x1, y1) = lm.min(axis=0), lm.max(axis=0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    s = size / (max(x1 - x0, y1 - y0) * scale)
    return np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]])


def loose_crop(img: np.ndarray, landmarks: np.ndarray, size: int, scale: float = 1.6) -> np.ndarray:
    """Square (size, size) crop around the landmarks (see ``loose_crop_matrix``); pixels
    outside the image are black."""
    import cv2

    m = loose_crop_matrix(landmarks, size, scale)
    return np.ascontiguousarray(
        cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    )
