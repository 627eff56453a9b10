"""Black-box privacy audit: a statistical *lower bound* on the epsilon a mechanism really has.

A mechanism M claiming (epsilon, delta)-DP promises, for neighbouring inputs x0, x1 and every
event E, ``P[M(x0) in E] <= e^epsilon P[M(x1) in E] + delta`` (and the same with x0, x1 swapped).
The audit draws ``n`` independent releases on x0 and ``n`` on x1, counts how often a fixed event E
happens, and turns the counts into exact Clopper-Pearson confidence bounds ``p0_low <= P[E | x0]``
and ``p1_high >= P[E | x1]``. Then

    epsilon_lower_bound = ln((p0_low - delta) / p1_high)

is below the mechanism's *true* epsilon (for that pair of inputs) with probability >= 1 - alpha.
If it exceeds the claimed epsilon, the claim is refuted at confidence 1 - alpha: a bug, not bad
luck (unless an event of probability <= alpha happened). A lower bound at or below the claim
proves nothing by itself; it shows the audit found no violation with the power it had.

Every audit checks four comparisons per event -- E and its complement, each with x0 against x1
and x1 against x0 -- built from four one-sided bounds (lower and upper on P[E | x0] and on
P[E | x1]). A union bound (Bonferroni) gives each of the 4k bounds (k events) level alpha / (4k),
so the reported maximum over all comparisons is valid at level alpha as a whole.

The event must be fixed *before* the evaluation draws are made. :func:`audit_calibrated` picks
one on a separate calibration sample and then evaluates it on fresh draws; choosing it on the same
draws it is evaluated on would bias the bound upwards and void the guarantee.

Default alpha is 1e-6: an audit that wrongly flags a correct mechanism more often than once in a
million runs would be a flaky test, which is a bug.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy import stats

from .base import Guarantee
from .budgets import ApproxDP, Budget, PureDP
from .rng import Randomness, resolve

__all__ = [
    "DEFAULT_ALPHA",
    "AuditPlan",
    "AuditResult",
    "BatchMechanism",
    "Chooser",
    "EventBounds",
    "EventFn",
    "ReleaseFn",
    "SetEvent",
    "ThresholdEvent",
    "audit",
    "audit_calibrated",
    "audit_mechanism",
    "choose_set_event",
    "choose_threshold_event",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "describe_event",
    "epsilon_lower_bound",
    "mechanism_release",
]

DEFAULT_ALPHA = 1e-6
"""Default probability that the audit flags a mechanism whose claim is in fact true."""

DEFAULT_CHUNK = 1 << 17

Array = npt.NDArray[Any]
BoolArray = npt.NDArray[np.bool_]
ReleaseFn = Callable[[Array, int], Array]
"""``release(x, n)``: ``n`` independent releases on input ``x``, stacked along a leading axis."""
EventFn = Callable[[Array], BoolArray]
"""A vectorised predicate: outputs with leading axis m -> boolean array of shape (m,)."""
Statistic = Callable[[Array], Array]
"""Maps outputs with leading axis m to one real number per release, shape (m,)."""

_COMPARISONS = (
    "P[E|x0] vs P[E|x1]",
    "P[E|x1] vs P[E|x0]",
    "P[not E|x0] vs P[not E|x1]",
    "P[not E|x1] vs P[not E|x0]",
)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    a = float(alpha)
    if math.isnan(a) or not 0.0 < a < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha} (the default is {DEFAULT_ALPHA})")
    return a


def _check_counts(k: int, n: int) -> tuple[int, int]:
    n = _check_int("n", n, minimum=1)
    k = _check_int("k", k, minimum=0)
    if k > n:
        raise ValueError(f"count k = {k} exceeds the number of trials n = {n}")
    return k, n


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"delta must be a real number, got {type(delta).__name__}")
    d = float(delta)
    if math.isnan(d) or not 0.0 <= d < 1.0:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    return d


def _claim(claimed: Budget) -> tuple[float, float]:
    """(epsilon, delta) of a pure or approximate claim; other budgets are refused."""
    if isinstance(claimed, PureDP):
        return claimed.epsilon, 0.0
    if isinstance(claimed, ApproxDP):
        return claimed.epsilon, claimed.delta
    raise TypeError(
        f"the audit tests PureDP or ApproxDP claims, got {type(claimed).__name__}; "
        "convert a zCDP budget first with .to_approx(delta)"
    )


def _check_pair(x0: npt.ArrayLike, x1: npt.ArrayLike) -> tuple[Array, Array]:
    a0, a1 = np.asarray(x0), np.asarray(x1)
    if a0.shape != a1.shape:
        raise ValueError(
            "x0 and x1 must have the same shape (neighbouring inputs), "
            f"got {a0.shape} and {a1.shape}"
        )
    if np.array_equal(a0, a1):
        raise ValueError(
            "x0 and x1 are identical: the audit needs two different neighbouring inputs"
        )
    return a0, a1


def _as_events(event: EventFn | Sequence[EventFn]) -> tuple[EventFn, ...]:
    if callable(event):
        return (event,)
    if isinstance(event, (str, bytes)) or not isinstance(event, Sequence):
        raise TypeError("event must be a callable predicate or a sequence of them")
    events = tuple(event)
    if not events:
        raise ValueError("at least one event is needed")
    for e in events:
        if not callable(e):
            raise TypeError(f"every event must be callable, got {type(e).__name__}")
    return events


def describe_event(event: EventFn) -> str:
    """A readable name for an event: its ``str`` for dpface events, else its function name."""
    if isinstance(event, (ThresholdEvent, SetEvent)):
        return str(event)
    return str(getattr(event, "__name__", repr(event)))


# --------------------------------------------------------------------------------------------
# Clopper-Pearson bounds and the epsilon lower bound
# --------------------------------------------------------------------------------------------


def _cp_lower(k: Array, n: int, a: float) -> npt.NDArray[np.float64]:
    kf = np.asarray(k, dtype=np.float64)
    safe = np.where(kf > 0, kf, 1.0)
    low = np.asarray(stats.beta.ppf(a, safe, n - safe + 1.0), dtype=np.float64)
    return np.where(kf > 0, low, 0.0)


def _cp_upper(k: Array, n: int, a: float) -> npt.NDArray[np.float64]:
    kf = np.asarray(k, dtype=np.float64)
    safe = np.where(kf < n, kf, n - 1.0)
    high = np.asarray(stats.beta.isf(a, safe + 1.0, n - safe), dtype=np.float64)
    return np.where(kf < n, high, 1.0)


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """Exact one-sided lower bound L on a binomial p from k successes in n trials.

    Over the draw of k ~ Bin(n, p), P[L > p] <= alpha for every p.
    """
    k, n = _check_counts(k, n)
    return float(_cp_lower(np.asarray(k), n, _check_alpha(alpha)))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """Exact one-sided upper bound U on a binomial p: P[U < p] <= alpha for every p."""
    k, n = _check_counts(k, n)
    return float(_cp_upper(np.asarray(k), n, _check_alpha(alpha)))


def _log_ratio(num: Array, den: Array) -> npt.NDArray[np.float64]:
    """ln(num / den), -inf where num <= 0 (no evidence), +inf where only den <= 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(num) - np.log(den)
    out = np.where(den <= 0.0, np.inf, out)
    return np.where(num <= 0.0, -np.inf, out)


