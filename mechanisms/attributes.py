"""Private attribute selection: k-anonymous voting (book ch. 4, Algorithm 1) and t-closeness.

:class:`KAnonymousVoting` -- Algorithm 1 of the book's chapter 4, as written there:

1. Poisson-subsample the reference set D with rate gamma (secret coins,
   :class:`mechanisms.subsampling.PoissonSubsample`);
2. take the k nearest neighbours of the query's feature vector among the kept records
   (squared Euclidean distance; ties broken by the records' content, never by coin order);
3. tau-approximate each neighbour's 0/1 vote vector over the c configured attributes (eq. 4.4:
   ``v_hat_j = v_j * min(tau / |v_j|_1, 1)``) and add them up: votes ``v_i`` in [0, k];
4. every independent attribute: "with" with probability (eq. 4.5)
   ``exp(eps v_i / (2 dq)) / (exp(eps v_i / (2 dq)) + exp(eps (k - v_i) / (2 dq)))``;
5. every group of mutually exclusive attributes: exactly one member, member n with probability
   (eq. 4.6) ``exp(eps v_n / (2 dq)) / sum_j exp(eps v_j / (2 dq))``.

Steps 4-5 are :class:`mechanisms.exponential.Exponential` with ``epsilon=eps, sensitivity=dq``
(its weights ``exp(eps u / (2 Delta))`` are the book's), sampled exactly from integer draws.

Guarantee (privacy unit: one record of D; add/remove neighbours; ``proofs/attribute_voting.md``):
with B the independent attributes and C the groups, the release on a *fixed* sample is
``eps0 = (eps / dq) * min(2 tau, |B| + |C|)``-DP (plus a float64 charge below 1e-9), and the
whole mechanism is ``ln(1 + gamma (e^eps0 - 1))``-DP. The query face is NOT protected by DP.

:class:`TClosenessSelector` -- AnonymousNet-style attribute selection: per attribute release a
draw from ``Q_i = P_i + clip(p_face_i - P_i, -t, t)``, where P is the population distribution
estimated once with DP on the reference set (``proofs/t_closeness.md``).
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import numpy.typing as npt
from dp_accounting import dp_event

from .accounting import pure_event
from .base import Guarantee, Mechanism, check_positive_finite, check_probability
from .budgets import PureDP, ceil_float
from .exponential import Exponential
from .laplace import Laplace
from .metrics import RECORDS, Distance
from .rng import Randomness, resolve
from .subsampling import PoissonSubsample, poisson_amplify

__all__ = [
    "CELEBA_BOOK_ATTRIBUTES",
    "CELEBA_BOOK_GROUPS",
    "KAnonymousVoting",
    "TClosenessSelector",
    "VoteProbabilities",
    "VotingRelease",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

_ULP = Fraction(1, 2**53)
_LN_SLACK = decimal.Decimal(10) ** -50

CELEBA_BOOK_ATTRIBUTES: tuple[str, ...] = (
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Eyeglasses",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "No_Beard",
    "Pale_Skin",
    "Young",
)
"""The 13 CelebA attributes the book protects (§4.5.2), in CelebA's column spelling."""

CELEBA_BOOK_GROUPS: tuple[tuple[str, ...], ...] = (
    ("Black_Hair", "Blond_Hair", "Brown_Hair"),
    ("Mustache", "No_Beard"),
)
"""The book's two groups of conflicting attributes G1 and G2 (§4.5.2)."""


# ------------------------------------------------------------------------------------ validation


