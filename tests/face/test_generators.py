"""The surrogate generator and its bank, on the real sample faces.

The bank is built on first use (about a minute) and cached under ``assets/.cache``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from dpface.face import Face
from dpface.generators.bank import SurrogateBank, default_bank
from dpface.generators.base import AttributeChannel, GeneratedFace
from dpface.generators.surrogate import SurrogateGenerator
from dpface.models.samples import SampleFace, sample_faces


@pytest.fixture(scope="module")
def bank() -> SurrogateBank:
    return default_bank()


@pytest.fixture(scope="module")
def gen(bank: SurrogateBank) -> SurrogateGenerator:
    return SurrogateGenerator(bank=bank)


def _face(faces: tuple[SampleFace, ...], photo: str, index: int = 0) -> SampleFace:
    return next(f for f in faces if f.photo == photo and f.index == index)


def _noise(seed: int, dim: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim)


def test_same_privatised_embedding_gives_the_same_output(
    gen: SurrogateGenerator, faces: tuple[SampleFace, ...]
) -> None:
    f = _face(faces, "fr-obama.jpg")
    before = f.image.copy()
    ident = _noise(1)
    a = gen.generate(f.image, f, ident)
    b = gen.generate(f.image.copy(), f, ident.copy())
    np.testing.assert_array_equal(f.image, before)  # the input is never modified
    assert a.replaced and b.replaced
    np.testing.assert_array_equal(a.image, b.image)
    assert a.details["surrogates"] == b.details["surrogates"]


def test_different_embeddings_give_different_surrogates(
    gen: SurrogateGenerator, bank: SurrogateBank, faces: tuple[SampleFace, ...]
) -> None:
    f = _face(faces, "skimage-astronaut.png")
    emb = bank.embedding("mobileface")
    outs: list[GeneratedFace] = []
    for k in (0, 1, len(bank) - 1):
        res = gen.generate(f.image, f, emb[k])
        assert res.details["surrogates"] == [k]  # the nearest synthetic identity is itself
        outs.append(res)
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            diff = np.abs(outs[i].image.astype(int) - outs[j].image.astype(int))
            assert diff.mean() > 0.05
    # different privatised embeddings of one face reach more than one surrogate
    chosen = {int(gen.choose(_noise(s))[0][0]) for s in range(40)}
    assert len(chosen) >= 5


def test_identity_comes_only_from_the_privatised_embedding(
    gen: SurrogateGenerator, faces: tuple[SampleFace, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generation never runs an identity encoder or dlib on the photo, and two different
    people given the same privatised embedding get the same surrogate identity."""
    from dpface.models import dlib_models, encoders

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("an identity model ran inside the generator")

    for cls in (encoders.MobileFaceEncoder, encoders.FaceResEncoder, encoders.DlibEncoder):
        monkeypatch.setattr(cls, "embed", refuse)
    monkeypatch.setattr(encoders.TfjsEncoder, "embed_tensor", refuse)
    monkeypatch.setattr(dlib_models.DlibFaceModels, "descriptor", refuse)
    monkeypatch.setattr(dlib_models.DlibFaceModels, "detect", refuse)
    ident = _noise(7)
    a = gen.generate(_face(faces, "fr-biden.jpg").image, _face(faces, "fr-biden.jpg"), ident)
    b = gen.generate(
        _face(faces, "skimage-astronaut.png").image,
        _face(faces, "skimage-astronaut.png"),
        ident,
    )
    assert a.replaced and b.replaced
    assert a.details["surrogates"] == b.details["surrogates"]


def test_channel_record_names_covered_and_uncovered(
    gen: SurrogateGenerator, faces: tuple[SampleFace, ...]
) -> None:
    f = _face(faces, "fr-obama.jpg")
    rec = gen.generate(f.image, f, _noise(2)).channels.as_dict()
    assert any("privatised" in c for c in rec["covered"])
    text = " ".join(rec["uncovered"])
    for word in ("pose", "expression", "lighting", "skin-tone", "landmarks", "background", "hair"):
        assert word in text
    # the face's shape inside the outline is the surrogate's, not a raw channel
    assert any("face shape" in c for c in rec["covered"])
    assert "face geometry" not in text and "lips: the input" not in text
    raw = gen.channels(AttributeChannel({"male": 0.9}, privatised=False)).as_dict()
    assert any("not privatised" in u for u in raw["uncovered"])
    priv = gen.channels(AttributeChannel({"male": 0.9}, privatised=True)).as_dict()
    assert any("attribute channel" in c for c in priv["covered"])


