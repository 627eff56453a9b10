"""The exponential mechanism (McSherry & Talwar 2007), sampled exactly from integer draws.

Given a score vector u (higher is better) over k public candidates, :class:`Exponential` outputs
index i with probability proportional to ``exp(eps * u_i / (2 * Delta))``, or
``exp(eps * u_i / Delta)`` when ``monotonic=True``.

Guarantee: PureDP(eps) for neighbouring inputs x, x' whose score vectors satisfy
``max_i |u(x, i) - u(x', i)| <= Delta``; with ``monotonic=True`` the neighbours' scores must also
all move in the same direction (every ``u(x', i) - u(x, i) >= 0``, or every one ``<= 0``).
A score of ``-inf`` removes a candidate: it is never output, and must be ``-inf`` in every
neighbour too.

Two layers
----------
* :meth:`Exponential.log_probabilities` / :meth:`Exponential.probabilities` report the *ideal*
  mechanism at the nominal eps, computed in log space (shift by the row maximum, then
  ``scipy.special.logsumexp``), so nothing overflows or underflows into a NaN.
* :meth:`Exponential.__call__` / :meth:`Exponential.batch` sample, with integer draws only,
  *exactly* from the float64 weights listed by :meth:`Exponential.sampling_probabilities`. These
  use a slightly smaller ``eps'`` (:attr:`Exponential.sampling_epsilon`) and a tiny floor, so that
  the float64 rounding can never push the realised ratio above ``e^eps``.

The sampler
-----------
Per row, with ``c' = eps' / (2 Delta)`` (or ``eps' / Delta``) and ``m = max_j u_j``::

    w_i = fl(exp(fl(fl(u_i - m) * fl(c'))) + phi),   phi = 2^-P,   P = 62 - ceil(log2 k).

Write ``w_i = f_i * 2^(e_i)`` with mantissa ``f_i`` in [1/2, 1) (``numpy.frexp``, exact). Then
repeat: propose i with probability ``2^(e_i) / sum_j 2^(e_j)`` (inverse CDF of an exactly
uniform integer against exact int64 cumulative sums of the powers of two ``2^(e_i - min e)``),
and accept with probability ``f_i`` (an exactly uniform integer in [0, 2^53) compared with the
53-bit integer ``f_i * 2^53``). The accepted index has probability exactly ``w_i / sum_j w_j``:
there is no rounding in the sampling step at all, and every acceptance has probability >= 1/2.
The powers of two fit: ``w_i`` lies in [2^-P, 2), so the int64 sum is at most ``k * 2^P <= 2^62``.

Why the floor phi costs no privacy
----------------------------------
Write ``E_i = exp(c' u_i)``; the ideal sampled weights are ``v_i = E_i / E_max + phi``, i.e.
``q_i = (E_i + phi E_max) / (sum_j E_j + k phi E_max)``. Between neighbours every ``E_j`` and
``E_max`` move by a factor in ``[e^(-c' Delta), e^(c' Delta)]`` (in the monotone case: all in the
same direction), so the numerator and the denominator each move by at most that factor and
``q_i(u) / q_i(u') <= e^(eps')`` exactly as in the textbook proof. The floor only guarantees that
every realised probability is at least ``~2^-P`` times the top candidate's, so that the float
errors below are *relative* errors (a candidate whose probability rounds to zero for u but not
for u' would break pure DP outright: that is diffprivlib's "Can't find a candidate" underflow in
another guise). Utility cost: at most ``k * 2^-P <= k^2 2^-62`` of extra mass relative to the best
candidate (< 2.5e-7 for k <= 10^6).

Float64 error, and what it costs
--------------------------------
Let ``u = 2^-53``. Sums, products and quotients are correctly rounded (relative error <= u); for
``numpy.exp`` we assume a relative error <= ``2^-42`` on [-90, 0] (2048 ulp; numpy's kernels
measure a few ulp; checked once per process on fixed points before the first weight, and by a
test against 60-digit ``decimal`` arithmetic). Let ``d_i* = c'(u_i - m)``
in exact arithmetic and ``d_i`` its float64 value. Three roundings give
``|d_i - d_i*| <= 3.01 u |d_i*|`` (plus ~2^-1074 if the product underflows; an overflow of
``u_i - m`` to -inf only happens when ``|d_i*| > 2^63`` because ``c' >= 2^-960`` is enforced).
Split at ``D = (P + 64) ln 2 <= 87``:

* ``|d_i*| <= D``: ``exp(d_i) / exp(d_i*)`` is within ``exp(+-3.01 u D)``, i.e. relative error
  <= 2.9e-14, and ``exp`` adds <= 2.3e-13;
* ``|d_i*| > D``: both ``exp(d_i*)`` and the computed value are below ``e^-D(1 - 3.01u)``, an
  absolute error <= ``3 e^-D = 3 * 2^-(P+64)``, i.e. <= ``3 * 2^-64`` relative to ``v_i >= phi``.

Adding ``phi`` rounds once more (u). So every ``w_i`` is within relative error ``a = 2.6e-13``
of ``v_i``; we charge ``alpha = 1e-12`` (almost four times that). The realised probabilities
``r_i = w_i / sum w`` then satisfy ``r_i / q_i`` in ``[(1-alpha)/(1+alpha), (1+alpha)/(1-alpha)]``,
hence ``r_i(u) / r_i(u') <= e^(eps') ((1+alpha)/(1-alpha))^2``. Choosing

    eps' = eps - 2 ln((1 + alpha) / (1 - alpha))   (= eps - 4.0e-12, rounded down)

makes the realised ratio at most ``e^eps``. Epsilons below ~4e-12 are therefore refused.
"""

