"""Mechanisms on identity embeddings: epsilon-IdentityDP (Laplace), Gaussian, von Mises-Fisher.

A face recogniser maps a face image to an identity embedding r in R^d (ArcFace: d = 512). The
mechanisms here release a privatised embedding, one release per face: local DP whose privacy
unit is one face image's identity embedding and whose neighbours are *any two faces*. Proofs:
``proofs/identity.md``.

* :class:`IdentityLaplace` -- epsilon-IdentityDP (book 002, ch. 5, eq. 5.10-5.13):
  r + Lap(D1/eps)^d.
  The book measures D1 on a test set (eq. 5.12), which bounds nothing for faces outside it. Here
  the input domain is bounded first and D1 derived from it: ``domain="unit_sphere"`` (default)
  L2-normalises every input, so ||x - x'||_1 <= sqrt(d) ||x - x'||_2 <= 2 sqrt(d); ``"clip"``
  clips every coordinate to [-c, c], so ||x - x'||_1 <= 2 c d. Noise: the exact grid
  :class:`~mechanisms.laplace.Laplace`. :meth:`IdentityLaplace.paper_compatible` reproduces the
  book's measured D1 for comparison only: its guarantee says it is NOT differential privacy.
* :class:`IdentityGaussian` -- (epsilon, delta)-DP with unit-sphere L2 sensitivity 2, noise from
  the exact grid :class:`~mechanisms.gaussian.Gaussian` (analytic calibration) and a zCDP view,
  so repeated releases of one person compose tightly.
* :class:`IdentityVMF` -- a von Mises-Fisher draw on the sphere centred on the unit embedding,
  concentration kappa = eps/2: pure eps-DP for any two faces, and eps * ||x - x'||_2 / 2 for
  faces at L2 distance ||x - x'||_2 (metric privacy). Honest caveat: the vMF sampler is
  scipy's ``vonmises_fisher``, which computes with floating point (beta/normal variates,
  logarithms, a rotation), unlike the exact integer samplers behind the Laplace and Gaussian
  mechanisms. The eps is proven for the *ideal* vMF distribution; the float sampler only
  approximates it and no bound on the gap is proven. Mitigation: every output is rounded to
  the fixed grid 2^-20 Z^d and renormalised (post-processing), so the set of possible outputs
  no longer depends on the input and the low-order float bits that floating-point attacks on
  noise read (Mironov 2012) are discarded. Its guarantee note says so.

Renormalising an output onto the unit sphere (``renormalize=True``) is post-processing: it never
changes a guarantee. Each row of a batch is a separate release of a separate face; releasing the
same person again spends the budget again (store and reuse an output to spend nothing more).

Float arithmetic in the domain map: normalising or clipping is done in float64, and the
computed unit vectors may exceed norm 1 by a few units in the last place; the float value of
``2 * sqrt(d)`` may also be below the real number. The noise is therefore calibrated to the
sensitivity enlarged by the relative margin 2^-20 (:attr:`IdentityLaplace.calibrated_sensitivity`),
which covers both errors for every allowed ``dim`` (<= 2^24); the declared ``sensitivity`` stays
the exact analytic value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from dp_accounting import dp_event
from scipy import special, stats

from .accounting import pure_event
from .base import (
    Guarantee,
    Mechanism,
    check_positive_finite,
    check_probability,
    format_down,
    format_up,
)
from .budgets import ZCDP, ApproxDP, PureDP, ceil_float
from .gaussian import Calibration, Gaussian, GaussianCalibration, least_epsilon
from .laplace import Laplace, LaplaceCalibration
from .metrics import EMBEDDING_L1, EMBEDDING_L2, Distance
from .rng import Randomness, resolve

__all__ = [
    "FLOAT_MARGIN",
    "MAX_DIM",
    "VMF_KAPPA_PER_DIM",
    "VMF_MIN_KAPPA_DIM3",
    "VMF_OUTPUT_GRID_BITS",
    "CosineEstimate",
    "Domain",
    "IdentityGaussian",
    "IdentityLaplace",
    "IdentityVMF",
    "expected_cosine",
    "vmf_max_kappa",
    "vmf_mean_cosine",
]

FloatArray = npt.NDArray[np.float64]
Domain = Literal["unit_sphere", "clip"]

MAX_DIM = 2**24
"""Largest embedding dimension accepted (keeps the float-error margin below FLOAT_MARGIN)."""

FLOAT_MARGIN = Fraction(1, 2**20)
"""Relative margin added to the sensitivity the noise is calibrated to (float domain errors)."""

VMF_OUTPUT_GRID_BITS = 20
"""vMF outputs are rounded to the grid 2^-20 Z^d (then renormalised) to hide float low bits."""

_PRIVACY_UNIT = (
    "one face image's identity embedding (local DP: each row / call is a separate release for "
    "that face; releasing the same person again spends the budget again)"
)


# --------------------------------------------------------------------------------------------
# Validation and the domain maps
# --------------------------------------------------------------------------------------------


def _check_dim(dim: int, *, minimum: int = 1) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    d = int(dim)
    if not minimum <= d <= MAX_DIM:
        raise ValueError(f"dim must lie in [{minimum}, {MAX_DIM}], got {d}")
    return d


def _check_bool(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def _as_rows(x: npt.ArrayLike, dim: int) -> tuple[FloatArray, bool]:
    """Input as a float64 (n, dim) array, and whether it was a single (dim,) vector."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        rows, single = arr.reshape(1, -1), True
    elif arr.ndim == 2:
        rows, single = arr, False
    else:
        raise ValueError(
            f"expected one embedding of shape ({dim},) or a batch of shape (n, {dim}), "
            f"got shape {arr.shape}"
        )
    if rows.shape[1] != dim:
        raise ValueError(
            f"embeddings must have {dim} coordinates (the mechanism's dim), got {rows.shape[1]}"
        )
    if rows.shape[0] == 0:
        raise ValueError("the batch is empty: pass at least one embedding")
    if not np.all(np.isfinite(rows)):
        raise ValueError("embeddings contain NaN or infinity; check the encoder output")
    return rows, single


