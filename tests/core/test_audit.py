"""Tests of the black-box privacy audit (mechanisms/audit.py) on stand-in mechanisms whose
output distributions are known exactly.

Every statistical test here uses fixed seeds, so it is deterministic; the audits run at the
default alpha = 1e-6, so a correct mechanism is wrongly flagged with probability <= 1e-6 per seed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mechanisms.audit import (
    DEFAULT_ALPHA,
    AuditPlan,
    AuditResult,
    SetEvent,
    ThresholdEvent,
    audit,
    audit_calibrated,
    audit_mechanism,
    choose_set_event,
    choose_threshold_event,
    clopper_pearson_lower,
    clopper_pearson_upper,
    epsilon_lower_bound,
    mechanism_release,
)
from mechanisms.base import Guarantee
from mechanisms.budgets import ZCDP, ApproxDP, Budget, PureDP
from mechanisms.rng import Randomness

Array = npt.NDArray[Any]
LN3 = math.log(3.0)


# ------------------------------------------------------------------------------------------
# Stand-in mechanisms with exactly known distributions (integer coins only)
# ------------------------------------------------------------------------------------------


class RandomizedResponse:
    """Binary randomized response: keeps the bit with probability keep/denom, else flips it.

    True epsilon = ln(keep / (denom - keep)); ``claimed`` is what it *says* it has.
    """

    def __init__(self, *, keep: int, denom: int, claimed: Budget, randomness: Randomness) -> None:
        self.keep, self.denom, self.claimed, self.randomness = keep, denom, claimed, randomness

    @property
    def true_epsilon(self) -> float:
        return math.log(self.keep / (self.denom - self.keep))

    @property
    def guarantee(self) -> Guarantee:
        return Guarantee(self.claimed, "one bit", "x vs 1 - x", "sensitivity 1")

    def batch(self, X: Array) -> Array:
        bits = np.asarray(X, dtype=np.int64).reshape(-1)
        coins = self.randomness.integers_below(np.full(bits.shape, self.denom, dtype=np.int64))
        return np.where(coins < self.keep, bits, 1 - bits)


def exact_rr(randomness: Randomness) -> RandomizedResponse:
    """keep 3/4: exactly ln(3)-DP, and claims it."""
    return RandomizedResponse(keep=3, denom=4, claimed=PureDP(LN3), randomness=randomness)


def broken_rr(randomness: Randomness) -> RandomizedResponse:
    """keep 9/10: really ln(9) = 2 ln(3)-DP, but claims ln(3)."""
    return RandomizedResponse(keep=9, denom=10, claimed=PureDP(LN3), randomness=randomness)


class LeakyRR:
    """With probability leak/100 outputs 2 + x (reveals x), else randomized response keep 3/4.

    Exactly (ln 3, leak/100)-DP: for any event E, P[E|x] <= 3 P[E|x'] + leak/100.
    """

    def __init__(self, *, leak: int, randomness: Randomness) -> None:
        self.leak, self.randomness = leak, randomness

    def release(self, x: Array, n: int) -> Array:
        bit = int(np.asarray(x))
        leak_coin = self.randomness.integers_below(np.full(n, 100, dtype=np.int64))
        rr_coin = self.randomness.integers_below(np.full(n, 4, dtype=np.int64))
        rr = np.where(rr_coin < 3, bit, 1 - bit)
        return np.where(leak_coin < self.leak, 2 + bit, rr)


def discrete_laplace_release(scale: float, randomness: Randomness) -> Any:
    """x + discrete Laplace(scale): P[k] proportional to exp(-|k|/scale), exactly (1/scale)-DP
    for integer inputs one apart. Built from two geometric draws (test stand-in only)."""
    p = 1.0 - math.exp(-1.0 / scale)

    def release(x: Array, n: int) -> Array:
        g = randomness.generator
        return int(np.asarray(x)) + (g.geometric(p, n) - g.geometric(p, n))

    return release


# ------------------------------------------------------------------------------------------
# Clopper-Pearson bounds
# ------------------------------------------------------------------------------------------


def _scipy_one_sided(k: int, n: int, a: float) -> tuple[float, float]:
    low = (
        stats.binomtest(k, n, alternative="greater")
        .proportion_ci(confidence_level=1.0 - a, method="exact")
        .low
    )
    high = (
        stats.binomtest(k, n, alternative="less")
        .proportion_ci(confidence_level=1.0 - a, method="exact")
        .high
    )
    return float(low), float(high)


@pytest.mark.parametrize("n", [1, 7, 1000, 1_000_000])
@pytest.mark.parametrize("a", [DEFAULT_ALPHA / 4, 0.025, 0.3])
def test_cp_bounds_match_scipy_binomtest(n: int, a: float) -> None:
    for k in sorted({0, 1, 2, n // 3, n // 2, n - 1, n} & set(range(n + 1))):
        low, high = _scipy_one_sided(k, n, a)
        assert clopper_pearson_lower(k, n, a) == pytest.approx(low, rel=1e-5, abs=1e-12)
        assert clopper_pearson_upper(k, n, a) == pytest.approx(high, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 50, 10**6])
@pytest.mark.parametrize("a", [1e-9, DEFAULT_ALPHA / 4, 0.1])
def test_cp_bounds_closed_forms(n: int, a: float) -> None:
    """Where CP has a closed form, match it to full relative precision (tiny p included)."""
    assert clopper_pearson_upper(0, n, a) == pytest.approx(-math.expm1(math.log(a) / n), rel=1e-9)
    assert clopper_pearson_lower(n, n, a) == pytest.approx(a ** (1.0 / n), rel=1e-9)
    assert clopper_pearson_lower(1, n, a) == pytest.approx(
        -math.expm1(math.log1p(-a) / n), rel=1e-9
    )
    assert clopper_pearson_lower(0, n, a) == 0.0 and clopper_pearson_upper(n, n, a) == 1.0


def test_cp_two_sided_matches_scipy_two_sided_interval() -> None:
    # A two-sided exact interval at confidence 1 - 2a has one-sided tails a.
    k, n, a = 4321, 100_000, 1e-4
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=1.0 - 2 * a, method="exact")
    assert clopper_pearson_lower(k, n, a) == pytest.approx(ci.low, rel=1e-6)
    assert clopper_pearson_upper(k, n, a) == pytest.approx(ci.high, rel=1e-6)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=10**6),
    frac=st.floats(min_value=0.0, max_value=1.0),
    a=st.floats(min_value=1e-9, max_value=0.45),
)
def test_cp_bounds_bracket_the_estimate_and_match_scipy(n: int, frac: float, a: float) -> None:
    k = round(frac * n)
    low, high = clopper_pearson_lower(k, n, a), clopper_pearson_upper(k, n, a)
    assert 0.0 <= low <= k / n <= high <= 1.0
    assert low < high
    s_low, s_high = _scipy_one_sided(k, n, a)
    assert low == pytest.approx(s_low, rel=1e-5, abs=1e-12)
    assert high == pytest.approx(s_high, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("p", [0.003, 0.05, 0.2, 0.5, 0.77, 0.99])
def test_cp_one_sided_coverage_is_exact(p: float) -> None:
    """P[lower > p] and P[upper < p], summed exactly over k ~ Bin(n, p), are <= a."""
    n, a = 60, 0.05
    ks = np.arange(n + 1)
    pmf = stats.binom.pmf(ks, n, p)
    low = np.array([clopper_pearson_lower(int(k), n, a) for k in ks])
    high = np.array([clopper_pearson_upper(int(k), n, a) for k in ks])
    assert pmf[low > p].sum() <= a
    assert pmf[high < p].sum() <= a


def test_cp_is_not_needlessly_conservative() -> None:
    """Somewhere on a fine grid of p the miss probability comes close to a (it is exact)."""
    n, a = 40, 0.05
    ks = np.arange(n + 1)
    low = np.array([clopper_pearson_lower(int(k), n, a) for k in ks])
    worst = max(
        float(stats.binom.pmf(ks, n, p)[low > p].sum()) for p in np.linspace(0.01, 0.99, 491)
    )
    assert a / 2 < worst <= a


# ------------------------------------------------------------------------------------------
# The epsilon lower bound from counts
# ------------------------------------------------------------------------------------------


def test_epsilon_lower_bound_is_the_max_of_four_comparisons() -> None:
    k0, k1, n, alpha, delta = 7000, 2500, 10_000, 1e-3, 0.01
    a = alpha / 4
    p0l, p0h = clopper_pearson_lower(k0, n, a), clopper_pearson_upper(k0, n, a)
    p1l, p1h = clopper_pearson_lower(k1, n, a), clopper_pearson_upper(k1, n, a)
    expected = max(
        math.log((p0l - delta) / p1h),
        math.log((p1l - delta) / p0h),
        math.log((1 - p0h - delta) / (1 - p1l)),
        math.log((1 - p1h - delta) / (1 - p0l)),
    )
    got = epsilon_lower_bound(k0, k1, n, delta=delta, alpha=alpha)
    assert got == pytest.approx(expected, rel=1e-12)
    # the swapped pair and the complement give the same bound (symmetry of the four checks)
    assert epsilon_lower_bound(k1, k0, n, delta=delta, alpha=alpha) == pytest.approx(got)
    assert epsilon_lower_bound(n - k0, n - k1, n, delta=delta, alpha=alpha) == pytest.approx(got)


def test_epsilon_lower_bound_without_evidence() -> None:
    assert epsilon_lower_bound(0, 0, 1000) < 0.0
    assert epsilon_lower_bound(500, 500, 1000) < 0.0
    # delta larger than every probability bound leaves nothing to measure
    assert epsilon_lower_bound(3, 1, 1_000_000, delta=0.5) < 0.0
    assert epsilon_lower_bound(500_000, 400_000, 1_000_000, delta=0.7) == -math.inf


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=10**6),
    f0=st.floats(min_value=0.0, max_value=1.0),
    f1=st.floats(min_value=0.0, max_value=1.0),
    delta=st.sampled_from([0.0, 1e-5, 0.01, 0.2]),
)
def test_epsilon_lower_bound_properties(n: int, f0: float, f1: float, delta: float) -> None:
    k0, k1 = round(f0 * n), round(f1 * n)
    strict = epsilon_lower_bound(k0, k1, n, delta=delta, alpha=1e-9)
    loose = epsilon_lower_bound(k0, k1, n, delta=delta, alpha=0.1)
    assert strict <= loose  # more confidence, weaker bound
    assert epsilon_lower_bound(k1, k0, n, delta=delta, alpha=0.1) == loose  # order-free
    assert epsilon_lower_bound(k0, k1, n, delta=delta + 0.05, alpha=0.1) <= loose
    # never above the plug-in estimate of the same four comparisons
    q0, q1 = k0 / n, k1 / n
    plug = [
        (q0 - delta, q1),
        (q1 - delta, q0),
        (1 - q0 - delta, 1 - q1),
        (1 - q1 - delta, 1 - q0),
    ]
    plug_in = max((math.log(a / b) if b > 0 else math.inf) if a > 0 else -math.inf for a, b in plug)
    assert loose <= plug_in + 1e-12


def test_epsilon_lower_bound_validity_exact_enumeration() -> None:
    """P[bound > true epsilon] <= alpha, by exact enumeration over (k0, k1) for small n.

    Randomized response with keep 3/4 on n = 25 draws per input; a large alpha (0.2) makes the
    check sharp enough to catch a bound that forgot the Bonferroni split or swapped quantiles.
    """
    n, alpha, eps = 25, 0.2, LN3
    ks = np.arange(n + 1)
    for p0, p1 in [(0.75, 0.25), (0.25, 0.75)]:
        pmf0, pmf1 = stats.binom.pmf(ks, n, p0), stats.binom.pmf(ks, n, p1)
        exceed = 0.0
        for k0 in ks:
            for k1 in ks:
                if epsilon_lower_bound(int(k0), int(k1), n, alpha=alpha) > eps:
                    exceed += float(pmf0[k0] * pmf1[k1])
        assert exceed <= alpha


# ------------------------------------------------------------------------------------------
# Audits of randomized response: validity and power
# ------------------------------------------------------------------------------------------


def _is_zero(y: Array) -> Array:
    return np.asarray(y == 0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_exact_rr_is_never_flagged_and_bound_is_tight(seed: int) -> None:
    mech = exact_rr(Randomness.from_seed(seed))
    res = audit(mechanism_release(mech), 0, 1, _is_zero, n=100_000, claimed=PureDP(LN3))
    assert not res.violates
    assert res.epsilon_lower_bound <= mech.true_epsilon
    # and the audit has teeth: within 0.06 of the truth at n = 1e5, alpha = 1e-6
    assert res.epsilon_lower_bound > mech.true_epsilon - 0.06
    assert res.alpha == DEFAULT_ALPHA and res.n == 100_000


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_broken_rr_is_flagged(seed: int) -> None:
    mech = broken_rr(Randomness.from_seed(seed))
    res = audit(mechanism_release(mech), 0, 1, _is_zero, n=100_000, claimed=mech.claimed)
    assert res.violates
    assert res.epsilon_lower_bound > 2.0  # true epsilon is ln 9 = 2.197
    assert res.epsilon_lower_bound <= mech.true_epsilon


def test_audit_mechanism_uses_declared_guarantee_and_seed() -> None:
    ok = audit_mechanism(exact_rr, 0, 1, n=100_000, seed=5, chooser=choose_set_event)
    bad = audit_mechanism(broken_rr, 0, 1, n=100_000, seed=5, chooser=choose_set_event)
    assert ok.claimed == PureDP(LN3) and bad.claimed == PureDP(LN3)
    assert not ok.violates and bad.violates
    assert ok.n_calibration == 100_000 // 4
    # deterministic: the same seed gives the same counts
    again = audit_mechanism(exact_rr, 0, 1, n=100_000, seed=5, chooser=choose_set_event)
    assert (again.count0, again.count1, again.event) == (ok.count0, ok.count1, ok.event)
    # a fixed event instead of a chooser
    fixed = audit_mechanism(broken_rr, 0, 1, n=50_000, seed=6, event=_is_zero)
    assert fixed.violates and fixed.n_calibration is None


def test_audit_finds_the_leak_in_either_direction_and_in_the_complement() -> None:
    """The event {y == 1} is *rarer* under x0: the swapped comparison must catch it."""
    mech = broken_rr(Randomness.from_seed(21))
    release = mechanism_release(mech)

    def is_one(y: Array) -> Array:
        return np.asarray(y == 1)

    res = audit(release, 0, 1, is_one, n=100_000, claimed=PureDP(LN3))
    assert res.violates
    assert res.comparison in {"P[E|x1] vs P[E|x0]", "P[not E|x0] vs P[not E|x1]"}
    # with x0/x1 swapped the forward comparison finds it
    res2 = audit(release, 1, 0, is_one, n=100_000, claimed=PureDP(LN3))
    assert res2.violates
    assert res2.comparison in {"P[E|x0] vs P[E|x1]", "P[not E|x1] vs P[not E|x0]"}


def test_several_events_use_bonferroni() -> None:
    mech = exact_rr(Randomness.from_seed(31))
    k = 3

    def never(y: Array) -> Array:
        return np.zeros(y.shape[0], dtype=bool)

    def is_one(y: Array) -> Array:
        return np.asarray(y == 1)

    res = audit(
        mechanism_release(mech), 0, 1, [_is_zero, is_one, never], n=20_000, claimed=PureDP(LN3)
    )
    assert len(res.per_event) == k and res.n_comparisons == 4 * k
    a = DEFAULT_ALPHA / (4 * k)
    for b in res.per_event:
        assert b.p0_low == pytest.approx(clopper_pearson_lower(b.count0, 20_000, a), rel=1e-12)
        assert b.p1_high == pytest.approx(clopper_pearson_upper(b.count1, 20_000, a), rel=1e-12)
    assert res.per_event[2].epsilon_lower_bound < 0.0
    assert res.epsilon_lower_bound == max(b.epsilon_lower_bound for b in res.per_event)
    assert not res.violates


def test_chunking_counts_every_draw_exactly_once() -> None:
    state = {"next": 0}

    def counter(x: Array, n: int) -> Array:
        ids = np.arange(state["next"], state["next"] + n)
        state["next"] += n
        return ids % 4 + int(np.asarray(x))

    def is_zero_mod(y: Array) -> Array:
        return np.asarray(y % 4 == 0)

    for chunk in [1, 7, 1000, 10_000, 1 << 20]:
        state["next"] = 0
        res = audit(counter, 0, 1, is_zero_mod, n=10_000, claimed=PureDP(1.0), chunk_size=chunk)
        assert state["next"] == 20_000
        assert (res.count0, res.count1) == (2500, 2500)


# ------------------------------------------------------------------------------------------
# Choosing the event on calibration data
# ------------------------------------------------------------------------------------------


def test_event_is_chosen_on_draws_disjoint_from_the_evaluation_draws() -> None:
    rnd = Randomness.from_seed(41)
    state = {"next": 0}

    def tagged_release(x: Array, n: int) -> Array:
        """Randomized response output in column 0, a unique draw id in column 1."""
        ids = np.arange(state["next"], state["next"] + n)
        state["next"] += n
        bit = int(np.asarray(x))
        coin = rnd.integers_below(np.full(n, 4, dtype=np.int64))
        return np.stack([np.where(coin < 3, bit, 1 - bit), ids], axis=1)

    seen: set[int] = set()
    evaluated: set[int] = set()
    plans: list[AuditPlan] = []

    def spy_event(y: Array) -> Array:
        evaluated.update(y[:, 1].tolist())
        return np.asarray(y[:, 0] == 0)

    def spy_chooser(c0: Array, c1: Array, plan: AuditPlan) -> Any:
        seen.update(c0[:, 1].tolist())
        seen.update(c1[:, 1].tolist())
        plans.append(plan)
        return spy_event

    res = audit_calibrated(
        tagged_release,
        0,
        1,
        n=20_000,
        n_calibration=5_000,
        claimed=ApproxDP(LN3, 1e-3),
        chooser=spy_chooser,
        chunk_size=3_000,
    )
    assert len(seen) == 10_000 and len(evaluated) == 40_000
    assert seen.isdisjoint(evaluated)
    assert max(seen) < min(evaluated)  # calibration happens strictly before evaluation
    assert plans == [AuditPlan(n=20_000, alpha=DEFAULT_ALPHA, delta=1e-3)]
    assert res.n_calibration == 5_000 and not res.violates


def test_choosing_on_fresh_draws_is_valid_where_reusing_them_is_not() -> None:
    """A mechanism that ignores its input (0-DP). Picking the event on the very draws it is
    evaluated on 'finds' privacy loss (overfitting); the calibrated audit does not."""
    rnd = Randomness.from_seed(51)

    def null_release(x: Array, n: int) -> Array:
        return rnd.integers_below(np.full(n, 1000, dtype=np.int64))

    n = 4000
    claim = PureDP(0.0)
    # the wrong way, written out here on purpose: select and evaluate on the same draws
    y0, y1 = null_release(np.asarray(0), n), null_release(np.asarray(1), n)
    event = choose_set_event(y0, y1, AuditPlan(n=n, alpha=DEFAULT_ALPHA, delta=0.0))
    naive = epsilon_lower_bound(int(event(y0).sum()), int(event(y1).sum()), n, alpha=DEFAULT_ALPHA)
    assert naive > 0.0  # a spurious "violation" of the (true) 0-DP claim
    # the right way
    for _ in range(3):
        res = audit_calibrated(null_release, 0, 1, n=n, claimed=claim, chooser=choose_set_event)
        assert not res.violates


@pytest.mark.parametrize("seed", [61, 62])
def test_threshold_chooser_on_discrete_laplace(seed: int) -> None:
    good = discrete_laplace_release(1.0, Randomness.from_seed(seed))
    res = audit_calibrated(good, 0, 1, n=200_000, claimed=PureDP(1.0))
    assert not res.violates and res.epsilon_lower_bound > 0.85
    assert res.event.startswith("{y")
    broken = discrete_laplace_release(0.5, Randomness.from_seed(seed))
    res_b = audit_calibrated(broken, 0, 1, n=200_000, claimed=PureDP(1.0))
    assert res_b.violates and res_b.epsilon_lower_bound > 1.8


def test_threshold_chooser_picks_the_informative_tail() -> None:
    # x0 mass sits low, x1 mass high: the best events are {y <= t} or {y >= t} near the middle
    c0 = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 10, 10, 10, 10, 10])
    c1 = np.repeat(np.arange(10), [10, 10, 10, 10, 10, 50, 50, 50, 50, 50])
    ev = choose_threshold_event(c0, c1, AuditPlan(n=10_000, alpha=1e-6, delta=0.0))
    assert isinstance(ev, ThresholdEvent)
    assert (ev.upper and ev.threshold == 5.0) or (not ev.upper and ev.threshold == 4.0)


def test_threshold_chooser_with_a_statistic_on_vector_outputs() -> None:
    rnd = Randomness.from_seed(71)
    inner = discrete_laplace_release(0.5, rnd)

    def vector_release(x: Array, n: int) -> Array:
        first = inner(x, n)
        noise = rnd.integers_below(np.full(n, 5, dtype=np.int64))
        return np.stack([first, noise], axis=1)

    def first(y: Array) -> Array:
        return np.asarray(y[:, 0])

    def chooser(c0: Array, c1: Array, plan: AuditPlan) -> ThresholdEvent:
        return choose_threshold_event(c0, c1, plan, statistic=first)

    res = audit_calibrated(vector_release, 0, 1, n=50_000, claimed=PureDP(1.0), chooser=chooser)
    assert res.violates and res.event.startswith("{first(y)")
    with pytest.raises(ValueError, match="statistic="):
        audit_calibrated(vector_release, 0, 1, n=1000, claimed=PureDP(1.0))


def test_set_chooser_builds_a_likelihood_ratio_set() -> None:
    c0 = np.array([0] * 60 + [1] * 30 + [2] * 10)
    c1 = np.array([0] * 10 + [1] * 30 + [2] * 60)
    ev = choose_set_event(c0, c1, AuditPlan(n=100_000, alpha=1e-6, delta=0.0))
    assert isinstance(ev, SetEvent)
    assert ev.values in {(0.0,), (0,), (2,), (2.0,), (0, 1), (1, 2)}
    with pytest.raises(ValueError, match="not a discrete"):
        choose_set_event(
            np.arange(20_000) / 7, np.arange(20_000) / 3, AuditPlan(n=10, alpha=0.1, delta=0)
        )


# ------------------------------------------------------------------------------------------
# (epsilon, delta): delta is subtracted
# ------------------------------------------------------------------------------------------


def _is_leak0(y: Array) -> Array:
    return np.asarray(y == 2)


def _zero_or_leak0(y: Array) -> Array:
    return np.asarray((y == 0) | (y == 2))


def test_approx_dp_claim_holds_for_a_leaky_mechanism() -> None:
    mech = LeakyRR(leak=1, randomness=Randomness.from_seed(81))
    claim = ApproxDP(LN3, 0.01)
    res = audit(mech.release, 0, 1, [_is_leak0, _zero_or_leak0], n=200_000, claimed=claim)
    assert not res.violates
    assert res.epsilon_lower_bound <= LN3
    assert res.claimed_delta == 0.01 and res.claimed_epsilon == pytest.approx(LN3)
    # the leak event alone carries no evidence once delta is subtracted
    assert res.per_event[0].epsilon_lower_bound < 0.0
    assert res.per_event[0].count1 == 0 and res.per_event[0].count0 > 1500


def test_ignoring_delta_is_flagged() -> None:
    mech = LeakyRR(leak=1, randomness=Randomness.from_seed(82))
    res = audit(mech.release, 0, 1, _is_leak0, n=200_000, claimed=PureDP(LN3))
    assert res.violates and res.epsilon_lower_bound > 3.0


def test_understated_delta_is_flagged() -> None:
    mech = LeakyRR(leak=5, randomness=Randomness.from_seed(83))  # really delta = 0.05
    res = audit(mech.release, 0, 1, _is_leak0, n=200_000, claimed=ApproxDP(LN3, 0.01))
    assert res.violates


def test_calibrated_set_event_with_delta() -> None:
    good = LeakyRR(leak=1, randomness=Randomness.from_seed(84))
    res = audit_calibrated(
        good.release, 0, 1, n=200_000, claimed=ApproxDP(LN3, 0.01), chooser=choose_set_event
    )
    assert not res.violates
    bad = LeakyRR(leak=5, randomness=Randomness.from_seed(84))
    res_b = audit_calibrated(
        bad.release, 0, 1, n=200_000, claimed=ApproxDP(LN3, 0.01), chooser=choose_set_event
    )
    assert res_b.violates


# ------------------------------------------------------------------------------------------
# The result object
# ------------------------------------------------------------------------------------------


def test_result_is_frozen_and_readable() -> None:
    mech = broken_rr(Randomness.from_seed(91))
    res = audit(mechanism_release(mech), 0, 1, _is_zero, n=10_000, claimed=PureDP(LN3))
    assert isinstance(res, AuditResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.violates = False  # type: ignore[misc]
    text = str(res)
    assert "VIOLATION" in text
    assert f"{res.epsilon_lower_bound:.4f}" in text
    assert f"{res.count0}/10000" in text and f"{res.count1}/10000" in text
    assert "_is_zero" in text and "1e-06" in text
    assert res.empirical_epsilon >= res.epsilon_lower_bound

    def never(y: Array) -> Array:
        return np.zeros(y.shape[0], dtype=bool)

    quiet = audit(mechanism_release(mech), 0, 1, never, n=100, claimed=PureDP(LN3))
    assert "no evidence" in str(quiet) and "no violation" in str(quiet)


# ------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------


def _release(x: Array, n: int) -> Array:
    return np.zeros(n, dtype=np.int64) + int(np.asarray(x))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": 0}, ValueError, "n must be >= 1"),
        ({"n": True}, TypeError, "n must be an int"),
        ({"n": 10.0}, TypeError, "n must be an int"),
        ({"alpha": 0.0}, ValueError, "alpha must lie in"),
        ({"alpha": 1.0}, ValueError, "alpha must lie in"),
        ({"alpha": math.nan}, ValueError, "alpha must lie in"),
        ({"alpha": "0.1"}, TypeError, "alpha must be a real"),
        ({"claimed": ZCDP(0.5)}, TypeError, "to_approx"),
        ({"claimed": 1.0}, TypeError, "PureDP or ApproxDP"),
        ({"x1": np.array([1, 2])}, ValueError, "same shape"),
        ({"x1": 0}, ValueError, "identical"),
        ({"event": []}, ValueError, "at least one event"),
        ({"event": [_is_zero, 3]}, TypeError, "callable"),
        ({"event": "y == 0"}, TypeError, "callable"),
        ({"event": lambda y: (y == 0).astype(int)}, TypeError, "boolean"),
        ({"event": lambda y: np.zeros((y.shape[0], 2), dtype=bool)}, ValueError, "shape"),
        ({"release": lambda x, n: np.zeros(n + 1)}, ValueError, "leading axis"),
        ({"release": lambda x, n: np.float64(0.0)}, ValueError, "leading axis"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_audit_validates_its_inputs(kwargs: dict[str, Any], exc: type, match: str) -> None:
    args: dict[str, Any] = {
        "release": _release,
        "x0": 0,
        "x1": 1,
        "event": _is_zero,
        "n": 100,
        "claimed": PureDP(1.0),
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        audit(args.pop("release"), args.pop("x0"), args.pop("x1"), args.pop("event"), **args)


def test_identical_inputs_are_refused_whatever_their_dtype() -> None:
    with pytest.raises(ValueError, match="identical"):
        audit(_release, np.array([0]), np.array([0.0]), _is_zero, n=10, claimed=PureDP(1.0))


def test_importing_the_audit_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, mechanisms.audit; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_bound_functions_validate_their_inputs() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        clopper_pearson_lower(11, 10, 0.1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        clopper_pearson_upper(-1, 10, 0.1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        clopper_pearson_upper(0, 0, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_lower(1, 10, 1.5)
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound(1, 1, 10, delta=1.0)
    with pytest.raises(ValueError, match="exceeds"):
        epsilon_lower_bound(1, 11, 10)


def test_calibrated_and_mechanism_audits_validate() -> None:
    with pytest.raises(ValueError, match="n_calibration"):
        audit_calibrated(_release, 0, 1, n=100, n_calibration=0, claimed=PureDP(1.0))
    with pytest.raises(ValueError, match="either a fixed event or"):
        audit_mechanism(exact_rr, 0, 1, n=100, seed=1, event=_is_zero, chooser=choose_set_event)
    with pytest.raises(ValueError, match="either randomness= or seed="):
        audit_mechanism(exact_rr, 0, 1, n=100, seed=1, randomness=Randomness.from_seed(2))
    with pytest.raises(TypeError, match="to_approx"):
        audit_mechanism(exact_rr, 0, 1, n=100, seed=1, claimed=ZCDP(0.1))
