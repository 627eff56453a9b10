"""Composition and tight privacy accounting, delegated to dp-accounting and opacus.

Every release is described by an immutable ``dp_accounting.dp_event.DpEvent``. This module builds
those events from mechanism parameters, and turns a (composed) event into an epsilon or delta with

* ``pld_epsilon`` / ``pld_delta``: privacy-loss distributions (dp-accounting's ``PLDAccountant``,
  pessimistic discretisation: the result is an upper bound up to the discretisation interval's
  rounding, which is itself done upwards);
* ``rdp_epsilon``: Renyi DP (dp-accounting's ``RdpAccountant``), an upper bound, usually looser;
* ``opacus_gaussian_epsilon``: opacus's RDP / PRV accountants for Poisson-subsampled Gaussian
  releases (opacus imports torch, so it is imported only inside that function);
* ``epsilon(..., method="basic")``: basic composition of pure / zCDP parts via
  :func:`mechanisms.budgets.compose_basic`.

Sensitivity convention (dp-accounting's): an event's noise multiplier is noise scale divided by
``sensitivity``, the largest distance between the query's values on two neighbours, as read by
the add/remove analysis (the default everywhere). A mechanism whose neighbours are "any two
faces" or "m pixels" therefore passes its own sensitivity and is accounted with add/remove: its
two-distribution pair is symmetric, so the analysis is exact. Only ``pld_*`` accept
``neighbouring="replace_one"``, with dp-accounting's meaning: ``sensitivity`` is a per-record norm
bound, so a replaced record moves a Gaussian query by up to twice it (Laplace is refused).

Two workarounds for dp-accounting 0.6.0, both keeping results sound:

* ``PLDAccountant`` and ``RdpAccountant`` refuse ``RandomizedResponseDpEvent`` under add/remove,
  yet :func:`pure_event` (2-bucket randomised response, the dominating pair of *every* eps-DP
  mechanism, symmetric, hence valid for any neighbouring relation) must compose with add/remove
  events. For PLD it is handed over as ``DiscreteLaplaceDpEvent(noise_parameter=eps,
  sensitivity=1)``, whose privacy-loss distribution is exactly the same two-point law (loss +eps
  with probability e^eps / (1 + e^eps), -eps otherwise). For RDP it is handed over as
  ``ZCDpEvent(eps^2 / 2)`` (eps-DP implies eps^2/2-zCDP, Bun & Steinke 2016, Prop. 1.4): sound
  but not tight; prefer PLD for pure events.
* ``PLDAccountant`` ignores the repetition count of a ``RandomizedResponseDpEvent`` inside a
  ``SelfComposedDpEvent`` (five compositions are accounted as one). Under replace-one such
  self-compositions are expanded into explicit ``ComposedDpEvent`` lists before accounting.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

from dp_accounting import dp_event, privacy_accountant
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from .base import check_positive_finite, check_probability
from .budgets import ZCDP, Budget, PureDP, compose_basic
from .subsampling import _float_at_least, poisson_amplify

__all__ = [
    "Method",
    "Neighbouring",
    "compose",
    "compose_basic",
    "epsilon",
    "gaussian_event",
    "laplace_event",
    "opacus_gaussian_epsilon",
    "pld_delta",
    "pld_epsilon",
    "pure_event",
    "rdp_epsilon",
    "self_compose",
    "zcdp_event",
]

Neighbouring = Literal["add_remove", "replace_one"]
Method = Literal["pld", "rdp", "basic"]

_RELATIONS: dict[str, privacy_accountant.NeighboringRelation] = {
    "add_remove": privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE,
    "replace_one": privacy_accountant.NeighboringRelation.REPLACE_ONE,
}
_DIGITS = 50  # decimal working precision for the randomised-response epsilon
_DEFAULT_INTERVAL = 1e-4


# --------------------------------------------------------------------------- event constructors


def _at_least(approx: float, exact: Fraction) -> float:
    """Smallest float >= ``exact``, starting from a float ``approx`` within a few ulps of it."""
    while Fraction(approx) < exact:
        approx = math.nextafter(approx, math.inf)
    while approx > 0.0 and Fraction(math.nextafter(approx, 0.0)) >= exact:
        approx = math.nextafter(approx, 0.0)
    return approx


def _rr2_log_ratio(p: float) -> decimal.Decimal:
    """ln((2 - p) / p) for 0 < p < 1, to ``_DIGITS`` significant digits (correctly rounded ln)."""
    ctx = decimal.Context(prec=_DIGITS)
    p_d = decimal.Decimal(p)
    return ctx.ln(ctx.divide(ctx.subtract(2, p_d), p_d))


def _rr2_epsilon_up(p: float) -> float:
    """A float >= the eps of 2-bucket randomised response with noise parameter p, 0 < p < 1."""
    value = _rr2_log_ratio(p)
    return _float_at_least(value * (1 + decimal.Decimal(10) ** -40))


def _quotient_down(numerator: float, denominator: float) -> float:
    """Largest float <= numerator / denominator (a smaller noise multiplier is the safe side)."""
    q = numerator / denominator
    if q > 0.0 and Fraction(q) > Fraction(numerator) / Fraction(denominator):
        q = math.nextafter(q, 0.0)
    return q


def laplace_event(scale: float, sensitivity: float) -> dp_event.DpEvent:
    """Event of adding Laplace(``scale``) noise to a query of L1 ``sensitivity``.

    Its privacy loss is exactly that of (sensitivity / scale)-DP Laplace.
    """
    scale = check_positive_finite("scale", scale)
    sensitivity = check_positive_finite("sensitivity", sensitivity)
    return dp_event.LaplaceDpEvent(noise_multiplier=_quotient_down(scale, sensitivity))


def gaussian_event(sigma: float, sensitivity: float) -> dp_event.DpEvent:
    """Event of adding N(0, ``sigma``^2 I) noise to a query of L2 ``sensitivity``."""
    sigma = check_positive_finite("sigma", sigma)
    sensitivity = check_positive_finite("sensitivity", sensitivity)
    return dp_event.GaussianDpEvent(noise_multiplier=_quotient_down(sigma, sensitivity))


def pure_event(epsilon: float) -> dp_event.DpEvent:
    """Event dominating ANY eps-DP mechanism: 2-bucket randomised response.

    dp-accounting's ``RandomizedResponseDpEvent(p, k)`` keeps the input with probability 1 - p
    and otherwise outputs a uniform bucket, so for k = 2 the likelihood ratio is
    (1 - p/2) / (p/2); it equals e^eps at p = 2 / (1 + e^eps). This two-point pair dominates every
    eps-DP mechanism (Kairouz, Oh & Viswanath 2015), whatever the neighbouring relation. ``p`` is
    the largest float whose ratio is provably >= e^eps, so the event never claims less than eps
    (and claims at most one float step of p more: about 2e-16 in eps).
    """
    epsilon = check_positive_finite("epsilon", epsilon)
    tail = math.exp(-epsilon)  # stable for large epsilon; underflows to 0 (non-private) past ~745
    p = 2.0 * tail / (1.0 + tail)
    if p > 0.0:
        need = decimal.Decimal(epsilon) * (1 + decimal.Decimal(10) ** -40)
        while p > 0.0 and _rr2_log_ratio(p) < need:
            p = math.nextafter(p, 0.0)
        while _rr2_log_ratio(math.nextafter(p, 1.0)) >= need:
            p = math.nextafter(p, 1.0)
    return dp_event.RandomizedResponseDpEvent(noise_parameter=p, num_buckets=2)


def zcdp_event(rho: float) -> dp_event.DpEvent:
    """Event of a rho-zCDP mechanism (RDP of order alpha at most rho * alpha)."""
    rho = check_positive_finite("rho", rho)
    return dp_event.ZCDpEvent(rho=rho)


def compose(events: Sequence[dp_event.DpEvent]) -> dp_event.DpEvent:
    """Sequential (possibly adaptive) composition of ``events``."""
    events = list(events)
    for e in events:
        if not isinstance(e, dp_event.DpEvent):
            raise TypeError(f"expected DpEvent objects, got {type(e).__name__}")
    return dp_event.ComposedDpEvent(events=events)


def self_compose(event: dp_event.DpEvent, count: int) -> dp_event.DpEvent:
    """``count`` sequential repetitions of ``event``."""
    if not isinstance(event, dp_event.DpEvent):
        raise TypeError(f"expected a DpEvent, got {type(event).__name__}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    return dp_event.SelfComposedDpEvent(event=event, count=count)


# --------------------------------------------------------------------------- event rewriting


def _is_rr2(event: dp_event.DpEvent) -> bool:
    return isinstance(event, dp_event.RandomizedResponseDpEvent) and event.num_buckets == 2


def _pure_as(event: dp_event.RandomizedResponseDpEvent, target: str) -> dp_event.DpEvent:
    p = float(event.noise_parameter)
    if p >= 1.0:
        return dp_event.NoOpDpEvent()
    if p <= 0.0:
        return dp_event.NonPrivateDpEvent()
    eps = _rr2_epsilon_up(p)
    if target == "pld":
        return dp_event.DiscreteLaplaceDpEvent(noise_parameter=eps, sensitivity=1)
    return dp_event.ZCDpEvent(rho=_at_least(eps * eps / 2.0, Fraction(eps) ** 2 / 2))


def _contains_rr(event: dp_event.DpEvent) -> bool:
    if isinstance(event, dp_event.RandomizedResponseDpEvent):
        return True
    if isinstance(event, dp_event.SelfComposedDpEvent):
        return _contains_rr(event.event)
    if isinstance(event, dp_event.ComposedDpEvent):
        return any(_contains_rr(e) for e in event.events)
    return False


def _rewrite(event: dp_event.DpEvent, target: str, neighbouring: str) -> dp_event.DpEvent:
    """Hand pure (2-bucket RR) events to the accountants in a form they account correctly."""
    if isinstance(event, dp_event.ComposedDpEvent):
        return dp_event.ComposedDpEvent(
            events=[_rewrite(e, target, neighbouring) for e in event.events]
        )
    if isinstance(event, dp_event.SelfComposedDpEvent):
        inner = _rewrite(event.event, target, neighbouring)
        if target == "pld" and _contains_rr(inner):
            # PLDAccountant ignores `count` for randomised response: spell the repetitions out.
            return dp_event.ComposedDpEvent(events=[inner] * event.count)
        return dp_event.SelfComposedDpEvent(event=inner, count=event.count)
    if _is_rr2(event) and neighbouring == "add_remove":
        return _pure_as(event, target)
    return event


def _relation(neighbouring: str) -> privacy_accountant.NeighboringRelation:
    try:
        return _RELATIONS[neighbouring]
    except KeyError:
        raise ValueError(
            f"neighbouring must be one of {sorted(_RELATIONS)}, got {neighbouring!r}"
        ) from None


def _composed(
    accountant: privacy_accountant.PrivacyAccountant, event: dp_event.DpEvent, how: str
) -> privacy_accountant.PrivacyAccountant:
    if not isinstance(event, dp_event.DpEvent):
        raise TypeError(f"expected a DpEvent, got {type(event).__name__}")
    try:
        accountant.compose(event)
    except privacy_accountant.UnsupportedEventError as err:
        raise ValueError(
            f"{how} cannot account this event ({err}). PLD supports Laplace, Gaussian, pure and "
            "Poisson-sampled Laplace/Gaussian events; RDP supports Gaussian, Laplace, zCDP, pure "
            "and Poisson-sampled Gaussian events."
        ) from err
    return accountant


def _check_interval(value: float) -> float:
    return check_positive_finite("value_discretization_interval", value)


# --------------------------------------------------------------------------- accountants


def pld_epsilon(
    event: dp_event.DpEvent,
    delta: float,
    *,
    neighbouring: Neighbouring = "add_remove",
    value_discretization_interval: float = _DEFAULT_INTERVAL,
) -> float:
    """Smallest eps such that ``event`` is (eps, ``delta``)-DP, by PLD accounting (upper bound).

    Note: continuous Laplace/Gaussian PLDs truncate a tail of mass ~1e-15 that is counted as
    infinite loss, so ``delta=0`` yields ``inf`` for them; pure events give a finite eps at 0.
    """
    delta = check_probability("delta", delta, open_low=False, open_high=True)
    acc = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=_relation(neighbouring),
        value_discretization_interval=_check_interval(value_discretization_interval),
    )
    _composed(acc, _rewrite(event, "pld", neighbouring), "PLD")
    return float(acc.get_epsilon(delta))


def pld_delta(
    event: dp_event.DpEvent,
    epsilon: float,
    *,
    neighbouring: Neighbouring = "add_remove",
    value_discretization_interval: float = _DEFAULT_INTERVAL,
) -> float:
    """Smallest delta such that ``event`` is (``epsilon``, delta)-DP, by PLD (upper bound)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a real number, got {type(epsilon).__name__}")
    if math.isnan(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    acc = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=_relation(neighbouring),
        value_discretization_interval=_check_interval(value_discretization_interval),
    )
    _composed(acc, _rewrite(event, "pld", neighbouring), "PLD")
    return float(acc.get_delta(float(epsilon)))