def test_attribute_channel_restricts_the_surrogate_sex(
    gen: SurrogateGenerator, bank: SurrogateBank
) -> None:
    for want in (0.9, 0.1):
        attr = AttributeChannel({"male": want}, privatised=True)
        for s in range(10):
            idx, _, _ = gen.choose(_noise(s), attr)
            assert (bank.male[idx] >= 0.5).all() == (want >= 0.5)


def test_multi_face_photo(gen: SurrogateGenerator, faces: tuple[SampleFace, ...]) -> None:
    group = [f for f in faces if f.photo == "insightface-t1.jpg"]
    assert len(group) == 6
    img = group[0].image
    ids = np.stack([_noise(10 + k) for k in range(len(group))])
    out, results = gen.generate_all(img, [f for f in group], ids)
    assert len(results) == 6 and all(r.replaced for r in results)
    changed = np.any(out != img, axis=2)
    inside_any = np.zeros(changed.shape, dtype=bool)
    for f, r in zip(group, results, strict=True):
        assert r.region is not None
        x0, y0, x1, y1 = r.region
        inside_any[y0:y1, x0:x1] = True
        hull = cv2.convexHull(f.landmarks68.astype(np.float32)).astype(np.int32)
        face_mask = np.zeros(changed.shape, np.uint8)
        cv2.fillConvexPoly(face_mask, hull, 1)
        assert changed[face_mask > 0].mean() > 0.5  # every face was replaced
    assert not changed[~inside_any].any()  # nothing outside the faces' regions moved


def test_face_at_the_image_border(gen: SurrogateGenerator, faces: tuple[SampleFace, ...]) -> None:
    f = _face(faces, "fr-obama.jpg")
    lm = f.landmarks68
    # cut the photo through the face: the left third and the top of the head are outside
    x_cut = int(lm[:, 0].min() + 0.3 * np.ptp(lm[:, 0]))
    y_cut = int(lm[:, 1].min() - 0.05 * np.ptp(lm[:, 1]))
    img = np.ascontiguousarray(f.image[y_cut:, x_cut:])
    face = Face(
        img,
        (f.box[0] - x_cut, f.box[1] - y_cut, f.box[2] - x_cut, f.box[3] - y_cut),
        lm - [x_cut, y_cut],
    )
    res = gen.generate(img, face, _noise(3))
    assert res.image.shape == img.shape
    assert res.replaced
    assert np.any(res.image != img)


