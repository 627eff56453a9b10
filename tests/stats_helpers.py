"""Statistical test helpers shared by the sampler and mechanism tests.

Every test here uses alpha = 1e-6: a correct sampler fails with probability below one in a million
(and the seeds are fixed, so a given run is deterministic anyway).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import stats

ALPHA = 1e-6


def chi2_goodness_of_fit(
    counts: npt.NDArray[np.int64], probs: npt.NDArray[np.float64], *, min_expected: float = 20.0
) -> float:
    """p-value of counts against exact cell probabilities; small cells are pooled."""
    total = counts.sum()
    expected = probs * total
    order = np.argsort(expected)
    pooled_c, pooled_e = [], []
    acc_c, acc_e = 0.0, 0.0
    for i in order:
        acc_c += counts[i]
        acc_e += expected[i]
        if acc_e >= min_expected:
            pooled_c.append(acc_c)
            pooled_e.append(acc_e)
            acc_c, acc_e = 0.0, 0.0
    if acc_e > 0 and pooled_e:
        pooled_c[-1] += acc_c
        pooled_e[-1] += acc_e
    c = np.array(pooled_c)
    e = np.array(pooled_e)
    e *= c.sum() / e.sum()
    return float(stats.chisquare(c, e).pvalue)


def discrete_laplace_cdf(k: npt.NDArray[np.float64], t: float) -> npt.NDArray[np.float64]:
    """P[Z <= k] for P[Z = z] proportional to q^|z|, q = exp(-1/t), integer k."""
    q = np.exp(-1.0 / t)
    k = np.asarray(k, dtype=np.float64)
    neg = q ** (-k) / (1.0 + q)
    pos = 1.0 - q ** (k + 1.0) / (1.0 + q)
    return np.where(k < 0, neg, pos)


def binned_discrete_laplace_test(z: npt.NDArray[np.int64], t: float, *, bins: int = 60) -> float:
    """Chi-square p-value of integer draws z against the discrete Laplace of scale t."""
    edges = np.unique(np.round(np.linspace(-8.0, 8.0, bins + 1) * t).astype(np.int64))
    cdf = discrete_laplace_cdf(edges.astype(np.float64), t)
    # cells: (-inf, e0], (e0, e1], ..., (e_last, inf)
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    idx = np.searchsorted(edges, z, side="left")
    counts = np.bincount(idx, minlength=probs.size).astype(np.int64)
    return chi2_goodness_of_fit(counts, probs)


def discrete_gaussian_pmf(s: float, support: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Exact (to float precision) pmf proportional to exp(-z^2/(2 s^2)) on a wide support."""
    wide = np.arange(-int(60 * s) - 60, int(60 * s) + 61)
    norm = np.exp(-(wide.astype(np.float64) ** 2) / (2.0 * s * s)).sum()
    return np.exp(-(support.astype(np.float64) ** 2) / (2.0 * s * s)) / norm


def two_sample_chi2(
    a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], edges: npt.NDArray[np.int64]
) -> float:
    """p-value that two integer samples share a distribution, on cells cut at ``edges``."""
    ia = np.bincount(np.searchsorted(edges, a), minlength=edges.size + 1)
    ib = np.bincount(np.searchsorted(edges, b), minlength=edges.size + 1)
    keep = (ia + ib) > 0
    table = np.vstack([ia[keep], ib[keep]])
    return float(stats.chi2_contingency(table).pvalue)
