"""``dpface audit``: black-box statistical audits of the shipped mechanisms on worst-case inputs.

Each plan names a pair of neighbouring inputs at the distance the mechanism's guarantee is stated
for (chosen to be the worst case: antipodal embeddings, an extreme pixel change, a flipped score
vector) and a statistic that is monotone in the likelihood ratio of that pair, so the audit's
Clopper-Pearson lower bound lands close to the true epsilon. ``broken=True`` builds the
mechanism with ``BROKEN_FACTOR`` (3) times the epsilon -- a third of the noise for Laplace-type
mechanisms -- but keeps the original claim: the power control, which a working audit must flag.
(With twice the epsilon the Gaussian audits' bounds land only ~0.1 above the claim: too thin a
margin to be caught reliably at the default n.)

The audit itself is :mod:`mechanisms.audit` (exact Clopper-Pearson bounds, Bonferroni over the
compared events, the event chosen on separate calibration draws). A verdict of "no violation"
is evidence, not proof; the proofs are in ``proofs/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mechanisms.audit import (
    AuditPlan,
    AuditResult,
    EventFn,
    ReleaseFn,
    audit_calibrated,
    choose_set_event,
    choose_threshold_event,
    mechanism_release,
)
from mechanisms.budgets import ApproxDP, Budget, PureDP
from mechanisms.exponential import Exponential
from mechanisms.gaussian import Gaussian
from mechanisms.identity import IdentityGaussian, IdentityLaplace, IdentityVMF
from mechanisms.laplace import Laplace
from mechanisms.pixelization import DPBlur, DPPixelization
from mechanisms.registry import MechanismOptions
from mechanisms.registry import get as get_mechanism
from mechanisms.registry import names as mechanism_names
from mechanisms.rng import Randomness

__all__ = ["AUDIT_DELTA", "BROKEN_FACTOR", "PLANS", "AuditSetup", "run_audit"]

Array = npt.NDArray[Any]
Statistic = Callable[[Array], Array]
AUDIT_DELTA = 1e-5  # delta of the (epsilon, delta) mechanisms under audit
BROKEN_FACTOR = 3.0  # the power control is built with this times the claimed epsilon


@dataclass(frozen=True)
class AuditSetup:
    """What one audit runs: releases, the neighbouring pair, the claim and the event chooser."""

    release: ReleaseFn
    x0: Array
    x1: Array
    claimed: Budget
    chooser: Callable[[Array, Array, AuditPlan], EventFn]
    neighbours: str


def _threshold_on(statistic: Statistic | None) -> Callable[[Array, Array, AuditPlan], EventFn]:
    def chooser(c0: Array, c1: Array, plan: AuditPlan) -> EventFn:
        return choose_threshold_event(c0, c1, plan, statistic=statistic)

    return chooser


def _laplace(eps: float, claim: float, r: Randomness) -> AuditSetup:
    mech = Laplace(epsilon=eps, sensitivity=1.0, randomness=r)
    return AuditSetup(
        mechanism_release(mech),
        np.array([0.0]),
        np.array([1.0]),
        PureDP(claim),
        _threshold_on(None),
        "scalar query, values 0 and 1 (L1 distance = sensitivity 1)",
    )


def _gaussian(eps: float, claim: float, r: Randomness) -> AuditSetup:
    mech = Gaussian(epsilon=eps, delta=AUDIT_DELTA, sensitivity=1.0, randomness=r)
    return AuditSetup(
        mechanism_release(mech),
        np.array([0.0]),
        np.array([1.0]),
        ApproxDP(claim, AUDIT_DELTA),
        _threshold_on(None),
        "scalar query, values 0 and 1 (L2 distance = sensitivity 1)",
    )


_EXP_M = 10  # candidates besides the one that moves; see tests/core/test_audit_mechanisms.py


def _exponential(eps: float, claim: float, r: Randomness) -> AuditSetup:
    mech = Exponential(epsilon=eps, sensitivity=1.0, randomness=r)
    u0 = np.array([1.0] + [0.0] * _EXP_M)
    u1 = np.array([0.0] + [1.0] * _EXP_M)
    return AuditSetup(
        mechanism_release(mech),
        u0,
        u1,
        PureDP(claim),
        choose_set_event,
        f"scores of {_EXP_M + 1} candidates, every score moved by the sensitivity 1 "
        "(candidate 0 down, the rest up)",
    )


_ID_DIM = 4
_ID_X = np.full(_ID_DIM, 0.5)  # a unit vector; x and -x are the farthest pair on the sphere


def _clipped_sum(y: Array) -> Array:
    """Monotone in the Laplace likelihood ratio of (x, -x) for x = 0.5 * ones."""
    return np.asarray(np.clip(y, -0.5, 0.5).sum(axis=1))


def _onto(x: Array) -> Statistic:
    def projection(y: Array) -> Array:
        return np.asarray(y @ x)

    return projection


def _identity_laplace(eps: float, claim: float, r: Randomness) -> AuditSetup:
    mech = IdentityLaplace(epsilon=eps, dim=_ID_DIM, randomness=r)
    return AuditSetup(
        mechanism_release(mech),
        _ID_X,
        -_ID_X,
        PureDP(claim),
        _threshold_on(_clipped_sum),
        f"antipodal unit embeddings x, -x in {_ID_DIM} dimensions (L1 distance 2*sqrt(d))",
    )


def _identity_gaussian(eps: float, claim: float, r: Randomness) -> AuditSetup:
    mech = IdentityGaussian(
        epsilon=eps, delta=AUDIT_DELTA, dim=_ID_DIM, renormalize=False, randomness=r
    )
    return AuditSetup(
        mechanism_release(mech),
        _ID_X,
        -_ID_X,
        ApproxDP(claim, AUDIT_DELTA),
        _threshold_on(_onto(_ID_X)),
        f"antipodal unit embeddings x, -x in {_ID_DIM} dimensions (L2 distance 2)",
    )


_VMF_X = np.ones(3) / np.sqrt(3.0)


def _identity_vmf(eps: float, claim: float, r: Randomness) -> AuditSetup:
    mech = IdentityVMF(epsilon=eps, dim=3, randomness=r)
    return AuditSetup(
        mechanism_release(mech),
        _VMF_X,
        -_VMF_X,
        PureDP(claim),
        _threshold_on(_onto(_VMF_X)),
        "antipodal unit embeddings x, -x in 3 dimensions",
    )


def _built(name: str, eps: float, r: Randomness, **options: Any) -> Any:
    """The registered mechanism ``name``, built the way every other caller builds it."""
    return get_mechanism(name).build(MechanismOptions(epsilon=eps, randomness=r, **options))


def _one_pixel_audit(mech: DPPixelization | DPBlur, claimed: Budget, note: str) -> AuditSetup:
    """8x8 grey images differing in one pixel (0 vs 255, m = 1): the noisy mean of its cell."""
    x0 = np.full((8, 8), 100, dtype=np.uint8)
    x1 = x0.copy()
    x0[0, 0], x1[0, 0] = 0, 255

    def release(x: Array, n: int) -> Array:
        noisy = mech.noisy_cell_means_batch(np.repeat(x[np.newaxis], n, axis=0))
        return np.asarray(noisy[:, 0, 0, 0])

    return AuditSetup(
        release,
        x0,
        x1,
        claimed,
        _threshold_on(None),
        "8x8 grey images differing in one pixel, 0 vs 255 (m = 1); the noisy mean of its 4x4 "
        "cell" + note,
    )


def _dp_pix(eps: float, claim: float, r: Randomness) -> AuditSetup:
    mech = _built("dp-pix", eps, r, block=4, m=1)
    assert isinstance(mech, DPPixelization)
    return _one_pixel_audit(mech, PureDP(claim), "")


def _dp_blur(eps: float, claim: float, r: Randomness) -> AuditSetup:
    mech = _built("dp-blur", eps, r, block=4, m=1, delta=AUDIT_DELTA)
    assert isinstance(mech, DPBlur)
    return _one_pixel_audit(
        mech, ApproxDP(claim, AUDIT_DELTA), " (the smoothing that follows is post-processing)"
    )


PLANS: dict[str, Callable[[float, float, Randomness], AuditSetup]] = {
    "laplace": _laplace,
    "gaussian": _gaussian,
    "exponential": _exponential,
    "identity-laplace": _identity_laplace,
    "identity-gaussian": _identity_gaussian,
    "identity-vmf": _identity_vmf,
    "dp-pix": _dp_pix,
    "dp-blur": _dp_blur,
}
"""One audit plan per registered mechanism (``mechanisms.registry``), keyed by its name."""

_missing = set(mechanism_names()) ^ set(PLANS)
if _missing:  # a new mechanism must come with an audit plan (and a stale plan must go)
    raise RuntimeError(f"audit plans and the mechanism registry disagree on {sorted(_missing)}")


def run_audit(
    name: str,
    *,
    epsilon: float = 1.0,
    n: int = 200_000,
    alpha: float = 1e-6,
    broken: bool = False,
    randomness: Randomness | None = None,
) -> tuple[AuditSetup, AuditResult]:
    """Audit mechanism ``name`` (a key of :data:`PLANS`) claiming ``epsilon``.

    ``broken=True`` builds it with ``BROKEN_FACTOR * epsilon`` under the same claim: the audit
    should then report a violation. Randomness: a fresh secure stream unless one is passed.
    """
    if name not in PLANS:
        raise ValueError(f"unknown mechanism {name!r}; choose from {', '.join(PLANS)}")
    if not (np.isfinite(epsilon) and epsilon > 0):
        raise ValueError("epsilon must be a finite number > 0")
    r = randomness if randomness is not None else Randomness.secure()
    setup = PLANS[name](BROKEN_FACTOR * epsilon if broken else epsilon, epsilon, r)
    result = audit_calibrated(
        setup.release,
        setup.x0,
        setup.x1,
        n=n,
        claimed=setup.claimed,
        chooser=setup.chooser,
        alpha=alpha,
    )
    return setup, result
