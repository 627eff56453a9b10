"""Poisson subsampling: amplification bound (rounded up, add/remove only) and exact secret coins."""

from __future__ import annotations

import math
from collections import deque
from fractions import Fraction
from typing import Any

import mpmath
import numpy as np
import pytest
from dp_accounting import dp_event
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from mechanisms.budgets import ZCDP, ApproxDP, PureDP, ceil_float
from mechanisms.rng import Randomness
from mechanisms.subsampling import PoissonSubsample, poisson_amplify

ALPHA = 1e-6


def exact_amplified(epsilon: float, rate: float) -> mpmath.mpf:
    """ln(1 + q (e^eps - 1)) to >= 60 significant digits, computed with mpmath.

    The working precision grows with the orders of magnitude of eps and q, because the
    second-order term q(1 - q) eps^2 / 2 must not vanish below the precision.
    """
    digits = 60
    for x in (epsilon, rate):
        if 0.0 < x < 1.0:
            digits += int(-math.log10(x)) + 1
    with mpmath.workdps(digits):
        return +mpmath.log1p(mpmath.mpf(rate) * mpmath.expm1(mpmath.mpf(epsilon)))


# --------------------------------------------------------------------------- poisson_amplify


def test_amplify_reference_value_is_rounded_up_and_tight() -> None:
    got = poisson_amplify(PureDP(1.0), 0.1)
    assert isinstance(got, PureDP)
    exact = exact_amplified(1.0, 0.1)
    assert mpmath.mpf(got.epsilon) >= exact
    assert (mpmath.mpf(got.epsilon) - exact) / exact <= 1e-15
    # the smallest float above the exact value: one step down is below it
    assert mpmath.mpf(math.nextafter(got.epsilon, 0.0)) < exact
    assert got.epsilon == math.nextafter(math.log1p(0.1 * math.expm1(1.0)), math.inf)


@settings(max_examples=200, deadline=None)
@given(
    epsilon=st.floats(min_value=1e-300, max_value=500.0),
    rate=st.floats(min_value=1e-300, max_value=1.0),
)
def test_amplify_never_below_exact_and_within_one_step(epsilon: float, rate: float) -> None:
    got = poisson_amplify(PureDP(epsilon), rate).epsilon
    exact = exact_amplified(epsilon, rate)
    with mpmath.workdps(mpmath.mp.dps + 700):
        assert mpmath.mpf(got) >= exact
        # one float step below is below the exact value (up to the documented 1e-40 margin)
        below = mpmath.mpf(math.nextafter(got, 0.0))
        assert below < exact * (1 + mpmath.mpf(10) ** -30)


@settings(max_examples=100, deadline=None)
@given(
    epsilon=st.floats(min_value=0.0, max_value=50.0),
    r1=st.floats(min_value=1e-9, max_value=1.0),
    r2=st.floats(min_value=1e-9, max_value=1.0),
)
def test_amplify_monotone_in_rate(epsilon: float, r1: float, r2: float) -> None:
    lo, hi = sorted((r1, r2))
    assert (
        poisson_amplify(PureDP(epsilon), lo).epsilon <= poisson_amplify(PureDP(epsilon), hi).epsilon
    )


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(min_value=1e-9, max_value=1.0),
    e1=st.floats(min_value=0.0, max_value=50.0),
    e2=st.floats(min_value=0.0, max_value=50.0),
)
def test_amplify_monotone_in_epsilon(rate: float, e1: float, e2: float) -> None:
    lo, hi = sorted((e1, e2))
    assert poisson_amplify(PureDP(lo), rate).epsilon <= poisson_amplify(PureDP(hi), rate).epsilon


@settings(max_examples=50, deadline=None)
@given(epsilon=st.floats(min_value=0.0, max_value=700.0))
def test_amplify_full_rate_is_no_amplification(epsilon: float) -> None:
    assert poisson_amplify(PureDP(epsilon), 1.0).epsilon >= epsilon
    assert poisson_amplify(PureDP(epsilon), 0.5).epsilon <= epsilon


def test_amplify_large_epsilon_does_not_overflow() -> None:
    got = poisson_amplify(PureDP(1000.0), 0.01).epsilon
    assert 1000.0 + math.log(0.01) <= got <= 1000.0 + math.log(0.01) + 1e-12


