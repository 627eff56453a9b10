"""Run conditions on photos: one task per (condition, photo), its results cached per face.

A task releases the whole photo ``draws`` times (the dpface rows through the product's
``Anonymizer.anonymize``; baselines on the product's regions) and measures every evaluated
face of the photo on each release at the face's true position (every utility and attack
metric); once more for the *parrot* attacker (its own anonymisation of the gallery, with an
independent seed); and, for identity mechanisms, up to ``max(averaging)`` releases in all for
the averaging attack (only attacker embeddings are measured on the extra ones).

**Ledger.** Every run gets its own temporary ledger (deleted afterwards), shared by its
worker processes, whose default budget holds the whole protocol (``protocol_budget``): the
product charges every release as it would for a user, and no face is masked for want of
budget. Refusals would still be recorded per face (the ``refused`` metric) and reported.

**Determinism.** Release r of a photo under a condition uses the seed
``stream_seed(seed, condition, photo, "release r")`` (the parrot: ``"parrot"``), given to the
product as ``AnonymizeConfig(seed=...)``; results do not depend on worker count, task order or
which tasks were cached. One exception, in the product: its DP-Pix fallback for faces the
generator cannot take draws from an unseeded stream, so those faces differ between runs.

**Resumability.** A face's result is written atomically to ``<output>/cache/<key>.npz`` whose
key hashes everything the result depends on (for every row but ``original``, the source of the
product's release path); a finished result is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dpface.evaluation.anonymisers import (
    IDENTITY_MECHANISMS,
    Condition,
    PhotoRelease,
    outcome_of,
    photo_labels,
    release_photo,
)
from dpface.evaluation.attacks import embed
from dpface.evaluation.faces import EvalFace
from dpface.evaluation.measure import (
    blazeface_near,
    detect_near,
    landmark_nme,
    pose_error,
    psnr,
    skin_colour_texture,
    ssim,
)
from dpface.face import Face

CACHE_VERSION = 3
# per release of a face: utility, and what the product did to the face
SCALARS = (
    "ssim_face",
    "psnr_face",
    "ssim_image",
    "psnr_image",
    "detected_hog",
    "detected_blazeface",
    "nme",
    "pose_error",
    "emotion_agrees",
    "emotion_tv",
    "age_error",
    "gender_agrees",
    "skin_delta_e",
    "skin_texture",
    "seconds",
    "found",
    "by_generator",
    "by_mechanism",
    "by_fallback",
    "by_mask",
    "refused",
)
PROTECTION_SCALARS = {
    "generator": "by_generator",
    "mechanism": "by_mechanism",
    "dp-fallback": "by_fallback",
    "mask": "by_mask",
}
# what the product did to the face: meaningless for the unprotected original
OUTCOME_SCALARS = ("found", *PROTECTION_SCALARS.values(), "refused")


@dataclass(frozen=True)
class RunConfig:
    """What every task shares."""

    seed: int
    draws: int = 2
    attackers: tuple[str, ...] = ("dlib", "faceres", "mobileface", "faceres-deep")
    averaging: tuple[int, ...] = (1, 4, 16)
    parrot: bool = True
    averaging_epsilons: tuple[float, ...] = ()  # empty: every ε of an identity mechanism
    exclude_own: bool = False  # generator: no synthetic identity the photo's people built
    save_images: bool = False  # write the measured releases as PNG (not part of the key)

    def releases(self, cond: Condition) -> int:
        """Releases per photo for ``cond`` (draws, or more for the averaging attack)."""
        if not self.averages(cond):
            return self.draws
        return max(self.draws, *self.averaging)

    def averages(self, cond: Condition) -> bool:
        """Whether the averaging attack runs on ``cond`` (identity mechanisms only)."""
        return (
            cond.family in IDENTITY_MECHANISMS
            and bool(self.averaging)
            and (not self.averaging_epsilons or cond.epsilon in self.averaging_epsilons)
        )


@dataclass(frozen=True)
class LedgerSpec:
    """The run's ledger: where it is and the budget every new privacy unit gets."""

    path: str
    epsilon: float
    delta: float = 0.0  # > 0 when a mechanism of the run needs δ


