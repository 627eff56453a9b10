"""Identity encoders behind one interface.

Every encoder maps faces (a photo plus its landmarks) to L2-normalised embeddings of shape
(n, dim), compared by cosine similarity; two faces are "the same person" when the similarity
is at least ``threshold``. Thresholds were calibrated on the sample faces
(``dpface.models.samples``) with ``calibrate()``: the cut between same-person and
different-person pair similarities that maximises balanced accuracy (Youden's J), placed
midway between the two neighbouring observed similarities. Those sample sets are small (one
person with six photos), so treat the thresholds as sensible defaults, not certified
operating points; re-run ``calibrate()`` on your own labelled pairs when it matters.

* ``mobileface`` (default): MobileFace (ArcFace convention: 5-point aligned 112×112 RGB),
  256-d, differentiable through the torch TFJS interpreter.
* ``faceres``: FaceRes 1024-d descriptor on a 224×224 ArcFace-template crop.
* ``dlib``: dlib's ResNet 128-d descriptor (its own chip extraction from 68 landmarks).
* ``arcface-onnx``: any ArcFace ONNX recogniser from a local path (e.g. a user's
  ``buffalo_l/w600k_r50.onnx``), run by insightface + onnxruntime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dpface.align import arcface_crop


class FaceLike(Protocol):
    """What encoders need: the RGB uint8 photo and the face's landmarks."""

    @property
    def image(self) -> np.ndarray: ...

    @property
    def landmarks68(self) -> np.ndarray: ...

    @property
    def points5(self) -> np.ndarray: ...


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return out


class IdentityEncoder(ABC):
    """A face recogniser: ``embed(faces)`` -> unit (n, dim) float32, cosine metric."""

    name: str
    dim: int
    metric: str = "cosine"
    threshold: float  # cosine similarity at or above which two faces match

    @abstractmethod
    def embed(self, faces: Sequence[FaceLike]) -> np.ndarray:
        """L2-normalised embeddings, one row per face."""

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of matching rows (or all pairs when given 2-D × 2-D.T)."""
        return np.asarray(np.sum(l2n(a) * l2n(b), axis=-1))

    def same(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether rows of ``a`` and ``b`` are judged the same person."""
        return self.similarity(a, b) >= self.threshold


class TfjsEncoder(IdentityEncoder):
    """An encoder whose network is a shipped TFJS model run by the torch interpreter."""

    model: str
    output: str
    crop_size: int

    def crops(self, faces: Sequence[FaceLike]) -> np.ndarray:
        """(n, S, S, 3) uint8 aligned crops."""
        return np.stack([arcface_crop(f.image, f.points5, self.crop_size) for f in faces])

    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable: NHWC float RGB crops in 0..255 -> unit (n, dim) embeddings."""
        from dpface.models.tfjs_models import run

        e = run(self.model, x)[self.output]
        return torch.nn.functional.normalize(e.reshape(e.shape[0], -1), dim=1)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings of already aligned uint8 crops."""
        x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))
        with torch.no_grad():
            return self.embed_tensor(x).numpy()

    def embed(self, faces: Sequence[FaceLike]) -> np.ndarray:
        """Align (ArcFace template) and embed."""
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_crops(self.crops(faces))


class MobileFaceEncoder(TfjsEncoder):
    """MobileFace, 256-d (the default dpface encoder)."""

    name = "mobileface"
    dim = 256
    model = "mobileface"
    output = "embedding"
    crop_size = 112
    threshold = 0.265  # calibrated on the sample faces (AUC 0.9945)


class FaceResEncoder(TfjsEncoder):
    """FaceRes descriptor, 1024-d (224×224 ArcFace-template crop)."""

    name = "faceres"
    dim = 1024
    model = "faceres"
    output = "descriptor"
    crop_size = 224
    threshold = 0.591  # calibrated on the sample faces (AUC 0.9990)


class FaceResDeepEncoder(TfjsEncoder):
    """FaceRes-deep descriptor, 1024-d (224×224 ArcFace-template crop): the deeper FaceRes
    of human-models, a stronger attacker. Evaluation only: no dpface mechanism or generator
    reads it."""

    name = "faceres-deep"
    dim = 1024
    model = "faceres-deep"
    output = "descriptor"
    crop_size = 224
    threshold = 0.681  # calibrated on the sample faces (AUC 0.9982)


class DlibEncoder(IdentityEncoder):
    """dlib ResNet, 128-d. dlib's published rule is L2 distance < 0.6 on its raw
    descriptors (``DlibFaceModels.descriptor``); this encoder works on unit vectors and
    uses a cosine threshold like the others."""

    name = "dlib"
    dim = 128
    threshold = 0.937  # calibrated on the sample faces (AUC 1.0)

    def __init__(self) -> None:
        from dpface.models.dlib_models import DlibFaceModels

        self.models = DlibFaceModels()

    def embed(self, faces: Sequence[FaceLike]) -> np.ndarray:
        """dlib descriptors from 68 landmarks, L2-normalised."""
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2n(np.stack([self.models.descriptor(f.image, f.landmarks68) for f in faces]))


class ArcFaceOnnxEncoder(IdentityEncoder):
    """Any ArcFace-style ONNX recogniser from a local file, run through insightface."""

    name = "arcface-onnx"
    threshold = 0.28  # insightface's usual cut for its w600k/glint models; recalibrate

    def __init__(self, model_path: str | Path, threshold: float | None = None) -> None:
        p = Path(model_path)
        if not p.is_file():
            raise FileNotFoundError(
                f"ArcFace ONNX model not found at {p}: pass the path of a local .onnx file"
                " (e.g. ~/.insightface/models/buffalo_l/w600k_r50.onnx); dpface never"
                " downloads weights"
            )
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        self.model = ArcFaceONNX(model_file=str(p))
        self.model.prepare(-1)
        self.crop_size = int(self.model.input_size[0])
        self.dim = int(self.model.output_shape[-1])
        if threshold is not None:
            self.threshold = threshold

    def embed(self, faces: Sequence[FaceLike]) -> np.ndarray:
        """Align with the ArcFace template, run the ONNX model (BGR in, as insightface)."""
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        crops = [arcface_crop(f.image, f.points5, self.crop_size)[:, :, ::-1] for f in faces]
        return l2n(self.model.get_feat([np.ascontiguousarray(c) for c in crops]))


def get_encoder(name: str = "mobileface", **kwargs: object) -> IdentityEncoder:
    """Encoder by name: mobileface (default), faceres, dlib, arcface-onnx (model_path=...)."""
    table: dict[str, type[IdentityEncoder]] = {
        "mobileface": MobileFaceEncoder,
        "faceres": FaceResEncoder,
        "faceres-deep": FaceResDeepEncoder,
        "dlib": DlibEncoder,
        "arcface-onnx": ArcFaceOnnxEncoder,
    }
    if name not in table:
        raise KeyError(f"unknown encoder {name!r}; choose from {sorted(table)}")
    return table[name](**kwargs)


def pair_similarity(emb: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of the embedding rows i[k] and j[k]."""
    e = l2n(emb)
    return np.asarray(np.sum(e[i] * e[j], axis=1))


def calibrate(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, threshold) from pair similarities: AUC by the rank statistic; threshold
    maximising TPR − FPR, midway between neighbouring observed scores."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("calibration needs both same-person and different-person pairs")
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    auc = float(gt + 0.5 * eq)
    order = np.sort(np.unique(s))
    cuts = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    j = [(pos >= c).mean() - (neg >= c).mean() for c in cuts]
    return auc, float(cuts[int(np.argmax(j))])
