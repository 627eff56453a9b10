"""Identity-embedding mechanisms (mechanisms/identity.py): domain, sensitivity, noise, audits.

What is tried here, with fixed seeds and alpha = 1e-6 (tests/stats_helpers.py):
* the analytic sensitivities (2 sqrt(d), 2 c d, L2 2) and that the domain map really bounds
  every pair of inputs, float errors included (hypothesis);
* the noise is exactly the calibrated discrete Laplace / Gaussian, at scale ~ sensitivity/eps,
  with power controls at half and double the scale;
* black-box audits on antipodal unit vectors x, -x (the worst case) for Laplace, Gaussian and
  vMF: the lower bound stays below the claim, and a half-noise / double-kappa variant is flagged;
* the paper-compatible (measured-sensitivity) mode is not DP, says so, and is caught by the audit;
* the vMF sampler matches the vMF law: mean resultant length A_d(kappa), the exact angular law
  (KS), and the mean direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import mpmath
import numpy as np
import numpy.typing as npt
import pytest
from dp_accounting import dp_event
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import integrate, stats

from mechanisms.accounting import gaussian_event, pure_event
from mechanisms.audit import (
    AuditPlan,
    AuditResult,
    BatchMechanism,
    ThresholdEvent,
    audit_mechanism,
    choose_threshold_event,
)
from mechanisms.budgets import ZCDP, ApproxDP, PureDP, ceil_float, compose_basic
from mechanisms.gaussian import Gaussian
from mechanisms.identity import (
    FLOAT_MARGIN,
    MAX_DIM,
    IdentityGaussian,
    IdentityLaplace,
    IdentityVMF,
    expected_cosine,
    vmf_mean_cosine,
)
from mechanisms.laplace import Laplace
from mechanisms.rng import Randomness
from scripts.identity_table import table
from tests.stats_helpers import ALPHA, binned_discrete_laplace_test, chi2_goodness_of_fit

Array = npt.NDArray[Any]
FloatArray = npt.NDArray[np.float64]
Z_CRIT = float(stats.norm.isf(ALPHA / 2))  # two-sided normal critical value at alpha = 1e-6


def _unit(v: npt.ArrayLike) -> FloatArray:
    a = np.asarray(v, dtype=np.float64)
    return np.asarray(a / np.linalg.norm(a), dtype=np.float64)


def _random_unit(dim: int, seed: int) -> FloatArray:
    return _unit(Randomness.from_seed(seed).generator.standard_normal(dim))


# ------------------------------------------------------------------------------------------
# Sensitivity and the domain map
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3, 128, 512, 1000])
def test_unit_sphere_sensitivity_is_two_root_d(dim: int) -> None:
    mech = IdentityLaplace(epsilon=1.0, dim=dim)
    assert mech.sensitivity == 2 * math.sqrt(dim)
    assert mech.domain == "unit_sphere" and mech.is_dp
    # the noise is calibrated to the same value plus the 2^-20 float margin, no more
    cal = Fraction(mech.calibrated_sensitivity)
    assert Fraction(mech.sensitivity) < cal <= Fraction(mech.sensitivity) * (1 + 2 * FLOAT_MARGIN)


@pytest.mark.parametrize(("clip", "dim"), [(0.25, 16), (1.0, 512), (3.0, 1)])
def test_clip_sensitivity_is_two_c_d(clip: float, dim: int) -> None:
    mech = IdentityLaplace(epsilon=2.0, dim=dim, domain="clip", clip=clip)
    assert mech.sensitivity == 2 * clip * dim
    assert "2*c*d" in mech.guarantee.sensitivity


def test_worst_case_pair_attains_the_sensitivity() -> None:
    """x = (1,...,1)/sqrt(d) and -x are unit vectors at L1 distance exactly 2 sqrt(d)."""
    d = 64
    x = np.ones(d) / 8.0
    mech = IdentityLaplace(epsilon=1.0, dim=d)
    px, py = mech.preprocess(x), mech.preprocess(-x)
    assert float(np.abs(px - py).sum()) == mech.sensitivity == 16.0


def _exact_l1(a: FloatArray, b: FloatArray) -> Fraction:
    return sum(
        (abs(Fraction(float(u)) - Fraction(float(v))) for u, v in zip(a, b, strict=True)),
        Fraction(0),
    )


_finite = st.floats(
    min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False, allow_subnormal=True
)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), dim=st.integers(min_value=1, max_value=40))
def test_domain_map_bounds_every_pair_exactly(data: st.DataObject, dim: int) -> None:
    """For ANY two finite, nonzero float inputs, the normalised floats are at exact L1 distance
    <= the calibrated sensitivity, and each has exact L2 norm <= 1 + 2^-20."""
    a = data.draw(hnp.arrays(np.float64, dim, elements=_finite))
    b = data.draw(hnp.arrays(np.float64, dim, elements=_finite))
    assume(np.any(a != 0.0) and np.any(b != 0.0))
    mech = IdentityLaplace(epsilon=1.0, dim=dim)
    ua, ub = mech.preprocess(a), mech.preprocess(b)
    assert _exact_l1(ua, ub) <= Fraction(mech.calibrated_sensitivity)
    for u in (ua, ub):
        sq = sum((Fraction(float(t)) ** 2 for t in u), Fraction(0))
        assert sq <= (1 + FLOAT_MARGIN) ** 2


@settings(max_examples=100, deadline=None)
@given(data=st.data(), dim=st.integers(min_value=1, max_value=40))
def test_clip_domain_bounds_every_pair_exactly(data: st.DataObject, dim: int) -> None:
    c = data.draw(st.floats(min_value=1e-6, max_value=1e6))
    a = data.draw(hnp.arrays(np.float64, dim, elements=_finite))
    b = data.draw(hnp.arrays(np.float64, dim, elements=_finite))
    mech = IdentityLaplace(epsilon=1.0, dim=dim, domain="clip", clip=c)
    assert _exact_l1(mech.preprocess(a), mech.preprocess(b)) <= Fraction(
        mech.calibrated_sensitivity
    )


def test_zero_vectors_are_refused_with_a_clear_error() -> None:
    for mech in (
        IdentityLaplace(epsilon=1.0, dim=4, seed=0),
        IdentityGaussian(epsilon=1.0, delta=1e-6, dim=4, seed=0),
        IdentityVMF(epsilon=1.0, dim=4, seed=0),
    ):
        with pytest.raises(ValueError, match="all zeros"):
            mech(np.zeros(4))
        batch = np.ones((5, 4))
        batch[3] = 0.0
        with pytest.raises(ValueError, match=r"row\(s\) 3 "):
            mech.batch(batch)
    # the clip domain has no direction to take, so zero is a valid input there
    clip = IdentityLaplace(epsilon=1.0, dim=4, domain="clip", clip=1.0, renormalize=False, seed=0)
    assert clip(np.zeros(4)).shape == (4,)


def test_tiny_and_huge_inputs_normalise_without_underflow() -> None:
    mech = IdentityLaplace(epsilon=1.0, dim=3)
    for scale in (1e-310, 1e-200, 1e200, 1e308):
        u = mech.preprocess(np.array([scale, -scale, 0.0]))
        assert np.allclose(u, [2**-0.5, -(2**-0.5), 0.0], rtol=1e-15)


def test_bad_inputs_and_parameters_are_refused() -> None:
    mech = IdentityLaplace(epsilon=1.0, dim=4, seed=0)
    with pytest.raises(ValueError, match="4 coordinates"):
        mech(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        mech(np.array([1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        mech(np.ones((2, 2, 4)))
    with pytest.raises(ValueError, match="empty"):
        mech.batch(np.ones((0, 4)))
    with pytest.raises(ValueError, match="batch expects"):
        mech.batch(np.ones(4))
    for bad_eps in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="epsilon"):
            IdentityLaplace(epsilon=bad_eps, dim=4)
    with pytest.raises(TypeError):
        IdentityLaplace(epsilon=True, dim=4)
    for bad_dim in (0, MAX_DIM + 1):
        with pytest.raises(ValueError, match="dim"):
            IdentityLaplace(epsilon=1.0, dim=bad_dim)
    with pytest.raises(TypeError, match="dim"):
        IdentityLaplace(epsilon=1.0, dim=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="domain"):
        IdentityLaplace(epsilon=1.0, dim=4, domain="ball")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip"):
        IdentityLaplace(epsilon=1.0, dim=4, domain="clip")
    with pytest.raises(ValueError, match="clip"):
        IdentityLaplace(epsilon=1.0, dim=4, clip=1.0)
    with pytest.raises(ValueError, match="clip"):
        IdentityLaplace(epsilon=1.0, dim=4, domain="clip", clip=-1.0)
    with pytest.raises(TypeError, match="renormalize"):
        IdentityLaplace(epsilon=1.0, dim=4, renormalize=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either"):
        IdentityLaplace(epsilon=1.0, dim=4, seed=1, randomness=Randomness.from_seed(1))
    with pytest.raises(ValueError, match="delta"):
        IdentityGaussian(epsilon=1.0, delta=0.0, dim=4)
    with pytest.raises(ValueError, match="delta"):
        IdentityGaussian(epsilon=1.0, delta=1.0, dim=4)
    with pytest.raises(ValueError, match="dim"):
        IdentityVMF(epsilon=1.0, dim=1)
    with pytest.raises(ValueError, match="measured_sensitivity"):
        IdentityLaplace.paper_compatible(epsilon=1.0, dim=4, measured_sensitivity=0.0)


@pytest.mark.parametrize(
    "factory",
    [
        lambda r: IdentityLaplace(epsilon=1.0, dim=16, randomness=r),
        lambda r: IdentityLaplace(epsilon=1.0, dim=16, domain="clip", clip=0.3, randomness=r),
        lambda r: IdentityGaussian(epsilon=1.0, delta=1e-6, dim=16, randomness=r),
        lambda r: IdentityVMF(epsilon=1.0, dim=16, randomness=r),
    ],
    ids=["laplace", "laplace-clip", "gaussian", "vmf"],
)
def test_shapes_and_unit_norm_outputs(factory: Callable[[Randomness], Any]) -> None:
    mech = factory(Randomness.from_seed(5))
    x = _random_unit(16, 1) * 3.7
    single = mech(x)
    assert single.shape == (16,)
    assert abs(np.linalg.norm(single) - 1.0) < 1e-12
    batch = mech(np.stack([x, -x, 2 * x]))
    assert batch.shape == (3, 16)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-12)
    assert mech.batch(np.stack([x] * 4)).shape == (4, 16)
    assert mech.seeded  # built from a seeded Randomness: receipts must say so


def test_unrenormalised_laplace_outputs_are_grid_points_off_the_sphere() -> None:
    mech = IdentityLaplace(epsilon=1.0, dim=16, renormalize=False, seed=2)
    y = mech.batch(np.tile(_random_unit(16, 3), (50, 1)))
    g = float(mech.calibration().grid)
    assert math.log2(g).is_integer()
    assert np.array_equal(y / g, np.round(y / g))
    assert np.all(np.linalg.norm(y, axis=1) > 2.0)  # noise scale ~ 8 per coordinate


def test_zero_noisy_output_renormalises_to_a_random_direction() -> None:
    """dim = 1, small eps: the grid output is exactly 0 now and then (P ~ 7e-4); renormalising
    must still give a unit output (a random sign, drawn independently of the data), never NaN."""
    x = np.ones((100_000, 1))
    raw = IdentityLaplace(epsilon=0.5, dim=1, renormalize=False, seed=9).batch(x)
    assert np.count_nonzero(raw == 0.0) > 10
    out = IdentityLaplace(epsilon=0.5, dim=1, seed=9).batch(x)
    assert np.all(np.isin(out, [-1.0, 1.0]))
    zero_rows = raw[:, 0] == 0.0
    assert len(np.unique(out[zero_rows])) == 2  # both signs occur among the zero rows


# ------------------------------------------------------------------------------------------
# Noise scale: exactly the calibrated law, at sensitivity / epsilon
# ------------------------------------------------------------------------------------------


def _laplace_noise(mech: IdentityLaplace, rows: int, grid: Fraction) -> npt.NDArray[np.int64]:
    """Integer noise (in grid steps of ``grid``) around the grid-aligned input e1."""
    x = np.zeros(mech.dim)
    x[0] = 1.0
    y = mech.batch(np.tile(x, (rows, 1)))
    z = (y - x) / float(grid)
    assert np.array_equal(z, np.round(z))
    return z.astype(np.int64).ravel()


def test_laplace_noise_is_the_calibrated_discrete_laplace_at_delta_over_eps() -> None:
    d, eps = 8, 1.0
    mech = IdentityLaplace(epsilon=eps, dim=d, renormalize=False, seed=11)
    cal = mech.calibration()
    z = _laplace_noise(mech, 25_000, cal.grid)
    assert binned_discrete_laplace_test(z, cal.t) > ALPHA
    # the realised scale t*g is sensitivity/eps up to the declared slack: no over-noising
    nominal = mech.sensitivity / eps
    assert nominal <= cal.scale <= nominal * (1 + 1 / 256) * (1 + 2**-19) + float(cal.grid)
    # and the empirical mean |noise| agrees with the exact discrete-Laplace value 2q/(1 - q^2)
    q = math.exp(-1.0 / cal.t)
    abs_noise = np.abs(z) * float(cal.grid)
    exact = 2 * q / (1 - q * q) * float(cal.grid)
    se = float(np.std(abs_noise)) / math.sqrt(z.size)
    assert abs(float(np.mean(abs_noise)) - exact) < Z_CRIT * se
    assert abs(exact / nominal - 1.0) < 0.005


@pytest.mark.parametrize("factor", [2.0, 0.5], ids=["half-the-noise", "double-the-noise"])
def test_laplace_noise_scale_test_has_power(factor: float) -> None:
    """Noise at half (eps x 2) or double (eps / 2) the scale fails the same test."""
    right = IdentityLaplace(epsilon=1.0, dim=8, renormalize=False, seed=12)
    wrong = IdentityLaplace(epsilon=factor, dim=8, renormalize=False, seed=12)
    cal = right.calibration()
    assert wrong.calibration().grid == cal.grid
    z = _laplace_noise(wrong, 25_000, cal.grid)
    assert binned_discrete_laplace_test(z, cal.t) < ALPHA


def test_clip_domain_noise_is_centred_on_the_clipped_input() -> None:
    c, d, eps = 0.5, 4, 2.0
    mech = IdentityLaplace(epsilon=eps, dim=d, domain="clip", clip=c, renormalize=False, seed=13)
    nominal = 2 * c * d / eps
    g = float(mech.calibration().grid)
    assert nominal <= mech.scale <= nominal * (1 + 1 / 256) * (1 + 2**-19) + g
    x = np.array([3.0, -3.0, 0.125, 0.0])
    y = mech.batch(np.tile(x, (100_000, 1)))
    se = math.sqrt(2.0) * mech.scale / math.sqrt(y.shape[0])
    assert np.all(np.abs(y.mean(axis=0) - np.array([0.5, -0.5, 0.125, 0.0])) < Z_CRIT * se)


def _discrete_gaussian_test(z: npt.NDArray[np.int64], s: int) -> float:
    """Chi-square p-value of integer draws against P[z] proportional to exp(-z^2 / (2 s^2))."""
    support = np.arange(-12 * s, 12 * s + 1)
    pmf = np.exp(-(support.astype(np.float64) ** 2) / (2.0 * s * s))
    cdf = np.cumsum(pmf / pmf.sum())
    edges = np.unique(np.round(np.linspace(-4.5, 4.5, 61) * s).astype(np.int64))
    cell_cdf = cdf[edges + 12 * s]
    probs = np.diff(np.concatenate([[0.0], cell_cdf, [1.0]]))
    counts = np.bincount(np.searchsorted(edges, z, side="left"), minlength=probs.size)
    return chi2_goodness_of_fit(counts.astype(np.int64), probs)


def _gaussian_noise(mech: IdentityGaussian, rows: int, grid: Fraction) -> npt.NDArray[np.int64]:
    x = np.zeros(mech.dim)
    x[0] = 1.0
    y = mech.batch(np.tile(x, (rows, 1)))
    z = (y - x) / float(grid)
    assert np.array_equal(z, np.round(z))
    return z.astype(np.int64).ravel()


def test_gaussian_noise_is_the_calibrated_discrete_gaussian() -> None:
    mech = IdentityGaussian(epsilon=1.0, delta=1e-6, dim=4, renormalize=False, seed=14)
    cal = mech.calibration()
    z = _gaussian_noise(mech, 50_000, cal.grid)
    assert _discrete_gaussian_test(z, cal.s) > ALPHA
    # sigma is the analytic-Gaussian sigma for L2 sensitivity 2 (to the grid/margin slack)
    from mechanisms.gaussian import analytic_gaussian_sigma

    nominal = analytic_gaussian_sigma(epsilon=1.0, delta=1e-6, sensitivity=2.0)
    assert nominal <= cal.sigma <= nominal * (1 + 1 / 256) * (1 + 2**-19) + float(cal.grid)


@pytest.mark.parametrize("epsilon", [2.0, 0.5], ids=["less-noise", "more-noise"])
def test_gaussian_noise_test_has_power(epsilon: float) -> None:
    right = IdentityGaussian(epsilon=1.0, delta=1e-6, dim=4, renormalize=False, seed=15)
    wrong = IdentityGaussian(epsilon=epsilon, delta=1e-6, dim=4, renormalize=False, seed=15)
    cal, wcal = right.calibration(), wrong.calibration()
    z = _gaussian_noise(wrong, 50_000, wcal.grid)
    # express the wrong draws in the right grid's steps (grids are powers of two)
    ratio = wcal.grid / cal.grid
    zz = np.round(z * float(ratio)).astype(np.int64)
    assert _discrete_gaussian_test(zz, cal.s) < ALPHA


# ------------------------------------------------------------------------------------------
# Guarantees, privacy maps, events
# ------------------------------------------------------------------------------------------


def test_laplace_guarantee_privacy_map_and_event() -> None:
    mech = IdentityLaplace(epsilon=0.5, dim=128)
    g = mech.guarantee
    assert g.is_dp and g.budget == PureDP(0.5)
    text = g.statement()
    assert "any two faces" in text and "2*sqrt(128)" in text and "post-processing" in text
    raw = IdentityLaplace(epsilon=0.5, dim=4, renormalize=False)
    assert "renormalised" not in raw.guarantee.note
    assert mech.privacy_map(mech.sensitivity) == PureDP(0.5)
    assert mech.privacy_map(1e9) == PureDP(0.5)  # the domain caps every distance
    half = mech.privacy_map(mech.sensitivity / 2).epsilon
    assert 0.25 <= half < 0.26
    assert mech.event() == pure_event(0.5)


def test_paper_compatible_mode_is_not_dp_and_says_so() -> None:
    mech = IdentityLaplace.paper_compatible(epsilon=6.0, dim=512, measured_sensitivity=9.3)
    g = mech.guarantee
    assert g.is_dp is False and mech.is_dp is False
    assert g.statement().startswith("NOT a differential-privacy guarantee")
    assert "NOT a differential-privacy guarantee" in g.note
    assert "MEASURED" in g.sensitivity
    assert mech.sensitivity == 9.3
    assert isinstance(mech.event(), dp_event.NonPrivateDpEvent)
    with pytest.raises(ValueError, match="not differential privacy"):
        mech.privacy_map(1.0)
    # it reproduces the book: raw inputs (no normalisation) plus Lap(measured / eps)
    assert mech.scale == pytest.approx(9.3 / 6.0, rel=0.005)
    x = np.full(512, 3.0)
    assert np.array_equal(mech.preprocess(x), x)


def test_gaussian_guarantee_zcdp_and_event() -> None:
    mech = IdentityGaussian(epsilon=1.0, delta=1e-6, dim=512)
    assert mech.sensitivity == 2.0
    assert mech.guarantee.budget == ApproxDP(1.0, 1e-6)
    assert "zCDP" in mech.guarantee.note and "any two faces" in mech.guarantee.neighbouring
    cal = mech.calibration()
    rho = mech.zcdp().rho
    realised = float(cal.relaxed_sensitivity) ** 2 / (2 * cal.sigma**2)
    assert realised <= rho <= realised * 1.001  # size-independent bound, never below realised
    assert float(cal.relaxed_sensitivity) >= 2.0
    # 100 releases of one person: zCDP composition beats adding up the epsilons by far
    total = compose_basic([mech.zcdp()] * 100)
    assert isinstance(total, ZCDP)
    eps_zcdp = total.to_approx(1e-6).epsilon
    assert eps_zcdp < 0.3 * 100 * 1.0
    event = mech.event()
    assert isinstance(event, dp_event.GaussianDpEvent)
    assert event.noise_multiplier == pytest.approx(cal.sigma / 2.0, rel=0.005)
    assert event.noise_multiplier <= cal.sigma / float(cal.relaxed_sensitivity)
    assert mech.privacy_map(2.0) == ApproxDP(1.0, 1e-6)


@pytest.mark.parametrize("calibration", ["analytic", "rdp"])
@pytest.mark.parametrize("dim", [1, 2, 128, 256, 512, 4097])
@pytest.mark.parametrize("eps,delta", [(0.5, 1e-6), (1.0, 1e-6), (6.0, 1e-5), (50.0, 1e-9)])
def test_gaussian_event_multiplier_is_the_proven_one(
    eps: float, delta: float, dim: int, calibration: str
) -> None:
    """event()'s multiplier m is the largest float with m <= sqrt(s² - 9) g / D' (exact).

    gaussian.md P4 transfers the continuous Gaussian's privacy profile to the discrete noise
    for the ratio s_1 g / D' with s_1 = sqrt(s² - 9), not for s g / D'. The old event used
    sigma / ceil(D') = s g / D' (rounded down), which exceeds the proven ratio by about
    4.5 / s² relative (3.7e-9 at d = 512, eps = 1; always many float steps): this test failed
    on it.
    """
    mech = IdentityGaussian(epsilon=eps, delta=delta, dim=dim, calibration=calibration)  # type: ignore[arg-type]
    cal = mech.calibration()
    event = mech.event()
    assert isinstance(event, dp_event.GaussianDpEvent)
    m = event.noise_multiplier
    bound = (cal.s**2 - 9) * cal.grid**2  # m² D'² <= (s² - 9) g²
    d2 = cal.relaxed_sensitivity**2
    assert Fraction(m) ** 2 * d2 <= bound
    assert Fraction(math.nextafter(m, math.inf)) ** 2 * d2 > bound  # and the largest such float
    # never below the calibrated multiplier (P5), strictly below the unproven s g / D'
    assert m >= mech._noise.noise_multiplier
    assert Fraction(m) < cal.s * cal.grid / cal.relaxed_sensitivity
    old = gaussian_event(cal.sigma, ceil_float(cal.relaxed_sensitivity)).noise_multiplier
    assert Fraction(old) ** 2 * d2 > bound  # the old multiplier was not covered


def test_vmf_kappa_metric_epsilon_and_guarantee() -> None:
    for eps in (0.5, 1.0, 6.0, 500.0):
        mech = IdentityVMF(epsilon=eps, dim=512)
        assert mech.kappa == eps / 2
        assert mech.metric_epsilon(2.0) == eps
        assert mech.metric_epsilon(0.5) == pytest.approx(eps / 4, rel=1e-15)
        assert mech.metric_epsilon(0.5) >= eps / 4
        assert mech.privacy_map(1.0) == PureDP(mech.metric_epsilon(1.0))
        assert mech.event() == pure_event(eps)
    mech = IdentityVMF(epsilon=1.0, dim=8)
    with pytest.raises(ValueError, match=r"<= 2"):
        mech.metric_epsilon(2.5)
    g = mech.guarantee
    assert g.budget == PureDP(1.0)
    assert "floating point" in g.note and "ideal" in g.note and "2^-20" in g.note
    assert "metric" in g.neighbouring


# ------------------------------------------------------------------------------------------
# Black-box audits on antipodal unit vectors x, -x (the worst case: L2 distance 2)
# ------------------------------------------------------------------------------------------

Factory = Callable[[Randomness], BatchMechanism]

AUDIT_D = 4
AUDIT_X = np.full(AUDIT_D, 0.5)  # unit vector; x and -x are at L1 distance 4 = 2 sqrt(4)
VMF_D = 3
VMF_X = _unit(np.ones(VMF_D))


def _clipped_projection(y: Array) -> Array:
    """Log-likelihood ratio of Laplace noise for the pair (x, -x), x = 0.5 * ones: the optimal
    statistic (sum of coordinates clipped to [-0.5, 0.5])."""
    return np.asarray(np.clip(y, -0.5, 0.5).sum(axis=1))


def _projection(x: FloatArray) -> Callable[[Array], Array]:
    def projection_onto_x(y: Array) -> Array:
        return np.asarray(y @ x)

    return projection_onto_x


def _chooser(statistic: Callable[[Array], Array]) -> Callable[[Array, Array, AuditPlan], Any]:
    def chooser(c0: Array, c1: Array, plan: AuditPlan) -> ThresholdEvent:
        return choose_threshold_event(c0, c1, plan, statistic=statistic)

    return chooser


def _laplace(*, epsilon: float = 1.0, half: bool = False, renormalize: bool = False) -> Factory:
    def factory(r: Randomness) -> IdentityLaplace:
        mech = IdentityLaplace(epsilon=epsilon, dim=AUDIT_D, renormalize=renormalize, randomness=r)
        if half:  # the classic bug: noise calibrated to half the sensitivity
            mech._noise = Laplace(
                epsilon=epsilon, sensitivity=mech.calibrated_sensitivity / 2, randomness=r
            )
        return mech

    return factory


def _gaussian(*, half: bool = False) -> Factory:
    def factory(r: Randomness) -> IdentityGaussian:
        mech = IdentityGaussian(
            epsilon=1.0, delta=1e-5, dim=AUDIT_D, renormalize=False, randomness=r
        )
        if half:
            mech._noise = Gaussian(
                epsilon=1.0, delta=1e-5, sensitivity=mech.calibrated_sensitivity / 2, randomness=r
            )
        return mech

    return factory


def _vmf(*, dim: int = VMF_D, double_kappa: bool = False) -> Factory:
    def factory(r: Randomness) -> IdentityVMF:
        mech = IdentityVMF(epsilon=1.0, dim=dim, randomness=r)
        if double_kappa:  # the bug kappa = eps instead of eps / 2
            mech._kappa = 1.0
        return mech

    return factory


def _laplace_pair_loss() -> float:
    """Exact loss of the grid Laplace on the grid-aligned pair (x, -x): L1 distance / (t g)."""
    return 4.0 / IdentityLaplace(epsilon=1.0, dim=AUDIT_D).scale


def _audit_laplace(factory: Factory, n: int, seed: int) -> AuditResult:
    return audit_mechanism(
        factory,
        AUDIT_X,
        -AUDIT_X,
        n=n,
        seed=seed,
        claimed=PureDP(1.0),
        chooser=_chooser(_clipped_projection),
    )


def _audit_gaussian(factory: Factory, n: int, seed: int) -> AuditResult:
    return audit_mechanism(
        factory,
        AUDIT_X,
        -AUDIT_X,
        n=n,
        seed=seed,
        claimed=ApproxDP(1.0, 1e-5),
        chooser=_chooser(_projection(AUDIT_X)),
    )


def _audit_vmf(factory: Factory, x: FloatArray, n: int, seed: int) -> AuditResult:
    return audit_mechanism(
        factory, x, -x, n=n, seed=seed, claimed=PureDP(1.0), chooser=_chooser(_projection(x))
    )


def test_audit_pairs_are_worst_case_neighbours() -> None:
    assert np.linalg.norm(AUDIT_X) == 1.0 and np.linalg.norm(VMF_X) == pytest.approx(1.0)
    assert np.abs(AUDIT_X - (-AUDIT_X)).sum() == IdentityLaplace(epsilon=1, dim=4).sensitivity
    assert np.linalg.norm(VMF_X - (-VMF_X)) == pytest.approx(2.0)
    exact = _laplace_pair_loss()
    assert 0.99 < exact <= 1.0


@pytest.mark.parametrize("seed", [1, 2])
def test_laplace_audit_respects_claim(seed: int) -> None:
    res = _audit_laplace(_laplace(), 100_000, seed)
    assert not res.violates, str(res)
    assert res.epsilon_lower_bound <= _laplace_pair_loss()
    assert res.epsilon_lower_bound > 0.7, str(res)  # the audit is close to the truth


def test_laplace_audit_renormalised_output_respects_claim() -> None:
    res = _audit_laplace(_laplace(renormalize=True), 100_000, 3)
    assert not res.violates, str(res)


@pytest.mark.parametrize(
    "factory", [_laplace(half=True), _laplace(epsilon=2.0)], ids=["half-sensitivity", "eps-x2"]
)
def test_laplace_with_half_the_noise_is_flagged(factory: Factory) -> None:
    res = _audit_laplace(factory, 100_000, 4)
    assert res.violates and res.epsilon_lower_bound > 1.5, str(res)


def test_paper_compatible_measured_sensitivity_is_caught_by_the_audit() -> None:
    """A sensitivity measured on close faces (here 2, half the true 4) under-noises the
    antipodal pair: the audit refutes the nominal eps = 1."""

    def factory(r: Randomness) -> IdentityLaplace:
        return IdentityLaplace.paper_compatible(
            epsilon=1.0, dim=AUDIT_D, measured_sensitivity=2.0, randomness=r
        )

    res = _audit_laplace(factory, 100_000, 5)
    assert res.violates and res.epsilon_lower_bound > 1.5, str(res)


@pytest.mark.parametrize("seed", [1, 2])
def test_gaussian_audit_respects_claim(seed: int) -> None:
    res = _audit_gaussian(_gaussian(), 200_000, seed)
    assert not res.violates, str(res)
    assert res.epsilon_lower_bound > 0.2, str(res)


def test_gaussian_with_half_the_noise_is_flagged() -> None:
    res = _audit_gaussian(_gaussian(half=True), 200_000, 3)
    assert res.violates, str(res)


@pytest.mark.parametrize("seed", [1, 2])
def test_vmf_audit_respects_claim(seed: int) -> None:
    res = _audit_vmf(_vmf(), VMF_X, 100_000, seed)
    assert not res.violates, str(res)
    assert res.epsilon_lower_bound > 0.6, str(res)


def test_vmf_audit_in_higher_dimension_respects_claim() -> None:
    """d = 16 uses scipy's rejection sampler (d = 3 has a closed form)."""
    x = _random_unit(16, 21)
    res = _audit_vmf(_vmf(dim=16), x, 100_000, 3)
    assert not res.violates, str(res)
    assert res.epsilon_lower_bound > 0.2, str(res)


def test_vmf_with_double_kappa_is_flagged() -> None:
    """d = 3, where the loss 2 kappa (x . y) reaches its maximum often enough to be seen with
    1e5 draws. (In d = 16 the projection concentrates near 0 and a 1e5-draw audit cannot reach
    past ~1.1 even for kappa doubled; there the law tests below carry the power control.)"""
    res = _audit_vmf(_vmf(double_kappa=True), VMF_X, 100_000, 4)
    assert res.violates and res.epsilon_lower_bound > 1.4, str(res)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [31, 32])
