"""Randomness for mechanisms: a CSPRNG by default, an explicit seed only for tests.

The default bit generator is AES in counter mode (``randomgen.AESCounter``, AES-NI accelerated),
keyed with 128 bits from the operating system (``secrets``). Numpy's ``Generator`` on top of it is
used only for *integer* draws (``integers``, ``random_raw``); no mechanism draws float noise.

A seeded :class:`Randomness` is reproducible and therefore **not** secret: anything released
with it must say "seeded" in its receipt. ``Randomness.seeded`` tells.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np
from randomgen import AESCounter

__all__ = ["Randomness", "default_randomness", "resolve"]


@dataclass(frozen=True)
class Randomness:
    """A numpy ``Generator`` over a cryptographically secure bit generator, plus provenance."""

    generator: np.random.Generator = field(repr=False)
    seeded: bool

    @classmethod
    def secure(cls) -> Randomness:
        """Fresh AES-CTR stream keyed from the OS entropy pool."""
        key = secrets.randbits(128)
        return cls(np.random.Generator(AESCounter(key=key)), seeded=False)

    @classmethod
    def from_seed(cls, seed: int) -> Randomness:
        """Reproducible stream for tests and experiments. Never use for a real release."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        return cls(np.random.Generator(AESCounter(seed=seed)), seeded=True)

    def integers_below(self, high: np.ndarray) -> np.ndarray:
        """Exactly uniform int64 draws in [0, high) elementwise (Lemire's rejection method)."""
        return self.generator.integers(0, high, dtype=np.int64)


def default_randomness() -> Randomness:
    return Randomness.secure()


def resolve(randomness: Randomness | None, seed: int | None) -> Randomness:
    """Pick the randomness for a mechanism: explicit object, else seed (tests), else secure."""
    if randomness is not None and seed is not None:
        raise ValueError("pass either randomness= or seed=, not both")
    if randomness is not None:
        return randomness
    if seed is not None:
        return Randomness.from_seed(seed)
    return Randomness.secure()
