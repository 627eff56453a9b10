"""The Gaussian mechanism on a power-of-two grid ((epsilon, delta)-DP and zCDP, L2 sensitivity).

Realisation: x is rounded to g*Z^n (lattice.py; adds <= ceil(sqrt n)*g to the L2 distance, at
most sensitivity/256) and exact discrete Gaussian noise with integer parameter s is added
(sampling.py), so the noise standard deviation parameter is sigma = s*g.

Guarantees (proof: ``proofs/gaussian.md``), with D = relaxed L2 sensitivity:
* zCDP, exact for the discrete Gaussian: rho = D^2 / (2 sigma^2) (Canonne, Kamath & Steinke 2020:
  the Renyi divergences of shifted discrete Gaussians equal the continuous ones).
* (epsilon, delta): sigma calibrated by
  - ``calibration="analytic"`` (default): the analytic Gaussian mechanism (Balle & Wang 2018),
    the exact privacy profile of continuous Gaussian noise; it carries over to the discrete
    Gaussian because s >= 1024 grid steps, far above the smoothing parameter of the lattice
    (see the proof for the step relied on), or
  - ``calibration="rdp"``: the RDP curve of the noise (exact for the discrete Gaussian) converted
    to (epsilon, delta) by dp-accounting's RdpAccountant -- relies on nothing but the zCDP fact,
    at the price of a little more noise.
"""

from __future__ import annotations

import decimal
import math
import sys
from collections.abc import Callable
from fractions import Fraction
from typing import Literal

import mpmath
import numpy as np
import numpy.typing as npt
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from scipy import special

from .base import (
    Guarantee,
    Mechanism,
    check_positive_finite,
    check_probability,
    format_down,
    format_up,
)
from .budgets import ZCDP, ApproxDP, ceil_float
from .lattice import as_float64, coords_factor, from_grid, grid_for, round_to_grid
from .metrics import L2, Distance
from .rng import Randomness, resolve
from .sampling import MAX_GAUSSIAN_S, discrete_gaussian

__all__ = [
    "MIN_NOISE_MULTIPLIER",
    "Gaussian",
    "GaussianCalibration",
    "analytic_gaussian_delta",
    "analytic_gaussian_sigma",
    "epsilon_at_multiplier",
    "least_epsilon",
]

FloatArray = npt.NDArray[np.float64]
Calibration = Literal["analytic", "rdp"]
MIN_GRID_STEPS = 1024
MIN_NOISE_MULTIPLIER = Fraction(1, 2**49)
"""Smallest noise multiplier sigma/Delta accepted. With at least 1024 grid steps per sigma the
grid step is then > sigma/2048 >= Delta/2^60 for every query size, so the int64 grid indices
(clamped at +-2^60, lattice.py) still span +-Delta: a smaller multiplier (epsilon around 1e29 and
above) would silently clamp ordinary inputs (proofs/gaussian.md, "Parameter range")."""


def analytic_gaussian_delta(sigma: float, *, epsilon: float, sensitivity: float) -> float:
    """delta(epsilon) of continuous Gaussian noise sigma at L2 sensitivity (Balle & Wang, Thm 8).

    delta = Phi(D/(2 sigma) - eps sigma/D) - e^eps Phi(-D/(2 sigma) - eps sigma/D).

    With a = D/(2 sigma), b = eps sigma/D, the second term equals phi(a - b) R(a + b), where
    R(x) = Phi(-x)/phi(x) = sqrt(pi/2) erfcx(x/sqrt 2) is the Mills ratio, because
    e^eps phi(a + b) = phi(a - b) exactly ((a + b)^2 - (a - b)^2 = 4ab = 2 eps). a - b and
    a + b are formed in exact rationals and rounded once, so nothing cancels in forming them,
    even at epsilon = 1e20 where a and b are both about 1e10. The final difference of the two
    terms can still cancel (tiny delta at tiny epsilon): when a proven bound on its float64
    error exceeds 1e-10 of the result, it is recomputed with mpmath at enough decimal digits
    (proofs/gaussian.md F2). Returned to within a relative 1e-10 (or absolutely below 1e-300).
    """
    q = Fraction(sigma) / Fraction(sensitivity)
    a = 1 / (2 * q)
    b = Fraction(epsilon) * q
    diff = _clamped_float(a - b)
    total = _clamped_float(a + b)
    first = float(special.ndtr(diff))
    second = 0.5 * math.exp(-0.5 * diff * diff) * float(special.erfcx(total / math.sqrt(2.0)))
    value = first - second
    # float error bound (F2): each term is within (x^2 + |x| + 10) u of its exact value, x = diff
    bound = 4.0 * _ULP * (diff * diff + abs(diff) + 10.0) * (first + second)
    if math.isfinite(bound) and bound <= 1e-10 * value:
        return value
    return _analytic_delta_mp(a - b, a + b)