def test_identity_audits_large(seed: int) -> None:
    ok = _audit_laplace(_laplace(), 1_000_000, seed)
    assert not ok.violates and 0.85 < ok.epsilon_lower_bound <= _laplace_pair_loss(), str(ok)
    bad = _audit_laplace(_laplace(half=True), 1_000_000, seed + 100)
    assert bad.violates and bad.epsilon_lower_bound > 1.7, str(bad)

    ok = _audit_gaussian(_gaussian(), 1_000_000, seed)
    assert not ok.violates and ok.epsilon_lower_bound > 0.4, str(ok)
    bad = _audit_gaussian(_gaussian(half=True), 1_000_000, seed + 100)
    assert bad.violates and bad.epsilon_lower_bound > 1.2, str(bad)

    ok = _audit_vmf(_vmf(), VMF_X, 1_000_000, seed)
    assert not ok.violates and ok.epsilon_lower_bound > 0.8, str(ok)
    bad = _audit_vmf(_vmf(double_kappa=True), VMF_X, 1_000_000, seed + 100)
    assert bad.violates and bad.epsilon_lower_bound > 1.6, str(bad)


# ------------------------------------------------------------------------------------------
# The vMF sampler matches the von Mises-Fisher law
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dim", "kappa"), [(2, 0.5), (3, 0.25), (5, 3.0), (128, 25.0), (128, 250.0), (512, 0.5)]
)
def test_vmf_mean_cosine_formula_matches_mpmath(dim: int, kappa: float) -> None:
    mpmath.mp.dps = 40
    exact = mpmath.besseli(dim / 2, kappa) / mpmath.besseli(dim / 2 - 1, kappa)
    assert vmf_mean_cosine(kappa, dim) == pytest.approx(float(exact), rel=1e-11)


