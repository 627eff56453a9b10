"""Means with confidence intervals.

Draws of one face are not independent observations of the population of faces, so every
interval here treats the *face* as the unit: per-face means first, then a Student-t interval
over faces. Proportions over many outputs can also use Wilson's score interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """A mean and the half-width of its confidence interval (nan when n < 2)."""

    mean: float
    half_width: float
    n: int

    def format(self, digits: int = 3) -> str:
        """``0.812 ± 0.034`` (or just the mean when no interval exists)."""
        if math.isnan(self.mean):
            return "–"
        if math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Estimate:
    """Student-t interval for the mean of independent values (nan entries are ignored)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    m = float(x.mean())
    if n < 2:
        return Estimate(m, math.nan, n)
    se = float(x.std(ddof=1)) / math.sqrt(n)
    t = float(stats.t.ppf(0.5 + level / 2, n - 1))
    return Estimate(m, t * se, n)


def clustered_mean_ci(values: np.ndarray, level: float = 0.95) -> Estimate:
    """``values`` of shape (faces, draws): mean over draws per face, t interval over faces."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        return mean_ci(v, level)
    with np.errstate(all="ignore"):
        per_face = np.nanmean(v.reshape(v.shape[0], -1), axis=1)
    return mean_ci(per_face, level)


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high) for a proportion."""
    if n <= 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)