def protocol_budget(conds: Sequence[Condition], cfg: RunConfig) -> tuple[float, float]:
    """(ε, δ) a privacy unit (one face of one photo) may spend in a run: every release of
    every dpface row, twice (a face the generator cannot take is charged its identity release
    and its DP-Pix fallback), plus one for rounding. δ: 0.5 when a row needs δ."""
    eps = sum(c.charge * (cfg.releases(c) + int(cfg.parrot)) for c in conds)
    delta = 0.5 if any(c.family == "identity-gaussian" for c in conds) else 0.0
    return 2.0 * eps + 1.0, delta


_LEDGERS: dict[str, Any] = {}


def _ledger(spec: LedgerSpec) -> Any:
    """This process's connection to the run's ledger."""
    if spec.path not in _LEDGERS:
        from dpface.ledger import Ledger
        from mechanisms.budgets import ApproxDP, PureDP

        budget = ApproxDP(spec.epsilon, spec.delta) if spec.delta > 0 else PureDP(spec.epsilon)
        _LEDGERS[spec.path] = Ledger(spec.path, default_budget=budget)
    return _LEDGERS[spec.path]


def close_ledgers() -> None:
    """Close this process's ledger connections."""
    while _LEDGERS:
        _LEDGERS.popitem()[1].close()