def _vmf_draws(eps: float, dim: int, n: int, seed: int) -> tuple[FloatArray, FloatArray]:
    mu = _random_unit(dim, seed + 1000)
    mech = IdentityVMF(epsilon=eps, dim=dim, seed=seed)
    y = mech.batch(np.tile(mu * 5.0, (n, 1)))  # scaled input: normalised first
    return mu, y


@pytest.mark.parametrize(("dim", "eps"), [(3, 1.0), (16, 6.0), (128, 50.0)])
def test_vmf_mean_resultant_length_is_a_d_of_kappa(dim: int, eps: float) -> None:
    n = 40_000 if dim < 128 else 10_000
    mu, y = _vmf_draws(eps, dim, n, seed=41)
    w = y @ mu
    se = float(np.std(w, ddof=1)) / math.sqrt(n)
    target = vmf_mean_cosine(eps / 2, dim)
    assert abs(float(w.mean()) - target) < Z_CRIT * se
    # power: the same test rejects kappa = eps (the factor-two slip)
    assert abs(float(w.mean()) - vmf_mean_cosine(eps, dim)) > Z_CRIT * se
    # mean direction: E[y] = A_d(kappa) mu coordinate-wise (the rotation to mu is right)
    se_vec = np.std(y, axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(y.mean(axis=0) - target * mu) < Z_CRIT * se_vec)


