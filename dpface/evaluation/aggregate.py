"""Per-condition summaries from the cached task results: means ± 95 % CI (faces as the unit)
for every per-output metric, and the gallery attacks (rank-1, TAR@FAR, parrot, averaging)
that need all faces at once."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpface.evaluation.anonymisers import Condition
from dpface.evaluation.attacks import averaging_protected, get_attacker, rank1, tar_at_far
from dpface.evaluation.faces import EvalFace, known_pairs
from dpface.evaluation.measure import frechet_distance
from dpface.evaluation.runner import OUTCOME_SCALARS, SCALARS, RunConfig
from dpface.evaluation.stats import Estimate, clustered_mean_ci

FARS = (0.1, 0.01)


def _est(values: np.ndarray) -> Estimate:
    v = np.asarray(values, dtype=np.float64)
    if v.size and np.all(np.isposinf(v)):
        return Estimate(math.inf, math.nan, v.shape[0])
    return clustered_mean_ci(np.where(np.isinf(v), np.nan, v))


def summarise(
    cond: Condition, faces: Sequence[EvalFace], files: Mapping[str, Path], cfg: RunConfig
) -> dict[str, Any]:
    """One condition's summary (JSON-ready): ``metrics`` maps a name to [mean, ±half-width]."""
    data = [dict(np.load(files[f.key])) for f in faces]
    d = cfg.draws
    m: dict[str, Estimate] = {}
    for k in SCALARS:
        if cond.family == "original" and k in OUTCOME_SCALARS:
            continue  # nothing was released: no outcome to report
        m[k] = _est(np.stack([z[f"s_{k}"] for z in data]))
    same, known = known_pairs(faces)
    self_mask = np.array(
        [[a.source == b.source and a.index == b.index for b in faces] for a in faces]
    )
    extra: dict[str, Any] = {}
    for name in cfg.attackers:
        att = get_attacker(name)
        inp = np.stack([z[f"i_{name}"] for z in data])  # (F, dim)
        rel = np.stack([z[f"e_{name}"] for z in data])  # (F, releases, dim)
        out = rel[:, :d]
        dist = att.distance(out, inp[:, None, :])  # (F, D)
        m[f"iddis_{name}"] = _est(dist)
        m[f"psr_{name}"] = _est(dist >= att.threshold)
        hits = np.stack(
            [rank1(att.pairwise(out[:, k], inp), same, known) for k in range(d)], axis=1
        )
        m[f"rank1_{name}"] = _est(hits)
        # the same with the probe's own photo left out of the gallery: is another photo of
        # the person nearest? (only probes whose person has another photo)
        other = known & ~self_mask
        has_mate = np.any(same & ~self_mask, axis=1)
        if has_mate.any():
            ohits = np.stack(
                [
                    rank1(att.pairwise(out[has_mate, k], inp), same[has_mate], other[has_mate])
                    for k in range(d)
                ],
                axis=1,
            )
            m[f"rank1_other_{name}"] = _est(ohits)
        for far in FARS:
            tars = [
                tar_at_far(att.pairwise(out[:, k], inp), same, known, self_mask, far)
                for k in range(d)
            ]
            vals = [t for t in tars if not math.isnan(t)]
            m[f"tar@far{far:g}_{name}"] = Estimate(
                float(np.mean(vals)) if vals else math.nan, math.nan, len(vals)
            )
        if cfg.parrot:
            par = np.stack([z[f"p_{name}"] for z in data])
            pd = att.distance(out, par[:, None, :])
            m[f"parrot_psr_{name}"] = _est(pd >= att.threshold)
            phits = np.stack(
                [rank1(att.pairwise(out[:, k], par), same, known) for k in range(d)], axis=1
            )
            m[f"parrot_rank1_{name}"] = _est(phits)
            if has_mate.any():
                pohits = np.stack(
                    [
                        rank1(att.pairwise(out[has_mate, k], par), same[has_mate], other[has_mate])
                        for k in range(d)
                    ],
                    axis=1,
                )
                m[f"parrot_rank1_other_{name}"] = _est(pohits)
        if cfg.averages(cond):
            prot = [
                averaging_protected(att, rel[i], inp[i], cfg.averaging) for i in range(len(faces))
            ]
            for n in cfg.averaging:
                vals = [p[n] for p in prot if n in p]
                if vals:
                    m[f"avg{n}_psr_{name}"] = _est(np.asarray(vals, dtype=np.float64))
    i_desc = np.stack([z["i_desc"] for z in data])
    o_desc = np.stack([z["o_desc"] for z in data])
    fr = [frechet_distance(i_desc, o_desc[:, k]) for k in range(d)]
    m["frechet_faceres"] = Estimate(float(np.mean(fr)), math.nan, len(faces))
    emo = np.stack([np.abs(z["o_emotion"] - z["i_emotion"][None]).mean(axis=0) for z in data])
    from dpface.models.tfjs_models import EMOTIONS

    extra["emotion_class_abs_diff"] = {
        e: float(v) for e, v in zip(EMOTIONS, emo.mean(axis=0), strict=True)
    }
    return {
        "name": cond.name,
        "label": cond.label,
        "family": cond.family,
        "epsilon": None if math.isnan(cond.epsilon) else cond.epsilon,
        "head": cond.head,
        "head_epsilon": cond.head_epsilon,
        "faces": len(faces),
        "draws": d,
        "metrics": {k: [e.mean, e.half_width] for k, e in m.items()},
        **extra,
    }
