"""Exact, fast sampling of the geometric distribution P[Y >= y] = exp(-y/t), integer t >= 1.

This is the engine behind the discrete Laplace sampler. It is exact: every decision compares the
first 32 bits of a uniform with a threshold that is *proven* correct by interval arithmetic, and
the rare draws that land on a threshold (probability 2^-32 each) are settled with more random
bits of the same uniform.
Floats are used only to *guess* an index; a guess is always verified against the exact
thresholds, and a failed verification falls back to a full search. So floating-point error can
slow a draw down, never bias it.

Decomposition (all exact identities):
    Y = L*A + B with L = 2^l <= t,
    A ~ Geometric: P[A >= a] = r_A^a, r_A = exp(-L/t)     (infinite table + memorylessness)
    B = sum_j 2^(c*j) * B_j, the B_j independent, B_j in [0, 2^c_j) with
        P[B_j = v] proportional to r_j^v, r_j = exp(-2^(c*j)/t)   (truncated tables)
Independence holds because exp(-y/t) factorises over the base-2^c digits of y and the domain of
B is the full product of digit ranges.

Sampling one table: with U uniform in [0, 1) given by its first 32 bits w, V = max{v : U < P_v}
where P_v = P[V >= v] is decreasing, P_0 = 1. With S_v = floor(P_v * 2^32) (the tables keep
floor(P_v * 2^64), exact, and shift it):
    w <  S_v  implies U < P_v;   w > S_v  implies U >= P_v;   w == S_v is a tie (refine).
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field
from fractions import Fraction

import mpmath
import numpy as np
import numpy.typing as npt

from .rng import Randomness

__all__ = ["GeometricTables", "geometric", "geometric_tables"]

IntArray = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]

MAX_CHUNK_BITS = 17
PREFIX_BITS = 32  # fast-path comparisons use the first 32 bits of each uniform
_TWO64 = 1 << 64


@dataclass(frozen=True)
class _Table:
    """Exact tail thresholds of one digit (truncated) or of A (infinite, memoryless)."""

    m: int  # the ratio is r = exp(-m / t)
    t: int
    size: int | None  # number of values for a truncated digit; None for the infinite A
    thresholds: U64Array  # S_v = floor(P_v 2^64) for v = 1 .. len (S_0 = 2^64 implied)
    log_r: float  # float estimate of ln r = -m/t, used for guessing only
    lower: U64Array = field(repr=False)  # lower[v] = floor(P_v 2^32), lower[0] = 2^32
    upper: U64Array = field(repr=False)  # upper[v] = floor(P_{v+1} 2^32), 0 past the end

    @property
    def cap(self) -> int:
        """Largest index the fast path may return."""
        return int(self.lower.shape[0] - 1)

    def tail_bounds(self, v: int, prec: int) -> tuple[Fraction, Fraction]:
        """Rigorous rational bounds lo <= P_v <= hi, tighter as ``prec`` grows."""
        r_lo, r_hi = _ratio_bounds(self.m, self.t, prec)
        one = 1 << prec
        lo_v, hi_v = _pow_bounds(r_lo, r_hi, v, prec)
        if self.size is None:
            return Fraction(lo_v, one), Fraction(hi_v, one)
        lo_k, hi_k = _pow_bounds(r_lo, r_hi, self.size, prec)
        return Fraction(lo_v - hi_k, one - lo_k), Fraction(hi_v - lo_k, one - hi_k)


_IV_LOCK = threading.Lock()


def _ratio_bounds(m: int, t: int, prec: int) -> tuple[int, int]:
    """Integers lo <= exp(-m/t) * 2^prec <= hi, by mpmath interval arithmetic."""
    with _IV_LOCK:
        saved = mpmath.iv.prec
        mpmath.iv.prec = prec + 64
        try:
            enclosure = mpmath.iv.exp(mpmath.iv.mpf(-m) / t)
            raw_lo, raw_hi = enclosure._mpi_
        finally:
            mpmath.iv.prec = saved
    lo, hi = _raw_to_fraction(raw_lo), _raw_to_fraction(raw_hi)
    scale = 1 << prec
    return math.floor(lo * scale), math.ceil(hi * scale)


def _raw_to_fraction(raw: tuple[int, int, int, int]) -> Fraction:
    """Exact value of an mpmath raw float (sign, mantissa, exponent, bitcount)."""
    sign, man, exp, _ = raw
    value = Fraction(man) * (Fraction(2) ** exp)
    return -value if sign else value


def _pow_bounds(r_lo: int, r_hi: int, v: int, prec: int) -> tuple[int, int]:
    """Bounds on r^v * 2^prec from bounds on r * 2^prec (binary powering, floor/ceil each step)."""
    lo, hi = 1 << prec, 1 << prec
    base_lo, base_hi = r_lo, r_hi
    while v:
        if v & 1:
            lo = (lo * base_lo) >> prec
            hi = -((-hi * base_hi) >> prec)
        base_lo = (base_lo * base_lo) >> prec
        base_hi = -((-base_hi * base_hi) >> prec)
        v >>= 1
    return lo, hi


def _fixed_point_powers(m: int, t: int, count: int, prec: int) -> tuple[list[int], list[int]]:
    """Lower/upper integer bounds on r^v * 2^prec for v = 0..count, r = exp(-m/t)."""
    r_lo, r_hi = _ratio_bounds(m, t, prec)
    one = 1 << prec
    lo, hi = [one], [one]
    for _ in range(count):
        lo.append((lo[-1] * r_lo) >> prec)
        hi.append(-((-hi[-1] * r_hi) >> prec))  # ceiling division
    return lo, hi


def _build_table(m: int, t: int, size: int | None) -> _Table:
    prec = 192
    while True:
        if size is None:
            # enough entries that P_v < 2^-64 at the end: v > 64 ln2 * t / m
            count = int(64 * math.log(2) * t / m) + 2
            lo, hi = _fixed_point_powers(m, t, count, prec)
            num_lo, num_hi, den_lo, den_hi = lo, hi, 1 << prec, 1 << prec
            vals = range(1, count + 1)
            bounds = [((num_lo[v] << 64) // den_hi, (num_hi[v] << 64) // den_lo) for v in vals]
        else:
            count = size
            lo, hi = _fixed_point_powers(m, t, count, prec)
            one = 1 << prec
            den_lo, den_hi = one - hi[size], one - lo[size]
            bounds = [
                (((lo[v] - hi[size]) << 64) // den_hi, ((hi[v] - lo[size]) << 64) // den_lo)
                for v in range(1, size)
            ]
        if all(a == b for a, b in bounds):
            s = np.array([a for a, _ in bounds], dtype=np.uint64)
            if size is None:
                # trim trailing zeros but keep one zero so the table ends below every w > 0
                nz = int(np.count_nonzero(s))
                s = s[: nz + 1]
            s32 = s >> np.uint64(64 - PREFIX_BITS)
            sentinel = np.array([1 << PREFIX_BITS], dtype=np.uint64)  # S_0 = 2^32 > any w
            lower = np.concatenate([sentinel, s32])
            upper = np.concatenate([s32, np.zeros(1, dtype=np.uint64)])
            return _Table(m=m, t=t, size=size, thresholds=s, log_r=-m / t, lower=lower, upper=upper)
        prec *= 2  # a threshold sat too close to an integer boundary; sharpen and redo


@dataclass(frozen=True)
class GeometricTables:
    """All tables needed to sample P[Y >= y] = exp(-y/t) for one integer t."""

    t: int
    big_l: int
    digits: tuple[_Table, ...]
    tail: _Table


@functools.lru_cache(maxsize=64)
def geometric_tables(t: int) -> GeometricTables:
    """Build (and cache) the exact thresholds for scale ``t``."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be a positive int, got {t!r}")
    bits = t.bit_length() - 1  # L = 2^bits <= t
    n_chunks = max(1, -(-bits // MAX_CHUNK_BITS)) if bits else 0
    digits = []
    offset = 0
    for j in range(n_chunks):
        c = bits // n_chunks + (1 if j < bits % n_chunks else 0)
        digits.append(_build_table(1 << offset, t, 1 << c))
        offset += c
    return GeometricTables(
        t=t, big_l=1 << bits, digits=tuple(digits), tail=_build_table(1 << bits, t, None)
    )


def _count_above(table: _Table, w: U64Array, rng: Randomness) -> IntArray:
    """Exact V = max{v : U < P_v} for 32-bit prefixes w of U (search plus tie refinement)."""
    s = table.thresholds >> np.uint64(64 - PREFIX_BITS)  # floor(P_v 2^32), exactly
    # number of v >= 1 with S_v > w; S is non-increasing so search on the reversed array
    below_or_equal = np.searchsorted(s[::-1], w, side="right")
    v: IntArray = (s.shape[0] - below_or_equal).astype(np.int64)
    # a tie at S_{v+1} == w needs more bits of U to decide
    nxt = np.minimum(v, s.shape[0] - 1)
    ties = np.flatnonzero((v < s.shape[0]) & (s[nxt] == w))
    for i in ties:
        vi = int(v[i])
        prefix, bits = int(w[i]), PREFIX_BITS
        # thresholds equal to w may repeat; walk forward while U < P_{v+1}, always with the
        # same U (its refined prefix is carried along)
        while vi < s.shape[0] and int(s[vi]) == int(w[i]):
            below, prefix, bits = _uniform_below(prefix, bits, table, vi + 1, rng)
            if not below:
                break
            vi += 1
        v[i] = vi
    return v


def _uniform_below(
    prefix: int, bits: int, table: _Table, v: int, rng: Randomness
) -> tuple[bool, int, int]:
    """Exactly decide U < P_v, U uniform in [prefix/2^bits, (prefix+1)/2^bits).

    Draws more bits of U while the comparison is undecided; returns the decision and U's
    (possibly longer) prefix so later comparisons use the same U.
    """
    prec = bits + 192
    while True:
        lo, hi = table.tail_bounds(v, prec)
        if Fraction(prefix + 1, 1 << bits) <= lo:
            return True, prefix, bits
        if Fraction(prefix, 1 << bits) >= hi:
            return False, prefix, bits
        extra = int(rng.integers_below(np.array([1 << 62], dtype=np.int64))[0])
        prefix, bits, prec = (prefix << 62) | extra, bits + 62, prec + 64


def _sample_table(table: _Table, w: U64Array, rng: Randomness) -> IntArray:
    """Exact draws of V for one table from 32-bit prefixes w of independent uniforms U.

    Guess by float, verify against the exact thresholds, search (and refine ties) otherwise.
    """
    x = w * 2.0**-PREFIX_BITS + 2.0 ** -(PREFIX_BITS + 1)  # a float inside U's interval
    if table.size is not None:
        rk = math.exp(table.log_r * table.size)
        x *= 1.0 - rk
        x += rk
    np.log(x, out=x)
    x *= 1.0 / table.log_r
    v = x.astype(np.int64)  # x >= 0 up to rounding, so this is floor(x) or 0
    np.clip(v, 0, table.cap, out=v)
    # verified iff S_v > w (U < P_v) and S_{v+1} < w (U >= P_{v+1}); lower[0] = 2^32 = S_0
    ok = table.lower[v] > w
    ok &= table.upper[v] < w
    bad = np.flatnonzero(~ok)
    if bad.size:
        v[bad] = _count_above(table, w[bad], rng)
    return v


def _uniform_prefixes(rng: Randomness, count: int, size: int) -> list[U64Array]:
    """``count`` independent arrays of ``size`` uniform 32-bit values (two per 64-bit word)."""
    words = rng.generator.bit_generator.random_raw(size * ((count + 1) // 2)).reshape(size, -1)
    mask = np.uint64(0xFFFFFFFF)
    out = []
    for j in range(count):
        col = words[:, j // 2]
        out.append(col & mask if j % 2 == 0 else col >> np.uint64(32))
    return out


def geometric(t: int, size: int, rng: Randomness) -> IntArray:
    """``size`` exact i.i.d. draws of Y >= 0 with P[Y >= y] = exp(-y/t)."""
    tables = geometric_tables(int(t))
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    prefixes = _uniform_prefixes(rng, 1 + len(tables.digits), size)
    # A: memoryless; a draw that reaches the end of its table continues with a fresh draw
    y = _sample_table(tables.tail, prefixes[0], rng)
    end = tables.tail.thresholds.shape[0]
    todo = np.flatnonzero(y >= end)
    while todo.size:
        more = _sample_table(tables.tail, _uniform_prefixes(rng, 1, todo.size)[0], rng)
        y[todo] += more
        todo = todo[more >= end]
    if int(y.max(initial=0)) > (2**62) // tables.big_l:
        raise OverflowError("geometric draw outside the int64 range")
    y *= tables.big_l
    scale = 1
    for table, w in zip(tables.digits, prefixes[1:], strict=True):
        digit = _sample_table(table, w, rng)
        if scale != 1:
            digit *= scale
        y += digit
        scale *= table.size or 1
    return y
