"""Tests for mechanisms.attributes: k-anonymous attribute voting and t-closeness selection.

The voting mechanism's privacy claim is checked three ways: exact output distributions by
enumerating every Poisson subset of small reference sets (hypothesis), a non-vacuity check that
the bound is nearly reached without sampling, and black-box audits on worst-case neighbouring
reference sets with power controls (twice the epsilon; no tau cap). Statistical tests use
alpha = 1e-6 and fixed seeds.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any, Literal

import mpmath
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mechanisms import accounting
from mechanisms.attributes import (
    CELEBA_BOOK_ATTRIBUTES,
    CELEBA_BOOK_GROUPS,
    KAnonymousVoting,
    TClosenessSelector,
)
from mechanisms.audit import AuditResult, audit_calibrated, choose_set_event
from mechanisms.budgets import PureDP
from mechanisms.rng import Randomness
from tests.stats_helpers import ALPHA, chi2_goodness_of_fit

Array = npt.NDArray[Any]


# ------------------------------------------------------------------------------------------
# Independent reference implementations (not using the module's arithmetic)
# ------------------------------------------------------------------------------------------


def book_eq45(v: float, k: int, eps: float, dq: float) -> float:
    """Eq. 4.5 written out (50-digit arithmetic, no overflow): P[with] for votes v of k."""
    with mpmath.workdps(50):
        a = mpmath.exp(mpmath.mpf(eps) * v / (2 * mpmath.mpf(dq)))
        b = mpmath.exp(mpmath.mpf(eps) * (k - mpmath.mpf(v)) / (2 * mpmath.mpf(dq)))
        return float(a / (a + b))


def book_eq46(vs: list[float], eps: float, dq: float) -> list[float]:
    """Eq. 4.6 written out (50-digit arithmetic): softmax of eps v / (2 dq)."""
    with mpmath.workdps(50):
        w = [mpmath.exp(mpmath.mpf(eps) * v / (2 * mpmath.mpf(dq))) for v in vs]
        return [float(x / sum(w)) for x in w]


def naive_votes(
    feats: Array, labs: Array, q: Array, kept: Array, k: int, tau: float
) -> list[Fraction]:
    """Algorithm 1 lines 2-3 by brute force, in exact rational arithmetic."""
    recs = [
        (
            sum((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(feats[j], q, strict=True)),
            tuple(Fraction(x) for x in feats[j]),
            tuple(int(x) for x in labs[j]),
        )
        for j in range(feats.shape[0])
        if kept[j]
    ]
    recs.sort()
    votes = [Fraction(0)] * labs.shape[1]
    for _, _, lab in recs[:k]:
        norm = sum(lab)
        scale = min(Fraction(tau) / norm, Fraction(1)) if norm else Fraction(1)
        for i, x in enumerate(lab):
            votes[i] += x * scale
    return votes


def outcomes(
    mech: KAnonymousVoting,
) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Every possible release: (vector, independent bits, group picks)."""
    names = mech.attributes
    ind = [names.index(a) for a in mech.independent]
    grs = [[names.index(a) for a in g] for g in mech.groups]
    out = []
    for bits in itertools.product([0, 1], repeat=len(ind)):
        for picks in itertools.product(*[range(len(g)) for g in grs]):
            vec = [0] * len(names)
            for i, b in zip(ind, bits, strict=True):
                vec[i] = b
            for g, p in zip(grs, picks, strict=True):
                vec[g[p]] = 1
            out.append((tuple(vec), bits, tuple(picks)))
    return out


def exact_distribution(
    mech: KAnonymousVoting, feats: Array, labs: Array, q: Array, *, sampling: bool
) -> dict[tuple[int, ...], float]:
    """Exact output distribution of the whole mechanism: sum over all 2^N Poisson subsets."""
    n = feats.shape[0]
    g = mech.rate
    masks = np.array(list(itertools.product([False, True], repeat=n)), dtype=bool).reshape(2**n, n)
    p_subset = np.prod(np.where(masks, g, 1.0 - g), axis=1)
    votes = np.stack([mech.votes(feats, labs, q, kept=m) for m in masks])
    probs = mech.sampling_probabilities(votes) if sampling else mech.probabilities(votes)
    dist = {}
    for vec, bits, picks in outcomes(mech):
        joint = np.ones(masks.shape[0])
        for b_i, b in enumerate(bits):
            col = probs.independent[:, b_i]
            joint = joint * (col if b else 1.0 - col)
        for g_i, p in enumerate(picks):
            joint = joint * probs.groups[g_i][:, p]
        dist[vec] = float(np.sum(p_subset * joint))
    return dist


def max_log_ratio(d0: dict[tuple[int, ...], float], d1: dict[tuple[int, ...], float]) -> float:
    return max(abs(math.log(d0[o]) - math.log(d1[o])) for o in d0)


def amplify(eps: float, rate: float) -> float:
    return math.log1p(rate * math.expm1(eps))


def claim_of(mech: KAnonymousVoting) -> float:
    """The declared (amplified) epsilon."""
    budget = mech.guarantee.budget
    assert isinstance(budget, PureDP)
    return budget.epsilon


def voting(**kw: Any) -> KAnonymousVoting:
    args: dict[str, Any] = dict(epsilon=1.0, k=2, rate=0.5, tau=1.0, attributes=["a", "b"])
    args.update(kw)
    if "randomness" not in args:
        args.setdefault("seed", 0)
    return KAnonymousVoting(**args)


