"""dlib models from ``face-recognition-models`` run with ``dlib-bin``.

HOG frontal-face detector, 5- and 68-point landmark predictors, and the 128-d ResNet face
recogniser (the "dlib" attacker of the literature: same person when L2 distance < 0.6).
Model files come from the verified store (``dpface.models.store``); dlib itself is imported
lazily so that importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from dpface.models import store


@dataclass(frozen=True)
class Detection:
    """One detected face: box (x0, y0, x1, y1) in pixels and the detector's score."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.box[2] - self.box[0]


def _dlib() -> Any:
    import dlib  # provided by the dlib-bin wheel

    return dlib


def _rect(box: tuple[float, float, float, float]) -> Any:
    x0, y0, x1, y1 = (round(v) for v in box)
    return _dlib().rectangle(x0, y0, x1, y1)


def _check(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img)


class DlibFaceModels:
    """Lazily loaded dlib detector, landmark predictors and recogniser (one instance is
    enough per process; dlib objects are not thread-safe, so do not share across threads)."""

    @cached_property
    def detector(self) -> Any:
        """dlib's HOG + linear SVM frontal face detector."""
        return _dlib().get_frontal_face_detector()

    @cached_property
    def predictor5(self) -> Any:
        """5-point landmark predictor (eye corners, base of the nose)."""
        return _dlib().shape_predictor(str(store.path("dlib/shape_predictor_5_face_landmarks.dat")))

    @cached_property
    def predictor68(self) -> Any:
        """68-point (iBUG 300-W) landmark predictor."""
        return _dlib().shape_predictor(
            str(store.path("dlib/shape_predictor_68_face_landmarks.dat"))
        )

    @cached_property
    def recogniser(self) -> Any:
        """ResNet-29 face recogniser producing 128-d descriptors."""
        return _dlib().face_recognition_model_v1(
            str(store.path("dlib/dlib_face_recognition_resnet_model_v1.dat"))
        )

    def detect(self, img: np.ndarray, upsample: int = 1, threshold: float = 0.0) -> list[Detection]:
        """HOG face boxes, best first. ``upsample`` doubles the image that many times first
        (finds faces down to ~40 px at 1)."""
        rects, scores, _ = self.detector.run(_check(img), upsample, threshold)
        dets = [
            Detection(
                (float(r.left()), float(r.top()), float(r.right()), float(r.bottom())), float(s)
            )
            for r, s in zip(rects, scores, strict=True)
        ]
        return sorted(dets, key=lambda d: -d.score)

    def landmarks(
        self, img: np.ndarray, box: tuple[float, float, float, float], points: int = 68
    ) -> np.ndarray:
        """(points, 2) float landmark coordinates (x, y) for the face in ``box``."""
        pred = {5: self.predictor5, 68: self.predictor68}.get(points)
        if pred is None:
            raise ValueError("dlib landmark models have 5 or 68 points")
        shape = pred(_check(img), _rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def descriptor(self, img: np.ndarray, landmarks68: np.ndarray, jitter: int = 0) -> np.ndarray:
        """128-d dlib descriptor (not unit-norm; dlib's threshold is L2 distance 0.6)."""
        dlib = _dlib()
        pts = [dlib.point(round(x), round(y)) for x, y in landmarks68]
        xs, ys = landmarks68[:, 0], landmarks68[:, 1]
        rect = dlib.rectangle(round(xs.min()), round(ys.min()), round(xs.max()), round(ys.max()))
        shape = dlib.full_object_detection(rect, pts)
        return np.asarray(
            self.recogniser.compute_face_descriptor(_check(img), shape, jitter), dtype=np.float64
        )


def arcface_points(landmarks68: np.ndarray) -> np.ndarray:
    """The 5 ArcFace reference points from 68 dlib landmarks, in ArcFace order:
    image-left eye centre, image-right eye centre, nose tip, left and right mouth corners."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    return np.stack(
        [
            lm[36:42].mean(axis=0),
            lm[42:48].mean(axis=0),
            lm[30],
            lm[48],
            lm[54],
        ]
    ).astype(np.float32)