def _comparison_bounds(
    p0_low: Array, p0_high: Array, p1_low: Array, p1_high: Array, delta: float
) -> npt.NDArray[np.float64]:
    """Epsilon lower bounds of the four comparisons, stacked along a new leading axis."""
    return np.stack(
        [
            _log_ratio(p0_low - delta, p1_high),
            _log_ratio(p1_low - delta, p0_high),
            _log_ratio(1.0 - p0_high - delta, 1.0 - p1_low),
            _log_ratio(1.0 - p1_high - delta, 1.0 - p0_low),
        ]
    )


def epsilon_lower_bound(
    count0: int, count1: int, n: int, *, delta: float = 0.0, alpha: float = DEFAULT_ALPHA
) -> float:
    """Lower bound on epsilon from one fixed event seen ``count0``/``count1`` times in ``n`` draws.

    With probability >= 1 - alpha (over the draws) the returned value is <= the smallest epsilon
    for which the mechanism is (epsilon, delta)-DP on this pair of inputs. All four comparisons
    (event/complement, both orders) are included, each one-sided bound at level alpha / 4.
    A value <= 0 means no evidence of privacy loss; -inf means even the delta allowance covers
    every comparison.
    """
    k0, n = _check_counts(count0, n)
    k1, n = _check_counts(count1, n)
    bounds = _event_bounds("E", k0, k1, n, _check_delta(delta), _check_alpha(alpha) / 4.0)
    return bounds.epsilon_lower_bound