def test_tiny_face_is_left_untouched_with_a_reason(
    gen: SurrogateGenerator, faces: tuple[SampleFace, ...]
) -> None:
    f = _face(faces, "fr-obama.jpg")
    s = 0.07  # the face becomes ~17 px wide
    small = cv2.resize(f.image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    face = Face(small, tuple(v * s for v in f.box), f.landmarks68 * s)  # type: ignore[arg-type]
    res = gen.generate(small, face, _noise(4))
    assert res.status == "untouched" and not res.replaced
    assert res.reason is not None and "NOT de-identified" in res.reason
    np.testing.assert_array_equal(res.image, small)


def test_small_but_workable_face_is_replaced(
    gen: SurrogateGenerator, faces: tuple[SampleFace, ...]
) -> None:
    f = _face(faces, "fr-obama.jpg")
    s = 0.15  # ~36 px wide
    small = cv2.resize(f.image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    face = Face(small, tuple(v * s for v in f.box), f.landmarks68 * s)  # type: ignore[arg-type]
    res = gen.generate(small, face, _noise(5))
    assert res.replaced and np.any(res.image != small)


def test_bad_inputs_are_refused(
    gen: SurrogateGenerator, faces: tuple[SampleFace, ...], bank: SurrogateBank
) -> None:
    f = _face(faces, "fr-obama.jpg")
    with pytest.raises(ValueError, match="256"):
        gen.generate(f.image, f, np.ones(128))
    with pytest.raises(ValueError, match="non-finite"):
        gen.generate(f.image, f, np.full(256, np.inf))
    with pytest.raises(ValueError, match="RGB uint8"):
        gen.generate(f.image.astype(np.float32), f, _noise(1))
    with pytest.raises(ValueError, match="attacker"):
        SurrogateGenerator(encoder="dlib", bank=bank)


def test_every_synthetic_identity_is_verified_against_its_contributors(
    bank: SurrogateBank, faces: tuple[SampleFace, ...]
) -> None:
    """No synthetic identity matches any photo of any of its contributors under any encoder
    available offline (dlib included), at the encoders' calibrated thresholds."""
    from dpface.models.encoders import get_encoder

    by_label = {f"{f.photo}#{f.index}": f.identity for f in faces}
    for name in ("mobileface", "faceres", "dlib"):
        enc = get_encoder(name)
        photos = enc.embed(faces)
        synth = enc.embed([bank.face(k) for k in range(len(bank))])
        for k, contributors in enumerate(bank.contributors):
            people = {by_label[c] for c in contributors}
            assert len(people) == 3
            rows = [j for j, f in enumerate(faces) if f.identity in people]
            worst = float(np.max(photos[rows] @ synth[k]))
            assert worst < enc.threshold, (name, k, contributors, worst)
    report = bank.report
    assert set(report) >= {"contributors", "left_out", "rejected_by", "kept"}
    assert report["kept"] == len(bank)
    closest = report["max_similarity_of_a_kept_identity_to_a_contributor"]
    assert set(closest) >= {"mobileface", "faceres", "dlib"}
    for name, sim in closest.items():
        assert sim < report["thresholds"][name] - report["verify_margin"], (name, sim)


def test_triples_are_balanced_fixed_and_majority_sex() -> None:
    """The bank's triples: at least two of the wanted sex, every contributor used about
    equally often, and the same choice whatever order the candidates come in."""
    from dpface.generators.bank import balanced_triples, majority_triples

    is_male = [True] * 4 + [False] * 8
    names = [f"person{k}" for k in range(len(is_male))]
    combos = majority_triples(is_male, True)
    assert combos and all(sum(is_male[k] for k in c) >= 2 for c in combos)
    assert all(len(set(c)) == 3 for c in combos)
    picked = balanced_triples(combos, names, 10)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert picked == balanced_triples(combos[::-1], names, 10)
    males = [sum(k in c for c in picked) for k in range(4)]
    assert max(males) - min(males) <= 1  # the scarce group is shared evenly
    assert len(balanced_triples(combos, names, 10_000)) == len(combos)


@pytest.mark.slow
def test_bank_build_does_not_depend_on_the_thread_count(bank: SurrogateBank) -> None:
    """The cached bank (built by set-up with the machine's default threads) and a fresh
    build with two threads are identical to the bit: every measured number in the docs
    refers to the bank CI builds."""
    from dpface.generators.bank import build_bank

    torch.set_num_threads(2)
    try:
        fresh = build_bank()
    finally:
        torch.set_num_threads(1)
    np.testing.assert_array_equal(fresh.textures, bank.textures)
    np.testing.assert_array_equal(fresh.embeddings["mobileface"], bank.embeddings["mobileface"])
    assert fresh.contributors == bank.contributors


def test_excluding_contributors_removes_their_synthetic_identities(
    gen: SurrogateGenerator, bank: SurrogateBank
) -> None:
    label = bank.contributors[0][0]
    sub = gen.excluding({label})
    assert 0 < len(sub.bank) < len(bank)
    assert all(label not in c for c in sub.bank.contributors)
    assert len(gen.bank) == len(bank)  # the original generator is unchanged
    for seed in range(20):
        idx, _, _ = sub.choose(_noise(seed))
        assert all(label not in sub.bank.contributors[k] for k in idx)
    # per-identity state follows the sub-bank (indices from ``choose`` are sub-bank indices)
    kept = [k for k, c in enumerate(bank.contributors) if label not in c]
    np.testing.assert_array_equal(sub._usable, gen._usable[kept])
    with pytest.raises(ValueError, match="no synthetic identity"):
        bank.without({c for cs in bank.contributors for c in cs})


def test_grey_photo_stays_grey(gen: SurrogateGenerator, faces: tuple[SampleFace, ...]) -> None:
    """The surrogate's colour detail is not painted onto a black-and-white photo."""
    f = _face(faces, "fr-obama.jpg")
    grey = np.repeat(cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    out = gen.generate(grey, f, _noise(3))
    assert out.replaced and out.region is not None
    x0, y0, x1, y1 = out.region
    crop = out.image[y0:y1, x0:x1].astype(np.int16)
    assert int(np.abs(crop - crop.mean(axis=2, keepdims=True)).max()) <= 2


@pytest.mark.slow
def test_evaluation_on_the_sample_faces_at_eps_6() -> None:
    """Regression floor for the protocol of ``python -m scripts.eval_generator`` (dlib is
    the attacker; it never runs inside the generator). Measured values are in the closing
    note of issue 5; these floors are below them so that only real regressions fail. Three
    draws: one draw of 34 faces is too few for a PSR floor (with bank v9 draw 0 alone gave
    0.74 where ten draws give 0.88 ± 0.06)."""
    from scripts.eval_generator import evaluate

    s = evaluate(SurrogateGenerator(), [6.0], draws=3, verbose=False, exclude_own=True)["6"]
    assert isinstance(s, dict)
    assert s["n"] == 3 * len(sample_faces())
    assert s["detection"] >= 0.94
    assert s["psr"] >= 0.80
    assert s["ssim"] >= 0.82
    assert s["emotion_agreement"] >= 0.50
    assert s["delta_e_tone"] < 4.0


def test_dark_hair_outside_the_features_is_not_used(bank: SurrogateBank) -> None:
    """A surrogate texture's dark strand over a cheek is marked unusable (the input shows
    there); dark pupils and brows inside the features stay usable."""
    from dpface.generators.surrogate import usable_texture

    tex = np.full((1, *bank.textures.shape[1:]), 200, dtype=np.uint8)
    cheek = bank.shape68[3] * 0.7 + bank.shape68[31] * 0.3
    x, y = (int(v) for v in cheek)
    tex[0, y - 10 : y + 10, x - 4 : x + 4] = 40  # a dark strand
    eye = bank.shape68[36:42].mean(axis=0).astype(int)
    tex[0, eye[1] - 3 : eye[1] + 3, eye[0] - 3 : eye[0] + 3] = 20  # a dark pupil
    usable = usable_texture(tex, bank.shape68)[0]
    assert usable[y, x] < 0.1
    assert usable[eye[1], eye[0]] > 0.9
    assert usable[int(bank.shape68[30][1]), int(bank.shape68[30][0])] > 0.9  # plain skin


def _smooth_field(seed: int, pts: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random 2-D displacement of ``pts`` (a made-up identity's shape offset)."""
    rng = np.random.default_rng(seed)
    centres = pts[rng.choice(len(pts), 12, replace=False)]
    vec = rng.normal(0.0, amplitude, size=(12, 2))
    d2 = ((pts[:, None, :] - centres[None]) ** 2).sum(axis=2)
    k = np.exp(-d2 / (2.0 * 30.0**2))
    return np.asarray(k @ vec / np.maximum(k.sum(axis=1, keepdims=True), 1e-9))


def test_face_shape_comes_from_the_surrogate_not_the_input(gen: SurrogateGenerator) -> None:
    """Two different input face shapes with the same pose and expression give the same
    target face shape for the same privatised identity: the input's identity shape is
    discarded, only the low-dimensional pose + expression channel is carried."""
    from dpface.generators.warp import fit_similarity

    sm = gen._shape
    canon = sm.mesh3d
    ang = np.radians(20.0)
    rot = np.array(
        [[np.cos(ang), 0.0, np.sin(ang)], [0.0, 1.0, 0.0], [-np.sin(ang), 0.0, np.cos(ang)]]
    )
    meshes = []
    for seed in (1, 2):
        # a different person: a smooth shape change without a pose of its own (its
        # similarity on the rigid points is taken out: same pose by definition)
        xy = canon[:, :2] + _smooth_field(seed, canon[:, :2], 6.0)
        a = fit_similarity(xy[sm.rigid], canon[sm.rigid, :2])
        shape = canon.copy()
        shape[:, :2] = xy @ a[:, :2].T + a[:, 2]
        meshes.append(0.8 * shape @ rot.T + np.array([300.0, 250.0, 0.0]))
    ident = np.zeros(gen.identity_dim)
    ident[0] = 1.0
    idx, w, _ = gen.choose(ident)
    targets = [gen.target_mesh(m, idx, w)[0] for m in meshes]
    inputs_differ = float(np.abs(meshes[0][:, :2] - meshes[1][:, :2]).mean())
    targets_differ = float(np.abs(targets[0] - targets[1]).mean())
    assert inputs_differ > 2.0
    assert targets_differ < 0.25 * inputs_differ, (targets_differ, inputs_differ)
    # and the pose is carried: the target is turned like the inputs
    pe = sm.decompose(meshes[0])
    assert np.degrees(np.arcsin(pe.rotation[0, 2])) == pytest.approx(20.0, abs=3.0)
    # a different privatised identity gives a different shape on the same input
    idx2, w2, _ = gen.choose(-ident)
    if list(idx2) != list(idx):
        t2 = gen.target_mesh(meshes[0], idx2, w2)[0]
        assert float(np.abs(t2 - targets[0]).mean()) > targets_differ


def test_expression_is_carried(gen: SurrogateGenerator) -> None:
    """An open mouth and closed eyes in the input open the target's mouth and close its
    eyes, whatever the identity."""
    sm = gen._shape
    canon = sm.mesh3d.copy()
    opened = canon.copy()
    opened[sm.parts["lower_lip"], 1] += 12.0  # jaw drop
    for eye in ("left_eye", "right_eye"):
        p = sm.parts[eye]
        c = canon[p, 1].mean()
        opened[p, 1] = c + 0.3 * (canon[p, 1] - c)  # eyes nearly shut
    pe = sm.decompose(opened)
    t = sm.compose(np.zeros((len(canon), 2)), pe)
    gap = t[sm.parts["lower_lip"], 1].mean() - t[sm.parts["upper_lip"], 1].mean()
    gap0 = canon[sm.parts["lower_lip"], 1].mean() - canon[sm.parts["upper_lip"], 1].mean()
    assert gap > gap0 + 8.0
    for eye in ("left_eye", "right_eye"):
        p = sm.parts[eye]
        assert np.ptp(t[p, 1]) < 0.6 * np.ptp(canon[p, 1])


def _product_metrics(cond: Any, tmp_path: Path) -> dict[str, list[float]]:
    """``dpface evaluate``'s metrics for one product condition on the sample faces: every
    attacker, seed 2024, three draws, no averaging or parrot attack, one process."""
    from dpface.evaluation.aggregate import summarise
    from dpface.evaluation.faces import sample_faces as eval_faces
    from dpface.evaluation.runner import RunConfig, run_all

    faces = eval_faces()
    cfg = RunConfig(seed=2024, draws=3, averaging=(), parrot=False)
    files, _ = run_all([cond], faces, cfg, tmp_path, workers=1)
    metrics: dict[str, list[float]] = summarise(
        cond, faces, {k: p for (_, k), p in files.items()}, cfg
    )["metrics"]
    return metrics


@pytest.mark.slow
def test_per_attacker_protection_floor_through_the_product(tmp_path: Path) -> None:
    """Regression floor on PSR for every attacker (dlib, FaceRes, MobileFace, FaceRes-deep),
    measured the way ``dpface evaluate`` measures: the product's own Anonymizer on the
    sample photos, IdentityLaplace at ε = 6, three draws. The floors sit below the values in
    docs/generator.md (issue 17) so that only real regressions fail (about 3 minutes)."""
    from dpface.evaluation.anonymisers import build_conditions

    m = _product_metrics(build_conditions(["identity-laplace"], [6.0], [])[0], tmp_path)
    floors = {"dlib": 0.85, "faceres": 0.75, "mobileface": 0.25, "faceres-deep": 0.80}
    for attacker, floor in floors.items():
        assert m[f"psr_{attacker}"][0] >= floor, (attacker, m[f"psr_{attacker}"])
    assert m["detected_blazeface"][0] >= 0.94


@pytest.mark.slow
def test_head_protection_floor_through_the_product(tmp_path: Path) -> None:
    """Regression floor for ``--head dp-pix`` (head ε 1) the way ``dpface evaluate --heads
    dp-pix`` measures it: the product on the sample photos, IdentityLaplace at ε = 6, three
    draws, every attacker's PSR and rank-1 (docs/results/head.md: PSR 0.94-1.00, rank-1
    0.09-0.19). Floors and ceilings sit outside those values so that only real regressions
    fail (about 3 minutes)."""
    from dpface.evaluation.anonymisers import build_conditions, parse_heads

    (cond,) = build_conditions(["identity-laplace"], [6.0], [], parse_heads("dp-pix"))
    assert cond.head == "dp-pix" and cond.head_epsilon == 1.0
    m = _product_metrics(cond, tmp_path)
    floors = {"dlib": 0.93, "faceres": 0.93, "mobileface": 0.85, "faceres-deep": 0.93}
    for attacker, floor in floors.items():
        assert m[f"psr_{attacker}"][0] >= floor, (attacker, m[f"psr_{attacker}"])
        assert m[f"rank1_{attacker}"][0] <= 0.3, (attacker, m[f"rank1_{attacker}"])
    assert m["detected_blazeface"][0] >= 0.9
