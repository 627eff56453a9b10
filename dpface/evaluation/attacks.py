"""Attackers (face recognisers) and the identification attacks run with them.

Each attacker embeds a face and declares a match below its own distance threshold:

* ``dlib``: dlib's ResNet, L2 distance on its raw 128-d descriptors, match < 0.6 (dlib's
  published rule, the literature's usual attacker);
* ``faceres``: FaceRes 1024-d, cosine distance (1 − cos), match < 1 − 0.591;
* ``mobileface``: MobileFace 256-d, cosine distance, match < 1 − 0.265. It is the encoder
  *inside* dpface's identity mechanisms: the white-box attacker.
* ``faceres-deep``: the deeper FaceRes of human-models, 1024-d, cosine distance, match
  < 1 − 0.681: a stronger recogniser that never runs inside dpface.

The cosine thresholds are the encoders' calibrated ones (``dpface.models.encoders``).
Identity distance (Id-dis) is the attacker's distance between an output and its own input;
protection succeeds when it is at or above the threshold (the attacker no longer matches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

ATTACKERS = ("dlib", "faceres", "mobileface", "faceres-deep")
WHITE_BOX = "mobileface"  # the encoder the identity mechanisms privatise


@dataclass(frozen=True)
class Attacker:
    """A recogniser with its distance and match threshold."""

    name: str
    metric: str  # "l2" (raw descriptors) or "cosine" (1 - cos of unit vectors)
    threshold: float  # distance below which two faces match

    @property
    def white_box(self) -> bool:
        """True for the encoder that runs inside dpface's mechanisms."""
        return self.name == WHITE_BOX

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between matching rows of ``a`` and ``b`` (broadcasting)."""
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if self.metric == "l2":
            return np.asarray(np.linalg.norm(a - b, axis=-1))
        return np.asarray(1.0 - np.sum(_unit(a) * _unit(b), axis=-1))

    def pairwise(self, probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """(n, m) distances from every probe row to every gallery row."""
        return self.distance(probes[:, None, :], gallery[None, :, :])

    def average(self, embeddings: np.ndarray) -> np.ndarray:
        """The averaging attacker's estimate from several releases (axis 0)."""
        e = np.asarray(embeddings, dtype=np.float64)
        return e.mean(axis=0) if self.metric == "l2" else _unit(_unit(e).mean(axis=0))


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12))


def get_attacker(name: str) -> Attacker:
    """Attacker by name (``ATTACKERS``)."""
    from dpface.models.encoders import FaceResDeepEncoder, FaceResEncoder, MobileFaceEncoder

    table = {
        "dlib": Attacker("dlib", "l2", 0.6),
        "faceres": Attacker("faceres", "cosine", 1.0 - FaceResEncoder.threshold),
        "mobileface": Attacker("mobileface", "cosine", 1.0 - MobileFaceEncoder.threshold),
        "faceres-deep": Attacker("faceres-deep", "cosine", 1.0 - FaceResDeepEncoder.threshold),
    }
    if name not in table:
        raise KeyError(f"unknown attacker {name!r}; choose from {list(table)}")
    return table[name]


@cache
def _encoder(name: str) -> Any:
    from dpface.models.encoders import get_encoder

    return get_encoder(name)


@cache
def _dlib() -> Any:
    from dpface.models.dlib_models import DlibFaceModels

    return DlibFaceModels()


def embed(name: str, face: Any) -> np.ndarray:
    """One face's embedding for attacker ``name`` (``face``: image + landmarks68 + points5).
    dlib: the raw descriptor; others: the unit embedding."""
    if name == "dlib":
        return np.asarray(_dlib().descriptor(face.image, face.landmarks68))
    return np.asarray(_encoder(name).embed([face])[0], dtype=np.float64)


# ----------------------------------------------------------------------------- gallery attacks


def rank1(dist: np.ndarray, same: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per probe: is the nearest gallery entry (among entries whose answer is known) the same
    person? ``dist``, ``same``, ``known``: (probes, gallery)."""
    d = np.where(known, dist, np.inf)
    nearest = np.argmin(d, axis=1)
    return np.asarray(same[np.arange(len(d)), nearest])


def tar_at_far(
    dist: np.ndarray, same: np.ndarray, known: np.ndarray, self_mask: np.ndarray, far: float
) -> float:
    """True-accept rate on genuine pairs (same person, different photo) at the distance
    threshold whose false-accept rate on known impostor pairs is ``far`` (nan when there are
    no genuine pairs or too few impostor pairs to resolve that rate)."""
    genuine = dist[same & ~self_mask]
    impostor = dist[known & ~same]
    if genuine.size == 0 or impostor.size * far < 1:
        return float("nan")
    imp = np.sort(impostor)
    thr = float(imp[int(np.floor(far * imp.size))])  # accept d < thr: FAR <= far
    return float((genuine < thr).mean())


def averaging_protected(
    attacker: Attacker, releases: np.ndarray, original: np.ndarray, counts: Sequence[int]
) -> dict[int, bool]:
    """For each n in ``counts``: is the average of the first n releases' embeddings still
    at or beyond the threshold from the original (protected)?"""
    out = {}
    for n in counts:
        if n <= len(releases):
            est = attacker.average(releases[:n])
            out[n] = bool(attacker.distance(est, original) >= attacker.threshold)
    return out