def _angle_cdf(kappa: float, dim: int) -> Callable[[FloatArray], FloatArray]:
    """CDF of the angle theta = arccos(mu . y) under vMF: density ~ exp(k cos t) sin^(d-2) t."""
    grid = np.linspace(0.0, math.pi, 20_001)

    def dens(t: FloatArray) -> FloatArray:
        return np.asarray(np.exp(kappa * (np.cos(t) - 1.0)) * np.sin(t) ** (dim - 2))

    cum = integrate.cumulative_simpson(dens(grid), x=grid, initial=0.0)
    cum /= cum[-1]

    def cdf(t: FloatArray) -> FloatArray:
        return np.asarray(np.interp(t, grid, cum))

    return cdf


@pytest.mark.parametrize(("dim", "eps"), [(2, 1.0), (3, 2.0), (16, 6.0)])
def test_vmf_angle_follows_the_exact_law(dim: int, eps: float) -> None:
    mu, y = _vmf_draws(eps, dim, 40_000, seed=43)
    theta = np.arccos(np.clip(y @ mu, -1.0, 1.0))
    assert stats.kstest(theta, _angle_cdf(eps / 2, dim)).pvalue > ALPHA
    # power: the law for kappa = eps is rejected on the same draws
    assert stats.kstest(theta, _angle_cdf(eps, dim)).pvalue < ALPHA