def _event_bounds(label: str, k0: int, k1: int, n: int, delta: float, a: float) -> EventBounds:
    p0l, p0h = float(_cp_lower(np.asarray(k0), n, a)), float(_cp_upper(np.asarray(k0), n, a))
    p1l, p1h = float(_cp_lower(np.asarray(k1), n, a)), float(_cp_upper(np.asarray(k1), n, a))
    lbs = _comparison_bounds(
        np.asarray(p0l), np.asarray(p0h), np.asarray(p1l), np.asarray(p1h), delta
    )
    q0, q1 = k0 / n, k1 / n
    point = _comparison_bounds(
        np.asarray(q0), np.asarray(q0), np.asarray(q1), np.asarray(q1), delta
    )
    best = int(np.argmax(lbs))
    return EventBounds(
        event=label,
        count0=k0,
        count1=k1,
        p0_low=p0l,
        p0_high=p0h,
        p1_low=p1l,
        p1_high=p1h,
        epsilon_lower_bound=float(lbs[best]),
        comparison=_COMPARISONS[best],
        empirical_epsilon=float(np.max(point)),
    )


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventBounds:
    """Counts and confidence bounds for one event (n draws on each input).

    ``p0_low <= P[E|x0] <= p0_high`` and ``p1_low <= P[E|x1] <= p1_high`` hold jointly (with all
    other events' bounds) with probability >= 1 - alpha. ``epsilon_lower_bound`` is the largest of
    the four comparisons; ``empirical_epsilon`` is the plug-in estimate (not a bound).
    """

    event: str
    count0: int
    count1: int
    p0_low: float
    p0_high: float
    p1_low: float
    p1_high: float
    epsilon_lower_bound: float
    comparison: str
    empirical_epsilon: float


