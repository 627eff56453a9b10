"""Expression and attribute estimates: emotion probabilities, age and gender.

* Emotion: the TFJS ``emotion`` model on a 64×64 gray crop of the landmarks' box
  (7 classes, ``EMOTIONS``).
* Age and gender: ``faceres`` on the 224×224 ArcFace-template crop; age is the expectation
  of its 100-bin (0..99 years) distribution, gender is P(male).

On the sample faces gender is right for all 34 faces; age is not validated (no labels).
Both are used for utility metrics and attribute mechanisms, not for decisions about people.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from dpface.align import arcface_crop, loose_crop
from dpface.models.encoders import FaceLike
from dpface.models.tfjs_models import EMOTIONS, prepare, run

__all__ = ["EMOTIONS", "Attributes", "attributes", "emotion_probs"]


@dataclass(frozen=True)
class Attributes:
    """Per-face attribute estimates."""

    age: float  # expected age in years
    p_male: float
    emotions: dict[str, float]


def emotion_crops(faces: Sequence[FaceLike]) -> np.ndarray:
    """(n, 64, 64, 1) uint8 gray crops for the emotion model."""
    return np.stack(
        [
            cv2.cvtColor(loose_crop(f.image, f.landmarks68, 64, scale=1.0), cv2.COLOR_RGB2GRAY)
            for f in faces
        ]
    )[..., None]


def emotion_probs(faces: Sequence[FaceLike]) -> np.ndarray:
    """(n, 7) emotion probabilities in ``EMOTIONS`` order."""
    if not faces:
        return np.zeros((0, len(EMOTIONS)), dtype=np.float32)
    with torch.no_grad():
        return run("emotion", prepare("emotion", emotion_crops(faces)))["probs"].numpy()


def age_gender(faces: Sequence[FaceLike]) -> tuple[np.ndarray, np.ndarray]:
    """(expected age in years, P(male)) per face, from faceres."""
    if not faces:
        return np.zeros(0), np.zeros(0)
    crops = np.stack([arcface_crop(f.image, f.points5, 224) for f in faces])
    with torch.no_grad():
        out = run("faceres", prepare("faceres", crops))
    age = (out["age"].numpy() * np.arange(100, dtype=np.float32)).sum(axis=1)
    return age.astype(np.float64), out["male"].numpy().reshape(-1).astype(np.float64)


def attributes(faces: Sequence[FaceLike]) -> list[Attributes]:
    """Age, gender and emotion estimates for each face."""
    probs = emotion_probs(faces)
    age, male = age_gender(faces)
    return [
        Attributes(float(a), float(m), {e: float(p) for e, p in zip(EMOTIONS, row, strict=True)})
        for a, m, row in zip(age, male, probs, strict=True)
    ]