def _unit_rows(rows: FloatArray) -> FloatArray:
    """Each row divided by its L2 norm; zero rows are refused with a clear error."""
    peak = np.max(np.abs(rows), axis=1, keepdims=True)
    zero = peak[:, 0] == 0.0
    if np.any(zero):
        bad = np.flatnonzero(zero)
        shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(
            f"embedding row(s) {shown} are all zeros: a zero vector has no direction, so it "
            "cannot be put on the unit sphere. Check the encoder (e.g. a failed detection) and "
            "drop or re-embed those faces."
        )
    scaled = rows / peak  # largest |coordinate| is 1: the norm cannot underflow or overflow
    return np.asarray(scaled / np.linalg.norm(scaled, axis=1, keepdims=True), dtype=np.float64)


def _renormalize(y: FloatArray, randomness: Randomness) -> FloatArray:
    """Project rows onto the unit sphere (post-processing).

    A row that is exactly zero (possible on the grid, e.g. dim = 1 and heavy noise) has no
    direction; it becomes a uniformly random unit vector drawn independently of the data, which
    is still post-processing.
    """
    out = np.array(y, dtype=np.float64, copy=True)
    peak = np.max(np.abs(out), axis=1)
    zero = peak == 0.0
    if np.any(zero):
        out[zero] = randomness.generator.standard_normal((int(zero.sum()), out.shape[1]))
        peak = np.max(np.abs(out), axis=1)
    out /= peak[:, None]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _padded(sensitivity: float) -> float:
    """The sensitivity enlarged by FLOAT_MARGIN, rounded up to a float."""
    return ceil_float(Fraction(sensitivity) * (1 + FLOAT_MARGIN))


def _checked_laplace(
    name: str, epsilon: float, sensitivity: float, dim: int, randomness: Randomness
) -> Laplace:
    """The grid Laplace for one ``dim``-coordinate release, refused now if it cannot be drawn."""
    try:
        noise = Laplace(epsilon=epsilon, sensitivity=sensitivity, randomness=randomness)
        noise.calibration(dim)
    except ValueError as exc:
        least = LaplaceCalibration.least_epsilon(sensitivity, dim)
        raise ValueError(
            f"{name}(epsilon={epsilon:g}, dim={dim}) cannot be realised on the exact sampler: "
            f"{exc}. For this {dim}-coordinate release use epsilon >= {format_up(least)}"
        ) from None
    return noise


VMF_MIN_KAPPA_DIM3 = 2.0**-30
"""Smallest kappa accepted for dim = 3 (see :func:`_check_vmf_kappa`)."""

