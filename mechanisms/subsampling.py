"""Poisson subsampling with secret coins, and the privacy amplification it buys.

Guarantee (add/remove-one neighbours): if ``M`` is (epsilon, delta)-DP, then "keep each record
independently with probability q, run ``M`` on the kept records" is
(ln(1 + q(e^epsilon - 1)), q delta)-DP (Li, Qardaji & Su 2012; Balle, Barthe & Gaboardi 2018,
Thm. 8). The bound is stated for add/remove neighbours only: for replace-one neighbours the
amplified loss is different and is not offered here.

The coins must stay secret: the amplification holds only if nobody learns which records were kept.
"""

from __future__ import annotations

import copy
import decimal
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, TypeVar, overload

import numpy as np
from dp_accounting import dp_event

from .base import check_probability
from .budgets import ZCDP, ApproxDP, Budget, PureDP
from .rng import Randomness, resolve

__all__ = ["PoissonSubsample", "poisson_amplify"]

T = TypeVar("T")

_WORD_BITS = 64
_WORD_MASK = (1 << _WORD_BITS) - 1
# Relative margin added to the high-precision amplified epsilon before rounding it to a float.
# It dominates the decimal computation's own error (about 10^-55 relative) by many orders.
_MARGIN_EXP = 40
_BASE_DIGITS = 60


def _check_neighbouring(neighbouring: str) -> None:
    if neighbouring != "add_remove":
        raise ValueError(
            f"neighbouring={neighbouring!r} is not supported: the Poisson-subsampling "
            "amplification bound ln(1 + q(e^eps - 1)) holds for add/remove-one neighbours only "
            "(a record is present or absent). Use neighbouring='add_remove'."
        )


def _float_at_least(value: decimal.Decimal) -> float:
    """Smallest float >= ``value`` (up to overflow to inf)."""
    f = float(value)
    while not math.isinf(f) and decimal.Decimal(f) < value:
        f = math.nextafter(f, math.inf)
    return f


def _amplified_epsilon(epsilon: float, rate: float) -> float:
    """An upper bound on ln(1 + rate (e^epsilon - 1)), at most one ulp above the true value.

    Computed in decimal arithmetic whose precision grows with the cancellation the inputs can
    cause, then a relative margin of 1e-40 is added and the result rounded *up* to a float.
    (A float evaluation with log1p/expm1 plus one ``nextafter`` is accurate too, but its error is
    only bounded by the libm's few-ulp guarantees, so it is not provably an upper bound.)
    """
    if epsilon == 0.0:
        return 0.0
    if math.isinf(epsilon):
        return math.inf
    if rate == 1.0:
        return epsilon
    eps_d = decimal.Decimal(epsilon)
    q_d = decimal.Decimal(rate)
    digits = _BASE_DIGITS + max(0, -eps_d.adjusted()) + max(0, -q_d.adjusted())
    ctx = decimal.Context(prec=digits, traps=[decimal.InvalidOperation, decimal.DivisionByZero])
    if eps_d < 1:
        # ln(1 + q (e^eps - 1)); e^eps - 1 keeps `digits` - |log10 eps| significant digits.
        growth = ctx.subtract(ctx.exp(eps_d), 1)
        value = ctx.ln(ctx.add(1, ctx.multiply(q_d, growth)))
    else:
        # eps + ln(q + (1 - q) e^-eps): no overflow for large eps; the cancellation between
        # eps and the (negative) log term loses at most |log10 q| digits, covered by `digits`.
        shrink = ctx.multiply(ctx.subtract(1, q_d), ctx.exp(ctx.minus(eps_d)))
        value = ctx.add(eps_d, ctx.ln(ctx.add(q_d, shrink)))
    bound = ctx.multiply(value, ctx.add(1, decimal.Decimal(10) ** -_MARGIN_EXP))
    return _float_at_least(bound)


def _product_up(a: float, b: float) -> float:
    """Smallest float >= a * b (exact rational comparison)."""
    prod = a * b
    if not math.isinf(prod) and Fraction(prod) < Fraction(a) * Fraction(b):
        prod = math.nextafter(prod, math.inf)
    return prod


