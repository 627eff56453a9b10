"""Exact, vectorised samplers for discrete Laplace and discrete Gaussian noise.

Every draw here is made from *integers*: uniform integers from :class:`~mechanisms.rng.Randomness`
(exactly uniform, Lemire's method) and exact comparisons. No float noise, no inverse CDF on
floats. The algorithms are those of Canonne, Kamath & Steinke, *The Discrete Gaussian for
Differential Privacy* (NeurIPS 2020), Algorithms 1-3, run on numpy arrays with masks so a whole
batch advances together:

* :func:`bernoulli_exp_neg` -- Bernoulli(exp(-num/den)) for integer arrays num, den.
* :func:`discrete_laplace` -- P[Z = z] proportional to exp(-|z| / t), integer scale t >= 1.
* :func:`discrete_gaussian` -- P[Z = z] proportional to exp(-z^2 / (2 s^2)), integer s >= 1.

The Gaussian's acceptance test needs probabilities exp(-a^2 / (2 s^2 t^2)) whose numerator and
denominator overflow int64; :func:`bernoulli_fraction` decides Bernoulli(p) for p = N/M from a
float64 estimate of p with a proven error margin, and settles the (rare, ~2^-38) draws that fall
inside the margin with exact Python-integer arithmetic on the *same* uniform draw extended by
more random bits. The decision is therefore exactly Bernoulli(N/M).

Returned noise is int64. Probability that any |Z| would exceed the int64 range is below
exp(-2^40) for the scales used by the mechanisms; a guard raises rather than wraps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from .geometric import geometric
from .rng import Randomness

__all__ = [
    "MAX_GAUSSIAN_S",
    "MAX_MARGIN",
    "MIN_MARGIN",
    "bernoulli_exp_neg",
    "bernoulli_fraction",
    "discrete_gaussian",
    "discrete_laplace",
    "discrete_laplace_cks",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

_I64_SAFE = 2**62
# Relative error allowed between the float estimate of p and the true p before the exact
# fallback is used. Each float64 operation is correctly rounded (IEEE 754), so computing p with
# k operations is off by at most k * 2^-53 relative; 2^-40 leaves a wide safety factor.
_FLOAT_MARGIN = 2.0**-40
# Accepted range for a caller-supplied ``margin``. Below 2^-41 the window of
# proofs/sampling.md F2 would no longer be provably wide enough for the float error of the
# estimates; above 1/2 the window is useless (and a huge margin makes m overflow int64).
MIN_MARGIN = 2.0**-41
MAX_MARGIN = 0.5


def _check_margin(margin: float) -> float:
    """Validate a relative float-error margin (a wrong one silently breaks exactness)."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.floating)):
        raise TypeError(f"margin must be a real number, got {type(margin).__name__}")
    m = float(margin)
    if not MIN_MARGIN <= m <= MAX_MARGIN:  # also rejects NaN
        raise ValueError(
            f"margin must lie in [2^-41, 1/2], got {margin!r}: a margin below the float error "
            "of the estimates makes the Bernoulli draws inexact (proofs/sampling.md F2)"
        )
    return m


def _bernoulli_exp_neg_unit(num: IntArray, den: IntArray, rng: Randomness) -> BoolArray:
    """Bernoulli(exp(-num/den)) elementwise, requires 0 <= num <= den (CKS Algorithm 1, gamma<=1).

    Draw A_k ~ Bernoulli(gamma / k) for k = 1, 2, ... until the first failure at index K; the
    event "K is odd" has probability exactly exp(-gamma).
    """
    n = num.shape[0]
    k_final = np.zeros(n, dtype=np.int64)
    active = np.arange(n)
    k = 1
    while active.size:
        a_num = num[active]
        a_den = den[active]
        if int(a_den.max()) > _I64_SAFE // k:
            raise OverflowError("denominator too large for exact int64 Bernoulli draws")
        # Bernoulli(num / (den * k)): a uniform integer in [0, den*k) falls below num.
        success = rng.integers_below(a_den * k) < a_num
        stopped = active[~success]
        k_final[stopped] = k
        active = active[success]
        k += 1
    out: BoolArray = (k_final % 2) == 1
    return out


def bernoulli_exp_neg(num: IntArray, den: IntArray, rng: Randomness) -> BoolArray:
    """Exact Bernoulli(exp(-num/den)) elementwise for int64 arrays, num >= 0, den >= 1.

    For gamma = num/den > 1 this is the product of floor(gamma) Bernoulli(exp(-1)) draws and one
    Bernoulli(exp(-(gamma - floor(gamma)))) draw, stopping at the first failure.
    """
    num = np.asarray(num, dtype=np.int64).ravel()
    den = np.asarray(den, dtype=np.int64).ravel()
    if num.shape != den.shape:
        raise ValueError("num and den must have the same shape")
    if num.size and (num.min() < 0 or den.min() < 1):
        raise ValueError("need num >= 0 and den >= 1")
    whole, frac = np.divmod(num, den)
    result = np.ones(num.shape[0], dtype=bool)
    # floor(gamma) factors of exp(-1), all must succeed
    pending = np.flatnonzero(whole > 0)
    remaining = whole[pending].copy()
    while pending.size:
        ones = np.ones(pending.size, dtype=np.int64)
        ok = _bernoulli_exp_neg_unit(ones, ones, rng)
        result[pending[~ok]] = False
        remaining -= 1
        keep = ok & (remaining > 0)
        pending, remaining = pending[keep], remaining[keep]
    alive = np.flatnonzero(result)
    if alive.size:
        result[alive] = _bernoulli_exp_neg_unit(frac[alive], den[alive], rng)
    return result