@settings(max_examples=100, deadline=None)
@given(
    epsilon=st.floats(min_value=0.0, max_value=20.0),
    delta=st.floats(min_value=0.0, max_value=0.999),
    rate=st.floats(min_value=1e-12, max_value=1.0),
)
def test_amplify_approx_delta_scaled_and_rounded_up(
    epsilon: float, delta: float, rate: float
) -> None:
    got = poisson_amplify(ApproxDP(epsilon, delta), rate)
    assert isinstance(got, ApproxDP)
    exact_delta = Fraction(rate) * Fraction(delta)
    assert Fraction(got.delta) >= exact_delta
    assert Fraction(math.nextafter(got.delta, 0.0)) < exact_delta or got.delta == 0.0
    assert got.epsilon == poisson_amplify(PureDP(epsilon), rate).epsilon


def test_amplify_keeps_allow_inf() -> None:
    got = poisson_amplify(PureDP(math.inf, allow_inf=True), 0.5)
    assert isinstance(got, PureDP) and math.isinf(got.epsilon) and got.allow_inf


def test_amplify_refuses_replace_one() -> None:
    with pytest.raises(ValueError, match="add/remove"):
        poisson_amplify(PureDP(1.0), 0.1, neighbouring="replace_one")


def test_amplify_refuses_zcdp() -> None:
    with pytest.raises(TypeError, match="zCDP"):
        poisson_amplify(ZCDP(0.5), 0.1)


def test_amplify_refuses_non_budget() -> None:
    with pytest.raises(TypeError):
        poisson_amplify(1.0, 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [0.0, -1.0, 1.5, math.nan, math.inf])