def test_vmf_outputs_are_rounded_to_the_output_grid() -> None:
    """Every output is k * 2^-20 / ||k * 2^-20|| for an integer vector k."""
    mech = IdentityVMF(epsilon=4.0, dim=8, seed=44)
    y = mech.batch(np.tile(_random_unit(8, 45), (200, 1)))
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-15)
    # recover k: scale so that the largest |coordinate| is the integer rint(2^20 * max|y0|)
    # of some pre-rounding vector y0 of norm 1; the other coordinates must then be integers too
    for row in y[:20]:
        peak = int(np.argmax(np.abs(row)))
        ok = False
        for k_peak in range(int(abs(row[peak]) * 2**20) - 3, int(abs(row[peak]) * 2**20) + 4):
            k = row / abs(row[peak]) * k_peak
            if np.allclose(k, np.round(k), atol=1e-6, rtol=0):
                ok = True
                break
        assert ok


# ------------------------------------------------------------------------------------------
# Utility: expected cosine and the table
# ------------------------------------------------------------------------------------------


def test_expected_cosine_vmf_matches_a_d() -> None:
    mech = IdentityVMF(epsilon=50.0, dim=16, seed=51)
    est = expected_cosine(mech, 16, trials=20_000, seed=52)
    assert abs(est.mean - vmf_mean_cosine(25.0, 16)) < Z_CRIT * est.stderr