_ULP = 2.0**-53


def _analytic_delta_mp(diff: Fraction, total: Fraction) -> float:
    """Phi(diff) - phi(diff) R(total) (= Phi(diff) - e^eps Phi(-total)) in mpmath, with more
    digits until the difference is resolved to 1e-15 relative; rounded up to a float.

    R(t) = Phi(-t)/phi(t) (Mills ratio) is evaluated directly for t <= 10^6 and replaced by its
    classical lower bound t/(t^2 + 1) beyond: a smaller second term only overstates delta, and
    the overstatement is below phi(diff)/t^3 <= 10^-18. For diff < -10^6, delta <
    Phi(-10^6) < 10^-300 and 0.0 is returned (no float delta target lies in between).
    """
    if diff < -(10**6):
        return 0.0
    digits = 40
    while True:
        with mpmath.workdps(digits):
            d = mpmath.mpf(diff.numerator) / diff.denominator
            t = mpmath.mpf(total.numerator) / total.denominator
            first = mpmath.ncdf(d)
            if t <= 10**6:
                mills = mpmath.ncdf(-t) / mpmath.npdf(t)
            else:
                mills = t / (t * t + 1)
            second = mpmath.npdf(d) * mills
            value = first - second
            scale = first + second
            if value > 0 and value * mpmath.mpf(10) ** (digits - 15) > scale:
                # round up: never report less than the (high-precision) value
                return math.nextafter(float(value), math.inf)
            if digits >= 1000:
                return 0.0 if value < mpmath.mpf(10) ** -300 else float(value)
        digits *= 2


def _clamped_float(q: Fraction) -> float:
    """float(q) for an exact rational, clamped to +-1e300 (far beyond where Phi saturates)."""
    if q > 10**300:
        return 1e300
    if q < -(10**300):
        return -1e300
    return float(q)


def _fraction_down(q: Fraction) -> float:
    """Largest float <= a non-negative exact rational (0.0 if it underflows)."""
    f = float(q)
    while Fraction(f) > q:
        f = math.nextafter(f, 0.0)
    return f


def _round_up_bits(x: float, bits: int) -> float:
    """Smallest float >= x with at most ``bits`` significant bits (x >= 0, finite)."""
    if x == 0.0:
        return 0.0
    mant, exp = math.frexp(x)  # x = mant * 2^exp, mant in [1/2, 1)
    return math.ldexp(math.ceil(math.ldexp(mant, bits)), exp - bits)


# Orders at which the RDP branch of Gaussian.privacy_map converts (dp-accounting's defaults).
_RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(11, 64)),
    128.0,
    256.0,
    512.0,
    1024.0,
)
_RDP_DIGITS = 60
_RDP_SLACK = decimal.Decimal(10) ** -40


def rdp_gaussian_epsilon_up(ratio_squared: Fraction, delta: float) -> float:
    """Upper bound, rounded up to a float, on min over the default orders a of

        a / (2 ratio^2) + ln(1 - 1/a) - (ln delta + ln a) / (a - 1)

    (Canonne, Kamath & Steinke 2020, Prop. 12, applied to the Gaussian RDP curve a/(2 ratio^2))
    for the exact rational ``ratio_squared`` = (noise multiplier)^2 > 0. Evaluated in 60-digit
    decimal (ln correctly rounded) with an absolute slack of 1e-40 (1 + r_a + 10^4) per order,
    which dominates the decimal rounding; non-decreasing in 1/ratio_squared. Returns inf if
    the bound exceeds the float range.
    """
    with decimal.localcontext() as ctx:
        ctx.prec = _RDP_DIGITS
        ln_delta = decimal.Decimal(delta).ln()
        best: decimal.Decimal | None = None
        for a in _RDP_ORDERS:
            exact_r = Fraction(a) / (2 * ratio_squared)
            r = decimal.Decimal(exact_r.numerator) / decimal.Decimal(exact_r.denominator)
            a_dec = decimal.Decimal(a)  # exact (conversion from a float)
            tail = (1 - 1 / a_dec).ln() - (ln_delta + a_dec.ln()) / (a_dec - 1)
            value = r + tail + _RDP_SLACK * (1 + r + 10**4)
            if best is None or value < best:
                best = value
        assert best is not None
        bound = Fraction(max(best, decimal.Decimal(0)))
    if bound > Fraction(sys.float_info.max):
        return math.inf
    return ceil_float(bound)