VMF_KAPPA_PER_DIM = 2.0**14
"""For dim >= 4, kappa is accepted up to (dim - 1) * VMF_KAPPA_PER_DIM (see
:func:`vmf_max_kappa`)."""


def vmf_max_kappa(dim: int) -> float:
    """Largest kappa accepted for ``dim`` (infinite for dim <= 3).

    Wood's rejection sampler in scipy computes its envelope parameter as
    ``(sqrt(4 kappa^2 + (dim-1)^2) - 2 kappa) / (dim-1)``, which cancels catastrophically for
    large kappa: when the true value is below the rounding error of 2 kappa but the float
    difference is not exactly 0, the envelope is wrong by orders of magnitude, the acceptance
    probability is ~0 and the draw never returns (measured: dim 128 at kappa 1e17, dim 512 at
    kappa 1e19 hang). At kappa <= (dim-1) 2^14 the envelope's relative error is below 3e-10
    (measured against the stable form (dim-1) / (2 kappa + sqrt(...))), and the cosine of such
    a draw to the input is already 1 - 3e-5 on average: larger epsilons add nothing usable.
    """
    return math.inf if dim <= 3 else (dim - 1) * VMF_KAPPA_PER_DIM


def _check_vmf_kappa(kappa: float, epsilon: float, dim: int) -> None:
    """Refuse a kappa scipy's vMF sampler cannot honour for this dimension.

    * dim >= 4 (Wood's rejection sampler): above :func:`vmf_max_kappa` its envelope parameter
      loses its precision and the sampler can loop forever (and above ~6.7e153 it overflows).
    * dim = 3 (closed-form inverse CDF ``x = 1 + log(U + (1 - U) e^(-2 kappa)) / kappa``): the
      float value of 1 - e^(-2 kappa) carries an absolute error of about 2^-53, so x is off by
      about 4 * 2^-53 / kappa; below kappa = 2^-30 that exceeds half the 2^-20 output grid, and
      below kappa ~ 1e-16 the formula returns x = 1, i.e. the input direction itself. Refused
      below ``VMF_MIN_KAPPA_DIM3`` (epsilon 2^-29, about 1.9e-9).
    * dim = 2 (numpy's von Mises sampler) works over the whole float range.
    """
    top = vmf_max_kappa(dim)
    if not kappa <= top:
        raise ValueError(
            f"epsilon {epsilon:g} makes kappa = {kappa:.3g}, beyond what scipy's von "
            f"Mises-Fisher sampler computes reliably for dim {dim} (its envelope parameter "
            f"cancels in float64 and the rejection loop may never end); use epsilon <= "
            f"{format_down(2 * top)}"
        )
    if dim == 3 and kappa < VMF_MIN_KAPPA_DIM3:
        raise ValueError(
            f"epsilon {epsilon:g} makes kappa = {kappa:.3g}, below 2^-30: for dim 3 scipy's "
            "closed-form von Mises-Fisher sampler then loses its precision (its float error "
            "exceeds the 2^-20 output grid, and below kappa ~ 1e-16 it returns the input "
            f"direction itself); use epsilon >= {format_up(2 * VMF_MIN_KAPPA_DIM3)} "
            "(or another dim)"
        )


def _shape_back(y: FloatArray, single: bool) -> FloatArray:
    return y[0] if single else y


class _IdentityMechanism(Mechanism):
    """Shared call/batch plumbing: subclasses implement ``_release(rows) -> rows``."""

    dim: int

    def __call__(self, x: npt.ArrayLike) -> FloatArray:
        """Release one embedding (shape (dim,)) or a batch (n, dim): one release per row."""
        rows, single = _as_rows(x, self.dim)
        return _shape_back(self._release(rows), single)

    def batch(self, xs: npt.ArrayLike) -> FloatArray:
        """Independent releases of xs[0], xs[1], ...: each row is one face's own release."""
        arr = np.asarray(xs, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"batch expects shape (n, {self.dim}), got {arr.shape}")
        rows, _ = _as_rows(arr, self.dim)
        return self._release(rows)

    def _release(self, rows: FloatArray) -> FloatArray:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# epsilon-IdentityDP: the Laplace mechanism on a bounded domain
# --------------------------------------------------------------------------------------------


