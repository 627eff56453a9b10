"""Input metrics as values: a privacy map cannot be asked about the wrong distance.

Every mechanism states its guarantee for neighbours at some distance *in some metric*: L1
between query answers for Laplace, L2 for Gaussian, the largest change of any candidate's
score for the exponential mechanism, the number of differing pixels for DP-Pix, the number of
records added or removed for the attribute mechanisms. A bare ``float`` passed to
``privacy_map`` carries none of that, so "L2 = 0.3" handed to a mechanism whose map is in L1
would silently give a wrong (too small) loss.

Following OpenDP (a measurement carries its input metric), each mechanism declares
``input_metric`` (a :class:`Metric`), and ``privacy_map`` accepts a :class:`Distance` -- a value
tagged with its metric -- which it refuses with :class:`MetricMismatch` when the metric is not its
own. A plain number is still accepted and read in the mechanism's own metric (the documented
meaning of ``d_in``), so existing callers keep working; code that moves distances between
mechanisms should pass :class:`Distance` values::

    from mechanisms import Laplace
    from mechanisms.metrics import L1, L2

    lap = Laplace(epsilon=1.0, sensitivity=1.0)
    lap.privacy_map(L1(0.5))   # PureDP(0.5)
    lap.privacy_map(L2(0.5))   # MetricMismatch: Laplace's map is in L1

Conversions between metrics are the caller's proof obligation (e.g. ``L1 <= sqrt(d) * L2``):
nothing here converts silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import DpfaceError

__all__ = [
    "EMBEDDING_L1",
    "EMBEDDING_L2",
    "L1",
    "L2",
    "LINF",
    "PIXELS",
    "RECORDS",
    "Distance",
    "Metric",
    "MetricMismatch",
]


class MetricMismatch(DpfaceError, ValueError):
    """A distance in one metric was given to a privacy map stated in another."""


@dataclass(frozen=True)
class Metric:
    """An input metric: ``name`` (short, e.g. ``"l1"``) over ``space`` (what is compared).

    Two metrics are the same only when both the name and the space agree: L1 between raw query
    answers and L1 between domain-mapped face embeddings are different metrics."""

    name: str
    space: str

    def __call__(self, value: float) -> Distance:
        """``value`` as a distance in this metric."""
        return Distance(value, self)

    def __str__(self) -> str:
        return f"{self.name} distance between {self.space}"


@dataclass(frozen=True)
class Distance:
    """A non-negative distance ``value`` measured in ``metric``."""

    value: float
    metric: Metric

    def __post_init__(self) -> None:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"a distance must be a real number, got {type(v).__name__}")
        if math.isnan(float(v)) or float(v) < 0:
            raise ValueError(f"a distance must be >= 0, got {v}")

    def __str__(self) -> str:
        return f"{self.value:g} ({self.metric})"


L1 = Metric("l1", "real vectors (query answers)")
L2 = Metric("l2", "real vectors (query answers)")
LINF = Metric("linf", "candidate score vectors (largest change of any candidate's score)")
EMBEDDING_L1 = Metric("l1", "domain-mapped unit face embeddings")
EMBEDDING_L2 = Metric("l2", "unit face embeddings")
PIXELS = Metric("pixels", "images of one face region (number of pixels that differ)")
RECORDS = Metric("records", "reference sets (number of records added or removed)")