# ------------------------------------------------------------------------------------------
# Eq. 4.4 - 4.6
# ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    eps=st.floats(min_value=0.01, max_value=5.0),
    k=st.integers(min_value=1, max_value=300),
    dq=st.sampled_from([0.5, 1.0, 2.0]),
    fracs=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=13, max_size=13),
)
def test_probabilities_equal_book_equations(
    eps: float, k: int, dq: float, fracs: list[float]
) -> None:
    mech = KAnonymousVoting(
        epsilon=eps,
        k=k,
        rate=0.05,
        tau=3.0,
        attributes=CELEBA_BOOK_ATTRIBUTES,
        groups=CELEBA_BOOK_GROUPS,
        delta_q=dq,
        seed=0,
    )
    votes = np.array(fracs) * k
    probs = mech.probabilities(votes)
    names = list(CELEBA_BOOK_ATTRIBUTES)
    for b, name in enumerate(mech.independent):
        expected = book_eq45(float(votes[names.index(name)]), k, eps, dq)
        assert probs.independent[b] == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert len(probs.groups) == 2
    for g, group in enumerate(CELEBA_BOOK_GROUPS):
        expected_g = book_eq46([float(votes[names.index(a)]) for a in group], eps, dq)
        np.testing.assert_allclose(probs.groups[g], expected_g, rtol=1e-12, atol=1e-300)
    # The sampler's exact distribution differs only by the float64 charge (it runs at eps' <
    # eps) and the tiny floor: each log-probability moves by at most (eps - eps') * range / dq,
    # with the score range at most k.
    samp = mech.sampling_probabilities(votes)
    charge = mech._exp.epsilon - mech._exp.sampling_epsilon
    rtol = math.expm1(charge * k / dq) + 1e-12
    assert rtol < 1e-6  # the charge is tiny
    np.testing.assert_allclose(samp.independent, probs.independent, rtol=rtol, atol=1e-17)


def test_probabilities_stack_and_validation() -> None:
    mech = voting(attributes=["a", "b", "c"], groups=[("b", "c")], k=4)
    stacked = mech.probabilities(np.array([[0.0, 1.0, 2.0], [4.0, 0.5, 0.5]]))
    assert stacked.independent.shape == (2, 1) and stacked.groups[0].shape == (2, 2)
    assert stacked.groups[0][1, 0] == pytest.approx(0.5)
    assert stacked.independent[1, 0] == pytest.approx(book_eq45(4.0, 4, 1.0, 1.0))
    for bad in ([1.0, 2.0], [-0.1, 0.0, 0.0], [0.0, 5.0, 0.0], [np.nan, 0, 0]):
        with pytest.raises(ValueError):
            mech.probabilities(np.array(bad))
    with pytest.raises(TypeError):
        mech.probabilities(np.array(["a", "b", "c"]))


def test_tau_approximation_is_eq_4_4() -> None:
    """A neighbour voting for n > tau attributes gives tau / n to each (L1 norm tau)."""
    names = [f"a{i}" for i in range(6)]
    mech = voting(attributes=names, k=3, tau=2.0)
    feats = np.array([[0.0], [1.0], [2.0], [9.0]])
    labs = np.array(
        [[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    )
    v = mech.votes(feats, labs, np.array([0.0]))
    np.testing.assert_array_equal(v, [1.4, 0.4, 0.4, 0.4, 0.4, 0.0])
    assert mech.neighbours(feats, labs, np.array([0.0])).tolist() == [0, 1, 2]
    # tau at least the number of attributes: no scaling at all.
    big = voting(attributes=names, k=3, tau=6.0)
    np.testing.assert_array_equal(big.votes(feats, labs, np.array([0.0])), [2, 1, 1, 1, 1, 0])


@st.composite
def small_reference(draw: st.DrawFn) -> tuple[Array, Array, Array, int, float]:
    n = draw(st.integers(min_value=0, max_value=8))
    f = draw(st.integers(min_value=1, max_value=2))
    a = draw(st.integers(min_value=1, max_value=4))
    feats = np.array(
        draw(st.lists(st.integers(-3, 3), min_size=n * f, max_size=n * f)), dtype=np.float64
    ).reshape(n, f)
    labs = np.array(
        draw(st.lists(st.integers(0, 1), min_size=n * a, max_size=n * a)), dtype=np.int8
    ).reshape(n, a)
    q = np.array(draw(st.lists(st.integers(-3, 3), min_size=f, max_size=f)), dtype=np.float64)
    k = draw(st.integers(min_value=1, max_value=5))
    tau = draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 7.0]))
    return feats, labs, q, k, tau


@settings(max_examples=80, deadline=None)
@given(ref=small_reference(), data=st.data())
def test_votes_match_brute_force_and_ignore_record_order(
    ref: tuple[Array, Array, Array, int, float], data: st.DataObject
) -> None:
    feats, labs, q, k, tau = ref
    n, a = labs.shape
    mech = voting(attributes=[f"x{i}" for i in range(a)], k=k, tau=tau)
    kept = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    v = mech.votes(feats, labs, q, kept=kept)
    exact = naive_votes(feats, labs, q, kept, k, tau)
    np.testing.assert_allclose(v, [float(x) for x in exact], rtol=1e-14, atol=0)
    # Permuting the records (and their coins) changes nothing: ties are broken by content.
    perm = np.array(data.draw(st.permutations(list(range(n)))), dtype=np.int64)
    v_perm = mech.votes(feats[perm], labs[perm], q, kept=kept[perm])
    np.testing.assert_array_equal(v, v_perm)
    assert len(mech.neighbours(feats, labs, q, kept=kept)) == min(k, int(kept.sum()))