def test_amplify_rejects_bad_rates(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        poisson_amplify(PureDP(1.0), rate)


def test_amplify_rejects_bool_rate() -> None:
    with pytest.raises(TypeError):
        poisson_amplify(PureDP(1.0), True)


# --------------------------------------------------------------------------- PoissonSubsample


@pytest.mark.parametrize("rate", [0.05, 0.5, 1 / 3, 1e-3])
def test_keep_rate_binomial(rate: float) -> None:
    n = 1_000_000
    kept = int(PoissonSubsample(rate=rate, seed=12345).sample_mask(n).sum())
    assert binomtest(kept, n, rate).pvalue > ALPHA


def test_binomial_check_has_power() -> None:
    """The same test rejects a sampler whose rate is 5% off (so the check above can fail)."""
    n = 1_000_000
    kept = int(PoissonSubsample(rate=0.05, seed=12345).sample_mask(n).sum())
    assert binomtest(kept, n, 0.05 * 1.05).pvalue < ALPHA


class _ScriptedGenerator:
    """Returns prescribed 64-bit words, to exercise the exact threshold comparison."""

    def __init__(self, words: list[int]) -> None:
        self._words = deque(words)

    def integers(self, low: int, high: int, size: int, dtype: Any, endpoint: bool) -> np.ndarray:
        assert (low, high, endpoint) == (0, 2**64 - 1, True)
        return np.array([self._words.popleft() for _ in range(size)], dtype=np.uint64)


def _scripted(rate: float, words: list[int]) -> PoissonSubsample:
    randomness = Randomness(generator=_ScriptedGenerator(words), seeded=True)  # type: ignore[arg-type]
    return PoissonSubsample(rate=rate, randomness=randomness)


def test_single_word_threshold_is_exact() -> None:
    threshold = 3 << 62  # rate 0.75 = 3 / 4: keep iff word < 0.75 * 2^64
    mask = _scripted(0.75, [threshold - 1, threshold, 0, 2**64 - 1]).sample_mask(4)
    assert mask.tolist() == [True, False, True, False]


def test_multi_word_threshold_breaks_ties_on_next_word() -> None:
    rate = (2**52 + 1) * 2.0**-100  # needs 100 bits: threshold words (2^16, 2^28)
    assert Fraction(rate) == Fraction(2**52 + 1, 2**100)
    first = [2**16 - 1, 2**16, 2**16 + 1, 2**16, 2**16]
    second = [2**28 - 1, 2**28, 2**28 + 1]  # only for the three ties, in order
    mask = _scripted(rate, first + second).sample_mask(5)
    assert mask.tolist() == [True, True, False, False, False]


def test_rate_one_keeps_everything_and_empty_input() -> None:
    s = PoissonSubsample(rate=1.0, seed=1)
    assert s.sample_mask(1000).all()
    assert s.sample_mask(0).shape == (0,)


def test_seeded_flag() -> None:
    assert PoissonSubsample(rate=0.5, seed=7).seeded
    assert not PoissonSubsample(rate=0.5).seeded
    assert "seeded=True" in repr(PoissonSubsample(rate=0.5, seed=7))


def test_unseeded_instances_differ_and_seeded_reproduce() -> None:
    a = PoissonSubsample(rate=0.5).sample_mask(256)
    b = PoissonSubsample(rate=0.5).sample_mask(256)
    assert not np.array_equal(a, b)  # equal with probability 2^-256
    c = PoissonSubsample(rate=0.5, seed=99).sample_mask(256)
    d = PoissonSubsample(rate=0.5, seed=99).sample_mask(256)
    assert np.array_equal(c, d)


def test_sample_numpy_rows_and_sequences() -> None:
    data = np.arange(200).reshape(100, 2)
    mask = PoissonSubsample(rate=0.3, seed=5).sample_mask(100)
    rows = PoissonSubsample(rate=0.3, seed=5).sample(data)
    assert np.array_equal(rows, data[mask])
    items = [f"r{i}" for i in range(100)]
    kept = PoissonSubsample(rate=0.3, seed=5).sample(items)
    assert kept == [x for x, m in zip(items, mask, strict=True) if m]
    assert 0 < len(kept) < 100


def test_constructor_validation() -> None:
    with pytest.raises(TypeError):
        PoissonSubsample(0.5)  # type: ignore[misc]
    for bad in (0.0, -0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="rate"):
            PoissonSubsample(rate=bad)
    with pytest.raises(ValueError, match="either"):
        PoissonSubsample(rate=0.5, seed=1, randomness=Randomness.secure())
    with pytest.raises(ValueError):
        PoissonSubsample(rate=0.5).sample_mask(-1)
    with pytest.raises(TypeError):
        PoissonSubsample(rate=0.5).sample_mask(2.0)  # type: ignore[arg-type]


def test_amplify_and_event() -> None:
    s = PoissonSubsample(rate=0.05, seed=3)
    assert s.amplify(PureDP(0.1)) == poisson_amplify(PureDP(0.1), 0.05)
    inner = dp_event.LaplaceDpEvent(noise_multiplier=2.0)
    ev = s.event(inner)
    assert isinstance(ev, dp_event.PoissonSampledDpEvent)
    assert ev.sampling_probability == 0.05 and ev.event == inner
    with pytest.raises(TypeError):
        s.event("laplace")  # type: ignore[arg-type]


# ------------------------------------------------------ exact enumeration of P1 (subsampling.md G1)

mpmath_dps = 50


def _subsampled_law(
    records: tuple[int, ...],
    rate: float,
    inner: Any,
    outputs: list[Any],
) -> list[mpmath.mpf]:
    """Exact output law of "keep each record w.p. rate, then run inner on the kept tuple",
    by enumerating every subset (inner(kept, o) is the inner mechanism's pmf)."""
    q = mpmath.mpf(rate)
    law = [mpmath.mpf(0)] * len(outputs)
    n = len(records)
    for mask in range(1 << n):
        kept = tuple(records[i] for i in range(n) if mask >> i & 1)
        weight = q ** len(kept) * (1 - q) ** (n - len(kept))
        for j, o in enumerate(outputs):
            law[j] += weight * inner(kept, o)
    return law


def _max_log_ratio(p: list[mpmath.mpf], p2: list[mpmath.mpf]) -> mpmath.mpf:
    return max(abs(mpmath.log(a / b)) for a, b in zip(p, p2, strict=True))


def _dlap_count(t: int) -> Any:
    """Discrete Laplace of scale t on the sum of the kept values: ε = 1/t for |values| ≤ 1."""
    r = mpmath.exp(-mpmath.mpf(1) / t)

    def pmf(kept: tuple[int, ...], o: int) -> mpmath.mpf:
        return (1 - r) / (1 + r) * r ** abs(o - sum(kept))

    return pmf


def _rr_any(epsilon: float) -> Any:
    """Randomized response (ε-DP) on the bit "some kept record is 1"."""
    e = mpmath.exp(mpmath.mpf(epsilon))

    def pmf(kept: tuple[int, ...], o: int) -> mpmath.mpf:
        truth = int(any(kept))
        return e / (1 + e) if o == truth else 1 / (1 + e)

    return pmf


def _worst_add_remove(
    inner: Any, outputs: list[Any], rate: float, n: int, values: tuple[int, ...]
) -> mpmath.mpf:
    """Max |log ratio| over every data set in values^n and every added record, both orders."""
    worst = mpmath.mpf(0)
    for code in range(len(values) ** n):
        base = tuple(values[(code // len(values) ** i) % len(values)] for i in range(n))
        p = _subsampled_law(base, rate, inner, outputs)
        for z in values:
            worst = max(worst, _max_log_ratio(p, _subsampled_law((*base, z), rate, inner, outputs)))
    return worst


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.1, 2.0**-10])
@pytest.mark.parametrize("t", [1, 3])
def test_enumeration_laplace_count_matches_amplification(rate: float, t: int) -> None:
    """Subsampled counting + DLap(t): the exact likelihood ratio never exceeds poisson_amplify's
    ε, and reaches it (the bound is tight: far-tail outputs attain 1 + q(e^ε - 1)), so the wrong
    amplification ε·q is caught."""
    with mpmath.workdps(mpmath_dps):
        n = 3
        eps = ceil_float(Fraction(1, t))  # the inner mechanism is ε-DP for this float ε
        # beyond [-1, n + 2] the ratio is constant (geometric tails): this window covers all
        outputs = list(range(-2, n + 4))
        worst = _worst_add_remove(_dlap_count(t), outputs, rate, n, (0, 1))
        claim = mpmath.mpf(poisson_amplify(PureDP(eps), rate).epsilon)
        assert worst <= claim
        assert worst >= claim * (1 - mpmath.mpf(10) ** -12)
        assert worst > mpmath.mpf(eps) * mpmath.mpf(rate)  # ε·q would understate the loss


@pytest.mark.parametrize("rate", [0.5, 0.3, 0.01])
@pytest.mark.parametrize("epsilon", [0.1, 1.0, 3.0])
def test_enumeration_randomized_response_matches_amplification(rate: float, epsilon: float) -> None:
    with mpmath.workdps(mpmath_dps):
        worst = _worst_add_remove(_rr_any(epsilon), [0, 1], rate, 3, (0, 1))
        claim = mpmath.mpf(poisson_amplify(PureDP(epsilon), rate).epsilon)
        assert worst <= claim
        assert worst >= claim * (1 - mpmath.mpf(10) ** -12)
        wrong = mpmath.mpf(epsilon) * mpmath.mpf(rate)
        assert worst > wrong


def test_enumeration_catches_a_wrong_amplification_formula() -> None:
    """Power control: a checker built on the enumeration rejects ε·q and accepts the real bound."""

    def claim_holds(claim: float, inner: Any, outputs: list[Any], rate: float) -> bool:
        with mpmath.workdps(mpmath_dps):
            return bool(_worst_add_remove(inner, outputs, rate, 2, (0, 1)) <= mpmath.mpf(claim))

    eps, rate = 1.0, 0.25
    for inner, outputs in ((_rr_any(eps), [0, 1]), (_dlap_count(1), list(range(-2, 6)))):
        assert claim_holds(poisson_amplify(PureDP(eps), rate).epsilon, inner, outputs, rate)
        assert not claim_holds(eps * rate, inner, outputs, rate)


def test_replace_one_counterexample_shows_the_refusal_is_needed() -> None:
    """subsampling.md P3: D = {a}, D' = {b}, M(T) = RR_ε(1[a ∈ T]) if |T| = 1 else ⊥ is ε-DP for
    replace-one, but after subsampling the ratio is still e^ε > the add/remove bound."""
    eps, rate = 1.0, 0.1
    with mpmath.workdps(mpmath_dps):
        e = mpmath.exp(mpmath.mpf(eps))

        def inner(kept: tuple[str, ...], o: str) -> mpmath.mpf:
            if len(kept) == 0:
                return mpmath.mpf(o == "bottom")
            truth = "1" if kept == ("a",) else "0"
            if o == "bottom":
                return mpmath.mpf(0)
            return e / (1 + e) if o == truth else 1 / (1 + e)

        outputs = ["0", "1", "bottom"]
        p = _subsampled_law(("a",), rate, inner, outputs)
        p2 = _subsampled_law(("b",), rate, inner, outputs)
        worst = _max_log_ratio(p, p2)
        assert abs(worst - eps) < mpmath.mpf(10) ** -40
        assert worst > mpmath.mpf(poisson_amplify(PureDP(eps), rate).epsilon)
    with pytest.raises(ValueError, match="add_remove"):
        poisson_amplify(PureDP(eps), rate, neighbouring="replace_one")