def rdp_epsilon(event: dp_event.DpEvent, delta: float) -> float:
    """An eps such that ``event`` is (eps, ``delta``)-DP, by Renyi-DP accounting (upper bound).

    Add/remove neighbours (dp-accounting's RDP and PLD accountants disagree on how replace-one
    scales a Gaussian's sensitivity, so replace-one is offered through ``pld_epsilon`` only).
    """
    delta = check_probability("delta", delta, open_low=True, open_high=True)
    acc = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    _composed(acc, _rewrite(event, "rdp", "add_remove"), "RDP")
    return float(acc.get_epsilon(delta))


def opacus_gaussian_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    method: Literal["rdp", "prv"] = "rdp",
) -> float:
    """eps of ``steps`` Poisson-subsampled Gaussian releases, by opacus (add/remove neighbours).

    ``method="rdp"``: opacus ``RDPAccountant``; ``method="prv"``: ``PRVAccountant``, which
    returns its upper estimate (error 0.01 in eps). Imports opacus (and torch) lazily.
    """
    noise_multiplier = check_positive_finite("noise_multiplier", noise_multiplier)
    sample_rate = check_probability("sample_rate", sample_rate, open_low=True, open_high=False)
    delta = check_probability("delta", delta, open_low=True, open_high=True)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if method not in ("rdp", "prv"):
        raise ValueError(f"method must be 'rdp' or 'prv', got {method!r}")
    # Imported here, not at module level: opacus imports torch.
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = RDPAccountant() if method == "rdp" else PRVAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=delta))


