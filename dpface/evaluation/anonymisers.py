"""Every condition the harness compares, behind one interface: ``apply(condition, face,
randomness) -> image``.

Baselines (not DP; the book's Table 5.1 rows) change only the face region (the detector box
grown to the landmarks' extent). Their sizes are given in pixels *at a reference face width*
of ``REFERENCE_WIDTH`` = 128 px (roughly the face in a 256×256 CelebA-HQ image) and scaled to
each face's width, so a small and a large face get the same relative treatment:

* ``gaussian-blur``: Gaussian blur, σ = 6 px at the reference width;
* ``blur-7x7``, ``blur-19x19``: down/up-sampling blur — the region is reduced by area
  averaging so each pixel covers k×k reference pixels, then scaled back bilinearly;
* ``pixelate-8x8``, ``pixelate-16x16``: mean colour in k×k reference-pixel blocks;
* ``noise-9``, ``noise-49``: additive Gaussian pixel noise of that σ (0–255 scale), clipped;
* ``mask``: the region painted black.

DP conditions:

* ``dp-pix``: ``mechanisms.pixelization.DPPixelization`` on the same region (block size b at
  the reference width, scaled; m-pixel neighbours; ε per image);
* ``identity-laplace`` / ``identity-gaussian`` / ``identity-vmf`` at ε: the face's MobileFace
  embedding is privatised and ``SurrogateGenerator`` renders a new face from it (no attribute
  channel, as the pipeline does); a face the generator cannot replace is masked grey, as the
  pipeline does;
* ``generator``: the same generator fed the *un*-noised embedding (ε = ∞, no guarantee).

``original`` returns the input unchanged (the no-protection reference row).
Randomness is always an explicit seeded stream here (evaluation only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mechanisms.rng import Randomness

REFERENCE_WIDTH = 128.0
IDENTITY_MECHANISMS = ("identity-laplace", "identity-gaussian", "identity-vmf")
GAUSSIAN_DELTA = 1e-6
MASK_GREY = 128


@dataclass(frozen=True)
class Condition:
    """One row of the comparison: a named anonymiser with its parameters."""

    name: str  # unique, used in cache keys: e.g. "identity-laplace@eps=2"
    family: str  # "original", "baseline", "dp-pix", "generator", or a mechanism name
    label: str  # human row label
    epsilon: float = math.nan  # nan: not DP; inf: generator without noise
    params: tuple[tuple[str, float], ...] = ()
    random: bool = False  # output depends on the random stream

    def param(self, key: str) -> float:
        """A numeric parameter."""
        return dict(self.params)[key]


def baselines() -> list[Condition]:
    """The non-DP baselines of the book's Table 5.1."""
    return [
        Condition("gaussian-blur", "baseline", "Gaussian blur (σ 6)", params=(("sigma", 6.0),)),
        Condition("blur-7x7", "baseline", "Blur 7×7 (down/up)", params=(("k", 7.0),)),
        Condition("blur-19x19", "baseline", "Blur 19×19 (down/up)", params=(("k", 19.0),)),
        Condition("pixelate-8x8", "baseline", "Pixelation 8×8", params=(("k", 8.0),)),
        Condition("pixelate-16x16", "baseline", "Pixelation 16×16", params=(("k", 16.0),)),
        Condition("noise-9", "baseline", "Noise σ=9", params=(("sigma", 9.0),), random=True),
        Condition("noise-49", "baseline", "Noise σ=49", params=(("sigma", 49.0),), random=True),
        Condition("mask", "baseline", "Black mask"),
    ]


def original() -> Condition:
    """No protection (reference)."""
    return Condition("original", "original", "Original (no protection)")


def generator_inf() -> Condition:
    """The generator fed the un-noised identity (ε = ∞)."""
    return Condition("generator@eps=inf", "generator", "dpface generator, ε=∞ (no noise)",
                     epsilon=math.inf)


def identity(mechanism: str, epsilon: float) -> Condition:
    """dpface: identity mechanism ``mechanism`` at ``epsilon`` + the surrogate generator."""
    if mechanism not in IDENTITY_MECHANISMS:
        raise ValueError(f"unknown identity mechanism {mechanism!r}; use {IDENTITY_MECHANISMS}")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError("epsilon must be finite and > 0 (use the generator row for ε=∞)")
    short = {"identity-laplace": "Laplace", "identity-gaussian": "Gaussian",
             "identity-vmf": "vMF"}[mechanism]
    extra = f", δ={GAUSSIAN_DELTA:g}" if mechanism == "identity-gaussian" else ""
    return Condition(f"{mechanism}@eps={epsilon:g}", mechanism,
                     f"dpface {short} ε={epsilon:g}{extra}", epsilon=float(epsilon),
                     random=True)