def test_ties_are_broken_by_content_not_position() -> None:
    mech = voting(attributes=["a", "b"], k=1, tau=2.0)
    q = np.array([0.0, 0.0])
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # all at distance 1
    labs = np.array([[1, 0], [0, 1], [1, 1]])
    # Lexicographically smallest feature vector among the tied: (0, -1), record 2.
    for perm in itertools.permutations(range(3)):
        p = np.array(perm)
        chosen = mech.neighbours(feats[p], labs[p], q)
        assert p[chosen[0]] == 2
    # Same features, different labels: the labels decide (0, 1) before (1, 0).
    feats2 = np.zeros((2, 2)) + 1.0
    labs2 = np.array([[1, 0], [0, 1]])
    for p in (np.array([0, 1]), np.array([1, 0])):
        np.testing.assert_array_equal(mech.votes(feats2[p], labs2[p], q), [0.0, 1.0])


# ------------------------------------------------------------------------------------------
# The privacy claim, exactly: enumerate all Poisson subsets
# ------------------------------------------------------------------------------------------


@st.composite
def enumeration_case(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(min_value=1, max_value=6))
    a = draw(st.integers(min_value=2, max_value=3))
    f = draw(st.integers(min_value=1, max_value=2))
    grid = st.integers(-2, 2)
    feats = np.array(draw(st.lists(grid, min_size=n * f, max_size=n * f)), float).reshape(n, f)
    labs = np.array(draw(st.lists(st.integers(0, 1), min_size=n * a, max_size=n * a))).reshape(n, a)
    names = ["a", "b", "c"][:a]
    groups = draw(st.sampled_from([(), (("a", "b"),)] + ([(("b", "c"),)] if a == 3 else [])))
    new_f = np.array(draw(st.lists(grid, min_size=f, max_size=f)), float)
    new_l = np.array(draw(st.lists(st.integers(0, 1), min_size=a, max_size=a)))
    q = np.array(draw(st.lists(grid, min_size=f, max_size=f)), float)
    return dict(
        feats=feats,
        labs=labs,
        q=q,
        new=(new_f, new_l),
        mech=dict(
            epsilon=draw(st.floats(min_value=0.1, max_value=4.0)),
            k=draw(st.integers(min_value=1, max_value=4)),
            rate=draw(st.sampled_from([0.125, 0.5, 0.75, 1.0])),
            tau=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])),
            delta_q=draw(st.sampled_from([0.5, 1.0, 2.0])),
            attributes=names,
            groups=groups,
        ),
    )


@settings(max_examples=60, deadline=None)
@given(case=enumeration_case())
def test_exact_amplified_bound_by_enumeration(case: dict[str, Any]) -> None:
    """Every output's probability ratio between D and each neighbour D + r, D - r_i is within
    e^eps of the declared (amplified) guarantee -- computed exactly over all 2^|D| samples."""
    mech = KAnonymousVoting(**case["mech"], seed=0)
    feats, labs, q = case["feats"], case["labs"], case["q"]
    new_f, new_l = case["new"]
    neighbours = [(np.vstack([feats, new_f]), np.vstack([labs, new_l]))]
    for i in range(feats.shape[0]):
        neighbours.append((np.delete(feats, i, axis=0), np.delete(labs, i, axis=0)))
    claimed = claim_of(mech)
    ideal = amplify(mech.ideal_epsilon, mech.rate)
    assert claimed >= ideal
    base_real = exact_distribution(mech, feats, labs, q, sampling=True)
    base_ideal = exact_distribution(mech, feats, labs, q, sampling=False)
    assert sum(base_real.values()) == pytest.approx(1.0, abs=1e-12)
    for f2, l2 in neighbours:
        real = exact_distribution(mech, f2, l2, q, sampling=True)
        assert max_log_ratio(base_real, real) <= claimed + 1e-10
        assert max_log_ratio(base_ideal, exact_distribution(mech, f2, l2, q, sampling=False)) <= (
            ideal + 1e-10
        )


def _worst_case(eps: float, k: int, rate: float, tau: float = 1.0) -> tuple[float, float]:
    """k + 1 records voting (0, 1) and a new nearest record voting (1, 0): one swap, L1 = 2 tau."""
    mech = voting(epsilon=eps, k=k, rate=rate, tau=tau)
    feats = np.full((k + 1, 1), 2.0)
    labs = np.array([[0, 1]] * (k + 1))
    q = np.array([0.0])
    d0 = exact_distribution(mech, feats, labs, q, sampling=True)
    d1 = exact_distribution(
        mech, np.vstack([[1.0], feats]), np.vstack([[1, 0], labs]), q, sampling=True
    )
    return max_log_ratio(d0, d1), claim_of(mech)


def test_bound_is_not_vacuous_without_sampling() -> None:
    """With rate 1 the worst case reaches > 94% of 2 tau eps / dq: a claim of tau eps would fail."""
    loss, claimed = _worst_case(2.0, 4, 1.0)
    assert claimed == pytest.approx(4.0, abs=1e-9)  # 2 tau eps / dq with tau = 1, eps = 2
    assert 0.94 * claimed < loss <= claimed
    # Same pair under Poisson sampling: below the amplified claim, and above the un-amplified
    # pre-sampling loss would be impossible.
    loss_s, claimed_s = _worst_case(2.0, 4, 0.5)
    assert claimed_s == pytest.approx(amplify(4.0, 0.5), abs=1e-9)
    assert loss_s <= claimed_s