def discrete_laplace(t: int, size: int, rng: Randomness) -> IntArray:
    """``size`` i.i.d. draws with P[Z = z] proportional to exp(-|z|/t), integer t >= 1.

    Z = +-Y with Y from the exact table sampler :func:`mechanisms.geometric.geometric` and a fair
    sign bit; (-, 0) is rejected and redrawn so zero is not counted twice. Every z then has
    weight P[Y = |z|] / 2, proportional to exp(-|z|/t).
    """
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"t must be a positive integer, got {t!r}")
    t = int(t)
    out = geometric(t, size, rng)
    redo = _apply_random_signs(out, rng)
    while redo.size:  # (-, 0) was drawn: redraw those entries entirely
        again = geometric(t, redo.size, rng)
        bad = _apply_random_signs(again, rng)
        out[redo] = again
        redo = redo[bad]
    return out


def _apply_random_signs(y: IntArray, rng: Randomness) -> IntArray:
    """Negate each entry with probability 1/2 in place; return indices where (-, 0) was drawn."""
    words = rng.generator.bit_generator.random_raw(-(-y.size // 64))
    signs = np.unpackbits(np.asarray(words, dtype=np.uint64).view(np.uint8))[: y.size]
    negative = signs.view(np.bool_)
    np.negative(y, out=y, where=negative)
    return np.flatnonzero(negative & (y == 0))


def discrete_laplace_cks(t: int, size: int, rng: Randomness) -> IntArray:
    """Reference sampler (CKS Algorithm 2 with s = 1), integer arithmetic only.

    Slower than :func:`discrete_laplace`; kept as an independent implementation that tests
    compare the fast sampler against.
    """
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"t must be a positive integer, got {t!r}")
    t = int(t)
    if t > _I64_SAFE // 64:
        raise OverflowError(f"scale t = {t} too large for exact int64 draws")
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        m = todo.size
        # U uniform on {0..t-1}, kept with probability exp(-U/t): U is then truncated-geometric.
        u = rng.integers_below(np.full(m, t, dtype=np.int64))
        keep = bernoulli_exp_neg(u, np.full(m, t, dtype=np.int64), rng)
        # V ~ Geometric(1 - e^-1): count successes of Bernoulli(exp(-1)) before the first failure.
        v = np.zeros(m, dtype=np.int64)
        counting = np.arange(m)
        while counting.size:
            ones = np.ones(counting.size, dtype=np.int64)
            ok = _bernoulli_exp_neg_unit(ones, ones, rng)
            v[counting[ok]] += 1
            counting = counting[ok]
        if int(v.max(initial=0)) > (_I64_SAFE - t) // t:
            raise OverflowError("discrete Laplace draw outside the int64 range")
        y = u + t * v
        negative = rng.integers_below(np.full(m, 2, dtype=np.int64)) == 1
        # reject (negative, 0) so that zero is not counted twice
        accept = keep & ~(negative & (y == 0))
        z = np.where(negative, -y, y)
        out[todo[accept]] = z[accept]
        todo = todo[~accept]
    return out


def bernoulli_fraction(
    p_estimate: FloatArray,
    exact_fn: Callable[[int], tuple[int, int]],
    rng: Randomness,
    *,
    margin: float = _FLOAT_MARGIN,
) -> BoolArray:
    """Exact Bernoulli(N_i / M_i), given float estimates ``p_estimate`` within relative ``margin``.

    U uniform in [0, 1) is drawn as 53 bits w. If (w+1)/2^53 lies certainly below p the answer is
    1; if w/2^53 lies certainly above p it is 0. Otherwise ``exact_fn(i)`` gives (N_i, M_i) as
    Python ints and U is refined with more random bits until it is on one side of N_i/M_i, so the
    answer is exactly Bernoulli(N_i/M_i) whatever the float estimate was, provided it is within
    ``margin`` (relative) of the truth. ``margin`` must lie in [2^-41, 1/2] (``ValueError``
    otherwise); larger margins only send more draws down the exact path.
    """
    margin = _check_margin(margin)
    n = p_estimate.shape[0]
    w = rng.integers_below(np.full(n, 2**53, dtype=np.int64))
    unit = 2.0**-53
    lo = p_estimate * (1.0 - margin)
    hi = p_estimate * (1.0 + margin)
    u_low = w.astype(np.float64) * unit  # exact: w < 2^53
    u_high = (w + 1).astype(np.float64) * unit  # exact: w + 1 <= 2^53
    result: BoolArray = u_high <= lo
    undecided = np.flatnonzero(~result & (u_low < hi))
    for i in undecided:
        num, den = exact_fn(int(i))
        result[i] = _refine_exact(int(w[i]), 53, num, den, rng)
    return result


def _refine_exact(w: int, bits: int, num: int, den: int, rng: Randomness) -> bool:
    """Decide U < num/den where U's first ``bits`` bits are w; draw 62 more bits as needed."""
    while True:
        # U lies in [w / 2^bits, (w+1) / 2^bits)
        if (w + 1) * den <= num << bits:
            return True
        if w * den >= num << bits:
            return False
        extra = int(rng.integers_below(np.array([2**62], dtype=np.int64))[0])
        w = (w << 62) | extra
        bits += 62


MAX_GAUSSIAN_S = 2**24
# Largest number of factors exp(-gamma/m) in _bernoulli_exp_neg_square, exclusive: keeps the
# float -> int64 cast of m defined and m * k exact in float64.
_M_LIMIT = 2.0**52


def discrete_gaussian(
    s: int, size: int, rng: Randomness, *, margin: float = _FLOAT_MARGIN
) -> IntArray:
    """``size`` i.i.d. draws with P[Z = z] proportional to exp(-z^2 / (2 s^2)) (CKS Algorithm 3).

    Candidates Y come from the discrete Laplace with t = s + 1 and are accepted with probability
    exp(-(|Y| - s^2/t)^2 / (2 s^2)) = exp(-a^2 / (2 s^2 t^2)), a = |Y| t - s^2 (an integer).
    ``s`` is capped at 2^24 so that a is exact in int64 except with probability < exp(-2^13).
    """
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
        raise ValueError(f"s must be a positive integer, got {s!r}")
    s = int(s)
    margin = _check_margin(margin)
    if s > MAX_GAUSSIAN_S:
        raise OverflowError(f"s = {s} exceeds {MAX_GAUSSIAN_S}; use a coarser grid")
    t = s + 1
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        y = discrete_laplace(t, todo.size, rng)
        ay = np.abs(y)
        if int(ay.max(initial=0)) > _I64_SAFE // t:
            raise OverflowError("discrete Gaussian candidate outside the exact int64 range")
        a = ay * t - s * s  # exact int64
        accept = _bernoulli_exp_neg_square(a, s, t, rng, margin)
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


def _bernoulli_exp_neg_square(
    a: IntArray, s: int, t: int, rng: Randomness, margin: float
) -> BoolArray:
    """Exact Bernoulli(exp(-gamma_i)) with gamma_i = a_i^2 / (2 s^2 t^2).

    exp(-gamma) is the product of m factors exp(-gamma/m), m = floor(gamma_est) + 1 >= gamma, each
    decided by CKS Algorithm 1 whose Bernoulli(gamma / (m k)) draws go through
    :func:`bernoulli_fraction`. Float error: a -> float, the division by s*t (exact), the square
    (which doubles its argument's error), m*k -> float and the final division: relative error
    < 7.01 * 2^-53 (proofs/sampling.md F2), far inside ``margin``.

    Raises ``OverflowError`` if some gamma_est * (1 + margin) >= 2^52, so that m fits int64 and
    m*k is exact in float64; that needs |Y| >= 2^26 s, probability < exp(-2^25) per candidate.
    """
    n = a.shape[0]
    st = float(s) * float(t)
    gamma = (a.astype(np.float64) / st) ** 2 / 2.0
    m_float = np.floor(gamma * (1.0 + margin))
    if n and float(m_float.max()) >= _M_LIMIT:
        raise OverflowError("discrete Gaussian acceptance exponent too large for exact draws")
    m = m_float.astype(np.int64) + 1
    den_base = 2 * (s * t) ** 2  # Python int, exact
    result = np.ones(n, dtype=bool)
    factors_left = m.copy()
    alive = np.arange(n)
    while alive.size:
        k_final = np.zeros(alive.size, dtype=np.int64)
        pos = np.arange(alive.size)
        k = 1
        while pos.size:
            idx = alive[pos]
            p_est = gamma[idx] / (m[idx].astype(np.float64) * k)

            def exact(i: int, idx: IntArray = idx, k: int = k) -> tuple[int, int]:
                j = int(idx[i])
                aj = int(a[j])
                return aj * aj, den_base * int(m[j]) * k

            success = bernoulli_fraction(p_est, exact, rng, margin=margin)
            k_final[pos[~success]] = k
            pos = pos[success]
            k += 1
        factor_ok = (k_final % 2) == 1
        result[alive[~factor_ok]] = False
        factors_left[alive] -= 1
        alive = alive[factor_ok & (factors_left[alive] > 0)]
    return result
