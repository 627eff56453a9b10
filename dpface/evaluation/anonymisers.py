"""Every condition the harness compares, and how one photo is released under it.

The dpface rows run **the product**: :class:`dpface.pipeline.Anonymizer`, built from a
:class:`dpface.config.AnonymizeConfig` (the object the command line builds, with its defaults
and checks: detector, face regions, DP-Pix block and m, fallbacks), called on the whole sample
photo with ``Anonymizer.anonymize(array)``. Nothing here re-implements a step of it. Each
release gets its own seed (``AnonymizeConfig(seed=...)``: reproducible, for measurement only,
not private) and is charged to the evaluation run's own temporary ledger.

* ``dp-pix`` at (ε, b, m): the product with ``--mechanism dp-pix --epsilon ε --block b
  --pixels m`` (b and m in pixels of the photo, as users give them);
* ``identity-laplace`` / ``identity-gaussian`` / ``identity-vmf`` at ε: the product with that
  mechanism (surrogate generator, MobileFace encoder: the defaults), including its DP-Pix
  fallback for faces the generator cannot take and its mask for refused releases;
* ``generator`` (ε = ∞, a reference, not a product setting): the same product path with
  ``NoiselessIdentity`` as the mechanism -- IdentityLaplace's domain map without its noise --
  so the generator is fed the un-noised embedding.

Baselines (not DP; the book's Table 5.1 rows) are simple functions applied to **the regions
the product protects** in the same photo (read from the product's own face records), so every
row changes the same pixels. Their sizes are given in pixels *at a reference region width* of
``REFERENCE_REGION`` = 192 px (the product's region around a 128-px face: 1.5 face widths) and
scaled to each region's width:

* ``gaussian-blur``: Gaussian blur, σ = 6 px at the reference width;
* ``blur-7x7``, ``blur-19x19``: down/up-sampling blur (area reduction so each pixel covers
  k×k reference pixels, bilinear back up);
* ``pixelate-8x8``, ``pixelate-16x16``: mean colour in k×k reference-pixel blocks;
* ``noise-9``, ``noise-49``: additive Gaussian pixel noise of that σ (0-255 scale), clipped;
* ``mask``: the region painted black.

``original`` returns the input unchanged (the no-protection reference row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mechanisms.identity import IdentityLaplace
from mechanisms.registry import names as mechanism_names
from mechanisms.rng import Randomness

REFERENCE_REGION = 192.0  # product region width around a 128-px face (1.5 face widths)
IDENTITY_MECHANISMS = mechanism_names(consumes="embedding")  # from mechanisms.registry
PRODUCT_FAMILIES = ("dp-pix", "generator", *IDENTITY_MECHANISMS)
GAUSSIAN_DELTA = 1e-6  # the product's default --delta
NOISELESS_CHARGE = 1.0  # what the ledger is charged per ε = ∞ reference release

Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class Condition:
    """One row of the comparison: a named anonymiser with its parameters."""

    name: str  # unique, used in cache keys: e.g. "identity-laplace@eps=2"
    family: str  # "original", "baseline", "dp-pix", "generator", or a mechanism name
    label: str  # human row label
    epsilon: float = math.nan  # nan: not DP; inf: generator without noise
    params: tuple[tuple[str, float], ...] = ()
    random: bool = False  # output depends on the random stream
    head: str = "keep"  # the product's head protection (dpface.head): keep | dp-pix | mask
    head_epsilon: float = 0.0  # ε of the head release (head "dp-pix")

    def param(self, key: str) -> float:
        """A numeric parameter."""
        return dict(self.params)[key]

    @property
    def product(self) -> bool:
        """True when the row runs dpface's own Anonymizer."""
        return self.family in PRODUCT_FAMILIES

    @property
    def charge(self) -> float:
        """ε the ledger is charged per release of a face under this condition (0: none)."""
        if self.family == "generator":
            return NOISELESS_CHARGE
        return self.epsilon + self.head_epsilon if self.product else 0.0


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
    """The product with the identity noise left out (ε = ∞; a reference, no guarantee)."""
    return Condition(
        "generator@eps=inf",
        "generator",
        "dpface generator, ε=∞ (no noise)",
        epsilon=math.inf,
        random=True,
    )