def test_expected_cosine_laplace_matches_the_noise_energy() -> None:
    """For i.i.d. noise of variance v per coordinate, cos(x, x + z) ~ 1 / sqrt(1 + d v)."""
    mech = IdentityLaplace(epsilon=500.0, dim=128, seed=53)
    est = expected_cosine(mech, 128, trials=4000, seed=54)
    v = mech._noise.variance(128)
    assert est.mean == pytest.approx(1 / math.sqrt(1 + 128 * v), abs=0.01)
    with pytest.raises(ValueError, match="dim"):
        expected_cosine(mech, 64)
    with pytest.raises(ValueError, match="trials"):
        expected_cosine(mech, 128, trials=1)


def test_identity_table_prints_every_cell() -> None:
    text = table(trials=20, seed=1)
    rows = [line for line in text.splitlines() if line.startswith(("| 128", "| 512"))]
    assert len(rows) == 10
    assert all(row.count("±") == 3 for row in rows)


# ------------------------------------------------- privacy_map properties of the three mechanisms

_MAP_MECHS = {
    "laplace_sphere": lambda: IdentityLaplace(epsilon=1.0, dim=8),
    "laplace_clip": lambda: IdentityLaplace(epsilon=0.5, dim=16, domain="clip", clip=1.0),
    "gaussian_analytic": lambda: IdentityGaussian(epsilon=1.0, delta=1e-5, dim=8),
    "gaussian_rdp": lambda: IdentityGaussian(epsilon=1.0, delta=1e-5, dim=8, calibration="rdp"),
    "vmf": lambda: IdentityVMF(epsilon=1.0, dim=8),
}
_MAP_CACHE: dict[str, Any] = {}


