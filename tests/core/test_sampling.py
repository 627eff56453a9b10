"""The exact samplers: distributions, thresholds, tie refinement, cross-checks."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from mechanisms.geometric import _count_above, geometric, geometric_tables
from mechanisms.rng import Randomness
from mechanisms.sampling import (
    MAX_MARGIN,
    MIN_MARGIN,
    _bernoulli_exp_neg_square,
    bernoulli_exp_neg,
    bernoulli_fraction,
    discrete_gaussian,
    discrete_laplace,
    discrete_laplace_cks,
)
from tests.stats_helpers import (
    ALPHA,
    binned_discrete_laplace_test,
    chi2_goodness_of_fit,
    discrete_gaussian_pmf,
    two_sample_chi2,
)


@pytest.mark.parametrize("t", [1, 2, 3, 7, 1000, 2**17 + 5, 2**33 + 1])
def test_discrete_laplace_matches_exact_pmf(t: int) -> None:
    z = discrete_laplace(t, 200_000, Randomness.from_seed(t % 1000))
    if t <= 7:
        support = np.arange(-40 * t, 40 * t + 1)
        q = math.exp(-1 / t)
        probs = (1 - q) / (1 + q) * q ** np.abs(support)
        counts = np.bincount(z - support[0], minlength=support.size)[: support.size]
        assert counts.sum() == z.size  # nothing outside +-40t (probability < 1e-17)
        assert chi2_goodness_of_fit(counts, probs) > ALPHA
    else:
        assert binned_discrete_laplace_test(z, t) > ALPHA


def test_discrete_laplace_detects_wrong_scale() -> None:
    """Power check for the distribution test itself: scale off by 2% is caught."""
    z = discrete_laplace(1000, 200_000, Randomness.from_seed(5))
    assert binned_discrete_laplace_test(z, 1020) < ALPHA


@pytest.mark.parametrize("t", [1, 3, 500])
def test_fast_sampler_agrees_with_cks_reference(t: int) -> None:
    fast = discrete_laplace(t, 100_000, Randomness.from_seed(10 + t))
    ref = discrete_laplace_cks(t, 100_000, Randomness.from_seed(20 + t))
    edges = np.unique(np.round(np.linspace(-6, 6, 41) * t).astype(np.int64))
    assert two_sample_chi2(fast, ref, edges) > ALPHA


def test_discrete_laplace_agrees_with_opendp() -> None:
    dp = pytest.importorskip("opendp.prelude")
    dp.enable_features("contrib")
    meas = dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=3.0
    )
    theirs = np.asarray(meas([0] * 30_000), dtype=np.int64)
    ours = discrete_laplace(3, 30_000, Randomness.from_seed(77))
    edges = np.arange(-15, 16)
    assert two_sample_chi2(ours, theirs, edges) > ALPHA


def test_thresholds_equal_independent_high_precision_floor() -> None:
    t = 1000
    tables = geometric_tables(t)
    mpmath.mp.prec = 400
    for table in (*tables.digits, tables.tail):
        r = mpmath.exp(mpmath.mpf(-table.m) / t)
        for v in [1, 2, 3, len(table.thresholds) // 2, len(table.thresholds) - 1]:
            if v < 1 or v > len(table.thresholds):
                continue
            if table.size is None:
                p = r**v
            else:
                p = (r**v - r**table.size) / (1 - r**table.size)
            assert int(table.thresholds[v - 1]) == int(mpmath.floor(p * mpmath.mpf(2) ** 64))
    mpmath.mp.prec = 53


def test_tie_refinement_is_exactly_the_fractional_part() -> None:
    """A draw whose first 32 bits equal S_v lies below P_v with probability frac(P_v 2^32)."""
    t = 7
    table = geometric_tables(t).digits[0]
    v = 1
    s_v = np.uint64(int(table.thresholds[v - 1]) >> 32)
    lo, _ = table.tail_bounds(v, 400)
    frac = float(lo * 2**32 - int(s_v))
    rng = Randomness.from_seed(3)
    n = 3_000
    results = _count_above(table, np.full(n, s_v, dtype=np.uint64), rng)
    # U < P_v (result >= v) happens with probability frac
    hits = int(np.sum(results >= v))
    from scipy.stats import binomtest

    assert binomtest(hits, n, frac).pvalue > ALPHA
    assert set(np.unique(results)) <= {v - 1, v}


def test_geometric_tail_memorylessness_path() -> None:
    """t = 1: the tail table is short, and draws past its end continue exactly."""
    y = geometric(1, 300_000, Randomness.from_seed(8))
    q = math.exp(-1)
    support = np.arange(0, 40)
    probs = (1 - q) * q**support
    counts = np.bincount(y, minlength=40)[:40]
    assert chi2_goodness_of_fit(counts, probs) > ALPHA


@pytest.mark.parametrize(("num", "den"), [(0, 1), (1, 3), (3, 3), (7, 2), (25, 4)])
def test_bernoulli_exp_neg_frequency(num: int, den: int) -> None:
    n = 100_000
    out = bernoulli_exp_neg(np.full(n, num), np.full(n, den), Randomness.from_seed(num * 31 + den))
    from scipy.stats import binomtest

    assert binomtest(int(out.sum()), n, math.exp(-num / den)).pvalue > ALPHA


def test_bernoulli_fraction_exact_path_is_exact() -> None:
    """With a useless float estimate (margin 0.5) almost every draw takes the exact path."""
    n = 20_000
    num, den = 1, 3
    est = np.full(n, num / den)
    out = bernoulli_fraction(est, lambda i: (num, den), Randomness.from_seed(4), margin=0.5)
    from scipy.stats import binomtest

    assert binomtest(int(out.sum()), n, num / den).pvalue > ALPHA


@pytest.mark.parametrize("s", [1, 3, 50, 1024])
def test_discrete_gaussian_matches_exact_pmf(s: int) -> None:
    z = discrete_gaussian(s, 150_000, Randomness.from_seed(s))
    if s <= 50:
        support = np.arange(-12 * s - 1, 12 * s + 2)
        counts = np.bincount(z - support[0], minlength=support.size)[: support.size]
        assert counts.sum() == z.size
        assert chi2_goodness_of_fit(counts, discrete_gaussian_pmf(s, support)) > ALPHA
    else:
        from scipy.stats import norm

        edges = np.round(np.linspace(-4, 4, 41) * s).astype(np.int64)
        cdf = norm.cdf((edges + 0.5) / s)  # continuity-corrected; exact enough at s >= 1024
        probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
        counts = np.bincount(np.searchsorted(edges, z), minlength=probs.size)
        assert chi2_goodness_of_fit(counts, probs) > ALPHA


def test_discrete_gaussian_exact_fallback_path() -> None:
    """Force the exact big-integer path (margin 0.25) and check the pmf is unchanged."""
    s = 3
    z = discrete_gaussian(s, 20_000, Randomness.from_seed(12), margin=0.25)
    support = np.arange(-40, 41)
    counts = np.bincount(z - support[0], minlength=support.size)[: support.size]
    assert chi2_goodness_of_fit(counts, discrete_gaussian_pmf(s, support)) > ALPHA


def test_discrete_gaussian_detects_wrong_sigma() -> None:
    z = discrete_gaussian(50, 150_000, Randomness.from_seed(99))
    support = np.arange(-601, 602)
    counts = np.bincount(z - support[0], minlength=support.size)[: support.size]
    assert chi2_goodness_of_fit(counts, discrete_gaussian_pmf(52, support)) < ALPHA


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_samplers_reject_bad_scales(bad: object) -> None:
    rng = Randomness.from_seed(0)
    with pytest.raises(ValueError):
        discrete_laplace(bad, 3, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        discrete_gaussian(bad, 3, rng)  # type: ignore[arg-type]


def test_seeded_is_reproducible_and_secure_is_not() -> None:
    a = discrete_laplace(100, 50, Randomness.from_seed(1))
    b = discrete_laplace(100, 50, Randomness.from_seed(1))
    assert np.array_equal(a, b)
    c = discrete_laplace(100, 50, Randomness.secure())
    d = discrete_laplace(100, 50, Randomness.secure())
    assert not np.array_equal(c, d)
    assert Randomness.from_seed(1).seeded and not Randomness.secure().seeded


@pytest.mark.parametrize("bad", [0.0, 1e-20, 2.0**-42, -0.1, 0.75, 1.0, math.inf, math.nan])
def test_margin_out_of_range_is_refused(bad: float) -> None:
    """A margin below the float error silently breaks exactness (sampling.md G5): refused."""
    rng = Randomness.from_seed(0)
    est = np.full(4, 1 / 3)
    with pytest.raises(ValueError, match="margin"):
        bernoulli_fraction(est, lambda i: (1, 3), rng, margin=bad)
    with pytest.raises(ValueError, match="margin"):
        discrete_gaussian(3, 4, rng, margin=bad)


def test_margin_must_be_a_real_number() -> None:
    rng = Randomness.from_seed(0)
    with pytest.raises(TypeError, match="margin"):
        discrete_gaussian(3, 4, rng, margin=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="margin"):
        bernoulli_fraction(np.full(2, 0.5), lambda i: (1, 2), rng, margin="0.1")  # type: ignore[arg-type]


def test_margin_bounds_are_accepted() -> None:
    rng = Randomness.from_seed(0)
    for margin in (MIN_MARGIN, MAX_MARGIN):
        assert discrete_gaussian(3, 10, rng, margin=margin).shape == (10,)


def test_huge_acceptance_exponent_raises_instead_of_wrapping() -> None:
    """sampling.md G4: gamma ~ 2^77 used to overflow the int64 cast of m (m = INT64_MIN + 1),
    which made the candidate be *accepted* with certainty instead of with probability
    e^-gamma. Now it raises like the other int64 guards."""
    rng = Randomness.from_seed(0)
    for a in (2**40, 2**61):
        with pytest.raises(OverflowError, match="exponent"):
            _bernoulli_exp_neg_square(np.array([0, a], dtype=np.int64), 1, 2, rng, 2.0**-40)


def test_large_but_castable_exponent_is_rejected_exactly() -> None:
    """Just below the guard (gamma ~ 2^50, m ~ 2^50): works, and the candidate is rejected
    (exact acceptance probability e^-(2^50))."""
    rng = Randomness.from_seed(1)
    a = np.full(50, 2**26, dtype=np.int64)  # gamma = 2^52 / 8 = 2^49 at s = 1, t = 2
    assert not _bernoulli_exp_neg_square(a, 1, 2, rng, 2.0**-40).any()
