"""The grid Laplace mechanism: lattice outputs, exact calibration, noise scale, validation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms.accounting import pure_event
from mechanisms.budgets import PureDP
from mechanisms.laplace import MAX_LAPLACE_T, Laplace
from mechanisms.lattice import GRID_SHARE
from tests.stats_helpers import ALPHA, binned_discrete_laplace_test


def test_outputs_lie_on_a_power_of_two_lattice() -> None:
    mech = Laplace(epsilon=1, sensitivity=1, seed=1)
    x = np.array([0.1234567, -3.3, 1e-9, 42.0])
    y = mech(x)
    g = float(mech.calibration(x.size).grid)
    assert math.log2(g).is_integer()
    steps = y / g
    assert np.array_equal(steps, np.round(steps))
    assert y.shape == x.shape


def test_noise_is_the_exact_discrete_laplace_of_the_declared_scale() -> None:
    mech = Laplace(epsilon=1, sensitivity=1, seed=2)
    out = mech.batch(np.zeros((200_000, 1)))
    cal = mech.calibration(1)
    z = np.round(out[:, 0] / float(cal.grid)).astype(np.int64)
    assert binned_discrete_laplace_test(z, cal.t) > ALPHA
    # scale is within the declared slack of sensitivity / epsilon: no over- or under-noising
    assert 1.0 <= cal.scale <= (1 + GRID_SHARE) * 1.0 + float(cal.grid)


def test_factor_two_slip_would_be_caught() -> None:
    """Power control for the scale check: noise from a 2x epsilon fails the 1x test."""
    wrong = Laplace(epsilon=2, sensitivity=1, seed=3)
    right = Laplace(epsilon=1, sensitivity=1, seed=3)
    out = wrong.batch(np.zeros((200_000, 1)))
    cal = right.calibration(1)
    z = np.round(out[:, 0] / float(cal.grid)).astype(np.int64)
    assert binned_discrete_laplace_test(z, cal.t) < ALPHA


@settings(max_examples=60, deadline=None)
@given(
    eps=st.floats(min_value=1e-3, max_value=1e3),
    sens=st.floats(min_value=1e-6, max_value=1e6),
    coords=st.integers(min_value=1, max_value=10**7),
)
def test_calibration_is_exact_and_tight(eps: float, sens: float, coords: int) -> None:
    mech = Laplace(epsilon=eps, sensitivity=sens)
    cal = mech.calibration(coords)
    g = cal.grid
    relaxed = Fraction(sens) + coords * g
    # the realised loss (sens + n g) / (t g) never exceeds epsilon ...
    assert relaxed / (cal.t * g) <= Fraction(eps)
    # ... and the rounding slack is at most 1/256 of the sensitivity
    assert coords * g <= GRID_SHARE * Fraction(sens)
    # ... and the noise is not inflated beyond that slack plus one grid step
    assert cal.t * g <= (1 + GRID_SHARE) * Fraction(sens) / Fraction(eps) + g


def test_privacy_map() -> None:
    mech = Laplace(epsilon=0.5, sensitivity=2.0)
    assert mech.privacy_map(2.0) == PureDP(0.5)
    assert mech.privacy_map(4.0).epsilon >= 1.0
    assert mech.privacy_map(1.0).epsilon >= 0.25
    assert mech.privacy_map(1.0).epsilon <= 0.5
    assert mech.privacy_map(0.0).epsilon > 0  # rounding slack is charged even at d = 0
    with pytest.raises(ValueError):
        mech.privacy_map(-1.0)
    assert mech.guarantee.budget == PureDP(0.5)
    assert "L1" in mech.guarantee.statement()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0, "sensitivity": 1},
        {"epsilon": -1, "sensitivity": 1},
        {"epsilon": float("nan"), "sensitivity": 1},
        {"epsilon": float("inf"), "sensitivity": 1},
        {"epsilon": 1, "sensitivity": 0},
        {"epsilon": 1, "sensitivity": float("inf")},
    ],
)
def test_constructor_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Laplace(**kwargs)


def test_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Laplace(1.0, 1.0)  # type: ignore[misc]


def test_bad_inputs_are_refused() -> None:
    mech = Laplace(epsilon=1, sensitivity=1)
    with pytest.raises(ValueError, match="NaN"):
        mech(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        mech(np.array([]))
    with pytest.raises(ValueError):
        mech.batch(np.zeros((0, 3)))


def test_huge_inputs_are_clamped_not_overflowed() -> None:
    mech = Laplace(epsilon=1, sensitivity=1, seed=0)
    y = mech(np.array([1e300, -1e300]))
    assert np.all(np.isfinite(y)) and y[0] > 0 > y[1]


def test_batch_rows_are_independent_releases() -> None:
    mech = Laplace(epsilon=1, sensitivity=1, seed=9)
    out = mech.batch(np.zeros((2000, 3)))
    assert out.shape == (2000, 3)
    corr = np.corrcoef(out[:, 0], out[:, 1])[0, 1]
    assert abs(corr) < 0.15


def test_seeded_flag_and_reproducibility() -> None:
    a = Laplace(epsilon=1, sensitivity=1, seed=5)
    b = Laplace(epsilon=1, sensitivity=1, seed=5)
    assert a.seeded and np.array_equal(a(np.zeros(10)), b(np.zeros(10)))
    c = Laplace(epsilon=1, sensitivity=1)
    assert not c.seeded
    assert not np.array_equal(c(np.zeros(10)), Laplace(epsilon=1, sensitivity=1)(np.zeros(10)))


def test_variance_and_bias_helpers() -> None:
    mech = Laplace(epsilon=1, sensitivity=1, seed=11)
    out = mech.batch(np.zeros((100_000, 1)))
    assert abs(out.var() / mech.variance(1) - 1) < 0.05
    assert mech.bias_bound(1) == float(mech.calibration(1).grid) / 2


@settings(max_examples=200, deadline=None)
@given(
    eps=st.floats(min_value=1e-2, max_value=1e2),
    sens=st.floats(min_value=1e-3, max_value=1e3),
    base=st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=16),
    direction=st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=16, max_size=16),
)
def test_exact_likelihood_ratio_of_realised_outputs(
    eps: float, sens: float, base: list[float], direction: list[float]
) -> None:
    """For neighbours at L1 distance <= sensitivity, every output's probability ratio is
    exp(|k - k'|_1 / t) (discrete Laplace on the grid indices k): check it is <= e^epsilon
    exactly, through the real rounding code, on arbitrary float inputs."""
    from mechanisms.lattice import round_to_grid

    x = np.array(base)
    d = np.array(direction[: x.size])
    norm = np.abs(d).sum()
    x2 = x if norm < 1e-6 else x + d * (sens / norm) * (1 - 1e-12)
    if np.abs(x2 - x).sum() > sens:  # float rounding pushed it over: not neighbours
        return
    mech = Laplace(epsilon=eps, sensitivity=sens)
    cal = mech.calibration(x.size)
    k, k2 = round_to_grid(x, cal.grid), round_to_grid(x2, cal.grid)
    assert Fraction(int(np.abs(k - k2).sum()), cal.t) <= Fraction(eps)


# ---------------------------------------------------------------- laplace.md G4


def _map_exact(eps: float, sens: float, d: float) -> Fraction:
    e, s, dd = Fraction(eps), Fraction(sens), Fraction(d)
    if dd <= s:
        return e * (dd + GRID_SHARE * s) / (s * (1 + GRID_SHARE))
    return e * dd / s


@settings(max_examples=150, deadline=None)
@given(
    eps=st.floats(min_value=1e-3, max_value=50.0),
    sens=st.floats(min_value=1e-6, max_value=1e6),
    r1=st.floats(min_value=0.0, max_value=100.0),
    r2=st.floats(min_value=0.0, max_value=100.0),
    coords=st.integers(min_value=1, max_value=10**6),
)
def test_privacy_map_properties(eps: float, sens: float, r1: float, r2: float, coords: int) -> None:
    """Monotone in d, = ε at Δ, the exact P2 bound rounded up (and tight), and never below the
    realised loss (d + n g)/(t g) of an n-coordinate query at distance d (P2, exact)."""
    mech = Laplace(epsilon=eps, sensitivity=sens)
    assert mech.privacy_map(sens) == mech.guarantee.budget == PureDP(eps)
    lo, hi = sorted((r1 * sens, r2 * sens))
    a, b = mech.privacy_map(lo).epsilon, mech.privacy_map(hi).epsilon
    assert a <= b
    try:
        cal = mech.calibration(coords)
    except ValueError:
        cal = None
    for d, got in ((lo, a), (hi, b)):
        exact = _map_exact(eps, sens, d)
        assert Fraction(got) >= exact
        assert exact == 0 or Fraction(math.nextafter(got, 0.0)) < exact
        if cal is not None:
            realised = (Fraction(d) + coords * cal.grid) / (cal.t * cal.grid)
            assert realised <= Fraction(got)


def test_scale_beyond_the_exact_sampler_is_refused() -> None:
    """t > 2^48 (MAX_LAPLACE_T) is refused by the calibration, and hence by __call__."""
    # n = 1: g = 2^-8 (Δ = 1), t = ceil((1 + 2^-8)/(ε 2^-8)) = ceil(257/ε)
    ok = Laplace(epsilon=257 / 2**48, sensitivity=1.0)
    assert ok.calibration(1).t == MAX_LAPLACE_T
    assert ok(np.zeros(1)).shape == (1,)
    # no query at all can be released: refused by the constructor, with the least epsilon
    with pytest.raises(ValueError, match=r"2\^48.*use epsilon >= 9\.14e-13"):
        Laplace(epsilon=math.nextafter(257 / 2**48, 0.0), sensitivity=1.0)
    # 1 coordinate fits, 1000 do not: refused by calibration(1000), before any noise is drawn
    mech = Laplace(epsilon=1e-12, sensitivity=1.0)
    with pytest.raises(ValueError, match="split the query"):
        mech.calibration(1000)
    with pytest.raises(ValueError, match="split the query"):
        mech.batch(np.zeros((2, 1000)))
    assert MAX_LAPLACE_T == 2**48


def test_event_is_the_pure_event_of_epsilon() -> None:
    ev = Laplace(epsilon=0.7, sensitivity=2.0).event()
    assert ev == pure_event(0.7)
