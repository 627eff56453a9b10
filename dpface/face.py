"""The one face type: what detection writes and every model reads.

A :class:`Face` is a face in a photo: the photo itself (RGB uint8), the face's box and its 68
landmarks, in the photo's pixel coordinates, plus what the detector said about it. Detection
(``dpface.detect``) returns them, the sample set (``dpface.models.samples.SampleFace``, a Face
with an identity label) is made of them, alignment, the encoders, the attribute models, the
generators, the surrogate bank and the pipeline read them. (The evaluation's ``EvalFace`` is a
dataset row that loads its photo lazily; it has the same ``image`` / ``box`` / ``landmarks68``
/ ``points5`` reading interface, :class:`dpface.models.encoders.FaceLike`, and converts with
:meth:`Face.of`.)

Nothing here is private or public by itself: a Face holds the raw photo, so it never leaves
the process except through a mechanism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpface.models.dlib_models import arcface_points

__all__ = ["Face"]


@dataclass(frozen=True)
class Face:
    """One face: ``image`` (the whole photo, RGB uint8, not copied), ``box`` (x0, y0, x1, y1) and
    ``landmarks68`` ((68, 2) x, y) in the photo's pixels; ``score``, ``detector``,
    ``uncertain`` (a low score or a failed presence check) and ``landmarks_ok`` (whether the
    68-point fit is trusted) as the detector left them.

    The box is stored as four finite floats and the landmarks as a float64 (68, 2) array; any
    other shape is refused when the face is made, so every reader can rely on them."""

    image: np.ndarray = field(repr=False, compare=False)
    box: tuple[float, float, float, float]
    landmarks68: np.ndarray = field(repr=False, compare=False)
    score: float = 1.0
    detector: str = ""
    uncertain: bool = False
    landmarks_ok: bool = True

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"a face box is 4 finite numbers (x0, y0, x1, y1), got {self.box!r}")
        lm = np.asarray(self.landmarks68, dtype=np.float64)
        if lm.shape != (68, 2):
            raise ValueError(f"a face needs (68, 2) landmarks, got shape {lm.shape}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks68", lm)

    @property
    def points5(self) -> np.ndarray:
        """ArcFace's five alignment points (eyes, nose tip, mouth corners)."""
        return arcface_points(self.landmarks68)

    @property
    def width(self) -> float:
        """Box width in photo pixels."""
        return self.box[2] - self.box[0]

    @classmethod
    def of(cls, face: Any, image: np.ndarray | None = None) -> Face:
        """A Face from any object with ``box`` and ``landmarks68`` (and ``image``, unless
        ``image`` is given): e.g. the evaluation's ``EvalFace``."""
        return cls(
            face.image if image is None else image,
            face.box,
            face.landmarks68,
            float(getattr(face, "score", 1.0)),
            str(getattr(face, "detector", "")),
            bool(getattr(face, "uncertain", False)),
            bool(getattr(face, "landmarks_ok", True)),
        )