# ------------------------------------------------------------------------------------------
# Sampler = enumeration (chi-square), edge cases
# ------------------------------------------------------------------------------------------


def _encode(rows: Array) -> Array:
    return np.asarray(rows.astype(np.int64) @ (1 << np.arange(rows.shape[1])), dtype=np.int64)


def _chi2_against_exact(mech: KAnonymousVoting, feats: Array, labs: Array, q: Array) -> float:
    dist = exact_distribution(mech, feats, labs, q, sampling=True)
    draws = _encode(mech.release_many(feats, labs, q, 200_000))
    keys = list(dist)
    codes = _encode(np.array(keys))
    counts = np.array([np.count_nonzero(draws == c) for c in codes], dtype=np.int64)
    assert counts.sum() == draws.size  # no output outside the enumerated support
    return chi2_goodness_of_fit(counts, np.array([dist[kk] for kk in keys]))


def test_releases_follow_the_enumerated_distribution() -> None:
    mech = voting(
        epsilon=1.5, k=2, rate=0.5, tau=1.0, attributes=["a", "b", "c"], groups=[("b", "c")]
    )
    feats = np.array([[0.0], [1.0], [1.0], [2.0], [3.0]])
    labs = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 0]])
    assert (
        _chi2_against_exact(
            mech,
            feats,
            labs,
            np.array([0.5]),
        )
        > ALPHA
    )


def test_fewer_than_k_records_use_what_there_is() -> None:
    """3 records, k = 5, rate 1: votes are the 3 records'; eq. 4.5 still uses k = 5."""
    mech = voting(k=5, rate=1.0, tau=2.0, epsilon=1.0)
    feats = np.array([[0.0], [1.0], [2.0]])
    labs = np.array([[1, 0], [1, 1], [0, 0]])
    v = mech.votes(feats, labs, np.array([0.0]))
    np.testing.assert_array_equal(v, [2.0, 1.0])
    p = mech.probabilities(v).independent
    np.testing.assert_allclose(p, [book_eq45(2.0, 5, 1.0, 1.0), book_eq45(1.0, 5, 1.0, 1.0)])
    assert _chi2_against_exact(mech, feats, labs, np.array([0.0])) > ALPHA


def test_empty_sample_releases_the_no_data_distribution() -> None:
    """No records at all: votes 0; groups uniform, independent attributes eq. 4.5 at v = 0."""
    mech = voting(k=3, rate=0.5, epsilon=0.5, attributes=["a", "b", "c"], groups=[("a", "b")])
    feats, labs = np.zeros((0, 2)), np.zeros((0, 3), dtype=np.int8)
    q = np.zeros(2)
    np.testing.assert_array_equal(mech.votes(feats, labs, q), [0.0, 0.0, 0.0])
    out = mech.release_many(feats, labs, q, 100_000)
    assert np.all(out[:, 0] + out[:, 1] == 1)
    p_c = book_eq45(0.0, 3, 0.5, 1.0)
    for col, p in ((0, 0.5), (2, p_c)):
        ones = int(out[:, col].sum())
        assert stats.binomtest(ones, out.shape[0], p).pvalue > ALPHA
    one = mech(feats, labs, q)
    assert one.values.shape == (3,) and one.group_choices[0] in ("a", "b")


def test_k_equal_one_follows_the_nearest_kept_record() -> None:
    mech = voting(k=1, rate=1.0, tau=1.0, epsilon=3.0)
    feats = np.array([[5.0], [0.2], [1.0]])
    labs = np.array([[0, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(mech.votes(feats, labs, np.array([0.0])), [0.5, 0.5])
    kept = np.array([True, False, True])
    np.testing.assert_array_equal(mech.votes(feats, labs, np.array([0.0]), kept=kept), [0, 1])
    assert mech.neighbours(feats, labs, np.array([0.0]), kept=kept).tolist() == [2]


def test_release_object_and_batch() -> None:
    mech = KAnonymousVoting.book_preset(tau=3.0, k=100, epsilon=0.1, seed=4)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3000, 8))
    labs = (rng.random((3000, 13)) < 0.3).astype(np.int8)
    rel = mech(feats, labs, feats[0])
    assert rel.attributes == CELEBA_BOOK_ATTRIBUTES and rel.values.dtype == np.int8
    d = rel.as_dict()
    assert sum(d[a] for a in CELEBA_BOOK_GROUPS[0]) == 1
    assert sum(d[a] for a in CELEBA_BOOK_GROUPS[1]) == 1
    assert d[rel.group_choices[0]] and d[rel.group_choices[1]]
    out = mech.batch(feats, labs, feats[:4])
    assert out.shape == (4, 13) and set(np.unique(out).tolist()) <= {0, 1}


# ------------------------------------------------------------------------------------------
# Declared guarantee, accounting, validation, randomness
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "eps"), [(100, 0.05), (100, 0.1), (200, 0.05), (200, 0.1)])
@pytest.mark.parametrize("tau", [1.0, 3.0, 13.0])
def test_book_preset_guarantee(k: int, eps: float, tau: float) -> None:
    mech = KAnonymousVoting.book_preset(tau=tau, k=k, epsilon=eps)  # type: ignore[arg-type]
    assert mech.rate == 0.05 and mech.delta_q == 1.0 and mech.k == k
    assert mech.independent == (
        "Bald", "Bangs", "Bushy_Eyebrows", "Eyeglasses", "Male", "Mouth_Slightly_Open",
        "Pale_Skin", "Young",
    )  # fmt: skip
    assert mech.draws == 10
    ideal = eps * min(2 * tau, 10)
    assert mech.ideal_epsilon == pytest.approx(ideal, rel=1e-15)
    assert 0 <= mech.pre_sampling_epsilon - ideal < 1e-9
    eps_amp = claim_of(mech)
    assert eps_amp == pytest.approx(amplify(ideal, 0.05), rel=1e-8)
    assert eps_amp >= amplify(mech.pre_sampling_epsilon, 0.05)
    assert accounting.epsilon(mech.event(), 0.0, method="basic") == pytest.approx(eps_amp)
    assert accounting.epsilon(mech.amplified_event(), 1e-9) >= eps_amp - 1e-4
    text = mech.guarantee.statement()
    assert "NOT protected by DP" in text and "SEEDED" not in text and not mech.seeded


