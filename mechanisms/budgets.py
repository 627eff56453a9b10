"""Privacy budgets as frozen, validated values.

Three notions are supported:

* :class:`PureDP` -- epsilon-DP.
* :class:`ApproxDP` -- (epsilon, delta)-DP.
* :class:`ZCDP` -- rho-zero-concentrated DP (Bun & Steinke 2016).

Conversions are offered only where a theorem makes them sound, and always round *up* the
resulting loss (a conversion may overstate privacy loss, never understate it).
"""

from __future__ import annotations

import decimal
import math
import sys
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ZCDP", "ApproxDP", "Budget", "PureDP", "ceil_float", "compose_basic"]


def _check_nonneg(name: str, value: float, *, allow_inf: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if math.isinf(value) and not allow_inf:
        raise ValueError(
            f"{name} = inf means no privacy at all; pass allow_inf=True if that is really meant"
        )
    return value


def ceil_float(value: Fraction) -> float:
    """Smallest float >= an exact rational (conservative rounding of a loss)."""
    f = float(value)
    return f if Fraction(f) >= value else math.nextafter(f, math.inf)


def _exact_sum_up(values: list[float]) -> float:
    """The exact sum of floats, rounded up to a float (inf stays inf)."""
    if any(math.isinf(v) for v in values):
        return math.inf
    return ceil_float(sum((Fraction(v) for v in values), Fraction(0)))


@dataclass(frozen=True, slots=True)
class PureDP:
    """epsilon-differential privacy: Pr[M(x) in S] <= e^epsilon Pr[M(x') in S]."""

    epsilon: float
    allow_inf: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "epsilon", _check_nonneg("epsilon", self.epsilon, allow_inf=self.allow_inf)
        )

    def to_approx(self) -> ApproxDP:
        """epsilon-DP is (epsilon, 0)-DP."""
        return ApproxDP(self.epsilon, 0.0, allow_inf=self.allow_inf)

    def to_zcdp(self) -> ZCDP:
        """epsilon-DP implies (epsilon^2 / 2)-zCDP (Bun & Steinke 2016, Prop. 1.4).

        rho is the smallest float >= the exact rational epsilon^2 / 2, and never a subnormal: a
        positive epsilon whose rho would underflow gets the smallest normal float 2^-1022 (still
        an upper bound, and one that later float arithmetic keeps to relative precision). An
        epsilon whose rho would overflow the float range raises ``OverflowError``.
        """
        if math.isinf(self.epsilon):
            return ZCDP(math.inf, allow_inf=True)
        if self.epsilon == 0.0:
            return ZCDP(0.0, allow_inf=self.allow_inf)
        exact = Fraction(self.epsilon) ** 2 / 2
        if exact > Fraction(sys.float_info.max):
            raise OverflowError(
                f"epsilon = {self.epsilon:g} gives rho = epsilon^2/2 beyond the float range"
            )
        rho = max(ceil_float(exact), sys.float_info.min)
        return ZCDP(rho, allow_inf=self.allow_inf)

    def __str__(self) -> str:
        return f"{self.epsilon:.6g}-DP"


@dataclass(frozen=True, slots=True)
class ApproxDP:
    """(epsilon, delta)-DP: Pr[M(x) in S] <= e^epsilon Pr[M(x') in S] + delta."""

    epsilon: float
    delta: float
    allow_inf: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "epsilon", _check_nonneg("epsilon", self.epsilon, allow_inf=self.allow_inf)
        )
        delta = _check_nonneg("delta", self.delta, allow_inf=False)
        if delta >= 1.0:
            raise ValueError(f"delta must be < 1, got {delta}")
        object.__setattr__(self, "delta", delta)

    def to_pure(self) -> PureDP:
        """Only sound when delta == 0."""
        if self.delta != 0.0:
            raise ValueError("an (epsilon, delta) guarantee with delta > 0 is not pure DP")
        return PureDP(self.epsilon, allow_inf=self.allow_inf)

    def __str__(self) -> str:
        return f"({self.epsilon:.6g}, {self.delta:.3g})-DP"


@dataclass(frozen=True, slots=True)
class ZCDP:
    """rho-zCDP: every Renyi divergence D_alpha(M(x) || M(x')) <= rho * alpha."""

    rho: float
    allow_inf: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho", _check_nonneg("rho", self.rho, allow_inf=self.allow_inf))

    def to_approx(self, delta: float) -> ApproxDP:
        """rho-zCDP implies (rho + 2 sqrt(rho ln(1/delta)), delta)-DP (Bun & Steinke, Prop. 1.3)."""
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {delta}")
        if math.isinf(self.rho):
            return ApproxDP(math.inf, delta, allow_inf=True)
        # 60-digit decimal: ln and sqrt are correctly rounded there; the 1e-40 margin covers them
        with decimal.localcontext() as ctx:
            ctx.prec = 60
            rho = decimal.Decimal(self.rho)
            eps = rho + 2 * (rho * (1 / decimal.Decimal(delta)).ln()).sqrt()
            eps *= 1 + decimal.Decimal(10) ** -40
        return ApproxDP(ceil_float(Fraction(eps)), delta, allow_inf=self.allow_inf)

    def __str__(self) -> str:
        return f"{self.rho:.6g}-zCDP"


Budget = PureDP | ApproxDP | ZCDP


def compose_basic(budgets: list[Budget] | tuple[Budget, ...]) -> Budget:
    """Basic (sequential) composition: losses add up.

    All pure -> pure (sum of epsilons). All zCDP -> zCDP (sum of rhos). Pure and approximate
    mixed -> approximate (sums of epsilons and deltas). zCDP cannot be mixed with
    (epsilon, delta) here: convert first, choosing delta deliberately.
    """
    if not budgets:
        return PureDP(0.0)
    allow_inf = any(b.allow_inf for b in budgets)
    pures = [b for b in budgets if isinstance(b, PureDP)]
    zcdps = [b for b in budgets if isinstance(b, ZCDP)]
    if len(pures) == len(budgets):
        return PureDP(_exact_sum_up([b.epsilon for b in pures]), allow_inf=allow_inf)
    if len(zcdps) == len(budgets):
        return ZCDP(_exact_sum_up([b.rho for b in zcdps]), allow_inf=allow_inf)
    if zcdps:
        raise TypeError(
            "cannot compose zCDP with (epsilon, delta) budgets; convert with to_approx(delta)"
        )
    approx = [
        b if isinstance(b, ApproxDP) else b.to_approx() for b in budgets if not isinstance(b, ZCDP)
    ]
    eps = _exact_sum_up([b.epsilon for b in approx])
    delta = _exact_sum_up([b.delta for b in approx])
    if delta >= 1.0:
        raise ValueError(f"composed delta = {delta} >= 1: the composition guarantees nothing")
    return ApproxDP(eps, delta, allow_inf=allow_inf)
