"""Evaluate a generator on the sample faces: privacy against an attacker that never runs
inside the generator (dlib ResNet), and utility.

    python -m scripts.eval_generator [--eps inf 6 2 1] [--draws 2] [--json out.json]

Per face and epsilon: the face's MobileFace embedding is privatised with ``IdentityLaplace``
(seeded, so the run is reproducible; seeded randomness is for evaluation only), the
generator replaces the face, and we measure

* protection success (PSR): dlib's descriptor of the output face (landmarks re-detected on
  the output when the face is found, else the input's box) is at L2 distance >= 0.6 from
  the input's descriptor (dlib's published rule), with a 95 % interval that treats the face
  as the unit (``psr_ci95``: per-face means, Student t over faces) and the number of
  unprotected draws per face (``unprotected_faces``);
* ``psr_gallery``: the same against *every* photo of that person in the samples;
* detection: dlib HOG finds a face overlapping the input box (IoU >= 0.3) on the output;
* SSIM on the aligned 256×256 ArcFace crop (scikit-image, RGB);
* emotion top-1 agreement (TFJS emotion model, input landmarks), on all faces and on the
  faces whose input prediction is confident (top-1 probability >= 0.6), and which
  classes changed into which (``emotion_flips``);
* skin ΔE2000: (outside) on face-box pixels outside the replaced region; (tone) between the
  input and output skin colour inside the replaced region after a Gaussian blur of 5 % of
  the face width (skin tone, not identity detail);
* seconds per face spent in ``generate`` (wall clock, one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np

from dpface.evaluation.measure import detect_near
from dpface.evaluation.stats import clustered_mean_ci
from dpface.face import Face
from dpface.generators.base import Generator
from dpface.generators.contact_sheet import sex_attributes

EPSILONS = (math.inf, 6.0, 2.0, 1.0)


def skin_delta_e(
    inp: np.ndarray,
    out: np.ndarray,
    alpha: np.ndarray | None,
    region: tuple[int, int, int, int] | None,
    lm: np.ndarray,
    lm_out: np.ndarray | None = None,
) -> tuple[float, float]:
    """Skin colour change as ΔE2000 between mean CIE Lab colours of the same skin pixels in
    the input and the output: (outside: face-hull skin not in the replaced region, inside:
    skin in the replaced region). Region means, so a geometric shift is not a colour change.
    Eyes, brows and mouth are left out; with ``lm_out`` (the output's face geometry) only
    pixels inside both face outlines count."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    if alpha is None or region is None:
        return 0.0, 0.0
    x0, y0, x1, y1 = region
    a = rgb2lab(inp[y0:y1, x0:x1])
    b = rgb2lab(out[y0:y1, x0:x1])
    face = np.zeros(alpha.shape, np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull((lm - [x0, y0]).astype(np.float32)).astype(np.int32), 1)
    if lm_out is not None:
        other = np.zeros_like(face)
        cv2.fillConvexPoly(
            other, cv2.convexHull((lm_out - [x0, y0]).astype(np.float32)).astype(np.int32), 1
        )
        face &= other
    for part in (range(36, 42), range(42, 48), range(48, 60), range(17, 27)):
        p = lm[list(part)] - [x0, y0]
        c = p.mean(axis=0)
        cv2.fillConvexPoly(
            face, cv2.convexHull((c + 1.6 * (p - c)).astype(np.float32)).astype(np.int32), 0
        )
    res = []
    for sel in ((face > 0) & (alpha < 0.05), (face > 0) & (alpha > 0.9)):
        if not sel.any():
            res.append(0.0)
            continue
        res.append(
            float(
                deltaE_ciede2000(  # type: ignore[no-untyped-call]
                    a[sel].mean(axis=0), b[sel].mean(axis=0)
                )
            )
        )
    return res[0], res[1]


def evaluate(
    gen: Generator,
    epsilons: Sequence[float] = EPSILONS,
    draws: int = 1,
    seed: int = 2024,
    faces_idx: Sequence[int] | None = None,
    verbose: bool = True,
    sex_channel: str = "raw",
    exclude_own: bool = False,
) -> dict[str, object]:
    """Run the protocol (module docstring); returns per-epsilon summaries.

    ``sex_channel="raw"`` passes FaceRes's P(male) of the input face as a raw (NOT
    privatised) attribute channel, so the surrogate's apparent sex matches; ``"none"``
    passes nothing.

    ``exclude_own=True`` (needs a generator with ``excluding``, e.g. ``SurrogateGenerator``)
    measures the deployment case: the person in the photo did not contribute to the
    surrogate bank. Each face is generated with the synthetic identities that any photo of
    its person contributed to removed from the choice (the bank is built from these same
    sample faces, so without this every person is measured against averages of
    themselves)."""
    from skimage.metrics import structural_similarity

    from dpface.align import arcface_crop
    from dpface.models.attributes import EMOTIONS, emotion_probs
    from dpface.models.dlib_models import DlibFaceModels
    from dpface.models.encoders import get_encoder
    from dpface.models.samples import sample_faces
    from mechanisms.identity import IdentityLaplace

    faces = sample_faces()
    idx = list(range(len(faces))) if faces_idx is None else list(faces_idx)
    enc = get_encoder(gen.encoder)
    emb = enc.embed([faces[i] for i in idx])
    dl = DlibFaceModels()
    desc_in = {i: dl.descriptor(faces[i].image, faces[i].landmarks68) for i in range(len(faces))}
    p_in = emotion_probs([faces[i] for i in idx])
    emo_in = p_in.argmax(axis=1)
    confident = p_in.max(axis=1) >= 0.6
    attrs = sex_attributes([faces[i] for i in idx], sex_channel)
    gens: dict[int, Generator] = {}
    for i in idx:
        if not exclude_own:
            gens[i] = gen
            continue
        own = {f"{g.photo}#{g.index}" for g in faces if g.identity == faces[i].identity}
        gens[i] = gen.excluding(own)  # type: ignore[attr-defined]
    summary: dict[str, object] = {}
    for j, eps in enumerate(epsilons):
        rows = []
        flips: Counter[tuple[str, str]] = Counter()
        for d in range(draws):
            if math.isinf(eps):
                priv = emb.astype(np.float64)
            else:
                # a separate seed per epsilon: one seed for all would draw the same noise
                # shape at every scale (the surrogate choices would then barely differ)
                mech = IdentityLaplace(epsilon=eps, dim=emb.shape[1], seed=seed + 1000 * j + d)
                priv = mech.batch(emb)
            for k, i in enumerate(idx):
                f = faces[i]
                t = time.perf_counter()
                res = gens[i].generate(f.image, Face.of(f), priv[k], attrs[k])
                dt = time.perf_counter() - t
                out = res.image
                found, box = detect_near(dl, out, f.box)
                lm_out = dl.landmarks(out, box) if found else dl.landmarks(out, f.box)
                desc = dl.descriptor(out, lm_out)
                dist = float(np.linalg.norm(desc - desc_in[i]))
                same = [j for j, g in enumerate(faces) if g.identity == f.identity]
                gal = min(float(np.linalg.norm(desc - desc_in[j])) for j in same)
                ssim = float(
                    structural_similarity(  # type: ignore[no-untyped-call]
                        arcface_crop(f.image, f.points5, 256),
                        arcface_crop(out, f.points5, 256),
                        channel_axis=2,
                        data_range=255,
                    )
                )
                emo = int(emotion_probs([Face.of(f, image=out)])[0].argmax())
                flips[(EMOTIONS[int(emo_in[k])], EMOTIONS[emo])] += emo != int(emo_in[k])
                tl = res.details.get("target_landmarks")
                de_out, de_tone = skin_delta_e(
                    f.image,
                    out,
                    res.alpha,
                    res.region,
                    f.landmarks68,
                    None if tl is None else np.asarray(tl),
                )
                rows.append(
                    {
                        "face": i,
                        "draw": d,
                        "replaced": res.replaced,
                        "dlib_distance": dist,
                        "protected": dist >= 0.6,
                        "protected_gallery": gal >= 0.6,
                        "detected": found,
                        "ssim": ssim,
                        "emotion_agrees": emo == int(emo_in[k]),
                        "emotion_confident": bool(confident[k]),
                        "delta_e_outside": de_out,
                        "delta_e_tone": de_tone,
                        "seconds": dt,
                    }
                )
        s = {
            "n": len(rows),
            "psr": float(np.mean([r["protected"] for r in rows])),
            "psr_ci95": clustered_mean_ci(
                np.array(
                    [[r["protected"] for r in rows if r["face"] == i] for i in idx],
                    dtype=np.float64,
                )
            ).half_width,
            "psr_gallery": float(np.mean([r["protected_gallery"] for r in rows])),
            "dlib_distance_mean": float(np.mean([r["dlib_distance"] for r in rows])),
            "dlib_distance_min": float(np.min([r["dlib_distance"] for r in rows])),
            "detection": float(np.mean([r["detected"] for r in rows])),
            "ssim": float(np.mean([r["ssim"] for r in rows])),
            "emotion_agreement": float(np.mean([r["emotion_agrees"] for r in rows])),
            "emotion_agreement_confident": float(
                np.mean([r["emotion_agrees"] for r in rows if r["emotion_confident"]] or [np.nan])
            ),
            "delta_e_outside": float(np.mean([r["delta_e_outside"] for r in rows])),
            "delta_e_tone": float(np.mean([r["delta_e_tone"] for r in rows])),
            "seconds_per_face": float(np.median([r["seconds"] for r in rows])),
            "unprotected_faces": dict(
                sorted(Counter(int(r["face"]) for r in rows if not r["protected"]).items())
            ),
            "emotion_flips": {f"{a}->{b}": n for (a, b), n in flips.most_common() if n},
        }
        summary["inf" if math.isinf(eps) else f"{eps:g}"] = s
        if verbose:
            print(
                f"eps={eps:g}: "
                + ", ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()
                ),
                flush=True,
            )
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    import torch

    from dpface.generators.surrogate import SurrogateGenerator

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--eps", type=float, nargs="+", default=list(EPSILONS))
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument(
        "--sex-channel",
        choices=["raw", "none"],
        default="raw",
        help="pass the input's raw apparent sex as an (uncovered) attribute",
    )
    ap.add_argument(
        "--exclude-own",
        action="store_true",
        help="deployment case: no face is given a synthetic identity its own"
        " person contributed to (the bank is built from these samples)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    summary = evaluate(
        SurrogateGenerator(),
        args.eps,
        args.draws,
        args.seed,
        sex_channel=args.sex_channel,
        exclude_own=args.exclude_own,
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)


if __name__ == "__main__":
    main()