def test_privacy_map_is_group_privacy() -> None:
    mech = voting()
    e = claim_of(mech)
    assert mech.privacy_map(0).epsilon == 0.0
    assert mech.privacy_map(1).epsilon == pytest.approx(e)
    assert mech.privacy_map(3).epsilon == pytest.approx(3 * e)
    with pytest.raises(ValueError):
        mech.privacy_map(1.5)


@pytest.mark.parametrize(
    ("kw", "err"),
    [
        (dict(epsilon=0.0), ValueError),
        (dict(epsilon=math.inf), ValueError),
        (dict(k=0), ValueError),
        (dict(k=True), TypeError),
        (dict(k=2.0), TypeError),
        (dict(rate=0.0), ValueError),
        (dict(rate=1.5), ValueError),
        (dict(tau=0.0), ValueError),
        (dict(tau=-1.0), ValueError),
        (dict(delta_q=0.0), ValueError),
        (dict(attributes=[]), ValueError),
        (dict(attributes="ab"), TypeError),
        (dict(attributes=["a", "a"]), ValueError),
        (dict(groups=[("a",)]), ValueError),
        (dict(groups=[("a", "z")]), ValueError),
        (dict(attributes=["a", "b", "c"], groups=[("a", "b"), ("b", "c")]), ValueError),
        (dict(seed=1, randomness=Randomness.from_seed(1)), ValueError),
    ],
)
def test_constructor_validation(kw: dict[str, Any], err: type[Exception]) -> None:
    args: dict[str, Any] = dict(epsilon=1.0, k=2, rate=0.5, tau=1.0, attributes=["a", "b"])
    args.update(kw)
    with pytest.raises(err):
        KAnonymousVoting(**args)