def _output_face(image: np.ndarray, landmarks68: np.ndarray) -> Face:
    """An output image and the landmarks located on it, as a :class:`~dpface.face.Face`."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    box = (
        float(lm[:, 0].min()),
        float(lm[:, 1].min()),
        float(lm[:, 0].max()),
        float(lm[:, 1].max()),
    )
    return Face(image, box, lm)


# what a dpface row's output depends on besides the evaluation's own code
_PRODUCT_SOURCES = (
    "dpface/pipeline.py",
    "dpface/detect.py",
    "dpface/config.py",
    "dpface/align.py",
    "dpface/generators/*.py",
    "dpface/models/*.py",
    "mechanisms/*.py",
)


@cache
def product_fingerprint() -> str:
    """Hash of the product's release path (pipeline, detection, configuration, generators,
    models, mechanisms): a changed product invalidates the cached results of every row that
    runs it or reads its face regions (all but ``original``)."""
    import dpface

    root = Path(dpface.__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pattern in _PRODUCT_SOURCES:
        for p in sorted(root.glob(pattern)):
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def task_key(cond: Condition, face: EvalFace, cfg: RunConfig) -> str:
    """Hash of everything a face's result under ``cond`` depends on."""
    parts: list[Any] = [
        CACHE_VERSION,
        cond.name,
        cond.family,
        cond.epsilon,
        cond.params,
        cfg.seed,
        cfg.draws,
        cfg.releases(cond),
        list(cfg.attackers),
        cfg.parrot,
        face.key,
        list(face.box),
        np.round(face.landmarks68, 3).tolist(),
    ]
    if cond.family != "original":
        parts.append(product_fingerprint())
    if cfg.exclude_own and cond.product and cond.family != "dp-pix":
        parts.append("exclude-own")
    payload = json.dumps(parts, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def stream_seed(seed: int, *parts: str) -> int:
    """A 60-bit seed derived from ``seed`` and labels (stable across processes)."""
    h = hashlib.sha256("|".join([str(seed), *parts]).encode()).hexdigest()
    return int(h[:15], 16)


def release_seed(seed: int, cond: Condition, face: EvalFace, release: int | str) -> int:
    """The product seed of release ``release`` (or ``"parrot"``) of ``face``'s photo."""
    label = release if isinstance(release, str) else f"release {release}"
    return stream_seed(seed, cond.name, face.photo_key, label)


@cache
def _dlib() -> Any:
    from dpface.models.dlib_models import DlibFaceModels

    return DlibFaceModels()


def _faceres(face: Any) -> tuple[np.ndarray, float, float]:
    """FaceRes once: (unit descriptor, expected age, P(male))."""
    import torch

    from dpface.align import arcface_crop
    from dpface.models.tfjs_models import prepare, run

    crop = arcface_crop(face.image, face.points5, 224)[None]
    with torch.no_grad():
        out = run("faceres", prepare("faceres", crop))
    d = out["descriptor"].numpy().reshape(-1).astype(np.float64)
    age = float((out["age"].numpy().reshape(-1) * np.arange(100)).sum())
    return d / max(float(np.linalg.norm(d)), 1e-12), age, float(out["male"].numpy().reshape(-1)[0])


def _emotion(face: Any) -> np.ndarray:
    from dpface.models.attributes import emotion_probs

    return np.asarray(emotion_probs([face])[0], dtype=np.float64)


def _embeddings(
    face: Any, attackers: Sequence[str], faceres_desc: np.ndarray | None
) -> dict[str, np.ndarray]:
    out = {}
    for a in attackers:
        if a == "faceres" and faceres_desc is not None:
            out[a] = faceres_desc
        else:
            out[a] = embed(a, face)
    return out


def _locate(img: np.ndarray, face: EvalFace) -> tuple[bool, np.ndarray]:
    """The attacker's view of the output: HOG near the input box, 68 landmarks in the found
    box (or the input box when nothing is found)."""
    found, box = detect_near(_dlib(), img, face.box)
    return found, _dlib().landmarks(np.ascontiguousarray(img), box)


@lru_cache(maxsize=64)
def _input_features(
    face: EvalFace, attackers: tuple[str, ...]
) -> tuple[Face, np.ndarray, float, float, np.ndarray, dict[str, np.ndarray]]:
    """The input measured exactly like every output (the attacker's own landmarks), so an
    unchanged image scores as unchanged on every metric. Cached per process."""
    view_in = _output_face(face.image, _locate(face.image, face)[1])
    desc_in, age_in, male_in = _faceres(view_in)
    return (
        view_in,
        desc_in,
        age_in,
        male_in,
        _emotion(view_in),
        _embeddings(view_in, attackers, desc_in),
    )


def _attacker_view(
    out: np.ndarray, face: EvalFace, cfg: RunConfig
) -> tuple[bool, Face, dict[str, np.ndarray], tuple[np.ndarray, float, float] | None]:
    found, lm_out = _locate(out, face)
    view = _output_face(out, lm_out)
    fr = _faceres(view) if "faceres" in cfg.attackers else None
    return found, view, _embeddings(view, cfg.attackers, None if fr is None else fr[0]), fr


def _measure(
    rel: PhotoRelease, face: EvalFace, cfg: RunConfig
) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every per-release metric of ``face`` in one release of its photo: (scalars, attacker
    embeddings, FaceRes descriptor, emotion probabilities)."""
    from dpface.align import arcface_crop

    img_in, out = face.image, rel.image
    view_in, _, age_in, male_in, emo_in, _ = _input_features(face, cfg.attackers)
    found, view, embs, fr = _attacker_view(out, face, cfg)
    d_out, age_out, male_out = fr if fr is not None else _faceres(view)
    p_out = _emotion(view)
    crop_in = arcface_crop(img_in, face.points5, 256)
    crop_out = arcface_crop(out, face.points5, 256)
    de, tex = skin_colour_texture(img_in, out, face.landmarks68)
    what = outcome_of(rel.faces, face.box)
    vals = {
        "ssim_face": ssim(crop_in, crop_out),
        "psnr_face": psnr(crop_in, crop_out),
        "ssim_image": ssim(img_in, out),
        "psnr_image": psnr(img_in, out),
        "detected_hog": float(found),
        "detected_blazeface": float(blazeface_near(out, face.box)),
        "nme": landmark_nme(view.landmarks68, view_in.landmarks68),
        "pose_error": pose_error(view.landmarks68, view_in.landmarks68),
        "emotion_agrees": float(p_out.argmax() == emo_in.argmax()),
        "emotion_tv": 0.5 * float(np.abs(p_out - emo_in).sum()),
        "age_error": abs(age_out - age_in),
        "gender_agrees": float((male_out >= 0.5) == (male_in >= 0.5)),
        "skin_delta_e": de,
        "skin_texture": tex,
        "seconds": rel.seconds,
        "found": float(what is not None),
        "refused": float(what is not None and what.refused),
    }
    for protection, key in PROTECTION_SCALARS.items():
        vals[key] = float(what is not None and what.protection == protection)
    return vals, embs, d_out, p_out


def _save(rel: PhotoRelease, cond: Condition, face: EvalFace, r: int, images: Path) -> None:
    """The release as a PNG with its seed and settings beside it (``--save-images``)."""
    from PIL import Image

    folder = images / cond.name.replace("@", "_").replace("=", "").replace(",", "_")
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(face.source).name}.{face.photo_key[:12]}.r{r}"
    Image.fromarray(rel.image).save(folder / f"{stem}.png")
    meta = {
        "condition": cond.name,
        "photo": face.source,
        "release": r,
        "seed": rel.seed,
        "epsilon": cond.epsilon,
        "params": dict(cond.params),
        "faces": [
            {"region": list(f.region), "protection": f.protection, "refused": f.refused}
            for f in rel.faces
        ],
    }
    (folder / f"{stem}.json").write_text(json.dumps(meta, indent=1, default=str))


def run_task(
    cond: Condition,
    faces: Sequence[EvalFace],
    cfg: RunConfig,
    cache_dir: Path,
    ledger: LedgerSpec | None = None,
) -> dict[str, Path]:
    """Compute (or find) the results of ``faces`` -- evaluated faces of one photo -- under
    ``cond``; returns each face's result file. ``ledger``: the run's ledger (dpface rows)."""
    paths = {f.key: cache_dir / f"{task_key(cond, f, cfg)}.npz" for f in faces}
    todo = [f for f in faces if not paths[f.key].is_file()]
    if not todo:
        return paths
    if len({f.photo_key for f in todo}) != 1:
        raise ValueError("run_task takes faces of one photo")
    lead = todo[0]
    led = _ledger(ledger) if ledger is not None and cond.product else None
    exclude: frozenset[str] = frozenset()
    if cfg.exclude_own and cond.product and cond.family != "dp-pix":
        from dpface.evaluation.faces import sample_faces

        exclude = photo_labels([f for f in sample_faces() if f.source == lead.source] or todo)

    def release(r: int | str) -> PhotoRelease:
        return release_photo(cond, lead.source, release_seed(cfg.seed, cond, lead, r), led, exclude)

    scal: dict[str, dict[str, list[float]]] = {f.key: {k: [] for k in SCALARS} for f in todo}
    embs: dict[str, dict[str, list[np.ndarray]]] = {
        f.key: {a: [] for a in cfg.attackers} for f in todo
    }
    desc: dict[str, list[np.ndarray]] = {f.key: [] for f in todo}
    emo: dict[str, list[np.ndarray]] = {f.key: [] for f in todo}
    for r in range(cfg.releases(cond)):
        rel = release(r)
        if cfg.save_images and r < cfg.draws:
            _save(rel, cond, lead, r, cache_dir.parent / "images")
        for f in todo:
            if r >= cfg.draws:  # extra release for the averaging attack: embeddings only
                for a, e in _attacker_view(rel.image, f, cfg)[2].items():
                    embs[f.key][a].append(e)
                continue
            vals, e_out, d_out, p_out = _measure(rel, f, cfg)
            for k in SCALARS:
                scal[f.key][k].append(vals[k])
            for a, e in e_out.items():
                embs[f.key][a].append(e)
            desc[f.key].append(d_out)
            emo[f.key].append(p_out)
    parrot = release("parrot") if cfg.parrot else None
    cache_dir.mkdir(parents=True, exist_ok=True)
    for f in todo:
        _, desc_in, _, _, emo_in, emb_in = _input_features(f, cfg.attackers)
        arrays: dict[str, np.ndarray] = {
            f"s_{k}": np.asarray(v, dtype=np.float64) for k, v in scal[f.key].items()
        }
        for a in cfg.attackers:
            arrays[f"i_{a}"] = emb_in[a]
            arrays[f"e_{a}"] = np.stack(embs[f.key][a])
        arrays["i_desc"] = desc_in
        arrays["o_desc"] = np.stack(desc[f.key])
        arrays["i_emotion"] = emo_in
        arrays["o_emotion"] = np.stack(emo[f.key])
        if parrot is not None:
            for a, e in _attacker_view(parrot.image, f, cfg)[2].items():
                arrays[f"p_{a}"] = e
        path = paths[f.key]
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.part.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    return paths


def _init_worker() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _run_one(
    args: tuple[Condition, tuple[EvalFace, ...], RunConfig, Path, LedgerSpec],
) -> tuple[str, dict[str, Path]]:
    cond, faces, cfg, cache_dir, ledger = args
    return cond.name, run_task(cond, faces, cfg, cache_dir, ledger)


def photo_groups(faces: Sequence[EvalFace]) -> list[tuple[EvalFace, ...]]:
    """The faces grouped by photo, in first-seen order."""
    groups: dict[str, list[EvalFace]] = {}
    for f in faces:
        groups.setdefault(f.photo_key, []).append(f)
    return [tuple(g) for g in groups.values()]


def run_all(
    conds: Sequence[Condition],
    faces: Sequence[EvalFace],
    cfg: RunConfig,
    output: Path,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[tuple[str, str], Path], int]:
    """Run every (condition, face) on a fresh temporary ledger; returns the result files and
    how many were computed in this call (the rest came from the cache). Progress counts
    (condition, face) results."""
    cache_dir = output / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], Path] = {}
    todo: list[tuple[Condition, tuple[EvalFace, ...]]] = []
    computed = 0
    for group in photo_groups(faces):  # photo by photo: a worker reuses its input features
        for c in conds:
            missing = [f for f in group if not (cache_dir / f"{task_key(c, f, cfg)}.npz").is_file()]
            for f in group:
                if f not in missing:
                    results[(c.name, f.key)] = cache_dir / f"{task_key(c, f, cfg)}.npz"
            if missing:
                todo.append((c, tuple(missing)))
                computed += len(missing)
    total, done = len(results) + computed, len(results)
    if progress:
        progress(done, total)
    if not todo:
        return results, 0
    eps, delta = protocol_budget(conds, cfg)
    tmp = Path(tempfile.mkdtemp(prefix="dpface-eval-ledger-"))
    spec = LedgerSpec(str(tmp / "ledger.db"), eps, delta)
    items = [(c, g, cfg, cache_dir, spec) for c, g in todo]
    try:
        if workers <= 1:
            _init_worker()
            for item in items:
                name, paths = _run_one(item)
                for key, p in paths.items():
                    results[(name, key)] = p
                done += len(paths)
                if progress:
                    progress(done, total)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(
                max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker
            ) as pool:
                futures = [pool.submit(_run_one, item) for item in items]
                for fut in as_completed(futures):
                    name, paths = fut.result()
                    for key, p in paths.items():
                        results[(name, key)] = p
                    done += len(paths)
                    if progress:
                        progress(done, total)
    finally:
        close_ledgers()
        shutil.rmtree(tmp, ignore_errors=True)
    return results, computed