def _map_mech(name: str) -> Any:
    if name not in _MAP_CACHE:
        _MAP_CACHE[name] = _MAP_MECHS[name]()
    return _MAP_CACHE[name]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(_MAP_MECHS)),
    r1=st.floats(min_value=0.0, max_value=1.0),
    r2=st.floats(min_value=0.0, max_value=1.0),
)
def test_privacy_maps_monotone_capped_and_declared(name: str, r1: float, r2: float) -> None:
    """Every identity mechanism's map: non-decreasing in d, equal to the guarantee at the
    declared sensitivity (the domain diameter), never above it inside the domain."""
    mech = _map_mech(name)
    sens = 2.0 if name == "vmf" else mech.sensitivity
    declared = mech.guarantee.budget
    assert mech.privacy_map(sens) == declared
    lo, hi = sorted((r1 * sens, r2 * sens))
    a, b = mech.privacy_map(lo), mech.privacy_map(hi)
    assert a.epsilon <= b.epsilon <= declared.epsilon
    if isinstance(declared, ApproxDP):
        assert a.delta == b.delta == declared.delta
    if name == "vmf":  # metric privacy: exactly eps d / 2 rounded up
        assert Fraction(b.epsilon) >= Fraction(mech.epsilon) * Fraction(hi) / 2