def test_input_validation_and_preset_choices() -> None:
    mech = voting()
    f, lab, q = np.zeros((3, 2)), np.zeros((3, 2), dtype=np.int8), np.zeros(2)
    with pytest.raises(ValueError, match="0 and 1"):
        mech(f, lab + 2, q)
    with pytest.raises(ValueError, match="shape"):
        mech(f, np.zeros((3, 3)), q)
    with pytest.raises(ValueError, match="dimensions"):
        mech(f, lab, np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        mech(np.full((3, 2), np.nan), lab, q)
    with pytest.raises(ValueError, match="kept"):
        mech.votes(f, lab, q, kept=np.ones(2, dtype=bool))
    with pytest.raises(ValueError):
        mech.release_many(f, lab, q, 0)
    with pytest.raises(ValueError):
        KAnonymousVoting.book_preset(tau=1.0, k=50)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        KAnonymousVoting.book_preset(tau=1.0, epsilon=1.0)


def test_seeded_is_reproducible_and_says_so() -> None:
    feats = np.arange(12, dtype=np.float64).reshape(6, 2)
    labs = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    q = np.zeros(2)
    a = voting(seed=11, rate=0.5).release_many(feats, labs, q, 500)
    b = voting(seed=11, rate=0.5).release_many(feats, labs, q, 500)
    np.testing.assert_array_equal(a, b)
    seeded = voting(seed=11)
    assert seeded.seeded and "SEEDED" in seeded.guarantee.note
    fresh = KAnonymousVoting(epsilon=1.0, k=2, rate=0.5, tau=1.0, attributes=["a", "b"])
    assert not fresh.seeded
    c = fresh.release_many(feats, labs, q, 500)
    d = KAnonymousVoting(epsilon=1.0, k=2, rate=0.5, tau=1.0, attributes=["a", "b"]).release_many(
        feats, labs, q, 500
    )
    assert not np.array_equal(c, d)  # 2^-1000-ish chance of equality


# ------------------------------------------------------------------------------------------
# Black-box audits on worst-case neighbouring reference sets, with power controls
# ------------------------------------------------------------------------------------------


def _pack(feats: Array, labs: Array, present: Array) -> Array:
    return np.concatenate([feats, labs, present[:, None]], axis=1).astype(np.float64)


def _release_fn(mech: KAnonymousVoting, f_dim: int, q: Array) -> Any:
    def release(x: Array, n: int) -> Array:
        keep = x[:, -1] == 1.0
        feats = x[keep, :f_dim]
        labs = x[keep, f_dim:-1].astype(np.int8)
        return _encode(mech.release_many(feats, labs, q, n))

    return release


def _audit(
    mech: KAnonymousVoting, feats: Array, labs: Array, new_f: Array, new_l: Array, claim: float
) -> AuditResult:
    """Audit D (record r absent) against D + r (present), r given by (new_f, new_l)."""
    f_all = np.vstack([new_f, feats])
    l_all = np.vstack([new_l, labs])
    absent = np.array([0.0] + [1.0] * feats.shape[0])
    x0 = _pack(f_all, l_all, absent)
    x1 = _pack(f_all, l_all, np.ones(f_all.shape[0]))
    return audit_calibrated(
        _release_fn(mech, feats.shape[1], np.array([0.0])),
        x0,
        x1,
        n=200_000,
        claimed=PureDP(claim),
        chooser=choose_set_event,
    )


# Double-epsilon design: 7 records voting (0, 1); the new nearest record votes (1, 0). With
# k = 3, rate 0.75, eps = 1, tau = 1 the claim is ln(1 + 0.75 (e^2 - 1)) = 1.756; the exact pair
# loss is 1.23 for the real mechanism and 3.13 for one built with eps = 2.
DBL_F, DBL_L = np.full((7, 1), 2.0), np.array([[0, 1]] * 7)
DBL_NEW = (np.array([[1.0]]), np.array([[1, 0]]))
# No-tau-cap design: 6 records voting for nothing; the new nearest record votes for all 4. With
# tau = 1 its votes are 1/4 each; without the cap they are 1 each (exact loss 2.64 > 1.756).
CAP_F, CAP_L = np.full((6, 1), 2.0), np.zeros((6, 4), dtype=np.int64)
CAP_NEW = (np.array([[1.0]]), np.array([[1, 1, 1, 1]]))
CAP_NAMES = ["a", "b", "c", "d"]


def _exact_pair(
    mech: KAnonymousVoting, feats: Array, labs: Array, new: tuple[Array, Array]
) -> float:
    q = np.array([0.0])
    d0 = exact_distribution(mech, feats, labs, q, sampling=True)
    d1 = exact_distribution(mech, np.vstack([new[0], feats]), np.vstack([new[1], labs]), q,
                            sampling=True)  # fmt: skip
    return max_log_ratio(d0, d1)


def test_audit_pairs_are_worst_case_shaped() -> None:
    good = voting(epsilon=1.0, k=3, rate=0.75)
    claim = claim_of(good)
    assert claim == pytest.approx(amplify(2.0, 0.75), rel=1e-9)
    assert 1.2 < _exact_pair(good, DBL_F, DBL_L, DBL_NEW) <= claim
    assert _exact_pair(voting(epsilon=2.0, k=3, rate=0.75), DBL_F, DBL_L, DBL_NEW) > claim + 1.2
    capped = voting(epsilon=1.0, k=3, rate=0.75, attributes=CAP_NAMES)
    assert claim_of(capped) == pytest.approx(claim)
    assert _exact_pair(capped, CAP_F, CAP_L, CAP_NEW) <= claim
    uncapped = voting(epsilon=1.0, k=3, rate=0.75, tau=4.0, attributes=CAP_NAMES)
    assert _exact_pair(uncapped, CAP_F, CAP_L, CAP_NEW) > claim + 0.8


@pytest.mark.parametrize("seed", [21, 22])
def test_audit_respects_claim_on_worst_case_neighbours(seed: int) -> None:
    mech = voting(epsilon=1.0, k=3, rate=0.75, seed=seed)
    claim = claim_of(mech)
    res = _audit(mech, DBL_F, DBL_L, *DBL_NEW, claim)
    exact = _exact_pair(mech, DBL_F, DBL_L, DBL_NEW)
    assert not res.violates, str(res)
    assert exact - 0.3 < res.epsilon_lower_bound <= exact, str(res)
    capped = voting(epsilon=1.0, k=3, rate=0.75, attributes=CAP_NAMES, seed=seed)
    res2 = _audit(capped, CAP_F, CAP_L, *CAP_NEW, claim)
    assert not res2.violates, str(res2)


def test_audit_flags_twice_the_epsilon() -> None:
    claim = claim_of(voting(epsilon=1.0, k=3, rate=0.75))
    broken = voting(epsilon=2.0, k=3, rate=0.75, seed=23)
    res = _audit(broken, DBL_F, DBL_L, *DBL_NEW, claim)
    assert res.violates, str(res)


def test_audit_flags_a_missing_tau_cap() -> None:
    claim = claim_of(voting(epsilon=1.0, k=3, rate=0.75, attributes=CAP_NAMES))
    broken = voting(epsilon=1.0, k=3, rate=0.75, tau=4.0, attributes=CAP_NAMES, seed=24)
    res = _audit(broken, CAP_F, CAP_L, *CAP_NEW, claim)
    assert res.violates, str(res)


# ------------------------------------------------------------------------------------------
# t-closeness selector
# ------------------------------------------------------------------------------------------

T_NAMES = ["x", "y", "z"]


def _fitted(
    t: float, *, seed: int = 0, estimator: Literal["laplace", "diffprivlib"] = "laplace"
) -> TClosenessSelector:
    sel = TClosenessSelector(
        t=t,
        epsilon_population=1.0,
        attributes=T_NAMES,
        estimator=estimator,
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    labs = (rng.random((5000, 3)) < np.array([0.2, 0.5, 0.7])).astype(np.int8)
    return sel.fit(labs)


def _bernoulli_ok(draws: Array, p: Array) -> None:
    for col, pi in enumerate(p.tolist()):
        ones = int(draws[:, col].sum())
        assert stats.binomtest(ones, draws.shape[0], pi).pvalue > ALPHA, (col, ones, pi)


def test_t_zero_releases_the_population_distribution() -> None:
    sel = _fitted(0.0, seed=1)
    pop = sel.population
    face = np.array([1.0, 0.0, 1.0])
    np.testing.assert_array_equal(sel.target(face), pop)
    draws = sel.batch(np.repeat(face[None, :], 200_000, axis=0))
    _bernoulli_ok(draws, pop)
    # Joint distribution too: the attributes are independent draws (chi-square over 8 cells).
    codes = _encode(draws)
    probs = np.array(
        [np.prod([pop[i] if (c >> i) & 1 else 1 - pop[i] for i in range(3)]) for c in range(8)]
    )
    assert chi2_goodness_of_fit(np.bincount(codes, minlength=8), probs) > ALPHA
    assert sel.face_epsilon() == 0.0


def test_t_one_follows_the_face() -> None:
    sel = _fitted(1.0, seed=2)
    face = np.array([0.9, 0.05, 0.4])
    np.testing.assert_allclose(sel.target(face), face, rtol=0, atol=2e-16)
    _bernoulli_ok(sel.batch(np.repeat(face[None, :], 200_000, axis=0)), face)
    assert sel.face_epsilon() == math.inf


@settings(max_examples=100, deadline=None)
@given(
    t=st.floats(min_value=0.0, max_value=1.0),
    faces=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=3, max_size=3),
    pop=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=3, max_size=3),
)
def test_release_distribution_is_t_close(t: float, faces: list[float], pop: list[float]) -> None:
    sel = TClosenessSelector(t=t, epsilon_population=1.0, attributes=T_NAMES, seed=0)
    sel.set_population(np.array(pop))
    q = sel.target(np.array(faces))
    p = np.array(pop)
    assert np.all(np.abs(q - p) <= t + 1e-15)
    assert np.all((q >= 0) & (q <= 1))
    # Q lies between P and the face, and equals the face whenever the face is within t.
    f = np.array(faces)
    assert np.all((q - p) * (f - p) >= 0)
    within = np.abs(f - p) <= t
    np.testing.assert_allclose(q[within], f[within], atol=1e-15)


