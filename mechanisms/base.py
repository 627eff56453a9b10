"""What every mechanism declares, so receipts and accountants can read it uniformly."""

from __future__ import annotations

import abc
import copy
import decimal
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

from dp_accounting import dp_event

from .budgets import Budget
from .metrics import Distance, Metric, MetricMismatch
from .rng import Randomness

__all__ = [
    "SEEDED_SUFFIX",
    "Guarantee",
    "Mechanism",
    "check_positive_finite",
    "check_probability",
    "format_down",
    "format_up",
]


SEEDED_SUFFIX = (
    " SEEDED randomness: reproducible by anyone who knows the seed, so this release is NOT private."
)
"""Appended by :meth:`Mechanism.statement` when the mechanism's randomness is seeded."""


def check_positive_finite(name: str, value: float) -> float:
    """Validate a strictly positive, finite real parameter (epsilon, sensitivity, scale...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value <= 0.0:
        raise ValueError(f"{name} must be > 0 and finite, got {value}")
    return value


def _format_rounded(value: Fraction | float, rounding: str, digits: int) -> str:
    q = Fraction(value)
    if q == 0:
        return "0"
    with decimal.localcontext() as ctx:
        ctx.prec = digits
        ctx.rounding = rounding
        ctx.Emax, ctx.Emin = 10**6, -(10**6)
        d = decimal.Decimal(q.numerator) / decimal.Decimal(q.denominator)
    return format(d, "g")


def format_up(value: Fraction | float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, rounded up (for "use x >= ..." advice)."""
    return _format_rounded(value, decimal.ROUND_CEILING, digits)


def format_down(value: Fraction | float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, rounded down (for "use x <= ..." advice)."""
    return _format_rounded(value, decimal.ROUND_FLOOR, digits)


def check_probability(name: str, value: float, *, open_low: bool, open_high: bool) -> float:
    """Validate a probability-like parameter (delta, sampling rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    low_ok = value > 0.0 if open_low else value >= 0.0
    high_ok = value < 1.0 if open_high else value <= 1.0
    if math.isnan(value) or not (low_ok and high_ok):
        lo = "(0" if open_low else "[0"
        hi = "1)" if open_high else "1]"
        raise ValueError(f"{name} must lie in {lo}, {hi}, got {value}")
    return value


@dataclass(frozen=True)
class Guarantee:
    """A human- and machine-readable statement of what a mechanism promises."""

    budget: Budget
    privacy_unit: str
    neighbouring: str
    sensitivity: str
    is_dp: bool = True
    note: str = ""

    def statement(self) -> str:
        head = str(self.budget) if self.is_dp else "NOT a differential-privacy guarantee"
        text = (
            f"{head} for {self.privacy_unit}; neighbours: {self.neighbouring}; {self.sensitivity}"
        )
        return f"{text}. {self.note}".strip() if self.note else text


class Mechanism(abc.ABC):
    """Base class: a randomised map with a declared guarantee and privacy map."""

    randomness: Randomness

    @property
    @abc.abstractmethod
    def guarantee(self) -> Guarantee:
        """The promise at the declared sensitivity."""

    input_metric: ClassVar[Metric]
    """The metric the guarantee and :meth:`privacy_map` are stated in (see
    :mod:`mechanisms.metrics`)."""

    @abc.abstractmethod
    def privacy_map(self, d_in: float | Distance) -> Budget:
        """Loss for neighbours at input distance ``d_in``: a :class:`~mechanisms.metrics.
        Distance` in :attr:`input_metric` (any other metric is refused with
        :class:`~mechanisms.metrics.MetricMismatch`), or a plain number read in that metric."""

    @abc.abstractmethod
    def event(self) -> dp_event.DpEvent:
        """The dp-accounting event one release emits (for PLD / RDP accountants)."""

    @property
    def seeded(self) -> bool:
        """True when the randomness is reproducible (tests only): receipts must say so."""
        return self.randomness.seeded

    def statement(self) -> str:
        """The guarantee statement, plus an explicit warning when the randomness is seeded.

        A seeded release is reproducible by anyone who knows the seed, so whatever the
        guarantee says about the mechanism, that release is not private: the statement says so.
        """
        text = self.guarantee.statement()
        return text + SEEDED_SUFFIX if self.seeded else text

    def __copy__(self) -> Mechanism:
        """A copy is a full, independent copy (``copy.deepcopy``).

        A shallow copy would share the parent's randomness object with every nested mechanism;
        a deep copy gives the copy its own stream instead: a fresh OS key for secure randomness
        (never the original's noise), the exact seeded state for seeded randomness (identical
        draws, as a seed promises). See :class:`mechanisms.rng.Randomness`.
        """
        return copy.deepcopy(self)

    def _check_d_in(self, d_in: float | Distance) -> float:
        """``d_in`` as a number in :attr:`input_metric`; a distance in another metric, a
        negative or NaN value are refused."""
        if isinstance(d_in, Distance):
            if d_in.metric != self.input_metric:
                raise MetricMismatch(
                    f"{type(self).__name__}'s privacy map is stated in {self.input_metric}; "
                    f"got a distance in {d_in.metric} (convert it, with its proof, first)"
                )
            d_in = d_in.value
        if isinstance(d_in, bool) or not isinstance(d_in, (int, float)):
            raise TypeError("d_in must be a real number")
        d = float(d_in)
        if math.isnan(d) or d < 0:
            raise ValueError(f"d_in must be >= 0, got {d_in}")
        return d