class IdentityLaplace(_IdentityMechanism):
    """epsilon-IdentityDP: pure epsilon-DP release of an identity embedding, any two faces.

    ``domain="unit_sphere"``: inputs are L2-normalised; L1 sensitivity 2*sqrt(dim).
    ``domain="clip"``: coordinates are clipped to [-clip, clip]; L1 sensitivity 2*clip*dim.
    Noise: exact discrete Laplace on a 2^-k grid (grid rounding charged to the sensitivity).
    ``renormalize=True`` projects outputs onto the unit sphere (post-processing).
    """

    input_metric = EMBEDDING_L1

    def __init__(
        self,
        *,
        epsilon: float,
        dim: int,
        domain: Domain = "unit_sphere",
        clip: float | None = None,
        renormalize: bool = True,
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self.epsilon = check_positive_finite("epsilon", epsilon)
        self.dim = _check_dim(dim)
        self.renormalize = _check_bool("renormalize", renormalize)
        if domain == "unit_sphere":
            if clip is not None:
                raise ValueError("clip= only applies to domain='clip'")
            self.clip: float | None = None
            sensitivity = 2.0 * math.sqrt(self.dim)
        elif domain == "clip":
            if clip is None:
                raise ValueError("domain='clip' needs clip=c > 0 (coordinates go to [-c, c])")
            self.clip = check_positive_finite("clip", clip)
            sensitivity = check_positive_finite("2*clip*dim", 2.0 * self.clip * self.dim)
        else:
            raise ValueError(f"domain must be 'unit_sphere' or 'clip', got {domain!r}")
        self.domain: str = domain
        self.randomness = resolve(randomness, seed)
        self._sensitivity = sensitivity
        self._measured = False
        self._noise = _checked_laplace(
            "IdentityLaplace", self.epsilon, _padded(sensitivity), self.dim, self.randomness
        )

    @classmethod
    def paper_compatible(
        cls,
        *,
        epsilon: float,
        dim: int,
        measured_sensitivity: float,
        renormalize: bool = False,
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> IdentityLaplace:
        """The book's eq. 5.11-5.12: noise Lap(D/eps) with D measured on a test set.

        For comparison with the book only. NOT differential privacy: a measured maximum bounds
        nothing for faces outside the measured set. Inputs are used as given (no normalisation
        or clipping), its guarantee has ``is_dp=False``, it has no privacy map, and its event is
        ``NonPrivateDpEvent``.
        """
        measured = check_positive_finite("measured_sensitivity", measured_sensitivity)
        mech = cls(
            epsilon=epsilon, dim=dim, renormalize=renormalize, randomness=randomness, seed=seed
        )
        mech.domain = "measured"
        mech._sensitivity = measured
        mech._measured = True
        mech._noise = _checked_laplace(
            "IdentityLaplace.paper_compatible", mech.epsilon, measured, mech.dim, mech.randomness
        )
        return mech

    @property
    def is_dp(self) -> bool:
        """False only for the paper-compatible (data-measured sensitivity) mode."""
        return not self._measured

    @property
    def sensitivity(self) -> float:
        """Declared L1 sensitivity: 2*sqrt(dim) (unit sphere), 2*clip*dim (clip), or measured."""
        return self._sensitivity

    @property
    def calibrated_sensitivity(self) -> float:
        """What the noise is calibrated to: ``sensitivity`` * (1 + 2^-20) (float-error margin)."""
        return self._noise.sensitivity

    def calibration(self) -> LaplaceCalibration:
        """Grid step g and integer noise scale t of the grid Laplace for ``dim`` coordinates."""
        return self._noise.calibration(self.dim)

    @property
    def scale(self) -> float:
        """Realised per-coordinate noise scale t*g (>= sensitivity / epsilon, within 1/256)."""
        return self.calibration().scale

    def preprocess(self, x: npt.ArrayLike) -> FloatArray:
        """The domain map applied before the noise: normalise, clip, or nothing (measured)."""
        rows, single = _as_rows(x, self.dim)
        return _shape_back(self._domain_map(rows), single)

    def _domain_map(self, rows: FloatArray) -> FloatArray:
        if self.domain == "unit_sphere":
            return _unit_rows(rows)
        if self.domain == "clip":
            assert self.clip is not None
            return np.clip(rows, -self.clip, self.clip)
        return rows

    def _release(self, rows: FloatArray) -> FloatArray:
        y = self._noise.batch(self._domain_map(rows))
        return _renormalize(y, self.randomness) if self.renormalize else y

    @property
    def guarantee(self) -> Guarantee:
        post = (
            " Outputs are renormalised onto the unit sphere: post-processing, the guarantee is "
            "unchanged."
            if self.renormalize
            else ""
        )
        charged = "grid rounding" if self._measured else "grid rounding and a 2^-20 float margin"
        noise = (
            f"Noise: exact discrete Laplace on a 2^-k grid, scale {self.scale:.6g} per "
            f"coordinate (>= sensitivity/epsilon; {charged} charged)."
        )
        if self._measured:
            return Guarantee(
                budget=PureDP(self.epsilon),
                privacy_unit=_PRIVACY_UNIT,
                neighbouring="none that can be guaranteed (inputs are used unbounded)",
                sensitivity=(
                    f"L1 'sensitivity' {self._sensitivity:.6g} MEASURED on a test set "
                    "(book eq. 5.12), not derived from a bounded domain"
                ),
                is_dp=False,
                note=(
                    "Paper-compatible mode: this is NOT a differential-privacy guarantee. A "
                    "maximum measured on data bounds nothing for faces outside that data, so "
                    f"the nominal epsilon = {self.epsilon:g} promises nothing. Use only to "
                    "compare with the book's numbers. " + noise + post
                ),
            )
        if self.domain == "unit_sphere":
            neighbours = "any two faces (inputs are L2-normalised onto the unit sphere first)"
            sens = (
                f"L1 sensitivity 2*sqrt({self.dim}) = {self._sensitivity:.6g}, derived from the "
                "unit-sphere domain (||x - x'||_1 <= sqrt(d) ||x - x'||_2 <= 2 sqrt(d))"
            )
        else:
            neighbours = (
                f"any two faces (every coordinate is clipped to [-{self.clip:g}, {self.clip:g}] "
                "first)"
            )
            sens = (
                f"L1 sensitivity 2*c*d = 2*{self.clip:g}*{self.dim} = {self._sensitivity:.6g}, "
                "derived from the clipped domain"
            )
        return Guarantee(
            budget=PureDP(self.epsilon),
            privacy_unit=_PRIVACY_UNIT,
            neighbouring=neighbours,
            sensitivity=sens,
            note="epsilon-IdentityDP (book eq. 5.11) with an analytic sensitivity. " + noise + post,
        )

    def privacy_map(self, d_in: float | Distance) -> PureDP:
        """Loss for two faces whose domain-mapped embeddings are at L1 distance ``d_in``.

        Never more than epsilon (the domain bounds every distance by the sensitivity).
        """
        if self._measured:
            raise ValueError(
                "paper-compatible mode has no privacy map: its sensitivity was measured on "
                "data, so it is not differential privacy"
            )
        d = Fraction(self._check_d_in(d_in)) + FLOAT_MARGIN * Fraction(self._sensitivity)
        capped = min(d, Fraction(self._noise.sensitivity))
        return self._noise.privacy_map(float(capped))

    def event(self) -> dp_event.DpEvent:
        """``pure_event(epsilon)``; ``NonPrivateDpEvent`` in paper-compatible mode."""
        if self._measured:
            return dp_event.NonPrivateDpEvent()
        return pure_event(self.epsilon)


# --------------------------------------------------------------------------------------------
# Gaussian on the unit sphere
# --------------------------------------------------------------------------------------------


class IdentityGaussian(_IdentityMechanism):
    """(epsilon, delta)-DP release of a unit-normalised identity embedding, any two faces.

    L2 sensitivity 2 (unit sphere); exact discrete Gaussian on a 2^-k grid, analytic
    calibration by default; :meth:`zcdp` gives the exact zCDP of one release for tight
    composition of repeated releases. ``renormalize=True`` is post-processing.
    """

    input_metric = EMBEDDING_L2

    sensitivity = 2.0
    """L2 sensitivity: any two unit vectors are at L2 distance <= 2."""

    def __init__(
        self,
        *,
        epsilon: float,
        delta: float,
        dim: int,
        renormalize: bool = True,
        calibration: Calibration = "analytic",
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self.epsilon = check_positive_finite("epsilon", epsilon)
        self.delta = check_probability("delta", delta, open_low=True, open_high=True)
        self.dim = _check_dim(dim)
        self.renormalize = _check_bool("renormalize", renormalize)
        self.randomness = resolve(randomness, seed)
        try:
            self._noise = Gaussian(
                epsilon=self.epsilon,
                delta=self.delta,
                sensitivity=_padded(self.sensitivity),
                calibration=calibration,
                randomness=self.randomness,
            )
            # the release is one dim-coordinate query: refuse now what it could not draw
            self._noise.calibration(self.dim)
        except ValueError as exc:
            least = least_epsilon(
                delta=self.delta,
                sensitivity=_padded(self.sensitivity),
                coords=self.dim,
                calibration=calibration,
            )
            advice = ""
            if least is not None and self.epsilon < least:
                advice = (
                    f". For this {self.dim}-coordinate release use epsilon >= "
                    f"{format_up(least)} at this delta (or a larger delta)"
                )
            raise ValueError(
                f"IdentityGaussian(epsilon={self.epsilon:g}, delta={self.delta:g}, "
                f"dim={self.dim}) cannot be realised on the exact sampler: {exc}{advice}"
            ) from None

    @property
    def calibrated_sensitivity(self) -> float:
        """What the noise is calibrated to: 2 * (1 + 2^-20) (float-error margin)."""
        return self._noise.sensitivity

    def calibration(self) -> GaussianCalibration:
        """Grid step g and integer parameter s (sigma = s*g) for ``dim`` coordinates."""
        return self._noise.calibration(self.dim)

    @property
    def sigma(self) -> float:
        """Per-coordinate noise parameter sigma = s*g."""
        return self.calibration().sigma

    def preprocess(self, x: npt.ArrayLike) -> FloatArray:
        """The domain map: L2 normalisation (zero vectors refused)."""
        rows, single = _as_rows(x, self.dim)
        return _shape_back(_unit_rows(rows), single)

    def _release(self, rows: FloatArray) -> FloatArray:
        y = self._noise.batch(_unit_rows(rows))
        return _renormalize(y, self.randomness) if self.renormalize else y

    def zcdp(self) -> ZCDP:
        """zCDP of one release: rho = 1/(2 c^2) >= D'^2 / (2 sigma^2) for the calibrated
        multiplier c (exact for the discrete Gaussian at multiplier c); n releases compose to
        n*rho."""
        return self._noise.zcdp()

    @property
    def guarantee(self) -> Guarantee:
        post = (
            " Outputs are renormalised onto the unit sphere: post-processing, the guarantee is "
            "unchanged."
            if self.renormalize
            else ""
        )
        return Guarantee(
            budget=ApproxDP(self.epsilon, self.delta),
            privacy_unit=_PRIVACY_UNIT,
            neighbouring="any two faces (inputs are L2-normalised onto the unit sphere first)",
            sensitivity="L2 sensitivity 2, derived from the unit-sphere domain",
            note=(
                f"Noise: exact discrete Gaussian on a 2^-k grid, sigma {self.sigma:.6g} per "
                f"coordinate ({self._noise.calibration_method} calibration; grid rounding and a "
                f"2^-20 float margin charged); also {self.zcdp()} per release, which composes "
                "additively over repeated releases of one person." + post
            ),
        )

    def privacy_map(self, d_in: float | Distance) -> ApproxDP:
        """(epsilon, delta) for two faces whose unit embeddings are at L2 distance ``d_in``."""
        d = Fraction(self._check_d_in(d_in)) + FLOAT_MARGIN * Fraction(self.sensitivity)
        capped = min(d, Fraction(self._noise.sensitivity))
        return self._noise.privacy_map(float(capped))

    def event(self) -> dp_event.DpEvent:
        """Gaussian event with the noise multiplier proven for the ``dim``-coordinate release.

        The multiplier is ``calibration().proven_multiplier()``: the largest float
        <= sqrt(s^2 - 9) g / D' (D' the relaxed sensitivity), the ratio that proofs/gaussian.md
        P4 transfers from the continuous to the discrete Gaussian. It is >= the calibrated
        ``noise_multiplier`` (P5) and below the plain s g / D' that P4 does not cover
        (proofs/identity.md, "Accounting event").
        """
        return dp_event.GaussianDpEvent(noise_multiplier=self.calibration().proven_multiplier())


# --------------------------------------------------------------------------------------------
# von Mises-Fisher on the sphere
# --------------------------------------------------------------------------------------------


def vmf_mean_cosine(kappa: float, dim: int) -> float:
    """E[mu . y] for y ~ vMF(mu, kappa) on S^(dim-1): A_d(kappa) = I_{d/2}(k) / I_{d/2-1}(k).

    Computed with ``scipy.special.ive`` when both values are comfortably representable; when
    kappa is small against d/2 they underflow, and the ratio r_v = I_v / I_{v-1} is then taken
    from the backward recurrence r_v = 1 / (2v/kappa + r_{v+1}) (stable downwards), started
    far above v from the bound kappa / (w + sqrt(w^2 + kappa^2)), w = v + 1/2.
    """
    kappa = check_positive_finite("kappa", kappa)
    d = _check_dim(dim, minimum=2)
    v = d / 2.0
    num, den = float(special.ive(v, kappa)), float(special.ive(v - 1.0, kappa))
    if math.isfinite(num) and math.isfinite(den) and num > 1e-250 and den > 1e-250:
        return num / den
    steps = 200 + math.ceil(4.0 * kappa)
    w = v + steps + 1.5  # start: r_{v+steps+1} from the bound with w = order + 1/2
    r = kappa / (w + math.sqrt(w * w + kappa * kappa))
    for i in range(steps, -1, -1):  # r_{v+i} for i = steps, ..., 0
        r = 1.0 / (2.0 * (v + i) / kappa + r)
    return r


def _rotate_from_pole(samples: FloatArray, mu: FloatArray) -> FloatArray:
    """Apply, per row, an orthogonal map Q with Q e1 = mu[i] to samples[i].

    Q is a Householder reflection (times -1 when mu_1 > 0, so that ||v||^2 >= 2 and nothing
    cancels): v = e1 - s mu, Q y = s (y - 2 v (v.y) / (v.v)), s = +1 if mu_1 <= 0 else -1.
    The vMF density depends on y only through mu . y, which Q preserves, so Q maps
    vMF(e1, kappa) to vMF(mu, kappa).
    """
    s = np.where(mu[:, 0] > 0.0, -1.0, 1.0)[:, None]
    v = -s * mu
    v[:, 0] += 1.0
    coef = 2.0 * np.einsum("ij,ij->i", v, samples) / np.einsum("ij,ij->i", v, v)
    return np.asarray(s * (samples - coef[:, None] * v), dtype=np.float64)


def _snap(y: FloatArray) -> FloatArray:
    """Round to the grid 2^-VMF_OUTPUT_GRID_BITS Z^d, then renormalise (post-processing)."""
    k = np.rint(np.ldexp(y, VMF_OUTPUT_GRID_BITS))
    out = np.ldexp(k, -VMF_OUTPUT_GRID_BITS)
    return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True), dtype=np.float64)


class IdentityVMF(_IdentityMechanism):
    """von Mises-Fisher release on the unit sphere: eps-DP for any two faces (ideal sampler).

    Output density on S^(d-1) proportional to exp(kappa mu . y), kappa = eps/2, mu the
    L2-normalised input. Metric form: eps * ||x - x'||_2 / 2 for faces at L2 distance
    ||x - x'||_2 (:meth:`metric_epsilon`). Sampled in floating point by scipy (see the module
    docstring); outputs rounded to 2^-20 Z^d and renormalised.
    """

    input_metric = EMBEDDING_L2

    def __init__(
        self,
        *,
        epsilon: float,
        dim: int,
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self.epsilon = check_positive_finite("epsilon", epsilon)
        self.dim = _check_dim(dim, minimum=2)
        self.randomness = resolve(randomness, seed)
        kappa = self.epsilon / 2.0  # exact unless epsilon is subnormal; then never round up
        self._kappa = kappa if 2.0 * kappa <= self.epsilon else math.nextafter(kappa, 0.0)
        if self._kappa == 0.0:
            raise ValueError(f"epsilon = {self.epsilon} is too small: kappa = epsilon/2 underflows")
        _check_vmf_kappa(self._kappa, self.epsilon, self.dim)
        self._pole = np.zeros(self.dim)
        self._pole[0] = 1.0

    @property
    def kappa(self) -> float:
        """Concentration kappa = epsilon / 2."""
        return self._kappa

    def preprocess(self, x: npt.ArrayLike) -> FloatArray:
        """The domain map: L2 normalisation (zero vectors refused)."""
        rows, single = _as_rows(x, self.dim)
        return _shape_back(_unit_rows(rows), single)

    def _release(self, rows: FloatArray) -> FloatArray:
        mu = _unit_rows(rows)
        draws = stats.vonmises_fisher.rvs(
            mu=self._pole,
            kappa=self.kappa,
            size=mu.shape[0],
            random_state=self.randomness.generator,
        )
        samples = np.asarray(draws, dtype=np.float64).reshape(mu.shape)
        return _snap(_rotate_from_pole(samples, mu))

    def mean_cosine(self) -> float:
        """E[cos(input, output)] of the ideal mechanism: A_d(kappa)."""
        return vmf_mean_cosine(self.kappa, self.dim)

    def metric_epsilon(self, distance: float) -> float:
        """eps * distance / 2 for faces whose unit embeddings are at L2 ``distance`` (<= 2).

        Angle theta between them: distance = 2 sin(theta / 2). Rounded up to a float.
        """
        d = self._check_d_in(distance)
        if d > 2.0 + 1e-9:
            raise ValueError(
                f"two unit vectors are at L2 distance <= 2, got {d}; pass the L2 distance "
                "between the normalised embeddings"
            )
        return ceil_float(Fraction(self.epsilon) * Fraction(min(d, 2.0)) / 2)

    @property
    def guarantee(self) -> Guarantee:
        return Guarantee(
            budget=PureDP(self.epsilon),
            privacy_unit=_PRIVACY_UNIT,
            neighbouring=(
                "any two faces (inputs L2-normalised); faces at L2 distance r get "
                "eps*r/2 (metric privacy)"
            ),
            sensitivity=(
                "L2 distance <= 2 between unit embeddings; density ratio "
                f"exp(kappa (mu - mu').y) <= exp(2 kappa), kappa = eps/2 = {self.kappa:.6g}"
            ),
            note=(
                "The epsilon is proven for the ideal von Mises-Fisher distribution. The sampler "
                "(scipy.stats.vonmises_fisher) works in floating point, unlike the exact "
                "grid Laplace/Gaussian samplers, and no bound on its deviation from the ideal "
                "distribution is proven. Mitigation: outputs are rounded to the grid 2^-20 Z^d "
                "and renormalised (post-processing), so the possible outputs do not depend on "
                "the input and float low-order bits are discarded."
            ),
        )

    def privacy_map(self, d_in: float | Distance) -> PureDP:
        """PureDP(eps * d_in / 2) for unit embeddings at L2 distance ``d_in`` (ideal sampler)."""
        return PureDP(self.metric_epsilon(self._check_d_in(d_in)))

    def event(self) -> dp_event.DpEvent:
        """``pure_event(epsilon)`` (dominating pair of any eps-DP mechanism)."""
        return pure_event(self.epsilon)


# --------------------------------------------------------------------------------------------
# Utility: expected cosine between input and output
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CosineEstimate:
    """Monte-Carlo mean of cos(input, output) over ``trials`` random unit inputs."""

    mean: float
    stderr: float
    trials: int


def expected_cosine(
    mechanism: IdentityLaplace | IdentityGaussian | IdentityVMF,
    dim: int,
    *,
    trials: int = 2000,
    seed: int | None = None,
) -> CosineEstimate:
    """Estimate E[cos(x, M(x))] for uniformly random unit inputs x (one release each).

    Inputs are drawn from ``seed`` (reproducible) or a fresh secure stream; the mechanism uses
    its own randomness. Cosine is scale-invariant, so renormalisation does not change it.
    """
    d = _check_dim(dim)
    if d != mechanism.dim:
        raise ValueError(f"dim = {d} but the mechanism was built for dim = {mechanism.dim}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 2:
        raise ValueError(f"trials must be an int >= 2, got {trials!r}")
    gen = resolve(None, seed).generator
    x = _unit_rows(gen.standard_normal((trials, d)))
    y: Any = mechanism.batch(x)
    y = np.asarray(y, dtype=np.float64)
    norms = np.linalg.norm(y, axis=1)
    safe = np.where(norms > 0.0, norms, 1.0)
    cos = np.where(norms > 0.0, np.einsum("ij,ij->i", x, y) / safe, 0.0)
    return CosineEstimate(
        mean=float(np.mean(cos)),
        stderr=float(np.std(cos, ddof=1) / math.sqrt(trials)),
        trials=trials,
    )
