"""The averaging attack is real, and the ledger charges for it.

Releasing a person's identity n times with fresh noise lets an attacker average the releases:
the average is one release with sigma / sqrt(n). The ledger records n events, and its tight (PLD)
total for them equals the epsilon of that single averaged release -- the accounting is neither
fooled nor wasteful.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dpface.ledger import Ledger
from mechanisms.budgets import ApproxDP
from mechanisms.gaussian import analytic_gaussian_delta
from mechanisms.identity import IdentityGaussian
from mechanisms.rng import Randomness


def _smallest_eps(multiplier: float, delta: float) -> float:
    lo, hi = 0.0, 100.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if analytic_gaussian_delta(multiplier, epsilon=mid, sensitivity=1.0) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def test_averaging_gets_closer_and_the_ledger_charges_it(tmp_path: Path) -> None:
    dim, delta, people = 256, 1e-6, 40
    mech = IdentityGaussian(epsilon=4.0, delta=delta, dim=dim, renormalize=False, seed=5)
    x = Randomness.from_seed(6).generator.standard_normal((people, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    led = Ledger(tmp_path / "l.db", composition="pld")
    led.set_budget("alice", ApproxDP(1000.0, 1e-3))  # alice is person 0; charged per release
    sigma = mech.calibration().sigma
    releases: list[np.ndarray] = []
    cosines, charged = {}, {}
    for n in (1, 4, 16):
        while len(releases) < n:
            led.charge(
                "alice",
                mechanism="identity-gaussian",
                budget=mech.guarantee.budget,
                event=mech.event(),
            )
            releases.append(mech.batch(x))
        avg = np.mean(releases, axis=0)
        cos = np.sum(avg * x, axis=1) / np.linalg.norm(avg, axis=1)
        cosines[n] = float(cos.mean())
        charged[n] = led.spent("alice").epsilon
        assert len(led.events("alice")) == n
        # the attacker's average behaves like one release with sigma / sqrt(n)
        predicted = 1 / math.sqrt(1 + dim * sigma**2 / n)
        assert cosines[n] == pytest.approx(predicted, abs=5 / math.sqrt(dim * people) + 0.01)
    assert cosines[1] < cosines[4] < cosines[16]
    assert charged[1] < charged[4] < charged[16]
    # consistency: PLD total at the budget's delta vs the averaged release's exact epsilon
    multiplier = mech.event().noise_multiplier  # type: ignore[attr-defined]
    for n in (4, 16):
        single = _smallest_eps(multiplier / math.sqrt(n), 1e-3)
        assert charged[n] >= single * 0.999  # never undercharged
        assert charged[n] <= single * 1.05  # and not wasteful (PLD is tight for Gaussians)