def poisson_amplify(budget: Budget, rate: float, *, neighbouring: str = "add_remove") -> Budget:
    """Privacy of "Poisson-subsample with probability ``rate``, then run an ``budget`` mechanism".

    * PureDP(eps) -> PureDP(ln(1 + rate (e^eps - 1)))
    * ApproxDP(eps, delta) -> ApproxDP(ln(1 + rate (e^eps - 1)), rate * delta)

    Both numbers are rounded up, so the result never understates the true bound. Sound for
    add/remove-one neighbours only (other relations raise ``ValueError``). zCDP has no simple
    sound amplification formula and raises ``TypeError``: account the subsampled mechanism with
    an RDP/PLD accountant instead.
    """
    _check_neighbouring(neighbouring)
    q = check_probability("rate", rate, open_low=True, open_high=False)
    if isinstance(budget, ZCDP):
        raise TypeError(
            "poisson_amplify does not accept ZCDP: there is no simple sound amplification "
            "formula for zCDP under Poisson subsampling. Describe the mechanism as a DP event and "
            "use mechanisms.accounting.rdp_epsilon / pld_epsilon on "
            "PoissonSubsample(...).event(inner_event) instead."
        )
    if isinstance(budget, PureDP):
        return PureDP(_amplified_epsilon(budget.epsilon, q), allow_inf=budget.allow_inf)
    if isinstance(budget, ApproxDP):
        return ApproxDP(
            _amplified_epsilon(budget.epsilon, q),
            _product_up(q, budget.delta),
            allow_inf=budget.allow_inf,
        )
    raise TypeError(f"budget must be PureDP or ApproxDP, got {type(budget).__name__}")


class PoissonSubsample:
    """Keep each record independently with probability ``rate``, using secret coins.

    The realised inclusion probability is the float ``rate`` itself, exactly: ``rate`` is a
    dyadic rational n / 2^k, and each coin compares a uniform integer of ceil(k / 64) 64-bit
    words with the exact integer threshold n * 2^(64 ceil(k/64) - k) (extra words are drawn only
    on ties, which happen with probability 2^-64 per word). No float arithmetic touches the
    coins. Randomness is a CSPRNG unless a seed is given (tests only; ``seeded`` then says so).
    """

    __slots__ = ("_randomness", "_rate", "_threshold_words")

    def __init__(
        self,
        *,
        rate: float,
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self._rate = check_probability("rate", rate, open_low=True, open_high=False)
        self._randomness = resolve(randomness, seed)
        numerator, denominator = Fraction(self._rate).as_integer_ratio()
        bits = denominator.bit_length() - 1  # denominator == 2**bits
        n_words = max(1, -(-bits // _WORD_BITS))
        threshold = numerator << (n_words * _WORD_BITS - bits)
        # rate == 1 gives threshold == 2^(64 n_words): every coin is kept, handled in sample_mask.
        self._threshold_words: tuple[int, ...] = tuple(
            (threshold >> (_WORD_BITS * (n_words - 1 - i))) & _WORD_MASK for i in range(n_words)
        )

    @property
    def rate(self) -> float:
        """The exact inclusion probability of every record."""
        return self._rate

    @property
    def randomness(self) -> Randomness:
        return self._randomness

    @property
    def seeded(self) -> bool:
        """True when the coins are reproducible (tests only): then they are not secret."""
        return self._randomness.seeded

    def __repr__(self) -> str:
        return f"PoissonSubsample(rate={self._rate!r}, seeded={self.seeded})"

    def __copy__(self) -> PoissonSubsample:
        """A full copy with its own coins: fresh OS key if secure, same state if seeded."""
        return copy.deepcopy(self)

    def _words(self, size: int) -> np.ndarray:
        return self._randomness.generator.integers(
            0, _WORD_MASK, size=size, dtype=np.uint64, endpoint=True
        )

    def sample_mask(self, n: int) -> np.ndarray:
        """Boolean mask of length ``n``: True for each kept record (independent coins)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self._rate == 1.0:
            return np.ones(n, dtype=bool)
        keep = np.zeros(n, dtype=bool)
        undecided = np.arange(n)
        for word in self._threshold_words:
            if undecided.size == 0:
                break
            draws = self._words(undecided.size)
            t = np.uint64(word)
            keep[undecided[draws < t]] = True
            undecided = undecided[draws == t]
        # Still undecided: the uniform integer equals the threshold exactly, so it is not below it.
        return keep

    @overload
    def sample(self, records: np.ndarray) -> np.ndarray: ...

    @overload
    def sample(self, records: Sequence[T]) -> list[T]: ...

    def sample(self, records: np.ndarray | Sequence[Any]) -> np.ndarray | list[Any]:
        """The kept records: an array (rows of axis 0) for numpy input, else a list."""
        if isinstance(records, np.ndarray):
            if records.ndim == 0:
                raise ValueError("records must have at least one dimension")
            kept: np.ndarray = records[self.sample_mask(records.shape[0])]
            return kept
        items = list(records)
        mask = self.sample_mask(len(items))
        return [item for item, kept in zip(items, mask.tolist(), strict=True) if kept]

    def amplify(self, budget: Budget) -> Budget:
        """Privacy of running a ``budget`` mechanism on this sample (add/remove neighbours)."""
        return poisson_amplify(budget, self._rate)

    def event(self, inner_event: dp_event.DpEvent) -> dp_event.DpEvent:
        """The dp-accounting event of running ``inner_event`` on this sample."""
        if not isinstance(inner_event, dp_event.DpEvent):
            raise TypeError(f"inner_event must be a DpEvent, got {type(inner_event).__name__}")
        return dp_event.PoissonSampledDpEvent(sampling_probability=self._rate, event=inner_event)
