"""The power-of-two grid that additive mechanisms work on, and the sensitivity it costs.

An additive mechanism here rounds its real input to the grid g*Z (g = 2^k), adds exact integer
noise, and returns (k + z) * g. Rounding each coordinate moves it by at most g/2, so two inputs
at L1 distance d become grid points at L1 distance at most d + n*g (n coordinates), and at L2
distance at most d + sqrt(n)*g. The mechanism charges that extra distance: the grid is chosen so
it is at most ``GRID_SHARE`` of the declared sensitivity, and the noise is calibrated to the
relaxed sensitivity. The input is clamped to +-2^60 grid steps first (a 1-Lipschitz map, so it
never increases distances) so the integer arithmetic cannot overflow.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["GRID_SHARE", "coords_factor", "from_grid", "grid_for", "round_to_grid"]

GRID_SHARE = Fraction(1, 256)
_CLAMP = float(2**60)

Norm = Literal["l1", "l2"]


def coords_factor(coords: int, norm: Norm) -> int:
    """Integer upper bound on how many grid steps rounding adds to a distance: n or ceil(sqrt n)."""
    if coords < 1:
        raise ValueError("a query needs at least one coordinate")
    if norm == "l1":
        return coords
    root = math.isqrt(coords)
    return root if root * root == coords else root + 1


def grid_for(sensitivity: float, coords: int, norm: Norm) -> Fraction:
    """Largest power of two g with coords_factor * g <= GRID_SHARE * sensitivity (exact)."""
    target = GRID_SHARE * Fraction(sensitivity) / coords_factor(coords, norm)
    # 2^k <= target < 2^(k+1)
    k = target.numerator.bit_length() - target.denominator.bit_length()
    g = Fraction(2) ** k
    while g > target:
        g /= 2
    while g * 2 <= target:
        g *= 2
    return g


def as_float64(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The input as float64, refusing types whose values float64 cannot hold exactly.

    Casting e.g. ``np.longdouble`` or large int64 values to float64 rounds them, which can move
    two neighbours further apart than the declared sensitivity: such inputs are refused.
    """
    arr = np.asarray(x)
    if arr.dtype == np.float64:
        return arr
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 8:
        return arr.astype(np.float64)  # float16/float32 embed exactly
    if arr.dtype.kind in "iu":
        out = arr.astype(np.float64)
        if arr.size and not np.array_equal(out.astype(arr.dtype), arr):
            raise TypeError("integer input too large to be represented exactly as float64")
        return out
    if arr.dtype.kind == "b":
        return arr.astype(np.float64)
    raise TypeError(
        f"unsupported input dtype {arr.dtype}: pass float64 (or float32/int) values; wider or "
        "complex types would be rounded, which can enlarge the distance between neighbours"
    )


def round_to_grid(x: npt.NDArray[np.float64], g: Fraction) -> npt.NDArray[np.int64]:
    """Nearest grid index of each coordinate, clamped to +-2^60 (x / g is exact: g = 2^k)."""
    if not np.all(np.isfinite(x)):
        raise ValueError("input contains NaN or infinity")
    scaled = np.ldexp(x, -_log2(g))
    np.clip(scaled, -_CLAMP, _CLAMP, out=scaled)
    return np.rint(scaled).astype(np.int64)


def from_grid(k: npt.NDArray[np.int64], g: Fraction) -> npt.NDArray[np.float64]:
    """Grid index back to a float (post-processing of the exact integer result)."""
    return np.ldexp(k.astype(np.float64), _log2(g))


def _log2(g: Fraction) -> int:
    if g.numerator == 1:
        return -(g.denominator.bit_length() - 1)
    return g.numerator.bit_length() - 1