def dp_pix(epsilon: float, block: int = 16, m: int = 16) -> Condition:
    """DP-Pix at ``epsilon`` with block ``block`` (reference pixels) and ``m``."""
    return Condition(f"dp-pix@eps={epsilon:g},b={block},m={m}", "dp-pix",
                     f"DP-Pix ε={epsilon:g} (b={block}, m={m})", epsilon=float(epsilon),
                     params=(("b", float(block)), ("m", float(m))), random=True)


# ----------------------------------------------------------------------------- application


def face_region(face: Any, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1): the face box grown to the landmarks' extent, clipped."""
    lm = np.asarray(face.landmarks68)
    x0 = min(face.box[0], float(lm[:, 0].min()))
    y0 = min(face.box[1], float(lm[:, 1].min()))
    x1 = max(face.box[2], float(lm[:, 0].max()))
    y1 = max(face.box[3], float(lm[:, 1].max()))
    h, w = shape[0], shape[1]
    return (max(0, math.floor(x0)), max(0, math.floor(y0)), min(w, math.ceil(x1)),
            min(h, math.ceil(y1)))


def _scaled(px: float, face_width: float) -> float:
    return px * face_width / REFERENCE_WIDTH


def _blocky(region: np.ndarray, k: float, smooth: bool) -> np.ndarray:
    h, w = region.shape[:2]
    sh, sw = max(1, round(h / k)), max(1, round(w / k))
    small = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
    interp = cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST
    return np.asarray(cv2.resize(small, (w, h), interpolation=interp))