def _smallest(check: Callable[[float], bool], hint: float) -> float:
    """Smallest x > 0 (to ~1e-12 relative, from above) with check(x); check must be monotone.

    Returns inf when no finite float passes (the doubling search overflows).
    """
    lo, hi = hint / 2.0, hint
    while not check(hi):
        lo, hi = hi, hi * 2.0
        if math.isinf(hi):
            return math.inf
    while check(lo) and lo > 1e-300:
        lo, hi = lo / 2.0, lo
    for _ in range(200):
        mid = math.sqrt(lo) * math.sqrt(hi)  # no overflow of lo * hi near the float range
        if check(mid):
            hi = mid
        else:
            lo = mid
        if hi / lo - 1.0 < 1e-12:
            break
    return hi


def analytic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest sigma with analytic delta(epsilon) <= delta (kept on the safe side by 1e-9)."""
    target = delta * (1.0 - 1e-9)
    with np.errstate(invalid="ignore", over="ignore"):
        return _smallest(
            lambda s: (
                analytic_gaussian_delta(s, epsilon=epsilon, sensitivity=sensitivity) <= target
            ),
            _hint(epsilon=epsilon, delta=delta, sensitivity=sensitivity),
        )


def _hint(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Starting point of the sigma search: the classical sigma, kept inside (0, 2^256]."""
    with np.errstate(over="ignore"):
        classical = sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    return classical if 0.0 < classical <= 2.0**256 else 2.0**256