def _check_int(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_names(attributes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(attributes, str) or not isinstance(attributes, Sequence):
        raise TypeError("attributes must be a sequence of attribute names (strings)")
    names = tuple(attributes)
    if not names:
        raise ValueError("attributes must name at least one attribute")
    for a in names:
        if not isinstance(a, str) or not a:
            raise TypeError(f"every attribute name must be a non-empty string, got {a!r}")
    dupes = sorted({a for a in names if names.count(a) > 1})
    if dupes:
        raise ValueError(f"attribute names must be unique; repeated: {dupes}")
    return names


def _check_groups(
    groups: Sequence[Sequence[str]], names: tuple[str, ...]
) -> tuple[tuple[int, ...], ...]:
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError("groups must be a sequence of groups, each a sequence of attribute names")
    seen: set[str] = set()
    out: list[tuple[int, ...]] = []
    for g in groups:
        if isinstance(g, str) or not isinstance(g, Sequence):
            raise TypeError(f"each group must be a sequence of attribute names, got {g!r}")
        members = tuple(g)
        if len(members) < 2:
            raise ValueError(f"a group of exclusive attributes needs >= 2 members, got {members}")
        for m in members:
            if m not in names:
                raise ValueError(f"group member {m!r} is not one of the attributes {names}")
            if m in seen:
                raise ValueError(f"attribute {m!r} appears in more than one group (or twice)")
            seen.add(m)
        out.append(tuple(names.index(m) for m in members))
    return tuple(out)


def _real_matrix(name: str, value: npt.ArrayLike, *, ndim: int) -> FloatArray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinity")
    return out


def _binary_labels(value: npt.ArrayLike, n: int, a: int) -> Int8Array:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"labels must be a 0/1 array, got dtype {arr.dtype}")
    if arr.shape != (n, a):
        raise ValueError(
            f"labels must have shape ({n}, {a}) (records x attributes), got {arr.shape}"
        )
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError("labels must contain only 0 and 1 (without / with the attribute)")
    return np.ascontiguousarray(arr, dtype=np.int8)


# ------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class VoteProbabilities:
    """Eq. 4.5 / 4.6 probabilities for one vote vector (or a stack of them, leading axes).

    ``independent[..., b]``: probability of *with* for the b-th independent attribute (in the
    mechanism's ``independent`` order); ``groups[g][..., n]``: probability that member n of
    group g is the one chosen.
    """

    independent: FloatArray
    groups: tuple[FloatArray, ...]


@dataclass(frozen=True)
class VotingRelease:
    """One release of :class:`KAnonymousVoting`: the obfuscation attributes O of Algorithm 1.

    ``values[i]`` is 1 (with) or 0 (without) for ``attributes[i]``; ``group_choices[g]`` names
    the member chosen in group g (exactly one per group). Only these are covered by the
    guarantee.
    """

    attributes: tuple[str, ...]
    values: Int8Array
    group_choices: tuple[str, ...]

    def as_dict(self) -> dict[str, bool]:
        return {a: bool(v) for a, v in zip(self.attributes, self.values.tolist(), strict=True)}


# ------------------------------------------------------------------------------------ voting


class KAnonymousVoting(Mechanism):
    """Book ch. 4, Algorithm 1: Poisson sample, k-NN, tau-approximate votes, exponential draws.

    Guarantee for one reference record (add/remove): ``ln(1 + rate (e^eps0 - 1))``-DP with
    ``eps0 = (epsilon / delta_q) * min(2 tau, |B| + |C|)`` (+ < 1e-9 float64 charge), B = the
    independent attributes, C = the groups. The query face itself is not DP-protected.
    """

    input_metric = RECORDS

    def __init__(
        self,
        *,
        epsilon: float,
        k: int,
        rate: float,
        tau: float,
        attributes: Sequence[str],
        groups: Sequence[Sequence[str]] = (),
        delta_q: float = 1.0,
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self._epsilon = check_positive_finite("epsilon", epsilon)
        self._k = _check_int("k", k, minimum=1)
        if self._k > 2**40:
            raise ValueError(f"k = {self._k} is too large (at most 2^40 neighbours)")
        self._rate = check_probability("rate", rate, open_low=True, open_high=False)
        self._tau = check_positive_finite("tau", tau)
        self._delta_q = check_positive_finite("delta_q", delta_q)
        self._names = _check_names(attributes)
        self._groups = _check_groups(groups, self._names)
        grouped = {i for g in self._groups for i in g}
        self._independent = tuple(i for i in range(len(self._names)) if i not in grouped)
        self.randomness = resolve(randomness, seed)
        self._sampler = PoissonSubsample(rate=self._rate, randomness=self.randomness)
        # Eq. 4.5 / 4.6 weights exp(eps u / (2 dq)) are the standard exponential mechanism's.
        self._exp = Exponential(
            epsilon=self._epsilon, sensitivity=self._delta_q, randomness=self.randomness
        )
        self._ideal, self._pre = self._pre_sampling_losses()
        amplified = poisson_amplify(PureDP(self._pre), self._rate)
        if not isinstance(amplified, PureDP):  # pragma: no cover - poisson_amplify keeps pure
            raise TypeError("internal error: amplification of a pure budget is not pure")
        self._amplified = amplified

    @classmethod
    def book_preset(
        cls,
        *,
        tau: float,
        k: Literal[100, 200] = 100,
        epsilon: float = 0.1,
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> KAnonymousVoting:
        """The book's setting (§4.5.2-4.5.3): 13 CelebA attributes, groups G1 = hair colour and
        G2 = {Mustache, No_Beard}, rate 0.05, dq = 1, k in {100, 200}, eps in {0.05, 0.10}.

        The book does not state its tau, so ``tau`` must be given.
        """
        if k not in (100, 200):
            raise ValueError(f"the book uses k = 100 or 200, got {k!r}; use the constructor")
        if epsilon not in (0.05, 0.1):
            raise ValueError(f"the book uses epsilon = 0.05 or 0.10, got {epsilon!r}")
        return cls(
            epsilon=epsilon,
            k=k,
            rate=0.05,
            tau=tau,
            attributes=CELEBA_BOOK_ATTRIBUTES,
            groups=CELEBA_BOOK_GROUPS,
            delta_q=1.0,
            randomness=randomness,
            seed=seed,
        )

    # ------------------------------------------------------------------ parameters
    @property
    def epsilon(self) -> float:
        """The book's per-draw epsilon in eq. 4.5 / 4.6 (not the release's loss)."""
        return self._epsilon

    @property
    def k(self) -> int:
        return self._k

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def tau(self) -> float:
        return self._tau

    @property
    def delta_q(self) -> float:
        return self._delta_q

    @property
    def attributes(self) -> tuple[str, ...]:
        return self._names

    @property
    def independent(self) -> tuple[str, ...]:
        """Independent attributes B, in release order of :attr:`VoteProbabilities.independent`."""
        return tuple(self._names[i] for i in self._independent)

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(self._names[i] for i in g) for g in self._groups)

    @property
    def draws(self) -> int:
        """Exponential-mechanism draws per release: |B| + |C|."""
        return len(self._independent) + len(self._groups)

    @property
    def ideal_epsilon(self) -> float:
        """Ideal eps0 on a fixed sample (real arithmetic): (eps/dq) min(2 tau, |B| + |C|)."""
        return self._ideal

    @property
    def pre_sampling_epsilon(self) -> float:
        """eps0 charged for the realised release on a fixed sample (ideal + float64 charge)."""
        return self._pre

    def _pre_sampling_losses(self) -> tuple[float, float]:
        eps = Fraction(self._epsilon)
        dq = Fraction(self._delta_q)
        draws = self.draws
        t = min(2 * Fraction(self._tau), Fraction(draws))
        ideal = eps * t / dq
        # Float64 charge per draw (proofs/attribute_voting.md, "Float64"): the Exponential
        # sampler's own eps - eps', plus 2 eps E / dq for score rounding E = (c + 4) k 2^-53.
        score_err = (len(self._names) + 4) * self._k * _ULP
        slack = Fraction(self._epsilon - self._exp.sampling_epsilon) + 2 * eps * score_err / dq
        return ceil_float(ideal), ceil_float(ideal + draws * slack)

    # ------------------------------------------------------------------ privacy declarations
    @property
    def guarantee(self) -> Guarantee:
        n_b, n_c = len(self._independent), len(self._groups)
        note = (
            f"Algorithm 1 (book ch. 4): Poisson sample at rate {self._rate:g} with secret coins, "
            f"k = {self._k} nearest neighbours of the query, tau = {self._tau:g} approximation, "
            f"{n_b} independent attribute(s) by eq. 4.5 and {n_c} group(s) by eq. 4.6 at "
            f"eps = {self._epsilon:g}, dq = {self._delta_q:g}. On a fixed sample the release is "
            f"{self._ideal:.6g}-DP = (eps/dq) min(2 tau, |B| + |C|) (charged "
            f"{self._pre:.17g} with float64 rounding); Poisson sampling amplifies it to "
            f"ln(1 + gamma (e^eps0 - 1)) = {self._amplified.epsilon:.6g}. Every release spends "
            "this on every reference record: repeated queries compose. If fewer than k records "
            "are sampled the votes of the missing neighbours are 0 (eq. 4.5 keeps k), and an "
            "empty sample releases the no-data distribution; both are covered. The QUERY face is "
            "NOT protected by DP: it only picks the neighbourhood, and its released attributes "
            "are those of the (noisy) k-neighbourhood it falls in ('hidden among k'); queries "
            "with different neighbourhoods can be told apart."
        )
        if self.seeded:
            note += " Randomness is SEEDED (reproducible, not secret): not a real release."
        return Guarantee(
            budget=self._amplified,
            privacy_unit="one record (feature vector + attribute labels) of the reference set D",
            neighbouring="reference sets differing by adding or removing one record",
            sensitivity=(
                "each tau-approximated vote vector has entries in [0, 1] and L1 norm <= tau; one "
                "record changes the k-NN set by at most one swap (or one addition), so the vote "
                f"vector moves by <= 1 per attribute and <= 2 tau = {2 * self._tau:g} in L1"
            ),
            note=note,
        )

    def privacy_map(self, d_in: float | Distance) -> PureDP:
        """Loss for reference sets differing by ``d_in`` added/removed records (group privacy)."""
        d = self._check_d_in(d_in)
        if d != math.floor(d):
            raise ValueError(f"d_in counts records and must be an integer, got {d_in}")
        if d == 0.0:
            return PureDP(0.0)
        if math.isinf(d):
            return PureDP(math.inf, allow_inf=True)
        return PureDP(ceil_float(Fraction(int(d)) * Fraction(self._amplified.epsilon)))

    def event(self) -> dp_event.DpEvent:
        """``PoissonSampledDpEvent(rate, pure_event(eps0))`` for one release.

        dp-accounting 0.6.0's PLD/RDP accountants refuse a Poisson-sampled pure event; account it
        with ``method='basic'`` or use :meth:`amplified_event` (pure eps_amplified) for PLD.
        """
        return self._sampler.event(pure_event(self._pre))

    def amplified_event(self) -> dp_event.DpEvent:
        """The amplified release as a pure event, ``pure_event(ln(1 + rate (e^eps0 - 1)))``."""
        return pure_event(self._amplified.epsilon)

    # ------------------------------------------------------------------ deterministic part
    def _check_reference(
        self, features: npt.ArrayLike, labels: npt.ArrayLike, query: npt.ArrayLike
    ) -> tuple[FloatArray, Int8Array, FloatArray]:
        feats = _real_matrix("reference features", features, ndim=2)
        q = _real_matrix("query", query, ndim=1)
        if feats.shape[1] != q.shape[0]:
            raise ValueError(
                f"reference features have {feats.shape[1]} dimensions, the query has {q.shape[0]}"
            )
        labs = _binary_labels(labels, feats.shape[0], len(self._names))
        return feats, labs, q

    @staticmethod
    def _order(feats: FloatArray, labs: Int8Array, q: FloatArray) -> IntArray:
        """Records by (squared distance to q, then their own content): a total order.

        Each record's distance is a row-wise sum over its own coordinates only, and ties are
        broken lexicographically by (features, labels), so the order between two records never
        depends on which other records exist or on their positions or coins.
        """
        diff = feats - q
        d2 = np.sum(diff * diff, axis=1)
        order = np.argsort(d2, kind="stable").astype(np.int64)
        if order.size < 2:
            return order
        sd = d2[order]
        tied = np.flatnonzero(sd[1:] == sd[:-1])
        if tied.size == 0:
            return order
        # Runs of equal distance: re-sort each run by content (features, then labels).
        starts = tied[np.concatenate(([True], np.diff(tied) > 1))]
        ends = tied[np.concatenate((np.diff(tied) > 1, [True]))] + 2
        content = np.concatenate([feats, labs.astype(np.float64)], axis=1)
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            idx = order[s:e]
            keys = content[idx].T[::-1]
            order[s:e] = idx[np.lexsort(keys)]
        return order

    def _weights(self) -> FloatArray:
        """Eq. 4.4 factor min(tau / n, 1) for a neighbour voting for n attributes (n = 0..c)."""
        n = np.arange(len(self._names) + 1, dtype=np.float64)
        with np.errstate(divide="ignore"):
            w = np.minimum(self._tau / n, 1.0)
        w[0] = 1.0
        return w

    def _votes_sorted(self, labs_sorted: Int8Array, kept_sorted: BoolArray) -> FloatArray:
        """Votes (R, c) of the first k kept records of each row (records in k-NN order)."""
        kept = np.asarray(kept_sorted, dtype=bool)
        selected = kept & (np.cumsum(kept, axis=1) <= self._k)
        norms = labs_sorted.astype(np.int64).sum(axis=1)
        w = self._weights()
        sel = selected.astype(np.int64)
        votes = np.zeros((kept.shape[0], len(self._names)), dtype=np.float64)
        # Exact integer counts per vote-norm class, then one float product per class (in order).
        for n in range(1, len(self._names) + 1):
            cls = norms == n
            if not np.any(cls):
                continue
            counts = sel[:, cls] @ labs_sorted[cls].astype(np.int64)
            votes += counts.astype(np.float64) * w[n]
        return votes

    def neighbours(
        self,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        query: npt.ArrayLike,
        *,
        kept: npt.ArrayLike | None = None,
    ) -> IntArray:
        """Indices of the (at most k) nearest kept records, nearest first (Algorithm 1, line 2).

        ``kept`` is a boolean mask over the records (the Poisson sample); default: all.
        Deterministic; releasing its result is NOT private.
        """
        feats, labs, q = self._check_reference(features, labels, query)
        order = self._order(feats, labs, q)
        mask = self._kept_mask(kept, feats.shape[0])[order]
        chosen = order[mask]
        return chosen[: self._k]

    def votes(
        self,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        query: npt.ArrayLike,
        *,
        kept: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """Tau-approximated votes v (c,) of the k nearest kept records (Algorithm 1, lines 2-3).

        Deterministic; releasing its result is NOT private.
        """
        feats, labs, q = self._check_reference(features, labels, query)
        order = self._order(feats, labs, q)
        mask = self._kept_mask(kept, feats.shape[0])[order]
        out: FloatArray = self._votes_sorted(labs[order], mask[np.newaxis, :])[0]
        return out

    @staticmethod
    def _kept_mask(kept: npt.ArrayLike | None, n: int) -> BoolArray:
        if kept is None:
            return np.ones(n, dtype=bool)
        mask = np.asarray(kept)
        if mask.dtype != np.bool_ or mask.shape != (n,):
            raise ValueError(f"kept must be a boolean mask of shape ({n},)")
        return mask

    # ------------------------------------------------------------------ eq. 4.5 / 4.6
    def _check_votes(self, votes: npt.ArrayLike) -> FloatArray:
        v = np.asarray(votes)
        if v.dtype.kind not in "iuf":
            raise TypeError(f"votes must be a real numeric array, got dtype {v.dtype}")
        if v.ndim < 1 or v.shape[-1] != len(self._names):
            raise ValueError(
                f"votes must have a last axis of {len(self._names)} (one per attribute), "
                f"got shape {v.shape}"
            )
        out = v.astype(np.float64)
        if not np.all(np.isfinite(out)) or np.any(out < 0) or np.any(out > self._k):
            raise ValueError(f"votes must be finite and lie in [0, k = {self._k}]")
        return out

    def _score_rows(self, v: FloatArray) -> tuple[FloatArray, list[FloatArray]]:
        """(R*|B|, 2) rows [v_i, k - v_i] for eq. 4.5 and one (R, |G|) block per group."""
        ind = v[:, list(self._independent)]
        two_way = np.stack([ind, self._k - ind], axis=-1).reshape(-1, 2)
        return two_way, [v[:, list(g)] for g in self._groups]

    def _probabilities(self, votes: npt.ArrayLike, *, sampling: bool) -> VoteProbabilities:
        v = self._check_votes(votes)
        lead = v.shape[:-1]
        flat = v.reshape(-1, len(self._names))
        two_way, blocks = self._score_rows(flat)
        fn = self._exp.sampling_probabilities if sampling else self._exp.probabilities
        n_b = len(self._independent)
        if n_b:
            ind = np.asarray(fn(two_way))[:, 0].reshape(*lead, n_b)
        else:
            ind = np.zeros((*lead, 0), dtype=np.float64)
        grp = tuple(np.asarray(fn(b)).reshape(*lead, b.shape[1]) for b in blocks)
        return VoteProbabilities(independent=ind, groups=grp)

    def probabilities(self, votes: npt.ArrayLike) -> VoteProbabilities:
        """Eq. 4.5 (independent attributes) and eq. 4.6 (groups) for votes of shape (..., c)."""
        return self._probabilities(votes, sampling=False)

    def sampling_probabilities(self, votes: npt.ArrayLike) -> VoteProbabilities:
        """The distribution the sampler draws from exactly (Exponential's eps' and floor)."""
        return self._probabilities(votes, sampling=True)

    # ------------------------------------------------------------------ releases
    def _draw(self, votes: FloatArray) -> Int8Array:
        r = votes.shape[0]
        out = np.zeros((r, len(self._names)), dtype=np.int8)
        two_way, blocks = self._score_rows(votes)
        if self._independent:
            picked = self._exp.batch(two_way).reshape(r, len(self._independent))
            out[:, list(self._independent)] = (picked == 0).astype(np.int8)
        for g, block in zip(self._groups, blocks, strict=True):
            choice = self._exp.batch(block)
            out[np.arange(r), np.asarray(g, dtype=np.int64)[choice]] = 1
        return out

    def release_many(
        self, features: npt.ArrayLike, labels: npt.ArrayLike, query: npt.ArrayLike, n: int
    ) -> Int8Array:
        """``n`` independent releases for one query (fresh coins each): int8 array (n, c).

        Every row is a full release and spends the guarantee again (for audits and tests).
        """
        n = _check_int("n", n, minimum=1)
        feats, labs, q = self._check_reference(features, labels, query)
        order = self._order(feats, labs, q)
        n_rec = feats.shape[0]
        kept = self._sampler.sample_mask(n * n_rec).reshape(n, n_rec)
        votes = self._votes_sorted(labs[order], kept[:, order])
        return self._draw(votes)

    def __call__(
        self, features: npt.ArrayLike, labels: npt.ArrayLike, query: npt.ArrayLike
    ) -> VotingRelease:
        """One release of Algorithm 1 for one query feature vector (f,)."""
        values = self.release_many(features, labels, query, 1)[0]
        chosen = tuple(next(self._names[i] for i in g if values[i] == 1) for g in self._groups)
        return VotingRelease(attributes=self._names, values=values, group_choices=chosen)

    def batch(
        self, features: npt.ArrayLike, labels: npt.ArrayLike, queries: npt.ArrayLike
    ) -> Int8Array:
        """One release per query row (m, f), each with its own Poisson sample: (m, c) int8.

        m releases compose: each spends the guarantee on every reference record.
        """
        qs = _real_matrix("queries", queries, ndim=2)
        if qs.shape[0] == 0:
            raise ValueError("queries is empty")
        return np.concatenate([self.release_many(features, labels, row, 1) for row in qs], axis=0)


# ------------------------------------------------------------------------------------ t-closeness


Estimator = Literal["laplace", "diffprivlib"]


class TClosenessSelector(Mechanism):
    """AnonymousNet-style attribute selection under t-closeness, with a DP population estimate.

    ``fit(reference_labels)`` estimates the population distribution P of each binary attribute
    once, epsilon_population-DP for one reference record (add/remove). Each face then gets
    attribute i drawn from ``Q_i = P_i + clip(p_face_i - P_i, -t, t)``: |Q_i - P_i| <= t (the
    EMD of a binary attribute), so t = 0 reveals nothing about the face and t = 1 follows it.
    The face is not DP-protected unless :meth:`face_epsilon` is finite (see proofs/t_closeness.md).
    """

    input_metric = RECORDS

    def __init__(
        self,
        *,
        t: float,
        epsilon_population: float,
        attributes: Sequence[str],
        estimator: Estimator = "laplace",
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"t must be a real number, got {type(t).__name__}")
        t = float(t)
        if math.isnan(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1] (EMD of binary attributes), got {t}")
        self._t = t
        self._epsilon = check_positive_finite("epsilon_population", epsilon_population)
        self._names = _check_names(attributes)
        if estimator not in ("laplace", "diffprivlib"):
            raise ValueError(f"estimator must be 'laplace' or 'diffprivlib', got {estimator!r}")
        self._estimator: Estimator = estimator
        self.randomness = resolve(randomness, seed)
        self._population: FloatArray | None = None
        self._noisy_counts: FloatArray | None = None

    @property
    def t(self) -> float:
        return self._t

    @property
    def epsilon_population(self) -> float:
        return self._epsilon

    @property
    def attributes(self) -> tuple[str, ...]:
        return self._names

    @property
    def estimator(self) -> Estimator:
        return self._estimator

    # ------------------------------------------------------------------ population (DP)
    def fit(self, reference_labels: npt.ArrayLike) -> TClosenessSelector:
        """Estimate P from the reference set's 0/1 labels (N, c): spends epsilon_population once.

        Per attribute the two counts (without, with) form a 2-bin histogram; one record adds 1
        to exactly one bin of each attribute, so the 2c counts have L1 sensitivity c.
        ``laplace``: our grid Laplace on all 2c counts at epsilon_population (exact sampler).
        ``diffprivlib``: ``diffprivlib.tools.histogram`` per attribute at epsilon/c each
        (truncated geometric noise from float uniforms: inherits diffprivlib's implementation,
        not exact). P_i = with / (with + without) after clipping counts at 0 (1/2 if both 0).
        Fitting again spends again.
        """
        arr = np.asarray(reference_labels)
        if arr.ndim != 2:
            raise ValueError(f"reference_labels must be (N, c), got shape {arr.shape}")
        labs = _binary_labels(arr, arr.shape[0], len(self._names))
        c = len(self._names)
        with_ = labs.astype(np.int64).sum(axis=0)
        without = labs.shape[0] - with_
        counts = np.stack([without, with_], axis=1).astype(np.float64)  # (c, 2)
        if self._estimator == "laplace":
            lap = Laplace(epsilon=self._epsilon, sensitivity=float(c), randomness=self.randomness)
            noisy = lap(counts.ravel()).reshape(c, 2)
        else:
            noisy = self._diffprivlib_counts(labs)
        self._noisy_counts = noisy
        clipped = np.maximum(noisy, 0.0)
        total = clipped.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pop = np.where(total > 0, clipped[:, 1] / np.where(total > 0, total, 1.0), 0.5)
        self._population = np.clip(pop, 0.0, 1.0)
        return self

    def _diffprivlib_counts(self, labs: Int8Array) -> FloatArray:
        import warnings

        from diffprivlib.accountant import BudgetAccountant
        from diffprivlib.tools import histogram

        c = len(self._names)
        eps_each = self._epsilon / c
        accountant = BudgetAccountant()
        out = np.zeros((c, 2), dtype=np.float64)
        for i in range(c):
            # A seed is derived from our stream only when seeded (tests); otherwise None lets
            # diffprivlib use its secure generator (secrets.SystemRandom).
            state = int(self.randomness.generator.integers(0, 2**31 - 1)) if self.seeded else None
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                hist, _ = histogram(
                    labs[:, i].astype(np.float64),
                    epsilon=eps_each,
                    bins=2,
                    range=(0.0, 1.0),
                    random_state=state,
                    accountant=accountant,
                )
            out[i] = np.asarray(hist, dtype=np.float64)
        return out

    @property
    def fitted(self) -> bool:
        return self._population is not None

    @property
    def population(self) -> FloatArray:
        """The DP estimate of P (c,): public once fitted (it was released with DP)."""
        if self._population is None:
            raise RuntimeError("call fit(reference_labels) first: P is estimated with DP there")
        return self._population.copy()

    def set_population(self, population: npt.ArrayLike) -> TClosenessSelector:
        """Use a P that is already public (e.g. released earlier with DP): spends nothing here."""
        p = _real_matrix("population", population, ndim=1)
        if p.shape != (len(self._names),) or np.any(p < 0) or np.any(p > 1):
            raise ValueError(f"population must be ({len(self._names)},) in [0, 1]")
        self._population = p
        self._noisy_counts = None
        return self

    # ------------------------------------------------------------------ per face
    def _check_faces(self, p_face: npt.ArrayLike) -> FloatArray:
        p = np.asarray(p_face)
        if p.dtype.kind not in "biuf":
            raise TypeError(f"p_face must be real, got dtype {p.dtype}")
        p = p.astype(np.float64)
        if p.ndim < 1 or p.shape[-1] != len(self._names):
            raise ValueError(f"p_face must have a last axis of {len(self._names)}, got {p.shape}")
        if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
            raise ValueError("p_face must be attribute probabilities in [0, 1]")
        return p

    def target(self, p_face: npt.ArrayLike) -> FloatArray:
        """Q = P + clip(p_face - P, -t, t), shape like p_face (..., c)."""
        p = self._check_faces(p_face)
        pop = self.population
        q: FloatArray = pop + np.clip(p - pop, -self._t, self._t)
        return np.clip(q, 0.0, 1.0)

    def _bernoulli(self, q: FloatArray) -> Int8Array:
        # Exact Bernoulli(floor(q 2^53) / 2^53): an exactly uniform 53-bit integer below it.
        thresh = np.floor(np.ldexp(q, 53)).astype(np.int64)
        u = self.randomness.generator.integers(0, 1 << 53, size=q.shape, dtype=np.int64)
        return (u < thresh).astype(np.int8)

    def __call__(self, p_face: npt.ArrayLike) -> Int8Array:
        """Released 0/1 attributes (c,) for one face's attribute probabilities (c,)."""
        p = self._check_faces(p_face)
        if p.ndim != 1:
            raise ValueError("__call__ takes one face (c,); use batch for (n, c)")
        return self._bernoulli(self.target(p))

    def batch(self, p_faces: npt.ArrayLike) -> Int8Array:
        """One independent release per row of (n, c): (n, c) int8."""
        p = self._check_faces(p_faces)
        if p.ndim != 2:
            raise ValueError(f"batch takes (n, c), got shape {p.shape}")
        return self._bernoulli(self.target(p))

    def realised_range(self) -> tuple[list[Fraction], list[Fraction]]:
        """Per attribute, the smallest and largest probability the sampler can actually use.

        A release draws attribute i as Bernoulli(floor(Q_i 2^53) / 2^53), with Q_i computed in
        float64 by :meth:`target`. Every step of that computation (subtraction, clipping,
        addition, clipping, scaling by 2^53, floor) is monotone non-decreasing in p_face_i, so
        over all faces (p_face_i in [0, 1]) the realised probability ranges exactly between its
        values at p_face_i = 0 and p_face_i = 1, both attained. Returned as exact rationals.
        """
        c = len(self._names)
        ends = self.target(np.array([np.zeros(c), np.ones(c)]))
        thresh = np.floor(np.ldexp(ends, 53)).astype(np.int64)
        low = [Fraction(int(v), 2**53) for v in thresh[0]]
        high = [Fraction(int(v), 2**53) for v in thresh[1]]
        return low, high

    def face_epsilon(self) -> float:
        """Pure-DP loss of one release for the FACE (any two faces), given the public P.

        Computed from the probabilities the sampler actually realises (floor(Q 2^53) / 2^53,
        see :meth:`realised_range`), in exact rationals: per attribute the output bit's
        likelihood ratio between any two faces is at most max(U / L, (1 - L) / (1 - U)) for the
        realised range [L, U]; the attributes are drawn independently, so the losses add. 0 when
        every realised range is a single value (e.g. t = 0); infinite when some realised
        probability can be 0 or 1 for one face but not for another (L = 0 < U or L < U = 1).
        The logarithms are evaluated in 60-digit decimal and the sum rounded up to a float.
        """
        low, high = self.realised_range()
        with decimal.localcontext() as ctx:
            ctx.prec = 60
            total = decimal.Decimal(0)
            for lo, hi in zip(low, high, strict=True):
                if lo == hi:
                    continue  # the same Bernoulli for every face: no loss
                if lo == 0 or hi == 1:
                    return math.inf
                ratio = max(hi / lo, (1 - lo) / (1 - hi))
                value = (decimal.Decimal(ratio.numerator) / decimal.Decimal(ratio.denominator)).ln()
                # ratio >= 1 + 2^-53, so ln(ratio) > 10^-16; the division and ln are correctly
                # rounded at 60 digits (relative 10^-59 each), dominated by the 10^-50 slack
                total += value * (1 + _LN_SLACK) + _LN_SLACK
        if total == 0:
            return 0.0
        return ceil_float(Fraction(total))

    # ------------------------------------------------------------------ privacy declarations
    @property
    def guarantee(self) -> Guarantee:
        how = (
            "grid Laplace (exact sampler) on the 2c histogram counts"
            if self._estimator == "laplace"
            else "diffprivlib.tools.histogram per attribute at eps/c (float noise, not exact)"
        )
        note = (
            f"Spent once by fit() via {how}; every face release afterwards is post-processing "
            f"for the reference set. For each face, each released attribute is drawn from Q_i "
            f"with |Q_i - P_i| <= t = {self._t:g} (t-closeness of the release distribution to "
            "the DP estimate P, EMD = |p - q| for binary attributes; to the true population only "
            "up to the estimate's noise). This is NOT a DP guarantee for the face unless "
            "face_epsilon() is finite; repeated fresh draws for one face reveal Q, which equals "
            "p_face when |p_face - P| <= t: release once per face and reuse."
        )
        if self.seeded:
            note += " Randomness is SEEDED (reproducible, not secret): not a real release."
        return Guarantee(
            budget=PureDP(self._epsilon),
            privacy_unit="one record (attribute labels) of the reference set",
            neighbouring="reference sets differing by adding or removing one record",
            sensitivity=(
                f"per-attribute 2-bin histograms: one record adds 1 to one bin of each of the "
                f"{len(self._names)} attributes (L1 sensitivity {len(self._names)})"
            ),
            note=note,
        )

    def privacy_map(self, d_in: float | Distance) -> PureDP:
        """Loss of the population estimate for ``d_in`` added/removed reference records."""
        d = self._check_d_in(d_in)
        if math.isinf(d):
            return PureDP(math.inf, allow_inf=True)
        return PureDP(ceil_float(Fraction(d) * Fraction(self._epsilon)))

    def event(self) -> dp_event.DpEvent:
        """The population estimate's event (emitted once, at fit): pure epsilon_population."""
        return pure_event(self._epsilon)