def test_face_epsilon_matches_the_worst_likelihood_ratio() -> None:
    sel = TClosenessSelector(t=0.1, epsilon_population=1.0, attributes=T_NAMES, seed=0)
    sel.set_population(np.array([0.3, 0.5, 0.8]))
    lo, hi = sel.target(np.zeros(3)), sel.target(np.ones(3))
    expected = sum(
        max(math.log(h / lo_), math.log((1 - lo_) / (1 - h)))
        for lo_, h in zip(lo.tolist(), hi.tolist(), strict=True)
    )
    assert sel.face_epsilon() == pytest.approx(expected, rel=1e-9)
    assert sel.face_epsilon() >= expected
    sel.set_population(np.array([0.05, 0.5, 0.5]))  # P - t < 0: a face can make Q = 0
    assert sel.face_epsilon() == math.inf


def _realised(sel: TClosenessSelector, p: float, i: int) -> Fraction:
    """The Bernoulli probability the sampler uses for attribute i of a face with p_face_i = p
    (every other attribute at 0.5): floor(Q 2^53) / 2^53, from the float64 target."""
    face = np.full(len(sel.attributes), 0.5)
    face[i] = p
    q = float(sel.target(face)[i])
    return Fraction(math.floor(Fraction(q) * 2**53), 2**53)


def _exact_face_loss(sel: TClosenessSelector, grid: np.ndarray) -> mpmath.mpf:
    """Worst log-likelihood ratio of one release over all pairs of faces from ``grid`` (exact
    realised probabilities, 50-digit logs); inf if some output has probability 0 for only one."""
    total = mpmath.mpf(0)
    with mpmath.workdps(50):
        for i in range(len(sel.attributes)):
            values = {_realised(sel, float(p), i) for p in grid}
            lo, hi = min(values), max(values)
            if lo == hi:
                continue
            if lo == 0 or hi == 1:
                return mpmath.inf
            worst = max(hi / lo, (1 - lo) / (1 - hi))
            total += mpmath.log(mpmath.mpf(worst.numerator) / worst.denominator)
    return total


@pytest.mark.parametrize(
    "pop,t",
    [
        ([0.25], 0.25 - 2.0**-55),  # the audit's example: old face_epsilon 37.4, true loss inf
        ([0.25], 0.25 - 5 * 2.0**-55),  # realised L is 2^-53, not 5 * 2^-55
        ([0.25, 0.7], 0.25 - 3 * 2.0**-52),
        ([0.3, 0.5, 0.8], 0.1),
        ([1e-20, 0.5], 1e-20 - 1e-36),  # realised L = U = 0 on the first attribute
        ([2.0**-50, 0.5], 2.0**-51),
        ([0.5, 0.5], 0.5 - 2.0**-53),  # U = 1 - 2^-53 is exactly realisable: finite
        ([0.5], 0.5),  # L = 0, U = 1: inf
        ([0.4, 0.6], 0.0),
    ],
)
def test_face_epsilon_is_exact_for_the_realised_probabilities(pop: list[float], t: float) -> None:
    """face_epsilon() is the loss of the Bernoulli(floor(Q 2^53)/2^53) draws actually made.

    The realised probabilities are enumerated over p_face in {0, 1} and 2000 other values
    (including ones near the clipping points), independently of face_epsilon's monotonicity
    argument; the worst likelihood ratio over all pairs is computed exactly. Fails on the old
    code, which used the real-valued ends max(P - t, 0), min(P + t, 1).
    """
    attrs = [f"a{i}" for i in range(len(pop))]
    sel = TClosenessSelector(t=t, epsilon_population=1.0, attributes=attrs, seed=0)
    sel.set_population(np.array(pop))
    rng = np.random.default_rng(5)
    near = np.concatenate([np.array(pop) + d for d in (-t, t)])
    near = np.concatenate([near, np.nextafter(near, 0.0), np.nextafter(near, 1.0)])
    grid = np.unique(np.clip(np.concatenate([[0.0, 1.0], rng.uniform(0, 1, 2000), near]), 0.0, 1.0))
    expected = _exact_face_loss(sel, grid)
    low, high = sel.realised_range()
    for i in range(len(pop)):
        values = [_realised(sel, float(p), i) for p in grid]
        assert (min(values), max(values)) == (low[i], high[i])
    got = sel.face_epsilon()
    if expected == mpmath.inf:
        assert got == math.inf
    else:
        assert math.isfinite(got)
        assert got >= expected  # never below the exact loss
        assert got <= expected * (1 + mpmath.mpf(10) ** -14) + mpmath.mpf(10) ** -40


