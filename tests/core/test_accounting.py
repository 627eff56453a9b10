"""Accounting: event constructors, PLD / RDP / opacus cross-checks, basic composition."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest
from dp_accounting import dp_event
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from mechanisms import accounting, budgets
from mechanisms.accounting import (
    compose,
    epsilon,
    gaussian_event,
    laplace_event,
    opacus_gaussian_epsilon,
    pld_delta,
    pld_epsilon,
    pure_event,
    rdp_epsilon,
    self_compose,
    zcdp_event,
)
from mechanisms.budgets import ZCDP, PureDP
from mechanisms.subsampling import PoissonSubsample, poisson_amplify

ROOT = Path(__file__).resolve().parents[2]
GRID = 1e-4  # default PLD discretisation interval


def test_importing_accounting_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import mechanisms.accounting, mechanisms.subsampling\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
        "assert 'opacus' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_compose_basic_is_reexported_not_rewritten() -> None:
    assert accounting.compose_basic is budgets.compose_basic


# --------------------------------------------------------------------------- constructors


def test_event_constructors() -> None:
    assert laplace_event(2.0, 1.0) == dp_event.LaplaceDpEvent(noise_multiplier=2.0)
    assert gaussian_event(3.0, 2.0) == dp_event.GaussianDpEvent(noise_multiplier=1.5)
    assert zcdp_event(0.25) == dp_event.ZCDpEvent(rho=0.25)
    ev = pure_event(1.0)
    assert isinstance(ev, dp_event.RandomizedResponseDpEvent) and ev.num_buckets == 2
    assert math.isclose(ev.noise_parameter, 2.0 / (1.0 + math.e), rel_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    scale=st.floats(min_value=1e-6, max_value=1e6),
    sensitivity=st.floats(min_value=1e-6, max_value=1e6),
)
def test_noise_multiplier_rounded_down(scale: float, sensitivity: float) -> None:
    exact = Fraction(scale) / Fraction(sensitivity)
    for ev in (laplace_event(scale, sensitivity), gaussian_event(scale, sensitivity)):
        nm = ev.noise_multiplier
        assert Fraction(nm) <= exact < Fraction(math.nextafter(nm, math.inf))


@settings(max_examples=100, deadline=None)
@given(eps=st.floats(min_value=1e-6, max_value=700.0))
def test_pure_event_never_claims_less_than_epsilon(eps: float) -> None:
    """2-bucket RR: P(keep) / P(flip) = (1 - p/2) / (p/2) must be >= e^eps."""
    p = Fraction(pure_event(eps).noise_parameter)
    ratio = (1 - p / 2) / (p / 2)
    with mpmath.workdps(60):
        claimed = mpmath.log(mpmath.mpf(ratio.numerator) / ratio.denominator)
        assert claimed >= eps
        # p is the largest float that is safe: one float step of p is ~2.2e-16 in eps
        assert claimed - eps <= max(1e-15 * eps, 5e-16)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_constructors_validate(bad: float) -> None:
    for make in (
        lambda: laplace_event(bad, 1.0),
        lambda: laplace_event(1.0, bad),
        lambda: gaussian_event(bad, 1.0),
        lambda: pure_event(bad),
        lambda: zcdp_event(bad),
    ):
        with pytest.raises(ValueError):
            make()


def test_compose_helpers_validate() -> None:
    with pytest.raises(TypeError):
        compose([pure_event(1.0), "laplace"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        self_compose(pure_event(1.0), 0)
    assert compose([pure_event(1.0)]) == dp_event.ComposedDpEvent([pure_event(1.0)])


# --------------------------------------------------------------------------- pure events, PLD


def exact_rr_delta(eps: float, k: int, eps_prime: float) -> float:
    """Hockey-stick divergence of k-fold 2-point randomised response at eps' (exact).

    Under the first distribution the number of flipped outputs j ~ Bin(k, 1 / (1 + e^eps)) and
    the privacy loss is eps (k - 2j); delta(eps') = E[(1 - e^(eps' - loss))_+].
    """
    j = np.arange(k + 1)
    loss = eps * (k - 2 * j)
    weights = binom.pmf(j, k, 1.0 / (1.0 + math.exp(eps)))
    return float(np.sum(weights * np.clip(-np.expm1(eps_prime - loss), 0.0, None)))


@pytest.mark.parametrize("neighbouring", ["add_remove", "replace_one"])
@pytest.mark.parametrize(("eps", "k"), [(1.0, 1), (0.5, 3), (0.3, 10)])
def test_pure_pld_matches_exact_randomized_response(eps: float, k: int, neighbouring: str) -> None:
    """Catches dp-accounting 0.6.0 ignoring SelfComposedDpEvent counts for RR, too."""
    event = self_compose(pure_event(eps), k)
    for eps_prime in (0.0, 0.5 * eps, eps, 0.5 * k * eps):
        exact = exact_rr_delta(eps, k, eps_prime)
        got = pld_delta(event, eps_prime, neighbouring=neighbouring)  # type: ignore[arg-type]
        assert exact - 1e-12 <= got <= exact + 2 * k * GRID


def test_single_pure_event_at_delta_zero() -> None:
    assert 1.0 <= pld_epsilon(pure_event(1.0), 0.0) <= 1.0 + 2 * GRID
    assert math.isclose(pld_delta(pure_event(1.0), 0.0), math.tanh(0.5), abs_tol=2 * GRID)


@settings(max_examples=15, deadline=None)
@given(
    eps=st.floats(min_value=0.05, max_value=2.0),
    k=st.integers(min_value=2, max_value=8),
    delta=st.sampled_from([1e-6, 1e-3]),
)
def test_pld_of_k_pure_events_between_one_and_k_eps(eps: float, k: int, delta: float) -> None:
    one = pld_epsilon(pure_event(eps), delta)
    many = pld_epsilon(self_compose(pure_event(eps), k), delta)
    listed = pld_epsilon(compose([pure_event(eps)] * k), delta)
    assert one < many <= k * eps + k * GRID + 1e-9
    assert math.isclose(many, listed, abs_tol=1e-9)


# --------------------------------------------------------------------------- Laplace


@pytest.mark.parametrize(("scale", "sensitivity"), [(1.0, 1.0), (2.0, 1.0), (0.5, 2.0)])
def test_pld_single_laplace_is_its_pure_epsilon(scale: float, sensitivity: float) -> None:
    eps = sensitivity / scale
    event = laplace_event(scale, sensitivity)
    # delta = 0 up to the ~1e-15 tail mass dp-accounting truncates (counted as infinite loss)
    assert pld_delta(event, eps) <= 1e-14
    assert math.isinf(pld_epsilon(event, 0.0))  # that truncated tail, as documented
    assert eps - 1e-9 <= pld_epsilon(event, 1e-12) <= eps + GRID + 1e-9
    # noise halved: the accountant must see twice the loss
    assert pld_epsilon(laplace_event(scale / 2, sensitivity), 1e-12) >= 2 * eps - 1e-9


@pytest.mark.parametrize(("eps", "rate"), [(1.0, 0.1), (0.1, 0.05), (2.0, 0.5)])
def test_poisson_sampled_laplace_pld_within_amplification_bound(eps: float, rate: float) -> None:
    event = PoissonSubsample(rate=rate, seed=0).event(laplace_event(1.0, eps))
    bound = poisson_amplify(PureDP(eps), rate).epsilon
    got = pld_epsilon(event, 1e-12)
    assert got <= bound + 2 * GRID
    assert got >= bound - 1e-3  # the bound is tight for Laplace in the remove direction
    assert bound <= epsilon(event, 1e-12, method="basic") <= bound * (1 + 1e-9)


# --------------------------------------------------------------------------- Gaussian cross-check


SIGMA, RATE, STEPS, DELTA = 1.1, 0.01, 1000, 1e-5


@pytest.fixture(scope="module")
def dpsgd_epsilons() -> dict[str, float]:
    event = self_compose(PoissonSubsample(rate=RATE).event(gaussian_event(SIGMA, 1.0)), STEPS)
    common = {"noise_multiplier": SIGMA, "sample_rate": RATE, "steps": STEPS, "delta": DELTA}
    return {
        "pld": pld_epsilon(event, DELTA),
        "rdp": rdp_epsilon(event, DELTA),
        "opacus_rdp": opacus_gaussian_epsilon(**common, method="rdp"),  # type: ignore[arg-type]
        "opacus_prv": opacus_gaussian_epsilon(**common, method="prv"),  # type: ignore[arg-type]
    }


def test_tight_accountants_agree(dpsgd_epsilons: dict[str, float]) -> None:
    pld, prv = dpsgd_epsilons["pld"], dpsgd_epsilons["opacus_prv"]
    assert abs(pld - prv) <= 0.03  # PRV reports its upper estimate (eps_error 0.01)
    assert 1.0 < pld < 2.0


def test_rdp_accountants_agree_and_are_looser(dpsgd_epsilons: dict[str, float]) -> None:
    rdp, opacus_rdp = dpsgd_epsilons["rdp"], dpsgd_epsilons["opacus_rdp"]
    assert abs(rdp - opacus_rdp) <= 5e-3
    tight = max(dpsgd_epsilons["pld"], dpsgd_epsilons["opacus_prv"])
    assert tight <= min(rdp, opacus_rdp) <= 1.3 * tight


def test_epsilon_helper_methods(dpsgd_epsilons: dict[str, float]) -> None:
    event = self_compose(PoissonSubsample(rate=RATE).event(gaussian_event(SIGMA, 1.0)), STEPS)
    assert epsilon([event], DELTA, method="rdp") == dpsgd_epsilons["rdp"]
    with pytest.raises(TypeError, match="pld"):
        epsilon(event, DELTA, method="basic")


def test_opacus_validation_happens_before_import() -> None:
    common = {"noise_multiplier": 1.0, "sample_rate": 0.1, "delta": 1e-5}
    with pytest.raises(ValueError, match="method"):
        opacus_gaussian_epsilon(**common, steps=10, method="gdp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        opacus_gaussian_epsilon(**common, steps=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_rate"):
        opacus_gaussian_epsilon(noise_multiplier=1.0, sample_rate=0.0, steps=1, delta=1e-5)


# --------------------------------------------------------------------------- RDP, zCDP, basic


def test_rdp_of_pure_events_is_sound() -> None:
    event = self_compose(pure_event(0.5), 4)
    assert rdp_epsilon(event, 1e-5) >= pld_epsilon(event, 1e-5)


def test_rdp_of_zcdp_event_no_worse_than_bun_steinke() -> None:
    rho, delta = 0.1, 1e-6
    got = rdp_epsilon(self_compose(zcdp_event(rho), 3), delta)
    assert 3 * rho < got <= ZCDP(3 * rho).to_approx(delta).epsilon + 1e-9


def test_basic_composition_of_events() -> None:
    events = [laplace_event(1.0, 1.0), pure_event(0.5), self_compose(pure_event(0.25), 2)]
    got = epsilon(events, 1e-6, method="basic")
    assert 2.0 <= got <= 2.0 + 1e-9
    assert epsilon(events, 1e-6, method="pld") <= got + 4 * GRID
    via_zcdp = epsilon([zcdp_event(0.1)], 1e-6, method="basic")
    assert math.isclose(via_zcdp, ZCDP(0.1).to_approx(1e-6).epsilon, rel_tol=1e-14)


def test_method_and_neighbouring_validation() -> None:
    with pytest.raises(ValueError, match="method"):
        epsilon(pure_event(1.0), 1e-6, method="moments")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="add_remove"):
        epsilon(pure_event(1.0), 1e-6, method="rdp", neighbouring="replace_one")
    with pytest.raises(ValueError, match="neighbouring"):
        pld_epsilon(pure_event(1.0), 1e-6, neighbouring="swap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delta"):
        pld_epsilon(pure_event(1.0), 1.0)
    with pytest.raises(ValueError, match="delta"):
        rdp_epsilon(pure_event(1.0), 0.0)


def test_unsupported_events_explain_what_to_do() -> None:
    with pytest.raises(ValueError, match="PLD cannot account"):
        pld_epsilon(zcdp_event(0.1), 1e-6)
    with pytest.raises(ValueError, match="RDP cannot account"):
        rdp_epsilon(PoissonSubsample(rate=0.1).event(laplace_event(1.0, 1.0)), 1e-6)


def test_poisson_sampled_pure_event_refused_by_pld_and_rdp_and_handled_by_basic() -> None:
    """accounting.md G4: PoissonSampledDpEvent(pure_event(eps)) must be refused, not
    mis-accounted, by PLD and RDP, and basic accounting must give poisson_amplify's bound."""
    eps, rate = 1.0, 0.1
    ev = PoissonSubsample(rate=rate).event(pure_event(eps))
    with pytest.raises(ValueError, match="PLD cannot account"):
        pld_epsilon(ev, 1e-6)
    with pytest.raises(ValueError, match="RDP cannot account"):
        rdp_epsilon(ev, 1e-6)
    amplified = poisson_amplify(PureDP(eps), rate).epsilon
    one = accounting.epsilon(ev, 1e-6, method="basic")
    assert amplified <= one <= amplified * (1 + 1e-12)
    two = accounting.epsilon([ev, ev], 1e-6, method="basic")
    assert Fraction(two) >= 2 * Fraction(one)
    assert two <= math.nextafter(2 * one, math.inf)