@dataclass(frozen=True)
class AuditResult:
    """Outcome of an audit: the best event's counts and bounds against the claim.

    ``epsilon_lower_bound`` is <= the mechanism's true epsilon (for these inputs and the claimed
    delta) with probability >= 1 - ``alpha``; ``violates`` is True when it exceeds the claim.
    """

    n: int
    alpha: float
    claimed: Budget
    claimed_epsilon: float
    claimed_delta: float
    event: str
    count0: int
    count1: int
    p0_low: float
    p0_high: float
    p1_low: float
    p1_high: float
    epsilon_lower_bound: float
    comparison: str
    empirical_epsilon: float
    violates: bool
    per_event: tuple[EventBounds, ...]
    n_calibration: int | None = None

    @property
    def n_comparisons(self) -> int:
        """Comparisons covered by the Bonferroni correction (four per event)."""
        return 4 * len(self.per_event)

    def __str__(self) -> str:
        verdict = "VIOLATION: claim refuted" if self.violates else "no violation found"
        lb = self.epsilon_lower_bound
        lb_text = "-inf" if lb == -math.inf else f"{lb:.4f}"
        if lb <= 0.0:
            lb_text += " (no evidence of any privacy loss)"
        lines = [
            f"Privacy audit ({verdict})",
            f"  claimed:             {self.claimed} (epsilon = {self.claimed_epsilon:.6g})",
            f"  epsilon lower bound: {lb_text}  "
            f"[<= true epsilon with prob >= 1 - {self.alpha:.3g}]",
            f"  plug-in estimate:    {self.empirical_epsilon:.4f}  (not a bound)",
            f"  event:               {self.event}; tightest comparison: {self.comparison}",
            f"  x0: {self.count0}/{self.n} -> P[E|x0] in [{self.p0_low:.6g}, {self.p0_high:.6g}]",
            f"  x1: {self.count1}/{self.n} -> P[E|x1] in [{self.p1_low:.6g}, {self.p1_high:.6g}]",
            f"  n = {self.n} draws per input; {len(self.per_event)} event(s), "
            f"{self.n_comparisons} comparisons (Bonferroni)",
        ]
        if self.n_calibration is not None:
            lines.append(
                f"  event chosen on a separate calibration sample of {self.n_calibration} per input"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Drawing and counting
# --------------------------------------------------------------------------------------------


def _checked_release(release: ReleaseFn, x: Array, m: int) -> Array:
    out = np.asarray(release(x, m))
    if out.ndim == 0 or out.shape[0] != m:
        raise ValueError(
            f"release(x, {m}) must return an array with leading axis {m}, got shape {out.shape}"
        )
    return out


def _evaluate(event: EventFn, outputs: Array) -> BoolArray:
    mask = np.asarray(event(outputs))
    if mask.dtype != np.bool_:
        raise TypeError(
            f"event {describe_event(event)} must return a boolean array, got dtype {mask.dtype}"
        )
    if mask.shape != (outputs.shape[0],):
        raise ValueError(
            f"event {describe_event(event)} must return shape ({outputs.shape[0]},), "
            f"got {mask.shape}"
        )
    return mask


def _count(
    release: ReleaseFn, x: Array, events: tuple[EventFn, ...], n: int, chunk_size: int
) -> list[int]:
    counts = [0] * len(events)
    remaining = n
    while remaining > 0:
        m = min(chunk_size, remaining)
        out = _checked_release(release, x, m)
        for i, ev in enumerate(events):
            counts[i] += int(np.count_nonzero(_evaluate(ev, out)))
        remaining -= m
    return counts


def _draw(release: ReleaseFn, x: Array, n: int, chunk_size: int) -> Array:
    parts = []
    remaining = n
    while remaining > 0:
        m = min(chunk_size, remaining)
        parts.append(_checked_release(release, x, m))
        remaining -= m
    return np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------------


def audit(
    release: ReleaseFn,
    x0: npt.ArrayLike,
    x1: npt.ArrayLike,
    event: EventFn | Sequence[EventFn],
    *,
    n: int,
    claimed: Budget,
    alpha: float = DEFAULT_ALPHA,
    chunk_size: int = DEFAULT_CHUNK,
) -> AuditResult:
    """Audit ``release`` on neighbours ``x0``, ``x1`` with event(s) fixed in advance.

    Draws ``n`` releases on each input (in chunks, so memory stays bounded), counts each event,
    and returns the largest Clopper-Pearson epsilon lower bound over events and the four
    comparisons. With probability >= 1 - alpha the bound is <= the true epsilon at the claimed
    delta; ``violates`` says whether it exceeds the claimed epsilon. The events must not depend on
    these draws (use :func:`audit_calibrated` to choose one from data).
    """
    n = _check_int("n", n, minimum=1)
    alpha = _check_alpha(alpha)
    chunk_size = _check_int("chunk_size", chunk_size, minimum=1)
    claimed_eps, claimed_delta = _claim(claimed)
    events = _as_events(event)
    a0, a1 = _check_pair(x0, x1)

    counts0 = _count(release, a0, events, n, chunk_size)
    counts1 = _count(release, a1, events, n, chunk_size)

    a = alpha / (4.0 * len(events))
    per_event = tuple(
        _event_bounds(describe_event(ev), k0, k1, n, claimed_delta, a)
        for ev, k0, k1 in zip(events, counts0, counts1, strict=True)
    )
    best = max(per_event, key=lambda b: b.epsilon_lower_bound)
    return AuditResult(
        n=n,
        alpha=alpha,
        claimed=claimed,
        claimed_epsilon=claimed_eps,
        claimed_delta=claimed_delta,
        event=best.event,
        count0=best.count0,
        count1=best.count1,
        p0_low=best.p0_low,
        p0_high=best.p0_high,
        p1_low=best.p1_low,
        p1_high=best.p1_high,
        epsilon_lower_bound=best.epsilon_lower_bound,
        comparison=best.comparison,
        empirical_epsilon=best.empirical_epsilon,
        violates=best.epsilon_lower_bound > claimed_eps,
        per_event=per_event,
    )


# --------------------------------------------------------------------------------------------
# Events and choosing them on calibration data
# --------------------------------------------------------------------------------------------


def _scalar(outputs: Array, statistic: Statistic | None) -> Array:
    if statistic is not None:
        s = np.asarray(statistic(outputs))
        if s.shape != (outputs.shape[0],):
            raise ValueError(
                f"statistic must map {outputs.shape[0]} outputs to shape ({outputs.shape[0]},), "
                f"got {s.shape}"
            )
        return s
    flat = outputs.reshape(outputs.shape[0], -1)
    if flat.shape[1] != 1:
        raise ValueError(
            f"outputs are vectors of {flat.shape[1]} values; pass statistic= to map each release "
            "to one number (e.g. statistic=lambda y: y[:, 0])"
        )
    return flat[:, 0]


def _stat_name(statistic: Statistic | None) -> str:
    return "y" if statistic is None else f"{getattr(statistic, '__name__', 'statistic')}(y)"


@dataclass(frozen=True)
class ThresholdEvent:
    """The event {s(y) >= threshold} (``upper=True``) or {s(y) <= threshold} on scalar outputs."""

    threshold: float
    upper: bool
    statistic: Statistic | None = None

    def __call__(self, outputs: Array) -> BoolArray:
        s = _scalar(np.asarray(outputs), self.statistic)
        return np.asarray(s >= self.threshold if self.upper else s <= self.threshold)

    def __str__(self) -> str:
        op = ">=" if self.upper else "<="
        return f"{{{_stat_name(self.statistic)} {op} {self.threshold:.6g}}}"


@dataclass(frozen=True)
class SetEvent:
    """The event {s(y) in values} for discrete outputs (exact equality)."""

    values: tuple[float, ...]
    statistic: Statistic | None = None

    def __call__(self, outputs: Array) -> BoolArray:
        s = _scalar(np.asarray(outputs), self.statistic)
        return np.isin(s, np.asarray(self.values))

    def __str__(self) -> str:
        shown = ", ".join(f"{v:.6g}" for v in self.values[:8])
        more = ", ..." if len(self.values) > 8 else ""
        return f"{{{_stat_name(self.statistic)} in {{{shown}{more}}}}}"


@dataclass(frozen=True)
class AuditPlan:
    """What a chooser needs to predict how an event will score: the evaluation n, alpha, delta."""

    n: int
    alpha: float
    delta: float


Chooser = Callable[[Array, Array, AuditPlan], EventFn]
"""``chooser(calibration_outputs_x0, calibration_outputs_x1, plan) -> event``."""


def _predicted_bounds(c0: Array, c1: Array, n_cal: int, plan: AuditPlan) -> npt.NDArray[np.float64]:
    """Epsilon lower bound each candidate would get on ``plan.n`` fresh draws, if the
    calibration frequencies were the truth (lightly shrunk so empty cells are not trusted)."""
    q0 = (np.asarray(c0, dtype=np.float64) + 0.5) / (n_cal + 1.0)
    q1 = (np.asarray(c1, dtype=np.float64) + 0.5) / (n_cal + 1.0)
    k0 = np.clip(np.rint(q0 * plan.n), 0, plan.n)
    k1 = np.clip(np.rint(q1 * plan.n), 0, plan.n)
    a = plan.alpha / 4.0
    lbs = _comparison_bounds(
        _cp_lower(k0, plan.n, a),
        _cp_upper(k0, plan.n, a),
        _cp_lower(k1, plan.n, a),
        _cp_upper(k1, plan.n, a),
        plan.delta,
    )
    return np.asarray(np.max(lbs, axis=0), dtype=np.float64)


def choose_threshold_event(
    calibration0: Array,
    calibration1: Array,
    plan: AuditPlan,
    *,
    statistic: Statistic | None = None,
    max_candidates: int = 512,
) -> ThresholdEvent:
    """Pick the threshold event {s(y) <= t} or {s(y) >= t} that looks strongest on calibration data.

    Candidates are quantiles of the pooled calibration statistic (or all its distinct values when
    there are few). Each is scored by the epsilon lower bound it would get on ``plan.n`` fresh
    draws if the calibration frequencies were exact. The calibration draws must be separate from
    the draws the event is evaluated on: an event selected on the evaluation draws themselves
    overfits their noise and the resulting "bound" is no longer a valid lower bound.
    """
    s0 = np.sort(_scalar(np.asarray(calibration0), statistic).astype(np.float64))
    s1 = np.sort(_scalar(np.asarray(calibration1), statistic).astype(np.float64))
    if s0.size != s1.size:
        raise ValueError("calibration samples for x0 and x1 must have the same size")
    if not (np.all(np.isfinite(s0)) and np.all(np.isfinite(s1))):
        raise ValueError("calibration statistic contains NaN or infinite values")
    n_cal = s0.size
    pooled = np.concatenate([s0, s1])
    distinct = np.unique(pooled)
    if distinct.size <= max_candidates:
        cands = distinct
    else:
        levels = np.linspace(0.0, 1.0, max_candidates)
        cands = np.unique(np.quantile(pooled, levels, method="inverted_cdf"))
    le0 = np.searchsorted(s0, cands, side="right")
    le1 = np.searchsorted(s1, cands, side="right")
    ge0 = n_cal - np.searchsorted(s0, cands, side="left")
    ge1 = n_cal - np.searchsorted(s1, cands, side="left")
    score_le = _predicted_bounds(le0, le1, n_cal, plan)
    score_ge = _predicted_bounds(ge0, ge1, n_cal, plan)
    i_le, i_ge = int(np.argmax(score_le)), int(np.argmax(score_ge))
    if score_ge[i_ge] > score_le[i_le]:
        return ThresholdEvent(float(cands[i_ge]), upper=True, statistic=statistic)
    return ThresholdEvent(float(cands[i_le]), upper=False, statistic=statistic)


def choose_set_event(
    calibration0: Array,
    calibration1: Array,
    plan: AuditPlan,
    *,
    statistic: Statistic | None = None,
    max_outcomes: int = 10_000,
) -> SetEvent:
    """Pick a set event {s(y) in S} for discrete outputs from calibration data.

    Outcomes are ranked by their calibration likelihood ratio; each top-j set (a likelihood-ratio
    level set, the optimal event shape) is scored like :func:`choose_threshold_event` does. As
    there, the calibration draws must be separate from the evaluation draws.
    """
    s0 = _scalar(np.asarray(calibration0), statistic)
    s1 = _scalar(np.asarray(calibration1), statistic)
    if s0.size != s1.size:
        raise ValueError("calibration samples for x0 and x1 must have the same size")
    n_cal = s0.size
    values = np.unique(np.concatenate([s0, s1]))
    if values.size > max_outcomes:
        raise ValueError(
            f"{values.size} distinct outputs: not a discrete mechanism; use choose_threshold_event"
        )
    if values.size < 2:
        return SetEvent((float(values[0]),), statistic=statistic)
    c0 = np.bincount(np.searchsorted(values, s0), minlength=values.size)
    c1 = np.bincount(np.searchsorted(values, s1), minlength=values.size)
    order = np.argsort(-((c0 + 0.5) / (c1 + 0.5)), kind="stable")
    pre0 = np.cumsum(c0[order])[:-1]
    pre1 = np.cumsum(c1[order])[:-1]
    j = int(np.argmax(_predicted_bounds(pre0, pre1, n_cal, plan)))
    chosen = np.sort(values[order[: j + 1]])
    return SetEvent(tuple(v.item() for v in chosen), statistic=statistic)


def audit_calibrated(
    release: ReleaseFn,
    x0: npt.ArrayLike,
    x1: npt.ArrayLike,
    *,
    n: int,
    claimed: Budget,
    chooser: Chooser = choose_threshold_event,
    n_calibration: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    chunk_size: int = DEFAULT_CHUNK,
) -> AuditResult:
    """Choose an event on a calibration sample, then audit it on ``n`` *fresh* draws per input.

    The calibration draws (``n_calibration`` per input, default n // 4) are used only by
    ``chooser`` and then discarded; the event is never evaluated on them, so it is fixed in
    advance with respect to the evaluation draws and :func:`audit`'s guarantee holds. This needs
    ``release`` to draw new randomness on every call (true for a mechanism over one
    :class:`~mechanisms.rng.Randomness` stream; not for one that reseeds itself per call).
    """
    n = _check_int("n", n, minimum=1)
    alpha = _check_alpha(alpha)
    chunk_size = _check_int("chunk_size", chunk_size, minimum=1)
    n_cal = max(1, n // 4) if n_calibration is None else n_calibration
    n_cal = _check_int("n_calibration", n_cal, minimum=1)
    _, claimed_delta = _claim(claimed)
    a0, a1 = _check_pair(x0, x1)

    cal0 = _draw(release, a0, n_cal, chunk_size)
    cal1 = _draw(release, a1, n_cal, chunk_size)
    event = chooser(cal0, cal1, AuditPlan(n=n, alpha=alpha, delta=claimed_delta))
    del cal0, cal1
    result = audit(release, a0, a1, event, n=n, claimed=claimed, alpha=alpha, chunk_size=chunk_size)
    return dataclasses.replace(result, n_calibration=n_cal)


# --------------------------------------------------------------------------------------------
# Mechanisms
# --------------------------------------------------------------------------------------------


class BatchMechanism(Protocol):
    """What the audit needs from a mechanism: batched releases and its declared guarantee."""

    @property
    def guarantee(self) -> Guarantee: ...

    def batch(self, X: Array) -> Array: ...


def mechanism_release(mechanism: BatchMechanism) -> ReleaseFn:
    """``release(x, n)`` for a mechanism: ``mechanism.batch`` on n stacked copies of x."""

    def release(x: Array, n: int) -> Array:
        xs = np.repeat(np.asarray(x)[np.newaxis, ...], n, axis=0)
        return np.asarray(mechanism.batch(xs))

    return release


def audit_mechanism(
    factory: Callable[[Randomness], BatchMechanism],
    x0: npt.ArrayLike,
    x1: npt.ArrayLike,
    *,
    n: int,
    claimed: Budget | None = None,
    event: EventFn | Sequence[EventFn] | None = None,
    chooser: Chooser | None = None,
    n_calibration: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    randomness: Randomness | None = None,
    seed: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> AuditResult:
    """Build a mechanism with ``factory(randomness)`` and audit it on neighbours x0, x1.

    ``claimed`` defaults to the mechanism's declared ``guarantee.budget`` (x0, x1 should then be
    at the distance that guarantee is stated for, e.g. the sensitivity). With ``event`` the
    event(s) are fixed in advance; otherwise ``chooser`` (default: threshold events) picks one on
    a separate calibration sample. Randomness: an explicit object, else ``seed`` (reproducible,
    for tests), else a fresh secure stream.
    """
    if event is not None and (chooser is not None or n_calibration is not None):
        raise ValueError("pass either a fixed event or chooser/n_calibration, not both")
    mechanism = factory(resolve(randomness, seed))
    claim = mechanism.guarantee.budget if claimed is None else claimed
    release = mechanism_release(mechanism)
    if event is not None:
        return audit(release, x0, x1, event, n=n, claimed=claim, alpha=alpha, chunk_size=chunk_size)
    return audit_calibrated(
        release,
        x0,
        x1,
        n=n,
        claimed=claim,
        chooser=choose_threshold_event if chooser is None else chooser,
        n_calibration=n_calibration,
        alpha=alpha,
        chunk_size=chunk_size,
    )
