"""The grid Gaussian mechanism: calibration (analytic and RDP), zCDP, lattice outputs, scale."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms.budgets import ApproxDP
from mechanisms.gaussian import Gaussian, analytic_gaussian_delta, analytic_gaussian_sigma
from mechanisms.lattice import GRID_SHARE
from mechanisms.sampling import MAX_GAUSSIAN_S
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