def test_face_epsilon_infinite_example_is_really_infinite() -> None:
    """The audit's example: one face never releases 1, another does half the time."""
    sel = TClosenessSelector(t=0.25 - 2.0**-55, epsilon_population=1.0, attributes=["a"], seed=3)
    sel.set_population(np.array([0.25]))
    assert sel.target(np.zeros(1))[0] == 2.0**-55  # Q > 0 as a real number ...
    zeros = sel.batch(np.zeros((20_000, 1)))
    ones = sel.batch(np.ones((20_000, 1)))
    assert zeros.sum() == 0  # ... but floor(Q 2^53) = 0: the output 1 is impossible
    assert 9000 < ones.sum() < 11000
    assert sel.face_epsilon() == math.inf


def test_population_estimate_is_charged() -> None:
    sel = TClosenessSelector(t=0.2, epsilon_population=0.7, attributes=T_NAMES, seed=0)
    assert sel.guarantee.budget == PureDP(0.7)
    assert accounting.epsilon(sel.event(), 0.0, method="basic") == pytest.approx(0.7)
    assert "t-closeness" in sel.guarantee.note and "NOT a DP guarantee" in sel.guarantee.note
    assert "L1 sensitivity 3" in sel.guarantee.sensitivity
    assert sel.privacy_map(2).epsilon == pytest.approx(1.4)
    with pytest.raises(RuntimeError, match="fit"):
        sel.target(np.zeros(3))
    dpl = TClosenessSelector(t=0.2, epsilon_population=0.7, attributes=T_NAMES,
                             estimator="diffprivlib")  # fmt: skip
    assert dpl.guarantee.budget == PureDP(0.7) and "diffprivlib" in dpl.guarantee.note


def test_population_estimators_agree_with_each_other_and_the_truth() -> None:
    """Our grid Laplace and diffprivlib's histogram: both unbiased counts, matching variances."""
    rng = np.random.default_rng(5)
    labs = (rng.random((400, 3)) < np.array([0.1, 0.5, 0.9])).astype(np.int8)
    truth = labs.sum(axis=0)
    runs = 1500
    ours = np.empty((runs, 3))
    theirs = np.empty((runs, 3))
    for i in range(runs):
        a = TClosenessSelector(t=0.1, epsilon_population=1.0, attributes=T_NAMES, seed=1000 + i)
        b = TClosenessSelector(t=0.1, epsilon_population=1.0, attributes=T_NAMES, seed=5000 + i,
                               estimator="diffprivlib")  # fmt: skip
        a.fit(labs)
        b.fit(labs)
        ours[i] = a._noisy_counts[:, 1]  # type: ignore[index]
        theirs[i] = b._noisy_counts[:, 1]  # type: ignore[index]
    # Noise per count: scale c / eps = 3 (Laplace, variance 18; geometric at eps/c: ~17.8).
    for est in (ours, theirs):
        se = math.sqrt(18.0 / runs)
        assert np.all(np.abs(est.mean(axis=0) - truth) < 6 * se)
        var = est.var(axis=0, ddof=1)
        assert np.all((var > 18.0 * 0.8) & (var < 18.0 * 1.25)), var
    assert np.all(np.abs(ours.mean(axis=0) - theirs.mean(axis=0)) < 8 * math.sqrt(36.0 / runs))


def test_selector_validation_and_seeding() -> None:
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            TClosenessSelector(t=bad, epsilon_population=1.0, attributes=T_NAMES)
    with pytest.raises(ValueError):
        TClosenessSelector(t=0.1, epsilon_population=0.0, attributes=T_NAMES)
    with pytest.raises(ValueError):
        TClosenessSelector(t=0.1, epsilon_population=1.0, attributes=T_NAMES, estimator="x")  # type: ignore[arg-type]
    sel = _fitted(0.3, seed=3)
    with pytest.raises(ValueError):
        sel(np.array([0.5, 1.2, 0.0]))
    with pytest.raises(ValueError):
        sel(np.zeros(2))
    with pytest.raises(ValueError):
        sel.fit(np.full((4, 3), 2))
    a = _fitted(0.3, seed=3)
    np.testing.assert_array_equal(a.population, sel.population)
    np.testing.assert_array_equal(
        a.batch(np.full((100, 3), 0.5)), sel.batch(np.full((100, 3), 0.5))
    )
    assert sel.seeded and "SEEDED" in sel.guarantee.note
    assert not TClosenessSelector(t=0.1, epsilon_population=1.0, attributes=T_NAMES).seeded