def identity(
    mechanism: str, epsilon: float, head: str = "keep", head_epsilon: float | None = None
) -> Condition:
    """dpface: the product with identity mechanism ``mechanism`` at ``epsilon`` and head
    protection ``head`` (``--head``; ``head_epsilon``: ``--head-epsilon``, default
    ``HEAD_EPSILON``)."""
    from dpface.head import HEAD_EPSILON, HEAD_MODES

    if mechanism not in IDENTITY_MECHANISMS:
        raise ValueError(f"unknown identity mechanism {mechanism!r}; use {IDENTITY_MECHANISMS}")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError("epsilon must be finite and > 0 (use the generator row for ε=∞)")
    if head not in HEAD_MODES:
        raise ValueError(f"unknown head protection {head!r}; use {', '.join(HEAD_MODES)}")
    h_eps = 0.0
    if head == "dp-pix":
        h_eps = float(HEAD_EPSILON if head_epsilon is None else head_epsilon)
        if not (h_eps > 0 and math.isfinite(h_eps)):
            raise ValueError("the head's epsilon must be finite and > 0")
    short = {"identity-laplace": "Laplace", "identity-gaussian": "Gaussian", "identity-vmf": "vMF"}[
        mechanism
    ]
    extra = f", δ={GAUSSIAN_DELTA:g}" if mechanism == "identity-gaussian" else ""
    name, label = f"{mechanism}@eps={epsilon:g}", f"dpface {short} ε={epsilon:g}{extra}"
    if head == "dp-pix":
        name, label = name + f"+head=dp-pix@{h_eps:g}", label + f" + head DP-Pix ε={h_eps:g}"
    elif head == "mask":
        name, label = name + "+head=mask", label + " + head masked"
    return Condition(
        name,
        mechanism,
        label,
        epsilon=float(epsilon),
        random=True,
        head=head,
        head_epsilon=h_eps,
    )


def dp_pix(epsilon: float, block: int = 16, m: int = 16) -> Condition:
    """The product's DP-Pix at ``epsilon`` with ``--block block --pixels m``."""
    return Condition(
        f"dp-pix@eps={epsilon:g},b={block},m={m}",
        "dp-pix",
        f"DP-Pix ε={epsilon:g} (b={block}, m={m})",
        epsilon=float(epsilon),
        params=(("b", float(block)), ("m", float(m))),
        random=True,
    )


# ----------------------------------------------------------------------------- the product


class NoiselessIdentity(IdentityLaplace):
    """IdentityLaplace's domain map (unit sphere) with the noise left out: the ε = ∞ reference
    row only. It is NOT differentially private; the evaluation charges it ``NOISELESS_CHARGE``
    so it goes through the product's ledger path like any release."""

    def _release(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._domain_map(rows))


def product_config(cond: Condition, seed: int, ledger: str | Path) -> Any:
    """The :class:`~dpface.config.AnonymizeConfig` a user would write for ``cond`` (the
    product's defaults for everything else), with ``seed`` and the evaluation's ledger."""
    from dpface.config import AnonymizeConfig

    if cond.family == "dp-pix":
        return AnonymizeConfig(
            mechanism="dp-pix",
            epsilon=cond.epsilon,
            block=int(cond.param("b")),
            pixels=int(cond.param("m")),
            seed=seed,
            ledger=Path(ledger),
            workers=1,
        )
    if cond.family in IDENTITY_MECHANISMS:
        return AnonymizeConfig(
            mechanism=cond.family,  # checked: an identity mechanism
            epsilon=cond.epsilon,
            head=cond.head,  # type: ignore[arg-type]  # checked by identity()
            head_epsilon=cond.head_epsilon if cond.head == "dp-pix" else None,
            delta=GAUSSIAN_DELTA,
            seed=seed,
            ledger=Path(ledger),
            workers=1,
        )
    if cond.family == "generator":  # the identity path's settings; the mechanism is swapped
        return AnonymizeConfig(
            mechanism="identity-laplace",
            epsilon=NOISELESS_CHARGE,
            seed=seed,
            ledger=Path(ledger),
            workers=1,
        )
    raise ValueError(f"{cond.name} is not a dpface row")


@cache
def _models(encoder: str) -> tuple[Any, Any]:
    """(generator, encoder) as ``AnonymizeConfig.build_generator`` makes them (one per
    process: they are read-only)."""
    from dpface.config import AnonymizeConfig

    gen, enc = AnonymizeConfig(
        mechanism="identity-laplace", encoder=encoder, ledger=Path(":memory:")
    ).build_generator()
    return gen, enc