def rdp_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest sigma whose RDP curve converts (dp-accounting) to epsilon at delta."""

    def ok(sigma: float) -> bool:
        acc = RdpAccountant()
        try:
            with np.errstate(over="ignore", divide="ignore"):
                acc.compose(dp_event.GaussianDpEvent(noise_multiplier=sigma / sensitivity))
        except OverflowError:  # sigma^2 beyond the float range: no usable multiplier here
            return False
        return bool(acc.get_epsilon(delta) <= epsilon * (1.0 - 1e-9))

    return _smallest(ok, _hint(epsilon=epsilon, delta=delta, sensitivity=sensitivity))


def _steps(target: Fraction) -> int:
    """Smallest integer s with s^2 >= target^2 + 9 (so s >= target with room to spare).

    The +9 makes the transfer of the analytic (continuous) privacy profile to the discrete
    Gaussian provable (proofs/gaussian.md, P4 Corollary with r = 3); it costs < 0.005 grid steps
    at the s >= 1024 used here.
    """
    need = target * target + 9
    s = math.isqrt(math.ceil(need))
    while s * s < need:
        s += 1
    return s


class GaussianCalibration:
    """Grid step g and integer noise parameter s (sigma = s*g) for ``coords`` coordinates.

    ``s * g >= multiplier * D'`` exactly (rational arithmetic), where D' is the relaxed
    sensitivity: the realised noise multiplier never falls below ``multiplier``.
    """

    __slots__ = ("coords", "grid", "relaxed_sensitivity", "s")

    def __init__(self, *, multiplier: float, sensitivity: float, coords: int) -> None:
        self.coords = coords
        factor = coords_factor(coords, "l2")
        grid = grid_for(sensitivity, coords, "l2")
        m = Fraction(multiplier)
        relaxed = Fraction(sensitivity) + factor * grid
        s = _steps(relaxed * m / grid)
        while s < MIN_GRID_STEPS:
            # keep the grid fine relative to the noise (a finer grid only shrinks D')
            grid /= 2
            relaxed = Fraction(sensitivity) + factor * grid
            s = _steps(relaxed * m / grid)
        if s > MAX_GAUSSIAN_S:
            raise ValueError(
                f"noise multiplier {multiplier:.6g} makes a {coords}-coordinate query need "
                f"{s} grid steps per sigma, beyond the exact sampler's limit of 2^24 steps "
                "(above it its int64 arithmetic could overflow): the largest multiplier a query "
                f"of this size supports is {format_down(self.max_multiplier(sensitivity, coords))}"
                "; split the query"
            )
        self.grid = grid
        self.s = s
        self.relaxed_sensitivity = relaxed

    @staticmethod
    def max_multiplier(sensitivity: float, coords: int) -> Fraction:
        """Largest multiplier c whose ``coords``-coordinate calibration has s <= 2^24 (exact).

        s = smallest integer with s^2 >= (c D'/g)^2 + 9 (g = grid_for, not refined: s is far
        above 1024 there), so s <= 2^24 iff (c D'/g)^2 <= 2^48 - 9. Returned rounded down to a
        rational below the irrational bound sqrt(2^48 - 9) g / D'.
        """
        grid = grid_for(sensitivity, coords, "l2")
        relaxed = Fraction(sensitivity) + coords_factor(coords, "l2") * grid
        root = math.isqrt(MAX_GAUSSIAN_S**2 - 9)  # floor(sqrt(2^48 - 9))
        return root * grid / relaxed

    @property
    def sigma(self) -> float:
        return float(self.s * self.grid)

    def proven_multiplier(self) -> float:
        """Largest float m <= sqrt(s^2 - 9) * g / D' (exact comparison).

        This is the realised noise multiplier that proofs/gaussian.md P4 transfers from the
        continuous to the discrete Gaussian (the continuous part of the noise has parameter
        s_1 = sqrt(s^2 - 9) grid steps); it is >= the calibrated multiplier for every query
        size (P5), and below the plain s * g / D', which P4 does not cover.
        """
        bound = (self.s * self.s - 9) * self.grid * self.grid  # m^2 D'^2 <= bound
        d2 = self.relaxed_sensitivity * self.relaxed_sensitivity
        m = math.sqrt(float(bound / d2))
        while m > 0.0 and Fraction(m) ** 2 * d2 > bound:
            m = math.nextafter(m, 0.0)
        while Fraction(math.nextafter(m, math.inf)) ** 2 * d2 <= bound:
            m = math.nextafter(m, math.inf)
        return m


def epsilon_at_multiplier(
    multiplier: Fraction, *, delta: float, calibration: Calibration
) -> Fraction:
    """About the least epsilon the calibration method reaches with ``multiplier`` at ``delta``:
    the solver's multiplier at that epsilon is (up to its 1e-12 bisection) at most
    ``multiplier``. For advice in error messages (callers add a 10^-6 relative margin).

    Analytic: smallest epsilon with delta_BW(epsilon; multiplier) <= delta (1 - 10^-9), by
    bisection, the inverse of analytic_gaussian_sigma. RDP: the rounded-up conversion
    rdp_gaussian_epsilon_up, an upper bound on dp-accounting's value.
    """
    if calibration == "rdp":
        eps = rdp_gaussian_epsilon_up(multiplier * multiplier, delta)
    else:
        ratio = _fraction_down(multiplier)
        eps = _smallest(
            lambda e: (
                analytic_gaussian_delta(ratio, epsilon=e, sensitivity=1.0) <= delta * (1.0 - 1e-9)
            ),
            1.0,
        )
    return Fraction(eps) if math.isfinite(eps) else Fraction(sys.float_info.max)


def least_epsilon(
    *, delta: float, sensitivity: float, coords: int, calibration: Calibration = "analytic"
) -> Fraction | None:
    """About the least epsilon (10^-6 relative margin included) whose multiplier lets a
    ``coords``-coordinate query fit the exact sampler (s <= 2^24), or None if none does
    (the largest multiplier the query supports is below MIN_NOISE_MULTIPLIER)."""
    top = GaussianCalibration.max_multiplier(sensitivity, coords)
    if top < MIN_NOISE_MULTIPLIER:
        return None
    eps = epsilon_at_multiplier(top, delta=delta, calibration=calibration)
    return eps * (1 + Fraction(1, 10**6))


class Gaussian(Mechanism):
    """(epsilon, delta)-DP release of a real vector with bounded L2 sensitivity."""

    input_metric = L2

    def __init__(
        self,
        *,
        epsilon: float,
        delta: float,
        sensitivity: float,
        calibration: Calibration = "analytic",
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self.epsilon = check_positive_finite("epsilon", epsilon)
        self.delta = check_probability("delta", delta, open_low=True, open_high=True)
        self.sensitivity = check_positive_finite("sensitivity", sensitivity)
        if calibration not in ("analytic", "rdp"):
            raise ValueError(f"calibration must be 'analytic' or 'rdp', got {calibration!r}")
        self.calibration_method: Calibration = calibration
        self.randomness = resolve(randomness, seed)
        solve = analytic_gaussian_sigma if calibration == "analytic" else rdp_gaussian_sigma
        # sigma / sensitivity: both calibrations depend on the ratio only
        self.noise_multiplier = solve(epsilon=self.epsilon, delta=self.delta, sensitivity=1.0)
        self._calibrations: dict[int, GaussianCalibration] = {}
        if math.isinf(self.noise_multiplier):
            raise ValueError(
                f"no finite noise multiplier gives ({self.epsilon:g}, {self.delta:g})-DP with "
                f"the {calibration} calibration; {self._advice(1)}"
            )
        if Fraction(self.noise_multiplier) < MIN_NOISE_MULTIPLIER:
            most = self._epsilon_at(MIN_NOISE_MULTIPLIER) * (1 - Fraction(1, 10**6))
            raise ValueError(
                f"epsilon {self.epsilon:g} makes the noise multiplier sigma/sensitivity "
                f"{self.noise_multiplier:.3g}, below the grid's limit 2^-49: with >= 1024 grid "
                "steps per sigma, int64 grid indices would no longer span the sensitivity and "
                f"inputs would be clamped; use epsilon <= {format_down(most)} at this delta"
            )
        # refuse now what no query could be released with (the smallest query, 1 coordinate);
        # larger queries need more grid steps and are checked by calibration(n) before any draw
        self.calibration(1)

    def _epsilon_at(self, multiplier: Fraction) -> Fraction:
        return epsilon_at_multiplier(
            multiplier, delta=self.delta, calibration=self.calibration_method
        )

    def _advice(self, coords: int) -> str:
        """ "use epsilon >= x at this delta" for a ``coords``-coordinate query, or why not."""
        least = least_epsilon(
            delta=self.delta,
            sensitivity=self.sensitivity,
            coords=coords,
            calibration=self.calibration_method,
        )
        if least is None:
            return f"no epsilon works at this delta for {coords} coordinates: split the query"
        return f"use epsilon >= {format_up(least)} at this delta (or a larger delta)"

    def calibration(self, coords: int) -> GaussianCalibration:
        """Exact grid and integer noise parameter for a query of ``coords`` coordinates (cached).

        Raises ``ValueError`` (before any noise is drawn) when the query needs more than the
        exact sampler's 2^24 grid steps per sigma; the message gives the least epsilon that
        would do at this delta.
        """
        cal = self._calibrations.get(coords)
        if cal is None:
            try:
                cal = GaussianCalibration(
                    multiplier=self.noise_multiplier, sensitivity=self.sensitivity, coords=coords
                )
            except ValueError as exc:
                raise ValueError(
                    f"epsilon {self.epsilon:g} (delta {self.delta:g}) needs noise multiplier "
                    f"{self.noise_multiplier:.6g}, too large for a {coords}-coordinate query on "
                    "the exact sampler's grid (at most 2^24 grid steps per sigma, so its int64 "
                    f"arithmetic cannot overflow); {self._advice(coords)}, or split the query "
                    f"[{exc}]"
                ) from None
            self._calibrations[coords] = cal
        return cal

    @property
    def scale(self) -> float:
        """Nominal sigma = multiplier * sensitivity; the realised sigma of an n-coordinate query
        is at most 1/256 larger plus one grid step (``calibration(n).sigma``)."""
        return self.noise_multiplier * self.sensitivity

    def __call__(self, x: npt.ArrayLike) -> FloatArray:
        arr = as_float64(x)
        if arr.size == 0:
            raise ValueError("cannot release an empty array")
        return self._release(arr.reshape(1, -1)).reshape(arr.shape)

    def batch(self, xs: npt.ArrayLike) -> FloatArray:
        """Independent releases of xs[0], xs[1], ...: each row is its own query."""
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
        k += discrete_gaussian(cal.s, k.size, self.randomness)
        return from_grid(k, cal.grid).reshape(rows.shape)

    def variance(self, coords: int = 1) -> float:
        """Upper bound on the per-coordinate noise variance: sigma^2 (CKS 2020, Prop. 19)."""
        return self.calibration(coords).sigma ** 2

    def bias_bound(self, coords: int = 1) -> float:
        """Noise is symmetric (mean 0); rounding to the grid moves a coordinate by <= g/2."""
        return float(self.calibration(coords).grid) / 2.0

    def zcdp(self) -> ZCDP:
        """zCDP of one release, any query size: rho = 1 / (2 multiplier^2), rounded up (exact
        for the discrete Gaussian; the realised multiplier is never smaller)."""
        m = Fraction(self.noise_multiplier)
        return ZCDP(ceil_float(1 / (2 * m * m)))

    @property
    def guarantee(self) -> Guarantee:
        how = (
            "analytic Gaussian calibration"
            if self.calibration_method == "analytic"
            else "RDP-to-(epsilon, delta) conversion"
        )
        return Guarantee(
            budget=ApproxDP(self.epsilon, self.delta),
            privacy_unit="the contribution bounded by the declared sensitivity",
            neighbouring=f"inputs at L2 distance <= {self.sensitivity:g}",
            sensitivity=f"L2 sensitivity {self.sensitivity:g} (declared by the caller)",
            note=f"sigma from the {how}; also {self.zcdp()} (exact, composes tightly)",
        )

    def privacy_map(self, d_in: float | Distance) -> ApproxDP:
        """(epsilon, delta) at L2 distance d_in with delta fixed, valid for any query size.

        The realised noise multiplier is >= multiplier * Δ / d_in against inputs at distance
        d_in (the grid relaxation only helps, see proofs/gaussian.md); for d_in <= Δ that is
        the calibrated pair, beyond it epsilon is re-solved at the exact multiplier by the
        calibration method, rounded up (RDP: 60-digit decimal conversion; analytic: bisection
        with a 1e-9 delta margin, then 24 significant bits), and never returned below epsilon.
        """
        d = self._check_d_in(d_in)
        if d <= self.sensitivity:
            return ApproxDP(self.epsilon, self.delta)
        if math.isinf(d):
            return ApproxDP(math.inf, self.delta, allow_inf=True)
        # exact multiplier against distance d: c * Delta / d (no float rounding of c * Delta)
        exact_ratio = Fraction(self.noise_multiplier) * Fraction(self.sensitivity) / Fraction(d)
        if self.calibration_method == "analytic":
            ratio = _fraction_down(exact_ratio)
            if ratio == 0.0:
                return ApproxDP(math.inf, self.delta, allow_inf=True)
            with np.errstate(invalid="ignore"):
                eps = _smallest(
                    lambda e: (
                        analytic_gaussian_delta(ratio, epsilon=e, sensitivity=1.0)
                        <= self.delta * (1.0 - 1e-9)
                    ),
                    self.epsilon,
                )
            if math.isinf(eps):
                return ApproxDP(math.inf, self.delta, allow_inf=True)
            # coarse upward rounding: absorbs the bisection's 1e-12 jitter, so the map is
            # monotone in d except in astronomically rare ties
            eps = _round_up_bits(eps, 24)
        else:
            eps = rdp_gaussian_epsilon_up(exact_ratio * exact_ratio, self.delta)
        if math.isinf(eps):
            return ApproxDP(math.inf, self.delta, allow_inf=True)
        # a larger distance never costs less than the declared pair (monotone at d = Delta)
        return ApproxDP(max(eps, self.epsilon), self.delta)

    def event(self) -> dp_event.DpEvent:
        """Gaussian event with the calibrated noise multiplier (a lower bound on every query's
        realised sigma / D'); RDP accounting of it is exact for the discrete Gaussian."""
        return dp_event.GaussianDpEvent(noise_multiplier=self.noise_multiplier)
