"""The grid Gaussian mechanism: calibration (analytic and RDP), zCDP, lattice outputs, scale."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms.budgets import ApproxDP
from mechanisms.gaussian import (
    _RDP_ORDERS,
    Gaussian,
    analytic_gaussian_delta,
    analytic_gaussian_sigma,
)
from mechanisms.lattice import GRID_SHARE
from mechanisms.rng import Randomness
from mechanisms.sampling import MAX_GAUSSIAN_S, discrete_gaussian
from tests.stats_helpers import ALPHA, chi2_goodness_of_fit, discrete_gaussian_pmf


def test_analytic_sigma_reference_value() -> None:
    # Balle & Wang (2018): eps = 1, delta = 1e-5, sensitivity 1 needs sigma ~ 3.73
    sigma = analytic_gaussian_sigma(epsilon=1.0, delta=1e-5, sensitivity=1.0)
    assert 3.72 < sigma < 3.74
    assert analytic_gaussian_delta(sigma, epsilon=1.0, sensitivity=1.0) <= 1e-5
    assert analytic_gaussian_delta(sigma * 0.99, epsilon=1.0, sensitivity=1.0) > 1e-5


def test_analytic_calibration_agrees_with_pld_accountant() -> None:
    sigma = analytic_gaussian_sigma(epsilon=1.0, delta=1e-5, sensitivity=1.0)
    acc = PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_event.GaussianDpEvent(noise_multiplier=sigma))
    assert abs(acc.get_epsilon(1e-5) - 1.0) < 0.01


def test_rdp_calibration_is_certified_by_rdp_accountant() -> None:
    mech = Gaussian(epsilon=1.0, delta=1e-6, sensitivity=2.0, calibration="rdp")
    cal = mech.calibration(512)
    acc = RdpAccountant()
    acc.compose(
        dp_event.GaussianDpEvent(noise_multiplier=cal.sigma / float(cal.relaxed_sensitivity))
    )
    assert acc.get_epsilon(1e-6) <= 1.0
    assert cal.sigma > Gaussian(epsilon=1.0, delta=1e-6, sensitivity=2.0).calibration(512).sigma


@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(min_value=0.05, max_value=50),
    delta=st.floats(min_value=1e-12, max_value=1e-2),
    sens=st.floats(min_value=1e-3, max_value=1e3),
    coords=st.integers(min_value=1, max_value=10**7),
)
def test_calibration_meets_target_on_relaxed_sensitivity(
    eps: float, delta: float, sens: float, coords: int
) -> None:
    mech = Gaussian(epsilon=eps, delta=delta, sensitivity=sens)
    try:
        cal = mech.calibration(coords)
    except ValueError as err:  # refused only when the query really needs too many grid steps
        assert "split the query" in str(err)
        assert mech.noise_multiplier * math.sqrt(coords) / float(GRID_SHARE) > MAX_GAUSSIAN_S / 4
        return
    relaxed = float(cal.relaxed_sensitivity)
    assert cal.relaxed_sensitivity - Fraction(sens) <= GRID_SHARE * Fraction(sens) * 2**12
    assert analytic_gaussian_delta(cal.sigma, epsilon=eps, sensitivity=relaxed) <= delta
    assert 1024 <= cal.s <= MAX_GAUSSIAN_S


def test_relaxation_is_small_for_embedding_sized_queries() -> None:
    cal = Gaussian(epsilon=1.0, delta=1e-6, sensitivity=2.0).calibration(512)
    assert cal.relaxed_sensitivity - 2 <= GRID_SHARE * 2


def test_outputs_on_lattice_and_noise_is_discrete_gaussian() -> None:
    mech = Gaussian(epsilon=1.0, delta=1e-5, sensitivity=1.0, seed=4)
    cal = mech.calibration(1)
    out = mech.batch(np.zeros((100_000, 1)))[:, 0]
    steps = out / float(cal.grid)
    assert np.array_equal(steps, np.round(steps))
    z = steps.astype(np.int64)
    edges = np.round(np.linspace(-4, 4, 41) * cal.s).astype(np.int64)
    support = np.arange(edges[0] - 60 * cal.s, edges[-1] + 60 * cal.s)
    pmf = discrete_gaussian_pmf(cal.s, support)
    probs = np.bincount(np.searchsorted(edges, support), weights=pmf, minlength=edges.size + 1)
    counts = np.bincount(np.searchsorted(edges, z), minlength=edges.size + 1)
    assert chi2_goodness_of_fit(counts, probs) > ALPHA
    # a sigma 3% off is detected by the same test (power control)
    wrong = discrete_gaussian_pmf(cal.s * 1.03, support)
    wprobs = np.bincount(np.searchsorted(edges, support), weights=wrong, minlength=edges.size + 1)
    assert chi2_goodness_of_fit(counts, wprobs) < ALPHA


def test_zcdp_and_event() -> None:
    mech = Gaussian(epsilon=1.0, delta=1e-5, sensitivity=1.0)
    cal = mech.calibration(1)
    rho = mech.zcdp().rho
    assert rho >= float(cal.relaxed_sensitivity) ** 2 / (2 * cal.sigma**2)
    ev = mech.event()
    assert isinstance(ev, dp_event.GaussianDpEvent)
    # the event's multiplier never exceeds the realised one, for any query size
    for coords in (1, 7, 512, 100_000):
        c = mech.calibration(coords)
        assert Fraction(ev.noise_multiplier) <= c.s * c.grid / c.relaxed_sensitivity
    realised = cal.sigma / float(cal.relaxed_sensitivity)
    assert math.isclose(ev.noise_multiplier, realised, rel_tol=0.01)


def test_privacy_map_grows_with_distance() -> None:
    mech = Gaussian(epsilon=1.0, delta=1e-5, sensitivity=1.0)
    assert mech.privacy_map(0.5) == ApproxDP(1.0, 1e-5)
    far = mech.privacy_map(2.0)
    assert far.epsilon > 1.5 and far.delta == 1e-5
    assert analytic_gaussian_delta(mech.scale, epsilon=far.epsilon, sensitivity=2.0) <= 1e-5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0, "delta": 1e-5, "sensitivity": 1},
        {"epsilon": 1, "delta": 0, "sensitivity": 1},
        {"epsilon": 1, "delta": 1, "sensitivity": 1},
        {"epsilon": 1, "delta": float("nan"), "sensitivity": 1},
        {"epsilon": 1, "delta": 1e-5, "sensitivity": -2},
        {"epsilon": 1, "delta": 1e-5, "sensitivity": 1, "calibration": "classic"},
    ],
)
def test_constructor_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Gaussian(**kwargs)  # type: ignore[arg-type]


def test_guarantee_mentions_both_views() -> None:
    g = Gaussian(epsilon=1.0, delta=1e-6, sensitivity=2.0).guarantee
    assert g.budget == ApproxDP(1.0, 1e-6)
    assert "zCDP" in g.statement() and "L2" in g.statement()


@settings(max_examples=150, deadline=None)
@given(
    sens=st.floats(min_value=1e-3, max_value=1e3),
    base=st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=16),
    direction=st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=16, max_size=16),
)
def test_rounded_neighbours_stay_within_the_relaxed_sensitivity(
    sens: float, base: list[float], direction: list[float]
) -> None:
    """The calibration assumes ||k - k'||_2 * g <= relaxed sensitivity for the grid indices of
    any two inputs at L2 distance <= sensitivity: check it exactly through the rounding code."""
    from mechanisms.lattice import round_to_grid

    x = np.array(base)
    d = np.array(direction[: x.size])
    norm = float(np.sqrt((d * d).sum()))
    x2 = x if norm < 1e-6 else x + d * (sens / norm) * (1 - 1e-12)
    if np.sqrt(((x2 - x) ** 2).sum()) > sens:
        return
    cal = Gaussian(epsilon=1.0, delta=1e-6, sensitivity=sens).calibration(x.size)
    k, k2 = round_to_grid(x, cal.grid), round_to_grid(x2, cal.grid)
    diff = [int(v) for v in (k - k2)]
    assert Fraction(sum(v * v for v in diff)) * cal.grid**2 <= cal.relaxed_sensitivity**2


def _hockey_stick(s: int, shift: np.ndarray, eps: float) -> float:
    """delta(eps) of N_Z(0, s^2 I) vs N_Z(shift, s^2 I), shift = (a,) or (a, a), in float64.

    delta = sum_z P(z) max(1 - exp(eps + (2<z, mu> - |mu|^2) / (2 s^2)), 0). For mu = (a, a)
    the loss depends on w = z_1 + z_2 only, whose law is the convolution of two 1-D laws.
    Mass beyond 9 s per axis (< 1e-17) is dropped.
    """
    span = np.arange(-9 * s, 9 * s + 1, dtype=np.float64)
    pmf = np.exp(-(span**2) / (2.0 * s * s))
    pmf /= pmf.sum()
    a = float(shift[0])
    if shift.size == 1:
        w, pw, norm2 = span, pmf, a * a
    else:
        pw = np.convolve(pmf, pmf)
        w = np.arange(-18 * s, 18 * s + 1, dtype=np.float64)
        norm2 = 2 * a * a
    expo = eps + (2.0 * a * w - norm2) / (2.0 * s * s)
    return float((pw * np.maximum(1.0 - np.exp(np.minimum(expo, 0.0)), 0.0)).sum())


def test_exact_discrete_delta_of_worst_grid_pair_within_claim() -> None:
    """The counterexample of proofs/gaussian.md G1: c * D'/g lands just below 1086, and with
    s = ceil(c * D'/g) the exact delta of the grid pair 257 steps apart was 1.00000066 * delta.
    The calibration's s^2 >= (c D'/g)^2 + 9 rule must keep it below delta."""
    delta = 9.951284271598475e-07
    mech = Gaussian(epsilon=1.0, delta=delta, sensitivity=1 + 2**-40)
    cal = mech.calibration(1)
    steps = math.floor(cal.relaxed_sensitivity / cal.grid)
    assert steps == 257
    for shift in (steps - 1, steps):
        assert _hockey_stick(cal.s, np.array([float(shift)]), 1.0) <= delta
    # the same pair at s = 1086 (what ceil() gave) violates the claim: the test has power
    assert _hockey_stick(1086, np.array([257.0]), 1.0) > delta


def test_exact_discrete_delta_for_a_diagonal_shift() -> None:
    """In 2-D the discrete profile depends on the direction of the shift, not only its norm."""
    mech = Gaussian(epsilon=1.0, delta=1e-5, sensitivity=1.0, calibration="analytic")
    cal = mech.calibration(4)
    steps = float(cal.relaxed_sensitivity / cal.grid)
    side = math.floor(steps / math.sqrt(2))
    shift = np.array([side, side], dtype=np.float64)
    assert math.hypot(side, side) <= steps
    assert _hockey_stick(cal.s, shift, 1.0) <= 1e-5


# ---------------------------------------------------------------- privacy_map (gaussian.md G4, G5)

mpmath.mp.dps = 50


def _rdp_bound_exact(multiplier: Fraction, delta: float) -> mpmath.mpf:
    """50-digit value of the bound the RDP branch evaluates: dp-accounting's conversion
    (CKS 2020 Prop. 12, KL shortcut included) over its default orders, at the exact
    multiplier."""
    r2 = mpmath.mpf(multiplier.numerator) ** 2 / mpmath.mpf(multiplier.denominator) ** 2
    best = None
    for a_float in _RDP_ORDERS:
        a = mpmath.mpf(a_float)
        r = a / (2 * r2)
        if delta**2 + mpmath.expm1(-r) > 0:
            e = mpmath.mpf(0)
        else:
            e = r + mpmath.log1p(-1 / a) - mpmath.log(mpmath.mpf(delta) * a) / (a - 1)
        best = e if best is None or e < best else best
    return max(best, mpmath.mpf(0))


def test_rdp_privacy_map_rounds_up_counterexample() -> None:
    """gaussian.md G4: the old RDP branch returned dp-accounting's float 6.433224116390997,
    below the 50-digit value 6.4332241163909982917 of the same bound."""
    mech = Gaussian(epsilon=2.0, delta=1e-5, sensitivity=1.0, calibration="rdp")
    d = 2.8023460440328627
    exact = _rdp_bound_exact(Fraction(mech.noise_multiplier) / Fraction(d), 1e-5)
    got = mech.privacy_map(d)
    assert got.delta == 1e-5
    assert mpmath.mpf(got.epsilon) >= exact
    assert got.epsilon <= float(exact) * (1 + 1e-14)


@settings(max_examples=12, deadline=None)
@given(
    eps=st.floats(min_value=0.05, max_value=10),
    delta=st.floats(min_value=1e-10, max_value=1e-2),
    sens=st.floats(min_value=1e-3, max_value=1e3),
    factor=st.floats(min_value=1.0, max_value=50.0, exclude_min=True),
)
def test_rdp_privacy_map_never_below_exact_bound(
    eps: float, delta: float, sens: float, factor: float
) -> None:
    mech = Gaussian(epsilon=eps, delta=delta, sensitivity=sens, calibration="rdp")
    d = sens * factor
    if d <= sens:
        return
    exact = _rdp_bound_exact(Fraction(mech.noise_multiplier) * Fraction(sens) / Fraction(d), delta)
    got = mech.privacy_map(d).epsilon
    assert mpmath.mpf(got) >= exact
    assert got >= eps
    # tight: within float rounding of the exact bound (or the declared eps, whichever is larger)
    assert got <= max(float(exact) * (1 + 1e-14), eps)


@settings(max_examples=15, deadline=None)
@given(
    calibration=st.sampled_from(["analytic", "rdp"]),
    eps=st.floats(min_value=0.05, max_value=10),
    delta=st.floats(min_value=1e-10, max_value=1e-2),
    sens=st.floats(min_value=1e-3, max_value=1e3),
    d1=st.floats(min_value=0.0, max_value=20.0),
    d2=st.floats(min_value=0.0, max_value=20.0),
)
def test_privacy_map_monotone_and_declared_at_sensitivity(
    calibration: str, eps: float, delta: float, sens: float, d1: float, d2: float
) -> None:
    mech = Gaussian(epsilon=eps, delta=delta, sensitivity=sens, calibration=calibration)  # type: ignore[arg-type]
    assert mech.privacy_map(sens) == ApproxDP(eps, delta) == mech.guarantee.budget
    lo, hi = sorted((d1 * sens, d2 * sens))
    a, b = mech.privacy_map(lo), mech.privacy_map(hi)
    assert a.delta == b.delta == delta
    assert a.epsilon <= b.epsilon
    if hi > sens:
        assert b.epsilon >= eps


def test_privacy_map_is_monotone_across_the_sensitivity() -> None:
    """Just above Δ the re-solved ε (calibrated with a 1e-9 margin) must not dip below ε."""
    for calibration in ("analytic", "rdp"):
        mech = Gaussian(epsilon=1.0, delta=1e-5, sensitivity=1.0, calibration=calibration)  # type: ignore[arg-type]
        up = math.nextafter(1.0, 2.0)
        assert mech.privacy_map(up).epsilon >= mech.privacy_map(1.0).epsilon == 1.0


@settings(max_examples=25, deadline=None)
@given(
    eps=st.floats(min_value=0.05, max_value=10),
    delta=st.floats(min_value=1e-10, max_value=1e-2),
    factor=st.floats(min_value=1.0, max_value=50.0, exclude_min=True),
)
def test_analytic_privacy_map_sound_at_exact_multiplier(
    eps: float, delta: float, factor: float
) -> None:
    """δ_BW(ε_map; cΔ/d) ≤ δ in 50-digit arithmetic at the exact multiplier (P6)."""
    mech = Gaussian(epsilon=eps, delta=delta, sensitivity=1.0)
    got = mech.privacy_map(factor).epsilon
    c = (
        mpmath.mpf(Fraction(mech.noise_multiplier).numerator)
        / Fraction(mech.noise_multiplier).denominator
        / mpmath.mpf(factor)
    )
    e = mpmath.mpf(got)
    bw = mpmath.ncdf(1 / (2 * c) - e * c) - mpmath.exp(e) * mpmath.ncdf(-1 / (2 * c) - e * c)
    assert bw <= delta


@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(min_value=0.05, max_value=10),
    coords=st.integers(min_value=1, max_value=10**6),
    factor=st.floats(min_value=1.0, max_value=100.0),
)
def test_realised_multiplier_at_distance_d_bounds_the_map_for_every_query_size(
    eps: float, coords: int, factor: float
) -> None:
    """P6 through calibration(n): sqrt(s² - 9) g / (d + f g) ≥ cΔ/d for d ≥ Δ (exact)."""
    mech = Gaussian(epsilon=eps, delta=1e-6, sensitivity=1.0)
    try:
        cal = mech.calibration(coords)
    except ValueError:
        return
    d = Fraction(factor)
    f = math.isqrt(coords - 1) + 1
    grid = Fraction(cal.grid)
    c = Fraction(mech.noise_multiplier)
    # (s² - 9) g² ≥ (c Δ (d + f g) / d)²  ⇔  realised multiplier ≥ cΔ/d
    assert (cal.s**2 - 9) * grid**2 * d**2 >= (c * (d + f * grid)) ** 2


def test_scale_beyond_the_exact_sampler_is_refused() -> None:
    """s > 2^24 (MAX_GAUSSIAN_S): the calibration refuses, and so does the sampler."""
    mech = Gaussian(epsilon=1e-3, delta=1e-5, sensitivity=1.0)
    assert mech.calibration(1000).s <= MAX_GAUSSIAN_S
    with pytest.raises(ValueError, match="split the query"):
        mech.calibration(2000)
    with pytest.raises(ValueError, match="split the query"):
        mech(np.zeros(2000))
    with pytest.raises(OverflowError, match="exceeds"):
        discrete_gaussian(MAX_GAUSSIAN_S + 1, 3, Randomness.from_seed(0))
    assert discrete_gaussian(MAX_GAUSSIAN_S, 3, Randomness.from_seed(0)).shape == (3,)


@pytest.mark.parametrize("calibration", ["analytic", "rdp"])
def test_privacy_map_at_huge_distance_terminates_with_inf(calibration: str) -> None:
    """gaussian.md G6: the analytic branch used to loop forever once ε exceeded the float range
    (the doubling search reached inf and never passed); now (inf, δ), like the RDP branch."""
    mech = Gaussian(epsilon=1.0, delta=1e-5, sensitivity=1.0, calibration=calibration)  # type: ignore[arg-type]
    assert mech.privacy_map(1e8).epsilon > 1e14
    for d in (1e160, 1e300, math.inf):
        got = mech.privacy_map(d)
        assert got.epsilon == math.inf and got.delta == 1e-5


# ------------------------------------------------------------------ G7: evaluating delta_BW


def _delta_bw_exact(c: float, eps: float, digits: int = 120) -> mpmath.mpf:
    """Balle-Wang delta(eps) at multiplier c, directly from the definition in mpmath."""
    with mpmath.workdps(digits):
        cm, em = mpmath.mpf(c), mpmath.mpf(eps)
        a, b = 1 / (2 * cm), em * cm
        return mpmath.ncdf(a - b) - mpmath.exp(em) * mpmath.ncdf(-a - b)


def test_analytic_delta_matches_high_precision() -> None:
    """analytic_gaussian_delta is within 1e-10 relative of delta_BW for eps in [1e-6, 1e29]
    (proofs/gaussian.md F2). The old float formula lost every digit at large eps (G7)."""
    rng = np.random.default_rng(20240607)
    worst = 0.0
    for _ in range(1500):
        eps = float(10 ** rng.uniform(-6, 29))
        z = float(rng.uniform(-38, 8))  # a - b, the region where delta is a float
        c = (-z + math.sqrt(z * z + 2 * eps)) / (2 * eps)  # solves 1/(2c) - eps c = z
        if not (c > 0 and math.isfinite(c)):
            continue
        exact = _delta_bw_exact(c, eps, digits=60 + int(math.log10(eps) + 6))
        if exact < 1e-300:
            continue
        got = analytic_gaussian_delta(c, epsilon=eps, sensitivity=1.0)
        worst = max(worst, abs(float((got - exact) / exact)))
    assert worst <= 1e-10


@pytest.mark.parametrize(
    "eps,delta",
    [
        (1e20, 1e-6),  # old code: true delta 1 (no privacy at all)
        (1e-3, 1e-300),
        (1e-12, 1e-50),  # old code: true delta 1.985 delta
        (1e-6, 1e-50),
        (1e-300, 0.5),
        (1.0, 1e-300),
        (50.0, 1e-12),
        (1e6, 1e-6),
        (1e12, 1e-2),
        (1e15, 1e-50),
        (1e28, 1e-300),  # old code: true delta 1
    ],
)
def test_analytic_calibration_is_sound_at_extreme_parameters(eps: float, delta: float) -> None:
    """The solved multiplier meets delta against a 400-digit delta_BW, for eps from 1e-300 to
    1e28 and delta from 0.5 to 1e-300 (G7: three of these cases broke the old evaluation)."""
    c = analytic_gaussian_sigma(epsilon=eps, delta=delta, sensitivity=1.0)
    assert math.isfinite(c) and c > 0
    assert _delta_bw_exact(c, eps, digits=400) <= delta


# ------------------------------------------------------------------ G8: parameter range


@pytest.mark.parametrize("calibration", ["analytic", "rdp"])
@pytest.mark.parametrize(
    "eps,delta",
    [(1e-300, 1e-6), (1e-6, 1e-6), (1e-4, 1e-300), (1e30, 1e-6), (1e300, 0.1)],
)
def test_gaussian_refusals_give_working_advice(eps: float, delta: float, calibration: str) -> None:
    """Parameters no query could be released with are refused by the constructor, and the
    advised epsilon constructs and draws (gaussian.md "Parameter range")."""
    import re

    with pytest.raises(ValueError, match=r"use epsilon (>=|<=)") as info:
        Gaussian(epsilon=eps, delta=delta, sensitivity=1.0, calibration=calibration)  # type: ignore[arg-type]
    found = re.search(r"use epsilon (>=|<=) ([0-9.e+-]+)", str(info.value))
    assert found is not None
    advised = float(found.group(2))
    mech = Gaussian(epsilon=advised, delta=delta, sensitivity=1.0, calibration=calibration)  # type: ignore[arg-type]
    out = mech(np.array([1.0]))  # the constructor's check (and advice) is for 1 coordinate
    assert out.shape == (1,) and np.all(np.isfinite(out))
    # a larger query may need more: calibration(n) refuses it, before any noise, with advice
    # for that size, and the advised epsilon works for it
    try:
        mech.calibration(3)
    except ValueError as exc:
        bigger = re.search(r"use epsilon >= ([0-9.e+-]+)", str(exc))
        assert bigger is not None
        again = Gaussian(
            epsilon=float(bigger.group(1)),
            delta=delta,
            sensitivity=1.0,
            calibration=calibration,  # type: ignore[arg-type]
        )
        assert again(np.zeros(3)).shape == (3,)


def test_huge_epsilon_used_to_clamp_inputs() -> None:
    """The largest accepted epsilon still represents inputs of the sensitivity's size."""
    mech = Gaussian(epsilon=1e28, delta=1e-6, sensitivity=1.0, seed=0)
    out = mech(np.array([0.0, 1.0, 2.0, -1.0]))
    np.testing.assert_allclose(out, [0.0, 1.0, 2.0, -1.0], atol=1e-12)
    with pytest.raises(ValueError, match="clamped"):
        Gaussian(epsilon=1e50, delta=1e-6, sensitivity=1.0)
