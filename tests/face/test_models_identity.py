"""Identity encoders on real sample photos: separation, calibrated thresholds, mirror images,
attributes, and the user-supplied ArcFace ONNX path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dpface.models.attributes import EMOTIONS, age_gender, emotion_probs
from dpface.models.dlib_models import DlibFaceModels
from dpface.models.encoders import (
    ArcFaceOnnxEncoder,
    IdentityEncoder,
    MobileFaceEncoder,
    calibrate,
    get_encoder,
    pair_similarity,
)
from dpface.models.samples import SampleFace, labelled_pairs

ENCODERS = ["mobileface", "faceres", "faceres-deep", "dlib"]


@pytest.fixture(scope="module")
def embeddings(faces: tuple[SampleFace, ...]) -> dict[str, np.ndarray]:
    return {name: get_encoder(name).embed(faces) for name in ENCODERS}


def test_sample_set_has_known_pairs(faces: tuple[SampleFace, ...]) -> None:
    _, _, same = labelled_pairs(faces)
    assert len(faces) >= 30
    assert same.sum() >= 10  # the six Obama photos
    assert (~same).sum() >= 300
    assert sum(f.identity == "obama" for f in faces) == 6


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_separates_identities(
    name: str, faces: tuple[SampleFace, ...], embeddings: dict[str, np.ndarray]
) -> None:
    enc = get_encoder(name)
    e = embeddings[name]
    assert e.shape == (len(faces), enc.dim)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    i, j, same = labelled_pairs(faces)
    s = pair_similarity(e, i, j)
    auc, _ = calibrate(s, same)
    assert auc >= 0.98, f"{name}: AUC {auc:.4f}"
    # the shipped threshold still works on these pairs
    tpr = (s[same] >= enc.threshold).mean()
    tnr = (s[~same] < enc.threshold).mean()
    assert tpr >= 0.9 and tnr >= 0.97, (name, tpr, tnr)


def _mirrored(face: SampleFace, models: DlibFaceModels) -> SampleFace:
    img = np.ascontiguousarray(face.image[:, ::-1])
    w = img.shape[1]
    x0, y0, x1, y1 = face.box
    box = (w - 1 - x1, y0, w - 1 - x0, y1)
    lm = models.landmarks(img, box)
    return dataclasses.replace(face, image=img, box=box, landmarks68=lm)


@pytest.mark.parametrize("name", ENCODERS)
def test_mirror_image_stays_matched(
    name: str, faces: tuple[SampleFace, ...], embeddings: dict[str, np.ndarray]
) -> None:
    models = DlibFaceModels()
    idx = [
        k
        for k, f in enumerate(faces)
        if f.photo
        in (
            "fr-obama.jpg",
            "fr-biden.jpg",
            "skimage-astronaut.png",
            "insightface-Tom_Hanks_54745.png",
        )
    ]
    enc: IdentityEncoder = get_encoder(name)
    mirrored = enc.embed([_mirrored(faces[k], models) for k in idx])
    sims = np.sum(embeddings[name][idx] * mirrored, axis=1)
    assert (sims >= enc.threshold).all(), (name, sims)


def test_differentiable_embedding_matches_and_has_gradient(faces: tuple[SampleFace, ...]) -> None:
    enc = MobileFaceEncoder()
    crops = enc.crops(faces[:2])
    x = torch.from_numpy(crops.astype(np.float32)).requires_grad_(True)
    e = enc.embed_tensor(x)
    np.testing.assert_allclose(e.detach().numpy(), enc.embed(faces[:2]), atol=1e-5)
    (e[0] @ e[1]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_attributes_on_sample_faces(faces: tuple[SampleFace, ...]) -> None:
    known_male = {"obama", "biden", "tom-hanks"}
    known_female = {"eileen-collins"} | {f.identity for f in faces if f.collection == "face-api"}
    age, male = age_gender(faces)
    for f, p in zip(faces, male, strict=True):
        if f.identity in known_male:
            assert p > 0.5, f.identity
        elif f.identity in known_female:
            assert p < 0.5, f.identity
    assert ((age > 15) & (age < 80)).all()
    probs = emotion_probs(faces)
    assert probs.shape == (len(faces), len(EMOTIONS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # the astronaut portrait is a broad smile
    astro = next(k for k, f in enumerate(faces) if f.identity == "eileen-collins")
    assert EMOTIONS[int(probs[astro].argmax())] == "happy"


# ------------------------------------------------------------------ arcface-onnx


def _export_tiny_arcface(path: Path) -> torch.nn.Module:
    """A small untrained ArcFace-shaped network (NCHW 112×112 RGB -> 64-d), as ONNX."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.PReLU(8),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.PReLU(16),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 64),
    ).eval()
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 112, 112),),
        str(path),
        input_names=["data"],
        output_names=["fc1"],
        dynamic_axes={"data": {0: "n"}, "fc1": {0: "n"}},
        dynamo=False,
    )
    return net


def test_arcface_onnx_encoder_runs_a_local_model(
    tmp_path: Path, faces: tuple[SampleFace, ...]
) -> None:
    net = _export_tiny_arcface(tmp_path / "tiny.onnx")
    enc = get_encoder("arcface-onnx", model_path=tmp_path / "tiny.onnx")
    assert isinstance(enc, ArcFaceOnnxEncoder) and enc.dim == 64
    e = enc.embed(faces[:3])
    assert e.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # same numbers as running the network ourselves on RGB crops scaled to [-1, 1]
    crops = MobileFaceEncoder().crops(faces[:3]).astype(np.float32)
    x = torch.from_numpy((crops - 127.5) / 127.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(x), dim=1).numpy()
    np.testing.assert_allclose(e, ref, atol=1e-4)


def test_arcface_onnx_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ArcFaceOnnxEncoder(tmp_path / "absent.onnx")


REAL_ARCFACE = Path.home() / ".insightface" / "models" / "buffalo_l" / "w600k_r50.onnx"


@pytest.mark.skipif(
    not REAL_ARCFACE.is_file(), reason=f"no user-supplied ArcFace weights at {REAL_ARCFACE}"
)
def test_arcface_onnx_real_weights_separate(faces: tuple[SampleFace, ...]) -> None:
    enc = ArcFaceOnnxEncoder(REAL_ARCFACE)
    i, j, same = labelled_pairs(faces)
    auc, _ = calibrate(pair_similarity(enc.embed(faces), i, j), same)
    assert auc >= 0.98


def test_faceres_deep_is_a_calibrated_attacker(
    faces: tuple[SampleFace, ...], embeddings: dict[str, np.ndarray]
) -> None:
    """faceres-deep (human-models' deeper FaceRes) is an evaluation attacker whose cosine
    threshold is the Youden cut on the sample pairs, as for the other encoders."""
    from dpface.evaluation.attacks import ATTACKERS, get_attacker

    enc = get_encoder("faceres-deep")
    assert enc.dim == 1024 and "faceres-deep" in ATTACKERS
    i, j, same = labelled_pairs(faces)
    _, thr = calibrate(pair_similarity(embeddings["faceres-deep"], i, j), same)
    assert abs(thr - enc.threshold) < 0.01, thr
    assert get_attacker("faceres-deep").threshold == pytest.approx(1.0 - enc.threshold)
    # a different network from FaceRes, not the same weights under another name
    assert not np.allclose(embeddings["faceres-deep"], embeddings["faceres"], atol=1e-3)