def _baseline(cond: Condition, img: np.ndarray, region: tuple[int, int, int, int],
              face_width: float, rand: Randomness) -> np.ndarray:
    x0, y0, x1, y1 = region
    out = img.copy()
    patch = out[y0:y1, x0:x1]
    name = cond.name
    if name == "gaussian-blur":
        sigma = _scaled(cond.param("sigma"), face_width)
        # blur a padded window so the region's edge sees real neighbours
        pad = math.ceil(3 * sigma)
        wy0, wx0 = max(0, y0 - pad), max(0, x0 - pad)
        win = cv2.GaussianBlur(img[wy0:y1 + pad, wx0:x1 + pad], (0, 0), sigma)
        patch[:] = win[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
    elif name.startswith("blur-"):
        patch[:] = _blocky(patch, _scaled(cond.param("k"), face_width), smooth=True)
    elif name.startswith("pixelate-"):
        patch[:] = _blocky(patch, _scaled(cond.param("k"), face_width), smooth=False)
    elif name.startswith("noise-"):
        noise = rand.generator.standard_normal(patch.shape) * cond.param("sigma")
        patch[:] = np.clip(np.rint(patch + noise), 0, 255).astype(np.uint8)
    elif name == "mask":
        patch[:] = 0
    else:
        raise ValueError(f"unknown baseline {name!r}")
    return out


@cache
def _generator() -> Any:
    from dpface.generators.surrogate import SurrogateGenerator

    return SurrogateGenerator()


def own_labels(face: Any) -> frozenset[str]:
    """Sample labels (``photo#index``) of every photo of ``face``'s person among the bundled
    sample faces that built the surrogate bank (only its own photo when unlabelled)."""
    from dpface.models.samples import sample_faces

    mine = {f"{Path(face.source).name}#{face.index}"}
    if getattr(face, "labelled", False):
        mine |= {f"{s.photo}#{s.index}" for s in sample_faces() if s.identity == face.identity}
    return frozenset(mine)


@cache
def generator_excluding(labels: frozenset[str]) -> Any:
    """The generator without the synthetic identities ``labels`` contributed to."""
    return _generator().excluding(set(labels))


@cache
def _mobileface() -> Any:
    from dpface.models.encoders import get_encoder

    return get_encoder("mobileface")


def identity_embedding(face: Any) -> np.ndarray:
    """The face's MobileFace embedding (what the identity mechanisms privatise)."""
    return np.asarray(_mobileface().embed([face])[0], dtype=np.float64)


class Anonymiser:
    """A condition bound to a seeded random stream: call it on faces, one release each.

    The stream is consumed in call order, so the same calls in the same order give the
    same outputs."""

    def __init__(self, cond: Condition, rand: Randomness, exclude_own: bool = False) -> None:
        """``exclude_own``: the generator never gives a face a synthetic identity its own
        person contributed to (the deployment case; the bank is built from the samples)."""
        self.cond = cond
        self.rand = rand
        self.exclude_own = exclude_own
        self._mech: Any = None
        self._pix: dict[int, Any] = {}
        if cond.family in IDENTITY_MECHANISMS:
            from mechanisms.identity import IdentityGaussian, IdentityLaplace, IdentityVMF

            dim = _generator().identity_dim
            if cond.family == "identity-laplace":
                self._mech = IdentityLaplace(epsilon=cond.epsilon, dim=dim, randomness=rand)
            elif cond.family == "identity-gaussian":
                self._mech = IdentityGaussian(epsilon=cond.epsilon, delta=GAUSSIAN_DELTA,
                                              dim=dim, randomness=rand)
            else:
                self._mech = IdentityVMF(epsilon=cond.epsilon, dim=dim, randomness=rand)

    def _dp_pix(self, face_width: float) -> Any:
        from mechanisms.pixelization import DPPixelization

        b = max(2, round(_scaled(self.cond.param("b"), face_width)))
        if b not in self._pix:
            self._pix[b] = DPPixelization(epsilon=self.cond.epsilon, block=b,
                                          m=int(self.cond.param("m")), randomness=self.rand)
        return self._pix[b]

    def __call__(self, face: Any, embedding: np.ndarray | None = None) -> np.ndarray:
        """One release of ``face`` (its photo with the face anonymised). ``embedding``: the
        face's MobileFace embedding when already computed."""
        img = face.image
        region = face_region(face, img.shape)
        fam = self.cond.family
        if fam == "original":
            return np.array(img, copy=True)
        if fam == "baseline":
            return _baseline(self.cond, img, region, face.width, self.rand)
        if fam == "dp-pix":
            return np.asarray(self._dp_pix(face.width)(img, region))
        from dpface.generators.base import FaceInput

        emb = identity_embedding(face) if embedding is None else embedding
        private = emb if self._mech is None else np.asarray(self._mech(emb))
        gen = generator_excluding(own_labels(face)) if self.exclude_own else _generator()
        res = gen.generate(img, FaceInput.of(face), private)
        if res.replaced:
            return np.asarray(res.image)
        out = np.array(img, copy=True)
        x0, y0, x1, y1 = region
        out[y0:y1, x0:x1] = MASK_GREY
        return out


def parse_epsilons(text: str | Sequence[float]) -> list[float]:
    """"0.5,1,2" -> [0.5, 1.0, 2.0] (all finite and > 0)."""
    vals = [float(v) for v in (text.split(",") if isinstance(text, str) else text)
            if str(v).strip()]
    for v in vals:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"epsilon {v} must be finite and > 0")
    return vals


def build_conditions(mechanisms: Sequence[str], epsilons: Sequence[float],
                     dppix: Sequence[tuple[float, int, int]]) -> list[Condition]:
    """Conditions from mechanism group names: ``original``, ``baselines`` (or single
    baseline names), ``dp-pix`` (over ``dppix`` (ε, b, m) triples), ``generator`` (ε = ∞),
    and identity mechanisms (over ``epsilons``)."""
    by_name = {c.name: c for c in baselines()}
    out: list[Condition] = []
    for m in mechanisms:
        m = m.strip()
        if m == "original":
            out.append(original())
        elif m == "baselines":
            out.extend(baselines())
        elif m in by_name:
            out.append(by_name[m])
        elif m == "dp-pix":
            out.extend(dp_pix(e, b, k) for e, b, k in dppix)
        elif m == "generator":
            out.append(generator_inf())
        elif m in IDENTITY_MECHANISMS:
            out.extend(identity(m, e) for e in epsilons)
        elif m:
            raise ValueError(
                f"unknown mechanism {m!r}; use original, baselines, {', '.join(by_name)},"
                f" dp-pix, generator, {', '.join(IDENTITY_MECHANISMS)}")
    seen: set[str] = set()
    return [c for c in out if not (c.name in seen or seen.add(c.name))]  # type: ignore[func-returns-value]