def product_anonymizer(
    cond: Condition, seed: int, ledger: Any, exclude: frozenset[str] = frozenset()
) -> Any:
    """dpface's own :class:`~dpface.pipeline.Anonymizer` for ``cond`` on ``ledger`` (an open
    :class:`~dpface.ledger.Ledger`).

    Without ``exclude`` and for a product mechanism this is exactly
    ``product_config(...).build_anonymizer(ledger)``. ``exclude`` (``--exclude-own``) and the
    ε = ∞ reference need a generator or mechanism the configuration cannot name; they are
    passed to the same constructor with the configuration's other settings."""
    from dpface.pipeline import Anonymizer

    config = product_config(cond, seed, ledger.path)
    if cond.family != "generator" and not exclude:
        return config.build_anonymizer(ledger)
    gen, enc = _models(config.encoder)
    if exclude:
        gen = generator_excluding(exclude)
    mech = (
        NoiselessIdentity(epsilon=NOISELESS_CHARGE, dim=gen.identity_dim, seed=seed)
        if cond.family == "generator"
        else config.build_mechanism(gen.identity_dim)
    )
    return Anonymizer(
        mechanism=mech,
        generator=gen,
        ledger=ledger,
        detector=config.detector,
        pseudonym=config.pseudonym,
        head=config.head,
        head_epsilon=config.head_eps,
        encoder=enc,
        receipt_subjects="digest" if config.names == "hash" else "name",
    )


@dataclass(frozen=True)
class FaceOutcome:
    """What happened to one face region of a released photo (a product face record, or a
    region a baseline changed)."""

    region: Region
    protection: str  # product: "generator" | "mechanism" | "dp-fallback" | "mask"; "baseline"
    refused: bool = False


@dataclass
class PhotoRelease:
    """One release of a whole photo under a condition."""

    image: np.ndarray = field(repr=False)
    faces: list[FaceOutcome]
    seconds: float
    seed: int


@cache
def product_regions(source: str) -> tuple[Region, ...]:
    """The regions the product protects in photo ``source`` (from the face records of one
    product release: the same detection, fallbacks and region rule as every dpface row)."""
    from dpface.config import AnonymizeConfig
    from dpface.evaluation.faces import load_image

    config = AnonymizeConfig(
        mechanism="dp-pix", epsilon=1.0, ledger=Path(":memory:"), seed=0, workers=1
    )
    anon = config.build_anonymizer()
    try:
        res = anon.anonymize(load_image(source), name=Path(source).name)
    finally:
        anon.ledger.close()
    if not res.ok:
        raise RuntimeError(f"{source}: {res.error}")
    return tuple(r.box for r in res.faces)


def release_photo(
    cond: Condition,
    source: str,
    seed: int,
    ledger: Any = None,
    exclude: frozenset[str] = frozenset(),
) -> PhotoRelease:
    """One release of the whole photo ``source`` under ``cond`` (``ledger``: the run's open
    ledger, needed by the dpface rows)."""
    import time

    from dpface.evaluation.faces import load_image

    img = load_image(source)
    if cond.family == "original":
        return PhotoRelease(np.array(img, copy=True), [], 0.0, seed)
    if cond.family == "baseline":
        regions = product_regions(source)
        t = time.perf_counter()
        out = apply_baseline(cond, img, regions, Randomness.from_seed(seed))
        faces = [FaceOutcome(r, "baseline") for r in regions]
        return PhotoRelease(out, faces, time.perf_counter() - t, seed)
    if ledger is None:
        raise ValueError(f"{cond.name} runs the product: pass the run's ledger")
    anon = product_anonymizer(cond, seed, ledger, exclude)
    t = time.perf_counter()
    res = anon.anonymize(img, name=Path(source).name)
    dt = time.perf_counter() - t
    if not res.ok or res.image is None:
        raise RuntimeError(f"{source}: the product failed: {res.error}")
    faces = [FaceOutcome(r.box, r.protection, r.refused) for r in res.faces]
    return PhotoRelease(np.asarray(res.image), faces, dt, seed)


def outcome_of(faces: Sequence[FaceOutcome], box: Sequence[float]) -> FaceOutcome | None:
    """The released region that covers most of the true face ``box`` (at least half of it);
    None when the product did not find the face."""
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    best, cover = None, 0.5
    for f in faces:
        x0, y0, x1, y1 = f.region
        ix = max(0.0, min(x1, box[2]) - max(x0, box[0]))
        iy = max(0.0, min(y1, box[3]) - max(y0, box[1]))
        c = ix * iy / area
        if c >= cover:
            best, cover = f, c
    return best


# ----------------------------------------------------------------------------- baselines


def _scaled(px: float, region_width: float) -> float:
    return px * region_width / REFERENCE_REGION


def _blocky(region: np.ndarray, k: float, smooth: bool) -> np.ndarray:
    h, w = region.shape[:2]
    sh, sw = max(1, round(h / k)), max(1, round(w / k))
    small = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
    interp = cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST
    return np.asarray(cv2.resize(small, (w, h), interpolation=interp))


def apply_baseline(
    cond: Condition, img: np.ndarray, regions: Sequence[Region], rand: Randomness
) -> np.ndarray:
    """``img`` with baseline ``cond`` applied to every region (in order)."""
    out = np.array(img, copy=True)
    for region in regions:
        _baseline_region(cond, img, out, region, rand)
    return out


