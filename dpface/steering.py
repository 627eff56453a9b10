"""Attribute steering: the generator's attribute channel from a privacy mechanism (book ch. 4).

The default generator can restrict its surrogate choice by attributes (today: ``male``). These
classes fill that channel from the attribute mechanisms of ``mechanisms.attributes`` and say
exactly what the channel's guarantee is, per face:

* :class:`VotingSteering` -- k-anonymous attribute voting (Algorithm 1): the released attributes
  are a DP release about the *reference set* (every reference record's loss is charged to the
  ledger subject ``reference:NAME`` before each release). The query face is hidden among its k
  neighbours, which is **not** DP for the face: its receipt lists the channel as uncovered.
* :class:`TClosenessSteering` -- t-closeness selection around a DP population estimate: the
  face's own loss is ``selector.face_epsilon`` (pure, 0 at t = 0). When it is finite it is
  charged to the face's subject and the channel is covered; when infinite the channel is
  listed as uncovered and nothing is charged.

The attribute channel is consumed only by the generator (post-processing).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mechanisms.accounting import pure_event
from mechanisms.attributes import KAnonymousVoting, TClosenessSelector
from mechanisms.budgets import Budget, PureDP

from .generators.base import AttributeChannel
from .ledger import BudgetExceeded, Ledger

__all__ = ["AttributeSteering", "Steered", "TClosenessSteering", "VotingSteering"]


@dataclass(frozen=True)
class Steered:
    """One face's attribute channel, what it cost and what it guarantees."""

    channel: AttributeChannel | None
    note: str
    refused: str | None = None


class AttributeSteering(ABC):
    """Turns one face (its identity embedding and photo crop) into an attribute channel."""

    name: str

    @abstractmethod
    def steer(self, *, subject: str, embedding: np.ndarray, face: Any, ledger: Ledger) -> Steered:
        """Charge what the release costs (before drawing), then release the face's attributes."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The receipt entry: mechanism, parameters, whom the guarantee protects."""


def _generator_values(names: tuple[str, ...], values: npt.ArrayLike) -> dict[str, float]:
    """Attribute names as the generator reads them (lower case: 'Male' -> 'male')."""
    return {n.lower(): float(v) for n, v in zip(names, np.asarray(values).ravel(), strict=True)}


def _charge(ledger: Ledger, subject: str, what: str, budget: Budget, note: str) -> str | None:
    try:
        ledger.charge(
            subject, mechanism=what, budget=budget, event=pure_event(_eps(budget)), note=note
        )
    except BudgetExceeded as err:
        return str(err)
    except KeyError as err:
        return str(err.args[0]) if err.args else str(err)
    return None


def _eps(budget: Budget) -> float:
    if not isinstance(budget, PureDP):  # pragma: no cover - both mechanisms are pure
        raise TypeError("attribute steering charges pure budgets only")
    return budget.epsilon


class VotingSteering(AttributeSteering):
    """k-anonymous attribute voting over a reference set of (identity feature, 0/1 labels)."""

    name = "k-anonymous voting"

    def __init__(
        self,
        *,
        voting: KAnonymousVoting,
        reference_features: npt.ArrayLike,
        reference_labels: npt.ArrayLike,
        reference_name: str = "reference-set",
    ) -> None:
        feats = np.asarray(reference_features, dtype=np.float64)
        labs = np.asarray(reference_labels)
        if feats.ndim != 2 or labs.ndim != 2 or feats.shape[0] != labs.shape[0]:
            raise ValueError(
                "reference_features (n, d) and reference_labels (n, attributes) must have one "
                f"row per record, got {feats.shape} and {labs.shape}"
            )
        if labs.shape[1] != len(voting.attributes):
            raise ValueError(
                f"reference_labels has {labs.shape[1]} columns for {len(voting.attributes)} "
                "attributes"
            )
        self.voting = voting
        self._features = feats
        self._labels = labs
        self.reference_subject = f"reference:{reference_name}"

    def steer(self, *, subject: str, embedding: np.ndarray, face: Any, ledger: Ledger) -> Steered:
        g = self.voting.guarantee
        refused = _charge(
            ledger, self.reference_subject, "KAnonymousVoting", g.budget, g.statement()
        )
        if refused is not None:
            return Steered(None, "attribute voting refused by the reference set's budget", refused)
        release = self.voting(self._features, self._labels, np.asarray(embedding, np.float64))
        channel = AttributeChannel(
            _generator_values(release.attributes, release.values), privatised=False
        )
        return Steered(
            channel,
            f"attributes by k-anonymous voting (k = {self.voting.k}): {g.budget} for each record "
            f"of {self.reference_subject}; this face is hidden among its k neighbours, not DP",
        )

    def describe(self) -> dict[str, Any]:
        g = self.voting.guarantee
        return {
            "name": "KAnonymousVoting",
            "attributes": list(self.voting.attributes),
            "k": self.voting.k,
            "rate": self.voting.rate,
            "tau": self.voting.tau,
            "guarantee": g.statement(),
            "charged_to": self.reference_subject,
            "covers_the_face": False,
        }


class TClosenessSteering(AttributeSteering):
    """t-closeness selection around a fitted (DP) population estimate."""

    name = "t-closeness"

    def __init__(
        self,
        *,
        selector: TClosenessSelector,
        face_probabilities: Callable[[Any], npt.ArrayLike] | None = None,
    ) -> None:
        if not selector.fitted:
            raise ValueError("fit the selector on the reference labels first (selector.fit)")
        if face_probabilities is None:
            if tuple(a.lower() for a in selector.attributes) != ("male",):
                raise ValueError(
                    "without face_probabilities= only the attribute 'male' is estimated (faceres)"
                )
            face_probabilities = _male_probability
        self.selector = selector
        self._probabilities = face_probabilities

    def steer(self, *, subject: str, embedding: np.ndarray, face: Any, ledger: Ledger) -> Steered:
        eps = self.selector.face_epsilon()
        covered = math.isfinite(eps)
        if covered and eps > 0:
            refused = _charge(
                ledger,
                subject,
                "TClosenessSelector",
                PureDP(eps),
                f"t-closeness attribute release, t = {self.selector.t:g}",
            )
            if refused is not None:
                return Steered(None, "attribute release refused by the face's budget", refused)
        values = self.selector(np.asarray(self._probabilities(face), dtype=np.float64))
        channel = AttributeChannel(
            _generator_values(self.selector.attributes, values), privatised=covered
        )
        how = (
            f"{eps:.4g}-DP for this face, charged to its subject"
            if covered and eps > 0
            else "independent of this face (t = 0)"
            if covered
            else "NOT DP for this face (face_epsilon is infinite at this t)"
        )
        return Steered(channel, f"attributes by t-closeness (t = {self.selector.t:g}): {how}")

    def describe(self) -> dict[str, Any]:
        eps = self.selector.face_epsilon()
        return {
            "name": "TClosenessSelector",
            "attributes": list(self.selector.attributes),
            "t": self.selector.t,
            "population": [float(p) for p in self.selector.population],
            "face_epsilon": eps if math.isfinite(eps) else None,
            "guarantee": self.selector.guarantee.statement(),
            "covers_the_face": math.isfinite(eps),
        }


def _male_probability(face: Any) -> np.ndarray:
    from .models.attributes import age_gender

    return age_gender([face])[1]
