"""The Laplace mechanism on a power-of-two grid (pure epsilon-DP, L1 sensitivity).

Guarantee: for inputs x, x' of the same shape with ||x - x'||_1 <= sensitivity, every output set
has probability within a factor e^epsilon. Proof: ``proofs/laplace.md``.

Realisation: x is rounded to g*Z^n (lattice.py) and exact discrete Laplace noise of integer scale
t is added (sampling.py). Rounding adds at most n*g to the L1 distance; g is chosen so that this is
at most sensitivity/256, and t is the smallest integer with t*g >= (sensitivity + n*g)/epsilon,
computed in exact rational arithmetic. The discrete Laplace with scale t satisfies
P[z]/P[z'] <= exp(|z - z'|/t), so the loss is at most (sensitivity + n*g)/(t*g) <= epsilon.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from dp_accounting import dp_event

from .accounting import pure_event
from .base import Guarantee, Mechanism, check_positive_finite, format_up
from .budgets import PureDP, ceil_float
from .lattice import GRID_SHARE, as_float64, coords_factor, from_grid, grid_for, round_to_grid
from .metrics import L1, Distance
from .rng import Randomness, resolve
from .sampling import discrete_laplace

__all__ = ["MAX_LAPLACE_T", "Laplace", "LaplaceCalibration"]

FloatArray = npt.NDArray[np.float64]
# Largest integer noise scale: keeps every draw of the exact sampler inside int64 except with
# probability below exp(-2^13) (see proofs/laplace.md), so an overflow error never happens.
MAX_LAPLACE_T = 2**48


class LaplaceCalibration:
    """Grid step g and integer noise scale t for a query with ``coords`` coordinates."""

    __slots__ = ("coords", "grid", "t")

    def __init__(self, *, epsilon: float, sensitivity: float, coords: int) -> None:
        self.coords = coords
        self.grid = grid_for(sensitivity, coords, "l1")
        relaxed = Fraction(sensitivity) + coords_factor(coords, "l1") * self.grid
        self.t = math.ceil(relaxed / (Fraction(epsilon) * self.grid))
        if self.t > MAX_LAPLACE_T:
            # t <= 2^48  <=>  relaxed / (epsilon g) <= 2^48  <=>  epsilon >= relaxed / (2^48 g)
            least = relaxed / (MAX_LAPLACE_T * self.grid)
            raise ValueError(
                f"epsilon {epsilon:g} makes the noise scale of a {coords}-coordinate query "
                f"{format_up(self.t)} grid steps, beyond the exact sampler's limit of 2^48 "
                "steps (above it its int64 draws could overflow); use epsilon >= "
                f"{format_up(least)} for a query of this size, or split the query"
            )

    @staticmethod
    def least_epsilon(sensitivity: float, coords: int) -> Fraction:
        """Exact least epsilon whose ``coords``-coordinate calibration has t <= 2^48."""
        grid = grid_for(sensitivity, coords, "l1")
        relaxed = Fraction(sensitivity) + coords_factor(coords, "l1") * grid
        return relaxed / (MAX_LAPLACE_T * grid)

    @property
    def scale(self) -> float:
        """The realised noise scale t*g (>= sensitivity/epsilon)."""
        return float(self.t * self.grid)


class Laplace(Mechanism):
    """epsilon-DP release of a real vector with bounded L1 sensitivity."""

    input_metric = L1

    def __init__(
        self,
        *,
        epsilon: float,
        sensitivity: float,
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self.epsilon = check_positive_finite("epsilon", epsilon)
        self.sensitivity = check_positive_finite("sensitivity", sensitivity)
        self.randomness = resolve(randomness, seed)
        self._calibrations: dict[int, LaplaceCalibration] = {}
        # refuse now what no query could be released with (the smallest query, 1 coordinate);
        # larger queries need more grid steps and are checked by calibration(n) before any draw
        self.calibration(1)

    def calibration(self, coords: int) -> LaplaceCalibration:
        """Exact grid and scale for a query of ``coords`` coordinates (cached).

        Raises ``ValueError`` (before any noise is drawn) when the query needs a noise scale
        beyond the exact sampler's limit of 2^48 grid steps; the message gives the least
        epsilon that would do.
        """
        cal = self._calibrations.get(coords)
        if cal is None:
            cal = LaplaceCalibration(
                epsilon=self.epsilon, sensitivity=self.sensitivity, coords=coords
            )
            self._calibrations[coords] = cal
        return cal

    @property
    def scale(self) -> float:
        """Nominal noise scale (1 + 1/256) * Δ/ε; the realised t*g is within one grid step of
        it for any query size (``calibration(n).scale`` gives the exact value)."""
        return float((1 + GRID_SHARE) * Fraction(self.sensitivity) / Fraction(self.epsilon))

    def __call__(self, x: npt.ArrayLike) -> FloatArray:
        """One release: the whole array is one query with L1 sensitivity ``sensitivity``."""
        arr = as_float64(x)
        if arr.size == 0:
            raise ValueError("cannot release an empty array")
        return self._release(arr.reshape(1, -1)).reshape(arr.shape)

    def batch(self, xs: npt.ArrayLike) -> FloatArray:
        """Independent releases of xs[0], xs[1], ...: each row is its own query (own budget)."""
        arr = as_float64(xs)
        if arr.ndim < 1 or arr.shape[0] == 0:
            raise ValueError("batch needs a leading axis with at least one query")
        flat = arr.reshape(arr.shape[0], -1)
        if flat.shape[1] == 0:
            raise ValueError("each query needs at least one coordinate")
        return self._release(flat).reshape(arr.shape)

    def _release(self, rows: FloatArray) -> FloatArray:
        cal = self.calibration(rows.shape[1])
        k = round_to_grid(rows.ravel(), cal.grid)
        k += discrete_laplace(cal.t, k.size, self.randomness)
        return from_grid(k, cal.grid).reshape(rows.shape)

    def variance(self, coords: int = 1) -> float:
        """Per-coordinate noise variance: 2q/(1-q)^2 * g^2 with q = exp(-1/t) (discrete Laplace)."""
        cal = self.calibration(coords)
        q = math.exp(-1.0 / cal.t)
        return 2.0 * q / (1.0 - q) ** 2 * float(cal.grid) ** 2

    def bias_bound(self, coords: int = 1) -> float:
        """Noise is symmetric (mean 0); rounding to the grid moves a coordinate by <= g/2."""
        return float(self.calibration(coords).grid) / 2.0

    @property
    def guarantee(self) -> Guarantee:
        return Guarantee(
            budget=PureDP(self.epsilon),
            privacy_unit="the contribution bounded by the declared sensitivity",
            neighbouring=f"inputs at L1 distance <= {self.sensitivity:g}",
            sensitivity=f"L1 sensitivity {self.sensitivity:g} (declared by the caller)",
        )

    def privacy_map(self, d_in: float | Distance) -> PureDP:
        """Loss for neighbours at L1 distance d_in, valid for any query size.

        (d + n g)/(t g) <= eps (d + n g)/(Δ + n g), and n g <= Δ/256: the bound below
        maximises over n g in [0, Δ/256].
        """
        d = Fraction(self._check_d_in(d_in))
        delta_s = Fraction(self.sensitivity)
        eps = Fraction(self.epsilon)
        if d <= delta_s:
            bound = eps * (d + GRID_SHARE * delta_s) / (delta_s * (1 + GRID_SHARE))
        else:
            bound = eps * d / delta_s
        return PureDP(ceil_float(bound))

    def event(self) -> dp_event.DpEvent:
        """Dominating pair of any epsilon-DP mechanism (2-bucket randomized response)."""
        return pure_event(self.epsilon)
