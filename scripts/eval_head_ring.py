"""Issue 17 experiment (not a product setting): after the default generator replaces a face,
also release a ring around it -- the head box minus the generator's replaced region -- with
DP blur, and see what every attacker still identifies.

    python -m scripts.eval_head_ring [--draws 2] [--eps 2 8] [--sizes 1.6 2.0] [--json out.json]

Per face and draw: the face's MobileFace embedding is privatised with ``IdentityLaplace``
(ε = 6, seeded as in ``scripts.eval_generator``), ``SurrogateGenerator`` replaces the face
(no attribute channel, as the product), then for each ring size k and ε the head box (k × the
face box width, square, centred 0.15 face widths above the face box centre, clipped to the
photo) is released with ``DPBlur`` at the product's defaults (block 16, m 16, δ = 1e-6) and
the generated face is put back over it through the generator's soft mask. Every output is
scored with the evaluation's own attacker view and attackers (``dpface.evaluation``): PSR
(distance to the input at or above the attacker's threshold), rank-1 against the 34 inputs
(``known_pairs``), SSIM of the 256-px ArcFace crop, HOG and BlazeFace detection near the box.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np

from dpface.evaluation.attacks import ATTACKERS, get_attacker, rank1
from dpface.evaluation.faces import EvalFace, known_pairs, sample_faces
from dpface.evaluation.measure import blazeface_near, ssim
from dpface.evaluation.runner import _attacker_view, _input_features
from dpface.evaluation.stats import clustered_mean_ci
from dpface.face import Face
from dpface.generators.base import GeneratedFace

IDENTITY_EPSILON = 6.0
RING_DELTA = 1e-6
RING_BLOCK = 16
RING_PIXELS = 16
LIFT = 0.15  # head box centre above the face box centre, in face widths


def head_box(face: EvalFace, k: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Square box k face-widths across, centred ``LIFT`` face widths above the face box."""
    x0, y0, x1, y1 = face.box
    w = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - LIFT * w
    h, wi = shape[:2]
    return (
        max(0, round(cx - k * w / 2)),
        max(0, round(cy - k * w / 2)),
        min(wi, round(cx + k * w / 2)),
        min(h, round(cy + k * w / 2)),
    )


def with_ring(
    res: GeneratedFace, box: tuple[int, int, int, int], eps: float, seed: int
) -> np.ndarray:
    """The generator's output with the head box DP-blurred, the generated face put back."""
    from mechanisms.pixelization import DPBlur

    mech = DPBlur(epsilon=eps, delta=RING_DELTA, block=RING_BLOCK, m=RING_PIXELS, seed=seed)
    blurred = np.asarray(mech(res.image, box)).astype(np.float64)
    if res.alpha is not None and res.region is not None:
        x0, y0, x1, y1 = res.region
        a = np.asarray(res.alpha, dtype=np.float64)[..., None]
        blurred[y0:y1, x0:x1] = a * res.image[y0:y1, x0:x1] + (1 - a) * blurred[y0:y1, x0:x1]
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def evaluate(
    epsilons: Sequence[float], sizes: Sequence[float], draws: int, seed: int
) -> dict[str, dict[str, list[float]]]:
    """Scores per condition: metric -> [mean, 95 % half-width over faces]."""
    from dpface.generators.surrogate import SurrogateGenerator
    from dpface.models.encoders import get_encoder
    from mechanisms.identity import IdentityLaplace

    faces = sample_faces()
    n = len(faces)
    cfg = SimpleNamespace(attackers=ATTACKERS)
    gen = SurrogateGenerator()
    emb = get_encoder(gen.encoder).embed(faces)
    inputs = [_input_features(f, ATTACKERS) for f in faces]
    gallery = {a: np.stack([x[5][a] for x in inputs]) for a in ATTACKERS}
    same, known = known_pairs(faces)
    conds = ["generator now"] + [f"ring k={k:g}, eps={e:g}" for k in sizes for e in epsilons]
    # per condition: per attacker (n, draws, dim) embeddings; scalars (n, draws)
    embs = {c: {a: [[None] * draws for _ in range(n)] for a in ATTACKERS} for c in conds}
    scal = {c: {m: np.zeros((n, draws)) for m in ("ssim", "hog", "blazeface")} for c in conds}
    for d in range(draws):
        mech = IdentityLaplace(epsilon=IDENTITY_EPSILON, dim=emb.shape[1], seed=seed + d)
        priv = mech.batch(emb)
        for i, f in enumerate(faces):
            res = gen.generate(f.image, Face.of(f), priv[i])
            outs = {"generator now": res.image}
            for k in sizes:
                box = head_box(f, k, f.image.shape)
                for e in epsilons:
                    s = seed + 100_000 * d + 1000 * i + int(10 * k) * 10 + int(e)
                    outs[f"ring k={k:g}, eps={e:g}"] = with_ring(res, box, e, s)
            for c, out in outs.items():
                found, _, e_out, _ = _attacker_view(out, f, cfg)  # type: ignore[arg-type]
                for a in ATTACKERS:
                    embs[c][a][i][d] = e_out[a]
                scal[c]["ssim"][i, d] = ssim(_crop(f.image, f.points5), _crop(out, f.points5))
                scal[c]["hog"][i, d] = float(found)
                scal[c]["blazeface"][i, d] = float(blazeface_near(out, f.box))
            print(f"draw {d} face {i} done", flush=True)
    summary: dict[str, dict[str, list[float]]] = {}
    for c in conds:
        m: dict[str, list[float]] = {}
        for a in ATTACKERS:
            att = get_attacker(a)
            out = np.stack([np.stack(embs[c][a][i]) for i in range(n)])  # (n, draws, dim)
            dist = att.distance(out, gallery[a][:, None, :])
            hits = np.stack(
                [rank1(att.pairwise(out[:, k], gallery[a]), same, known) for k in range(draws)],
                axis=1,
            ).astype(np.float64)
            m[f"psr_{a}"] = _est((dist >= att.threshold).astype(np.float64))
            m[f"rank1_{a}"] = _est(hits)
        for k, v in scal[c].items():
            m[k] = _est(v)
        summary[c] = m
        print(c, json.dumps({k: round(v[0], 3) for k, v in m.items()}), flush=True)
    return summary


def _crop(img: np.ndarray, points5: np.ndarray) -> np.ndarray:
    from dpface.align import arcface_crop

    return np.asarray(arcface_crop(img, points5, 256))


def _est(x: np.ndarray) -> list[float]:
    hw = clustered_mean_ci(x).half_width
    return [float(x.mean()), float(hw) if math.isfinite(hw) else float("nan")]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    import torch

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--eps", type=float, nargs="+", default=[2.0, 8.0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1.6, 2.0])
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    summary = evaluate(args.eps, args.sizes, args.draws, args.seed)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)


if __name__ == "__main__":
    main()