from __future__ import annotations

import decimal
import math
import sys
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from dp_accounting import dp_event
from scipy.special import logsumexp

from .accounting import pure_event
from .base import Guarantee, Mechanism, check_positive_finite, format_down, format_up
from .budgets import PureDP, ceil_float
from .metrics import LINF, Distance
from .rng import Randomness, resolve

__all__ = ["Exponential"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_ULP = 2.0**-53
# Assumed bound on the relative error of numpy.exp for float64 arguments in [-90, 0]: 2^-42
# (2048 ulp; numpy measures <= a few ulp). Checked once per process on this machine's numpy
# kernels before the first sampling weight is computed (_check_numpy_exp), and by the tests.
_EXP_REL_ERR = 2.0**-42
# Points the per-process check evaluates: 512 spread over [-90, 0], plus tiny arguments and a
# few below -90 (where only exp(x) <= e^x (1 + _EXP_REL_ERR) is used).
_EXP_CHECK_POINTS: tuple[float, ...] = (
    *(-90.0 * (i + 0.5) / 512 for i in range(512)),
    *(-(2.0**-e) for e in range(1, 60, 4)),
    -90.0,
    -0.0,
    -100.0,
    -300.0,
    -700.0,
)
_exp_checked = False


def _check_numpy_exp() -> None:
    """Refuse to sample if this numpy's ``exp`` misses the assumed accuracy on the check points.

    Evaluates ``np.exp`` the way the sampler does (a contiguous float64 array, so the same SIMD
    kernel) plus a strided view and a 1-element array (scalar / tail loops), and compares each
    value with a 40-digit ``decimal`` exponential. A spot check, not a proof
    (proofs/exponential.md R1): it catches a kernel that is grossly less accurate than assumed.
    """
    global _exp_checked
    if _exp_checked:
        return
    xs = np.array(_EXP_CHECK_POINTS, dtype=np.float64)
    runs = [(xs, np.exp(xs)), (xs[::3], np.exp(xs[::3])), (xs[:1], np.exp(xs[:1]))]
    bound = decimal.Decimal(_EXP_REL_ERR)
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        for args, values in runs:
            for x, y in zip(args.tolist(), values.tolist(), strict=True):
                exact = decimal.Decimal(x).exp()
                err = (decimal.Decimal(y) - exact) / exact
                if err > bound or (x >= -90.0 and -err > bound):
                    raise RuntimeError(
                        f"numpy.exp({x!r}) = {y!r} is off by a relative {float(err):.3g}, more "
                        f"than the {_EXP_REL_ERR:.3g} the exponential mechanism's float-error "
                        "charge assumes (proofs/exponential.md R1): refusing to sample"
                    )
    _exp_checked = True


# Relative error charged for each sampled weight (see the module docstring).
_ALPHA = 1e-12
# eps - eps': 2 ln((1 + alpha) / (1 - alpha)), rounded up generously.
_EPS_SHRINK = math.nextafter(2.0 * (math.log1p(_ALPHA) - math.log1p(-_ALPHA)), math.inf) * (
    1.0 + 1e-6
)
# Range of eps/(kappa*Delta) for which the error argument holds (no overflow / subnormal scale).
_MIN_SCALE_RATE = 2.0**-960
_MAX_SCALE_RATE = 2.0**960
# Beyond this many candidates the floor 2^-P would visibly distort the distribution.
_MAX_CANDIDATES = 2**40
_INT53 = 1 << 53
_INT62 = 1 << 62


def _floor_bits(k: int) -> int:
    """P such that k * 2^P <= 2^62: the floor is phi = 2^-P relative to the top weight."""
    return 62 - (k - 1).bit_length()


def weight_error_bound(k: int) -> float:
    """Proven bound on the relative error of each float64 sampling weight for k candidates.

    Mirrors the module docstring; the charged ``alpha = 1e-12`` must dominate it.
    """
    p = _floor_bits(k)
    d = (p + 64) * math.log(2.0)
    gamma3 = 3.0 * _ULP / (1.0 - 3.0 * _ULP)
    middle = math.expm1(gamma3 * d + 2.0**-1000) * (1.0 + _EXP_REL_ERR) + _EXP_REL_ERR
    tail = 3.0 * math.exp(-d * (1.0 - gamma3)) * 2.0**p + 2.0**-1000
    return max(middle, tail) * (1.0 + _ULP) + _ULP


class Exponential(Mechanism):
    """Exponential mechanism over k candidates: PureDP(eps) for score sensitivity Delta.

    Output index i has probability proportional to ``exp(eps u_i / (2 Delta))`` (or
    ``exp(eps u_i / Delta)`` with ``monotonic=True``, valid only when neighbours' scores all move
    in the same direction). Sampling uses integer draws only; see the module docstring for how
    float64 rounding is charged (the sampler runs at ``eps' = eps - 4e-12``).
    """

    input_metric = LINF

    def __init__(
        self,
        *,
        epsilon: float,
        sensitivity: float,
        monotonic: bool = False,
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self._epsilon = check_positive_finite("epsilon", epsilon)
        self._sensitivity = check_positive_finite("sensitivity", sensitivity)
        if not isinstance(monotonic, bool):
            raise TypeError(f"monotonic must be a bool, got {type(monotonic).__name__}")
        self._monotonic = monotonic
        self._kappa = 1.0 if monotonic else 2.0
        eps_s = math.nextafter(self._epsilon - _EPS_SHRINK, 0.0)
        self._sampling_epsilon = eps_s
        self._rate = self._epsilon / (self._kappa * self._sensitivity)
        self._sampling_rate = eps_s / (self._kappa * self._sensitivity)
        if eps_s <= 0.0 or not (
            _MIN_SCALE_RATE <= self._sampling_rate and self._rate <= _MAX_SCALE_RATE
        ):
            scale = Fraction(self._kappa) * Fraction(self._sensitivity)
            low = max(scale * Fraction(_MIN_SCALE_RATE) * 2, 2 * Fraction(_EPS_SHRINK))
            high = min(scale * Fraction(_MAX_SCALE_RATE), Fraction(sys.float_info.max))
            why = (
                f"epsilon is too small: the sampler charges {_EPS_SHRINK:.3g} of it for float64 "
                "rounding and samples at epsilon minus that, so epsilon must exceed it"
                if eps_s <= 0.0
                else f"epsilon / sensitivity = {self._epsilon / self._sensitivity:.3g} is "
                f"outside [{_MIN_SCALE_RATE:.3g}, {_MAX_SCALE_RATE:.3g}], where the float64 "
                "error bound of the sampling weights holds (no overflow, no subnormal scale)"
            )
            advice = (
                f"use epsilon in [{format_up(low)}, {format_down(high)}]"
                if low <= high
                else "no epsilon works at this sensitivity: rescale the scores"
            )
            raise ValueError(
                f"epsilon = {self._epsilon:g} is out of range for sensitivity "
                f"{self._sensitivity:g}: {why} (proofs/exponential.md); {advice}"
            )
        self.randomness = resolve(randomness, seed)

    # ------------------------------------------------------------------ declared parameters
    @property
    def epsilon(self) -> float:
        """Nominal epsilon: the guarantee."""
        return self._epsilon

    @property
    def sensitivity(self) -> float:
        """Score sensitivity Delta = max over candidates of |u(x, i) - u(x', i)|."""
        return self._sensitivity

    @property
    def monotonic(self) -> bool:
        return self._monotonic

    @property
    def sampling_epsilon(self) -> float:
        """The eps' < eps the sampler actually uses, leaving room for float64 rounding."""
        return self._sampling_epsilon

    @property
    def scale(self) -> float:
        """Temperature of the softmax: 2 Delta / eps (Delta / eps when monotonic)."""
        return self._kappa * self._sensitivity / self._epsilon

    @property
    def guarantee(self) -> Guarantee:
        direction = (
            " and all candidates' scores move in the same direction" if self._monotonic else ""
        )
        return Guarantee(
            budget=PureDP(self._epsilon),
            privacy_unit="one individual of the input data set",
            neighbouring=(
                "data sets differing in one individual, for which every candidate's score changes "
                f"by at most Delta{direction}"
            ),
            sensitivity=(
                f"score sensitivity Delta = {self._sensitivity:.6g} "
                "(max over candidates of |u(x,i) - u(x',i)|, stated by the caller from the score "
                "function's domain)"
            ),
            note=(
                "Releases one candidate index, sampled exactly from integer draws at "
                f"eps' = {self._sampling_epsilon:.17g} so float64 rounding stays inside eps."
                + (" Randomness is SEEDED (reproducible, not secret)." if self.seeded else "")
            ),
        )

    def privacy_map(self, d_in: float | Distance) -> PureDP:
        """Loss when neighbours' scores differ by at most ``d_in`` per candidate.

        The map is ``eps' d_in / Delta + (eps - eps')`` (the float64 charge ``eps - eps'`` does
        not scale with d_in), evaluated exactly in rationals and rounded up: exactly ``eps`` at
        Delta, at most ``eps * d_in / Delta`` beyond, 0 at ``d_in = 0``, monotone in ``d_in``.
        """
        d = self._check_d_in(d_in)
        if d == 0.0:
            return PureDP(0.0)
        if math.isinf(d):
            return PureDP(math.inf, allow_inf=True)
        eps, eps_s = Fraction(self._epsilon), Fraction(self._sampling_epsilon)
        loss = eps_s * Fraction(d) / Fraction(self._sensitivity) + (eps - eps_s)
        if loss > Fraction(sys.float_info.max):
            return PureDP(math.inf, allow_inf=True)
        return PureDP(ceil_float(loss))

    def event(self) -> dp_event.DpEvent:
        """A pure eps-DP release, as 2-bucket randomized response (its dominating pair).

        ``RandomizedResponseDpEvent(noise_parameter=2 / (1 + e^eps), num_buckets=2)`` via
        :func:`mechanisms.accounting.pure_event`: RR keeps the bucket w.p. ``1 - p/2`` and flips it
        w.p. ``p/2``, a ratio of exactly ``e^eps`` (p rounded down, so never less than eps).
        Account it through :mod:`mechanisms.accounting`, which works around dp-accounting 0.6.0's
        handling of this event (refused under add/remove; count ignored by the PLD accountant).
        """
        return pure_event(self._epsilon)

    # ------------------------------------------------------------------ probabilities
    def log_probabilities(self, scores: npt.ArrayLike) -> FloatArray:
        """Ideal log-probabilities at the nominal eps, shape (k,) or (n, k); -inf scores -> -inf."""
        u, squeeze = _validate(scores, allow_2d=True)
        z = self._shifted(u, self._rate)
        out: FloatArray = z - logsumexp(z, axis=1, keepdims=True)
        return out[0] if squeeze else out

    def probabilities(self, scores: npt.ArrayLike) -> FloatArray:
        """Ideal probabilities at the nominal eps (``exp`` of :meth:`log_probabilities`)."""
        return np.exp(self.log_probabilities(scores))

    def sampling_probabilities(self, scores: npt.ArrayLike) -> FloatArray:
        """The distribution the sampler draws from *exactly* (eps', floor), rounded to float64."""
        u, squeeze = _validate(scores, allow_2d=True)
        w = self._sampling_weights(u)
        out: FloatArray = w / np.sum(w, axis=1, keepdims=True)
        return out[0] if squeeze else out

    # ------------------------------------------------------------------ sampling
    def __call__(self, scores: npt.ArrayLike) -> int:
        """Release one candidate index for a score vector of shape (k,)."""
        u, _ = _validate(scores, allow_2d=False)
        return int(self._sample(u)[0])

    def batch(self, scores: npt.ArrayLike) -> IntArray:
        """One independent release per row of an (n, k) score array; returns int64 indices."""
        u, _ = _validate(scores, allow_2d=True, require_2d=True)
        return self._sample(u)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _shifted(u: FloatArray, rate: float) -> FloatArray:
        """``fl(fl(u - max) * rate)`` per row: <= 0, exactly 0 at the maximum, -inf for -inf."""
        top = np.max(u, axis=1, keepdims=True)
        with np.errstate(over="ignore", under="ignore"):
            z: FloatArray = (u - top) * rate
        return z

    def _sampling_weights(self, u: FloatArray) -> FloatArray:
        _check_numpy_exp()
        k = u.shape[1]
        phi = 2.0 ** -_floor_bits(k)
        d = self._shifted(u, self._sampling_rate)
        with np.errstate(over="ignore", under="ignore"):
            w: FloatArray = np.exp(d) + phi
        w[np.isneginf(u)] = 0.0
        return w

    def _sample(self, u: FloatArray) -> IntArray:
        n = u.shape[0]
        w = self._sampling_weights(u)
        live = w > 0.0
        mant, expo = np.frexp(w)
        accept_below = np.ldexp(mant, 53).astype(np.int64)  # exact: f_i * 2^53 in [2^52, 2^53)
        emin = np.min(np.where(live, expo, np.iinfo(np.int32).max), axis=1, keepdims=True)
        shift = np.where(live, expo - emin, 0).astype(np.int64)
        powers = np.where(live, np.left_shift(np.int64(1), shift), np.int64(0))
        cum = np.cumsum(powers, axis=1, dtype=np.int64)
        total = cum[:, -1]
        if np.any(shift > 62) or np.any(total > _INT62) or np.any(total <= 0):
            raise RuntimeError("internal error: proposal weights out of int64 range")
        gen = self.randomness.generator
        out = np.empty(n, dtype=np.int64)
        pending = np.arange(n, dtype=np.int64)
        while pending.size:
            draw = self.randomness.integers_below(total[pending])
            idx = np.sum(cum[pending] <= draw[:, None], axis=1).astype(np.int64)
            coin = gen.integers(0, _INT53, size=pending.size, dtype=np.int64)
            ok = coin < accept_below[pending, idx]
            out[pending[ok]] = idx[ok]
            pending = pending[~ok]
        return out


def _validate(
    scores: npt.ArrayLike, *, allow_2d: bool, require_2d: bool = False
) -> tuple[FloatArray, bool]:
    """Scores as a float64 (n, k) array, plus whether the input was 1-D."""
    arr = np.asarray(scores)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"scores must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        raise TypeError(
            f"scores of dtype {arr.dtype} would be rounded to float64, which can widen the gap "
            "between neighbours' scores beyond the sensitivity: pass float64 scores"
        )
    if require_2d and arr.ndim != 2:
        raise ValueError(f"batch() takes an (n, k) score array, got shape {arr.shape}")
    if arr.ndim not in ((1, 2) if allow_2d else (1,)):
        expected = "(k,) or (n, k)" if allow_2d else "(k,)"
        raise ValueError(f"scores must have shape {expected}, got {arr.shape}")
    if arr.dtype.kind in "iu" and arr.size and (np.max(arr) > 2**53 or np.min(arr) < -(2**53)):
        raise ValueError("integer scores beyond 2^53 in magnitude are not exact in float64")
    u = np.atleast_2d(arr.astype(np.float64))
    k = u.shape[1]
    if k == 0:
        raise ValueError("scores are empty: there must be at least one candidate")
    if k > _MAX_CANDIDATES:
        raise ValueError(f"at most {_MAX_CANDIDATES} candidates are supported, got {k}")
    if np.any(np.isnan(u)):
        raise ValueError("scores contain NaN")
    if np.any(np.isposinf(u)):
        raise ValueError("scores contain +inf: a score must be finite (or -inf to exclude one)")
    dead = np.all(np.isneginf(u), axis=1)
    if np.any(dead):
        rows = np.flatnonzero(dead)[:5].tolist()
        raise ValueError(f"every candidate has score -inf (rows {rows}): nothing can be output")
    return u, arr.ndim == 1
