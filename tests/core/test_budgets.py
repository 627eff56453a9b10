"""Budget values: validation, conversions, basic composition."""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mechanisms.budgets import ZCDP, ApproxDP, PureDP, compose_basic


@pytest.mark.parametrize("bad", [-1.0, float("nan"), -1e-300])
def test_budgets_reject_invalid_values(bad: float) -> None:
    with pytest.raises(ValueError):
        PureDP(bad)
    with pytest.raises(ValueError):
        ApproxDP(bad, 1e-6)
    with pytest.raises(ValueError):
        ZCDP(bad)


def test_infinite_epsilon_needs_explicit_consent() -> None:
    with pytest.raises(ValueError, match="allow_inf"):
        PureDP(math.inf)
    assert PureDP(math.inf, allow_inf=True).epsilon == math.inf


@pytest.mark.parametrize("delta", [1.0, 1.5, -0.1, float("nan")])
def test_delta_must_be_a_probability_below_one(delta: float) -> None:
    with pytest.raises(ValueError):
        ApproxDP(1.0, delta)


def test_budgets_reject_non_numbers() -> None:
    with pytest.raises(TypeError):
        PureDP("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PureDP(True)  # type: ignore[arg-type]


def test_budgets_are_frozen() -> None:
    b = PureDP(1.0)
    with pytest.raises(AttributeError):
        b.epsilon = 2.0  # type: ignore[misc]


@given(st.floats(min_value=0.0, max_value=50.0))
def test_pure_to_zcdp_is_conservative(eps: float) -> None:
    assert PureDP(eps).to_zcdp().rho >= eps * eps / 2


@given(st.floats(min_value=1e-6, max_value=10.0), st.floats(min_value=1e-12, max_value=0.5))
def test_zcdp_to_approx_formula(rho: float, delta: float) -> None:
    got = ZCDP(rho).to_approx(delta)
    assert math.isclose(got.epsilon, rho + 2 * math.sqrt(rho * math.log(1 / delta)), rel_tol=1e-12)
    assert got.delta == delta


def test_approx_to_pure_only_without_delta() -> None:
    assert ApproxDP(1.0, 0.0).to_pure() == PureDP(1.0)
    with pytest.raises(ValueError):
        ApproxDP(1.0, 1e-6).to_pure()


@given(st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=20))
def test_basic_composition_adds_up_and_rounds_up(epsilons: list[float]) -> None:
    total = compose_basic([PureDP(e) for e in epsilons])
    assert isinstance(total, PureDP)
    assert total.epsilon >= math.fsum(epsilons)


def test_mixed_composition() -> None:
    total = compose_basic([PureDP(1.0), ApproxDP(0.5, 1e-6), ApproxDP(0.25, 2e-6)])
    assert isinstance(total, ApproxDP)
    assert total.epsilon >= 1.75 and total.delta >= 3e-6
    assert compose_basic([ZCDP(0.1), ZCDP(0.2)]).rho >= 0.3  # type: ignore[union-attr]
    with pytest.raises(TypeError):
        compose_basic([ZCDP(0.1), PureDP(1.0)])
    with pytest.raises(ValueError, match="guarantees nothing"):
        compose_basic([ApproxDP(1.0, 0.6), ApproxDP(1.0, 0.6)])
    assert compose_basic([]) == PureDP(0.0)


@given(st.floats(min_value=1e-9, max_value=100.0), st.floats(min_value=1e-15, max_value=0.9))
def test_zcdp_conversion_is_never_below_the_exact_value(rho: float, delta: float) -> None:
    import mpmath

    with mpmath.workdps(80):
        r = mpmath.mpf(rho)
        exact = r + 2 * mpmath.sqrt(r * mpmath.log(1 / mpmath.mpf(delta)))
        assert mpmath.mpf(ZCDP(rho).to_approx(delta).epsilon) >= exact


def test_composition_of_exact_floats_is_exact() -> None:
    assert compose_basic([PureDP(1.0)] * 3) == PureDP(3.0)
    assert compose_basic([PureDP(0.1)] * 3).epsilon >= 0.3  # 0.1 is not exact: rounded up


@given(st.floats(min_value=0.0, max_value=1e150, allow_subnormal=True))
def test_pure_to_zcdp_rounds_up_exactly_and_never_underflows(eps: float) -> None:
    """rho >= the exact rational eps^2/2 over the whole range, including eps <= 2e-162 (where
    eps^2/2 underflows in floats), and rho is 0 only for eps = 0 and never subnormal."""
    rho = PureDP(eps).to_zcdp().rho
    assert Fraction(rho) >= Fraction(eps) ** 2 / 2
    if eps > 0.0:
        assert rho >= sys.float_info.min
        # tight: one float step down is below the exact value, unless clamped to 2^-1022
        if rho > sys.float_info.min:
            assert Fraction(math.nextafter(rho, 0.0)) < Fraction(eps) ** 2 / 2
    else:
        assert rho == 0.0


@pytest.mark.parametrize("eps", [1e-170, 2e-162, 5e-324, 1e-300])
def test_pure_to_zcdp_of_tiny_epsilon_is_positive(eps: float) -> None:
    assert PureDP(eps).to_zcdp().rho > 0.0


def test_pure_to_zcdp_extremes() -> None:
    assert PureDP(math.inf, allow_inf=True).to_zcdp().rho == math.inf
    with pytest.raises(OverflowError, match="float range"):
        PureDP(1e200).to_zcdp()