def _baseline_region(
    cond: Condition, img: np.ndarray, out: np.ndarray, region: Region, rand: Randomness
) -> None:
    x0, y0, x1, y1 = region
    if x1 <= x0 or y1 <= y0:
        return
    patch = out[y0:y1, x0:x1]
    width = float(x1 - x0)
    name = cond.name
    if name == "gaussian-blur":
        sigma = _scaled(cond.param("sigma"), width)
        # blur a padded window so the region's edge sees real neighbours
        pad = math.ceil(3 * sigma)
        wy0, wx0 = max(0, y0 - pad), max(0, x0 - pad)
        win = cv2.GaussianBlur(
            np.ascontiguousarray(img[wy0 : y1 + pad, wx0 : x1 + pad]), (0, 0), sigma
        )
        patch[:] = win[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    elif name.startswith("blur-"):
        patch[:] = _blocky(np.ascontiguousarray(patch), _scaled(cond.param("k"), width), True)
    elif name.startswith("pixelate-"):
        patch[:] = _blocky(np.ascontiguousarray(patch), _scaled(cond.param("k"), width), False)
    elif name.startswith("noise-"):
        noise = rand.generator.standard_normal(patch.shape) * cond.param("sigma")
        patch[:] = np.clip(np.rint(patch + noise), 0, 255).astype(np.uint8)
    elif name == "mask":
        patch[:] = 0
    else:
        raise ValueError(f"unknown baseline {name!r}")


# ----------------------------------------------------------------------------- --exclude-own


def own_labels(face: Any) -> frozenset[str]:
    """Sample labels (``photo#index``) of every photo of ``face``'s person among the bundled
    sample faces that built the surrogate bank (only its own photo when unlabelled)."""
    from dpface.models.samples import sample_faces

    mine = {f"{Path(face.source).name}#{face.index}"}
    if getattr(face, "labelled", False):
        mine |= {f"{s.photo}#{s.index}" for s in sample_faces() if s.identity == face.identity}
    return frozenset(mine)


def photo_labels(faces: Sequence[Any]) -> frozenset[str]:
    """``own_labels`` of every given face of one photo together: the product gives one
    generator to the whole photo, so with ``--exclude-own`` none of its people's synthetic
    identities may be chosen for any face in it."""
    out: set[str] = set()
    for f in faces:
        out |= own_labels(f)
    return frozenset(out)


@cache
def generator_excluding(labels: frozenset[str]) -> Any:
    """The product's generator without the synthetic identities ``labels`` contributed to."""
    return _models("mobileface")[0].excluding(set(labels))


# ----------------------------------------------------------------------------- conditions


def parse_epsilons(text: str | Sequence[float]) -> list[float]:
    """ "0.5,1,2" -> [0.5, 1.0, 2.0] (all finite and > 0)."""
    vals = [
        float(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()
    ]
    for v in vals:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"epsilon {v} must be finite and > 0")
    return vals


def parse_heads(text: str) -> list[tuple[str, float | None]]:
    """``--heads`` ("keep,dp-pix:2,mask"): (head protection, head ε or None for the
    identity ε) pairs."""
    from dpface.head import HEAD_MODES

    out: list[tuple[str, float | None]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        mode, _, eps = item.partition(":")
        if mode not in HEAD_MODES or (eps and mode != "dp-pix"):
            raise ValueError(f"--heads: {item!r} is not keep, mask, dp-pix or dp-pix:EPS")
        try:
            value = float(eps) if eps else None
        except ValueError as err:
            raise ValueError(f"--heads: {item!r}: {eps!r} is not a number") from err
        out.append((mode, value))
    return out or [("keep", None)]


def build_conditions(
    mechanisms: Sequence[str],
    epsilons: Sequence[float],
    dppix: Sequence[tuple[float, int, int]],
    heads: Sequence[tuple[str, float | None]] = (("keep", None),),
) -> list[Condition]:
    """Conditions from mechanism group names: ``original``, ``baselines`` (or single
    baseline names), ``dp-pix`` (over ``dppix`` (ε, b, m) triples), ``generator`` (ε = ∞),
    and identity mechanisms (over ``epsilons`` × ``heads``, see :func:`parse_heads`)."""
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
            out.extend(identity(m, e, h, he) for e in epsilons for h, he in heads)
        elif m:
            raise ValueError(
                f"unknown mechanism {m!r}; use original, baselines, {', '.join(by_name)},"
                f" dp-pix, generator, {', '.join(IDENTITY_MECHANISMS)}"
            )
    seen: set[str] = set()
    unique = []
    for c in out:
        if c.name not in seen:
            seen.add(c.name)
            unique.append(c)
    return unique