# --------------------------------------------------------------------------- basic composition


def _basic_budget(event: dp_event.DpEvent) -> Budget:
    """The budget of ``event`` under basic composition (pure and zCDP parts only)."""
    if isinstance(event, dp_event.NoOpDpEvent):
        return PureDP(0.0)
    if isinstance(event, dp_event.NonPrivateDpEvent):
        return PureDP(math.inf, allow_inf=True)
    if isinstance(event, dp_event.ComposedDpEvent):
        return compose_basic([_basic_budget(e) for e in event.events])
    if isinstance(event, dp_event.SelfComposedDpEvent):
        return compose_basic([_basic_budget(event.event)] * event.count)
    if isinstance(event, dp_event.LaplaceDpEvent):
        nm = Fraction(event.noise_multiplier)
        return PureDP(_at_least(1.0 / event.noise_multiplier, 1 / nm))
    if isinstance(event, dp_event.DiscreteLaplaceDpEvent):
        a, c = event.noise_parameter, event.sensitivity
        return PureDP(_at_least(a * c, Fraction(a) * Fraction(c)))
    if _is_rr2(event):
        p = float(event.noise_parameter)
        if p <= 0.0:
            return PureDP(math.inf, allow_inf=True)
        return PureDP(0.0 if p >= 1.0 else _rr2_epsilon_up(p))
    if isinstance(event, dp_event.ZCDpEvent) and event.xi == 0:
        return ZCDP(event.rho)
    if isinstance(event, dp_event.PoissonSampledDpEvent):
        inner = _basic_budget(event.event)
        return poisson_amplify(inner, event.sampling_probability)
    raise TypeError(
        f"basic composition handles pure (Laplace, pure_event, Poisson-sampled pure) and zCDP "
        f"events only, got {type(event).__name__}; use method='pld' or 'rdp'"
    )


