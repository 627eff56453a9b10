"""Black-box audits of the real mechanisms (mechanisms/exponential.py, laplace.py, gaussian.py).

For each mechanism: on worst-case neighbouring inputs the audit's epsilon lower bound must not
exceed the claim, and a deliberately broken variant with half the noise (a mechanism that
declares half the true sensitivity, the classic bug) audited against the original claim must be
flagged. Seeds are fixed, so every run is the same; at alpha = 1e-6 a correct mechanism fails a
given seed with probability <= 1e-6. The default run uses 1e5-3e5 draws per input; the
``slow`` versions use 1e6.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from mechanisms.audit import (
    AuditPlan,
    AuditResult,
    BatchMechanism,
    ThresholdEvent,
    audit_mechanism,
    choose_set_event,
    choose_threshold_event,
)
from mechanisms.budgets import ApproxDP, PureDP
from mechanisms.exponential import Exponential
from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace
from mechanisms.rng import Randomness

Array = npt.NDArray[Any]
Factory = Callable[[Randomness], BatchMechanism]


# ------------------------------------------------------------------------------------------
# Exponential mechanism (eps = 1, score sensitivity 1)
# ------------------------------------------------------------------------------------------

# Worst case for the standard mechanism (weights exp(eps u / (2 Delta))): candidate 0 loses
# Delta while all m others gain Delta, so P[0] falls by e^(eps/2) from its own score and by up to
# another e^(eps/2) from the normaliser. With m = 10 the exact pair loss is 0.906 (-> 1 as m grows,
# while P[0] shrinks; m = 10 balances tightness against the counts the audit needs).
_M = 10
EXP_U0 = np.array([1.0] + [0.0] * _M)
EXP_U1 = np.array([0.0] + [1.0] * _M)
# Worst case for monotonic=True (weights exp(eps u / Delta), all scores move the same way):
# candidate 0 stays, the m others gain Delta. Exact pair loss ln((1 + m e) / (1 + m)) = 0.940.
EXP_MONO_U0 = np.zeros(_M + 1)
EXP_MONO_U1 = np.array([0.0] + [1.0] * _M)


def _exp(
    *, sensitivity: float = 1.0, monotonic: bool = False
) -> Callable[[Randomness], Exponential]:
    def factory(r: Randomness) -> Exponential:
        return Exponential(epsilon=1.0, sensitivity=sensitivity, monotonic=monotonic, randomness=r)

    return factory


def _exact_pair_loss(mech: Exponential, u0: Array, u1: Array) -> float:
    """Largest |ln P0[i] / P1[i]| of the distribution the sampler really draws from."""
    p0 = mech.sampling_probabilities(u0)
    p1 = mech.sampling_probabilities(u1)
    return float(np.max(np.abs(np.log(p0) - np.log(p1))))


def _audit_exp(factory: Factory, u0: Array, u1: Array, n: int, seed: int) -> AuditResult:
    return audit_mechanism(
        factory, u0, u1, n=n, seed=seed, claimed=PureDP(1.0), chooser=choose_set_event
    )


def test_exponential_worst_case_pairs_are_neighbours_with_the_claimed_loss() -> None:
    """The chosen inputs differ by exactly the sensitivity and are as bad as intended."""
    assert np.max(np.abs(EXP_U0 - EXP_U1)) == 1.0
    assert np.max(np.abs(EXP_MONO_U0 - EXP_MONO_U1)) == 1.0
    assert np.all(EXP_MONO_U1 - EXP_MONO_U0 >= 0)  # one direction: valid for monotonic
    mech = _exp()(Randomness.from_seed(0))
    loss = _exact_pair_loss(mech, EXP_U0, EXP_U1)
    expected = 0.5 + math.log((1 + _M * math.exp(0.5)) / (math.exp(0.5) + _M))
    assert loss == pytest.approx(expected, abs=1e-9) and loss <= 1.0
    mono = _exp(monotonic=True)(Randomness.from_seed(0))
    expected_mono = math.log((1 + _M * math.e) / (1 + _M))
    assert _exact_pair_loss(mono, EXP_MONO_U0, EXP_MONO_U1) == pytest.approx(
        expected_mono, abs=1e-9
    )


@pytest.mark.parametrize(
    ("monotonic", "u0", "u1"),
    [(False, EXP_U0, EXP_U1), (True, EXP_MONO_U0, EXP_MONO_U1)],
    ids=["standard", "monotonic"],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_exponential_audit_respects_claim(monotonic: bool, u0: Array, u1: Array, seed: int) -> None:
    factory = _exp(monotonic=monotonic)
    res = _audit_exp(factory, u0, u1, n=100_000, seed=seed)
    exact = _exact_pair_loss(factory(Randomness.from_seed(0)), u0, u1)
    assert not res.violates, str(res)
    assert res.epsilon_lower_bound <= exact  # below the true loss for this pair, not just eps
    assert res.epsilon_lower_bound > exact - 0.15  # and close to it: the audit has teeth


@pytest.mark.parametrize(
    ("monotonic", "u0", "u1"),
    [(False, EXP_U0, EXP_U1), (True, EXP_MONO_U0, EXP_MONO_U1)],
    ids=["standard", "monotonic"],
)
@pytest.mark.parametrize("seed", [3, 4])
def test_exponential_with_half_the_noise_is_flagged(
    monotonic: bool, u0: Array, u1: Array, seed: int
) -> None:
    """Declaring sensitivity 0.5 when it is 1 doubles the rate: really ~2-DP, claims 1."""
    res = _audit_exp(_exp(sensitivity=0.5, monotonic=monotonic), u0, u1, n=100_000, seed=seed)
    assert res.violates, str(res)
    assert res.epsilon_lower_bound > 1.5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("monotonic", "u0", "u1"),
    [(False, EXP_U0, EXP_U1), (True, EXP_MONO_U0, EXP_MONO_U1)],
    ids=["standard", "monotonic"],
)
def test_exponential_audit_large(monotonic: bool, u0: Array, u1: Array) -> None:
    factory = _exp(monotonic=monotonic)
    exact = _exact_pair_loss(factory(Randomness.from_seed(0)), u0, u1)
    ok = _audit_exp(factory, u0, u1, n=1_000_000, seed=5)
    assert not ok.violates and exact - 0.05 < ok.epsilon_lower_bound <= exact, str(ok)
    bad = _audit_exp(_exp(sensitivity=0.5, monotonic=monotonic), u0, u1, n=1_000_000, seed=6)
    assert bad.violates and bad.epsilon_lower_bound > 1.6, str(bad)


# ------------------------------------------------------------------------------------------
# Laplace mechanism (eps = 1, L1 sensitivity 1, x0 = 0, x1 = 1)
# ------------------------------------------------------------------------------------------

LAP_X0 = np.array([0.0])
LAP_X1 = np.array([1.0])


def _laplace(*, epsilon: float = 1.0, sensitivity: float = 1.0) -> Callable[[Randomness], Laplace]:
    def factory(r: Randomness) -> Laplace:
        return Laplace(epsilon=epsilon, sensitivity=sensitivity, randomness=r)

    return factory


def _laplace_pair_loss(coords: int) -> float:
    """Exact loss for grid-aligned inputs at L1 distance 1: 1 / (t g), the realised scale."""
    return 1.0 / Laplace(epsilon=1.0, sensitivity=1.0, seed=0).calibration(coords).scale


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_laplace_audit_respects_claim(seed: int) -> None:
    res = audit_mechanism(_laplace(), LAP_X0, LAP_X1, n=1_000_000, seed=seed, claimed=PureDP(1.0))
    exact = _laplace_pair_loss(1)
    assert exact <= 1.0
    assert not res.violates, str(res)
    assert exact - 0.03 < res.epsilon_lower_bound <= exact, str(res)


@pytest.mark.parametrize(
    "factory",
    [_laplace(sensitivity=0.5), _laplace(epsilon=2.0)],
    ids=["declares-half-sensitivity", "built-with-twice-epsilon"],
)
@pytest.mark.parametrize("seed", [4, 5])
def test_laplace_with_half_the_noise_is_flagged(factory: Factory, seed: int) -> None:
    res = audit_mechanism(factory, LAP_X0, LAP_X1, n=100_000, seed=seed, claimed=PureDP(1.0))
    assert res.violates, str(res)
    assert res.epsilon_lower_bound > 1.8


def _first(y: Array) -> Array:
    return np.asarray(y[:, 0])


def _first_coordinate_chooser(c0: Array, c1: Array, plan: AuditPlan) -> ThresholdEvent:
    return choose_threshold_event(c0, c1, plan, statistic=_first)


@pytest.mark.parametrize(("sensitivity", "violates"), [(1.0, False), (0.5, True)])
def test_laplace_vector_query(sensitivity: float, violates: bool) -> None:
    """A 4-coordinate query, the whole L1 distance on one coordinate (its own grid and scale)."""
    x0, x1 = np.zeros(4), np.array([1.0, 0.0, 0.0, 0.0])
    res = audit_mechanism(
        _laplace(sensitivity=sensitivity),
        x0,
        x1,
        n=300_000,
        seed=7,
        claimed=PureDP(1.0),
        chooser=_first_coordinate_chooser,
    )
    assert res.violates is violates, str(res)
    if violates:
        assert res.epsilon_lower_bound > 1.8
    else:
        assert res.epsilon_lower_bound <= _laplace_pair_loss(4)


# ------------------------------------------------------------------------------------------
# Gaussian mechanism (eps = 1, delta = 1e-5, L2 sensitivity 1, x0 = 0, x1 = 1)
# ------------------------------------------------------------------------------------------
# Its privacy loss sits in the tails (sigma = 3.75), so the audit needs more draws than for
# Laplace: with 1e6 per input the bound reaches ~0.6 for the correct mechanism and ~1.4 for the
# broken one (sigma 1.87), a margin of ~0.4 above the claim.

GAUSS_CLAIM = ApproxDP(1.0, 1e-5)


def _gaussian(*, sensitivity: float = 1.0) -> Callable[[Randomness], Gaussian]:
    def factory(r: Randomness) -> Gaussian:
        return Gaussian(epsilon=1.0, delta=1e-5, sensitivity=sensitivity, randomness=r)

    return factory


def test_gaussian_broken_variant_has_exactly_half_the_noise() -> None:
    good = _gaussian()(Randomness.from_seed(0))
    bad = _gaussian(sensitivity=0.5)(Randomness.from_seed(0))
    assert bad.scale == pytest.approx(good.scale / 2, rel=1e-3)
    assert good.guarantee.budget == GAUSS_CLAIM


@pytest.mark.parametrize("seed", [1, 2])
def test_gaussian_audit_respects_claim(seed: int) -> None:
    res = audit_mechanism(_gaussian(), LAP_X0, LAP_X1, n=300_000, seed=seed)
    assert res.claimed == GAUSS_CLAIM and res.claimed_delta == 1e-5
    assert not res.violates, str(res)
    assert 0.3 < res.epsilon_lower_bound <= 1.0, str(res)


def test_gaussian_with_half_the_noise_is_flagged() -> None:
    res = audit_mechanism(
        _gaussian(sensitivity=0.5), LAP_X0, LAP_X1, n=1_000_000, seed=3, claimed=GAUSS_CLAIM
    )
    assert res.violates, str(res)
    assert res.epsilon_lower_bound > 1.2


@pytest.mark.slow
@pytest.mark.parametrize("seed", [4, 5, 6])
def test_gaussian_audit_large(seed: int) -> None:
    ok = audit_mechanism(_gaussian(), LAP_X0, LAP_X1, n=1_000_000, seed=seed)
    assert not ok.violates and 0.5 < ok.epsilon_lower_bound <= 1.0, str(ok)
    bad = audit_mechanism(
        _gaussian(sensitivity=0.5), LAP_X0, LAP_X1, n=1_000_000, seed=seed, claimed=GAUSS_CLAIM
    )
    assert bad.violates and bad.epsilon_lower_bound > 1.2, str(bad)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [8, 9])
def test_laplace_audit_large_broken(seed: int) -> None:
    for factory in (_laplace(sensitivity=0.5), _laplace(epsilon=2.0)):
        res = audit_mechanism(factory, LAP_X0, LAP_X1, n=1_000_000, seed=seed, claimed=PureDP(1.0))
        assert res.violates and res.epsilon_lower_bound > 1.9, str(res)
