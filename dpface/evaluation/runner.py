"""Run conditions on faces: one task per (condition, face), each cached on disk.

A task releases the face ``draws`` times (every utility and attack metric is measured on
each), once more for the *parrot* attacker (its own anonymisation of the gallery, from an
independent stream), and, for random conditions, up to ``max(averaging)`` releases in all for
the averaging attack (identity mechanisms only; only attacker embeddings are measured on
the extra ones).

Determinism: each task's random stream is seeded from (seed, condition, face key), so results
do not depend on worker count, task order or which tasks were cached. Resumability: a task's
result is written atomically to ``<output>/cache/<key>.npz`` whose key hashes everything the
result depends on; a finished task is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dpface.evaluation.anonymisers import (
    IDENTITY_MECHANISMS,
    Anonymiser,
    Condition,
    identity_embedding,
)
from dpface.evaluation.attacks import embed
from dpface.evaluation.faces import EvalFace
from dpface.evaluation.measure import (
    blazeface_near,
    detect_near,
    landmark_nme,
    psnr,
    skin_colour_texture,
    ssim,
)
from mechanisms.rng import Randomness

CACHE_VERSION = 1
SCALARS = ("ssim_face", "psnr_face", "ssim_image", "psnr_image", "detected_hog",
           "detected_blazeface", "nme", "emotion_agrees", "emotion_tv", "age_error",
           "gender_agrees", "skin_delta_e", "skin_texture", "seconds")


@dataclass(frozen=True)
class RunConfig:
    """What every task shares."""

    seed: int
    draws: int = 2
    attackers: tuple[str, ...] = ("dlib", "faceres", "mobileface")
    averaging: tuple[int, ...] = (1, 4, 16)
    parrot: bool = True
    averaging_epsilons: tuple[float, ...] = ()  # empty: every ε of an identity mechanism
    exclude_own: bool = False  # generator: no synthetic identity the face's person built

    def releases(self, cond: Condition) -> int:
        """Releases per face for ``cond`` (draws, or more for the averaging attack)."""
        if not self.averages(cond):
            return self.draws
        return max(self.draws, *self.averaging)

    def averages(self, cond: Condition) -> bool:
        """Whether the averaging attack runs on ``cond`` (identity mechanisms only)."""
        return (cond.family in IDENTITY_MECHANISMS and bool(self.averaging)
                and (not self.averaging_epsilons or cond.epsilon in self.averaging_epsilons))


@dataclass
class _Out:
    image: np.ndarray = field(repr=False)
    landmarks68: np.ndarray = field(repr=False)

    @property
    def points5(self) -> np.ndarray:
        from dpface.models.dlib_models import arcface_points

        return arcface_points(self.landmarks68)


@cache
def generator_fingerprint() -> str:
    """Hash of the generator's source files: a changed generator invalidates the cached
    results of every condition that uses it (and only those)."""
    import dpface.generators as pkg

    root = Path(pkg.__file__).parent
    h = hashlib.sha256()
    for name in ("surrogate.py", "warp.py", "bank.py", "refine.py"):
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


def task_key(cond: Condition, face: EvalFace, cfg: RunConfig) -> str:
    """Hash of everything a task's result depends on."""
    parts: list[Any] = [CACHE_VERSION, cond.name, cond.family, cond.epsilon, cond.params,
                        cfg.seed, cfg.draws, cfg.releases(cond), list(cfg.attackers),
                        cfg.parrot, face.key, list(face.box),
                        np.round(face.landmarks68, 3).tolist()]
    if cond.family not in ("original", "baseline", "dp-pix"):
        parts.append(generator_fingerprint())
        if cfg.exclude_own:
            parts.append("exclude-own")
    payload = json.dumps(parts, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def stream_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed derived from ``seed`` and labels (stable across processes)."""
    h = hashlib.sha256("|".join([str(seed), *parts]).encode()).hexdigest()
    return int(h[:15], 16)


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
    return d / max(np.linalg.norm(d), 1e-12), age, float(out["male"].numpy().reshape(-1)[0])


def _emotion(face: Any) -> np.ndarray:
    from dpface.models.attributes import emotion_probs

    return np.asarray(emotion_probs([face])[0], dtype=np.float64)


def _embeddings(face: Any, attackers: Sequence[str], faceres_desc: np.ndarray | None
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
def _input_features(face: EvalFace, attackers: tuple[str, ...]) -> tuple[
        _Out, np.ndarray, float, float, np.ndarray, dict[str, np.ndarray]]:
    """The input measured exactly like every output (the attacker's own landmarks), so an
    unchanged image scores as unchanged on every metric. Cached per process: tasks are
    handed out face by face."""
    view_in = _Out(face.image, _locate(face.image, face)[1])
    desc_in, age_in, male_in = _faceres(view_in)
    return (view_in, desc_in, age_in, male_in, _emotion(view_in),
            _embeddings(view_in, attackers, desc_in))


def run_task(cond: Condition, face: EvalFace, cfg: RunConfig, cache_dir: Path) -> Path:
    """Compute (or find) one task's result file."""
    from dpface.align import arcface_crop

    path = cache_dir / f"{task_key(cond, face, cfg)}.npz"
    if path.is_file():
        return path
    img_in = face.image
    view_in, desc_in, age_in, male_in, emo_in, emb_in = _input_features(face, cfg.attackers)
    mf = emb_in.get("mobileface")
    gen_emb = mf if mf is not None else identity_embedding(face)
    crop_in = arcface_crop(img_in, face.points5, 256)

    anon = Anonymiser(cond, Randomness.from_seed(stream_seed(cfg.seed, cond.name, face.key)),
                      cfg.exclude_own)
    n_rel = cfg.releases(cond)
    scal: dict[str, list[float]] = {k: [] for k in SCALARS}
    embs: dict[str, list[np.ndarray]] = {a: [] for a in cfg.attackers}
    desc_out, emo_out = [], []
    for r in range(n_rel):
        t = time.perf_counter()
        out = anon(face, gen_emb)
        dt = time.perf_counter() - t
        found, lm_out = _locate(out, face)
        view = _Out(out, lm_out)
        if r >= cfg.draws:  # extra release for the averaging attack: embeddings only
            d_out = _faceres(view)[0] if "faceres" in cfg.attackers else None
            for a, e in _embeddings(view, cfg.attackers, d_out).items():
                embs[a].append(e)
            continue
        d_out, age_out, male_out = _faceres(view)
        for a, e in _embeddings(view, cfg.attackers, d_out).items():
            embs[a].append(e)
        p_out = _emotion(view)
        crop_out = arcface_crop(out, face.points5, 256)
        de, tex = skin_colour_texture(img_in, out, face.landmarks68)
        vals = {
            "ssim_face": ssim(crop_in, crop_out), "psnr_face": psnr(crop_in, crop_out),
            "ssim_image": ssim(img_in, out), "psnr_image": psnr(img_in, out),
            "detected_hog": float(found),
            "detected_blazeface": float(blazeface_near(out, face.box)),
            "nme": landmark_nme(lm_out, view_in.landmarks68),
            "emotion_agrees": float(p_out.argmax() == emo_in.argmax()),
            "emotion_tv": 0.5 * float(np.abs(p_out - emo_in).sum()),
            "age_error": abs(age_out - age_in),
            "gender_agrees": float((male_out >= 0.5) == (male_in >= 0.5)),
            "skin_delta_e": de, "skin_texture": tex, "seconds": dt,
        }
        for k in SCALARS:
            scal[k].append(vals[k])
        desc_out.append(d_out)
        emo_out.append(p_out)
    arrays: dict[str, np.ndarray] = {f"s_{k}": np.asarray(v, dtype=np.float64)
                                     for k, v in scal.items()}
    for a in cfg.attackers:
        arrays[f"i_{a}"] = emb_in[a]
        arrays[f"e_{a}"] = np.stack(embs[a])
    arrays["i_desc"] = desc_in
    arrays["o_desc"] = np.stack(desc_out)
    arrays["i_emotion"] = emo_in
    arrays["o_emotion"] = np.stack(emo_out)
    if cfg.parrot:
        parrot = Anonymiser(cond, Randomness.from_seed(
            stream_seed(cfg.seed, cond.name, face.key, "parrot")), cfg.exclude_own)
        out = parrot(face, gen_emb)
        view = _Out(out, _locate(out, face)[1])
        d_out = _faceres(view)[0] if "faceres" in cfg.attackers else None
        for a, e in _embeddings(view, cfg.attackers, d_out).items():
            arrays[f"p_{a}"] = e
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.part.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
    return path


def _init_worker() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _run_one(args: tuple[Condition, EvalFace, RunConfig, Path]) -> tuple[str, str, Path]:
    cond, face, cfg, cache_dir = args
    return cond.name, face.key, run_task(cond, face, cfg, cache_dir)


def run_all(conds: Sequence[Condition], faces: Sequence[EvalFace], cfg: RunConfig,
            output: Path, workers: int = 2,
            progress: Callable[[int, int], None] | None = None
            ) -> tuple[dict[tuple[str, str], Path], int]:
    """Run every (condition, face) task; returns the result files and how many were computed
    in this call (the rest came from the cache)."""
    cache_dir = output / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], Path] = {}
    todo = []
    for f in faces:  # face by face, so a worker's per-face input features are reused
        for c in conds:
            p = cache_dir / f"{task_key(c, f, cfg)}.npz"
            if p.is_file():
                results[(c.name, f.key)] = p
            else:
                todo.append((c, f, cfg, cache_dir))
    total, done = len(results) + len(todo), len(results)
    if progress:
        progress(done, total)
    if todo and workers <= 1:
        _init_worker()
        for item in todo:
            name, key, p = _run_one(item)
            results[(name, key)] = p
            done += 1
            if progress:
                progress(done, total)
    elif todo:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futures = [pool.submit(_run_one, item) for item in todo]
            for fut in as_completed(futures):
                name, key, p = fut.result()
                results[(name, key)] = p
                done += 1
                if progress:
                    progress(done, total)
    return results, len(todo)