def epsilon(
    events: dp_event.DpEvent | Sequence[dp_event.DpEvent],
    delta: float,
    *,
    method: Method = "pld",
    neighbouring: Neighbouring = "add_remove",
) -> float:
    """Total eps of the composed ``events`` at ``delta``, by PLD, RDP or basic composition.

    ``basic`` sums pure epsilons (``delta`` unused; Poisson-sampled pure parts are amplified by
    :func:`mechanisms.subsampling.poisson_amplify`) or converts summed zCDP to (eps, delta). It is
    never tighter than PLD. ``rdp`` and ``basic`` are for add/remove neighbours only.
    """
    event = events if isinstance(events, dp_event.DpEvent) else compose(events)
    _relation(neighbouring)
    if method == "pld":
        return pld_epsilon(event, delta, neighbouring=neighbouring)
    if method in ("rdp", "basic") and neighbouring != "add_remove":
        raise ValueError(f"method={method!r} supports neighbouring='add_remove' only")
    if method == "rdp":
        return rdp_epsilon(event, delta)
    if method == "basic":
        budget = _basic_budget(event)
        if isinstance(budget, ZCDP):
            if budget.rho == 0.0:
                return 0.0
            return budget.to_approx(delta).epsilon
        return budget.epsilon
    raise ValueError(f"method must be 'pld', 'rdp' or 'basic', got {method!r}")
