"""Randomness for mechanisms: a CSPRNG by default, an explicit seed only for tests.

The default bit generator is AES in counter mode (``randomgen.AESCounter``, AES-NI accelerated),
keyed with 128 bits from the operating system (``secrets``). Numpy's ``Generator`` on top of it is
used only for *integer* draws (``integers``, ``random_raw``); no mechanism draws float noise.

A seeded :class:`Randomness` is reproducible and therefore **not** secret: anything released
with it must say "seeded" in its receipt. ``Randomness.seeded`` tells.
"""

from __future__ import annotations

import copy
import os
import secrets
from typing import Any

import numpy as np
from randomgen import AESCounter

__all__ = ["Randomness", "default_randomness", "resolve"]


class Randomness:
    """A numpy ``Generator`` over a cryptographically secure bit generator, plus provenance.

    Fork safety: a secure (unseeded) stream copied into a child process by ``fork()`` would
    repeat the parent's noise there. The generator is re-keyed from the OS the first time it is
    used in a process other than the one that keyed it. Seeded streams are reproducible by
    design and are left alone.

    Copy safety: the same holds for copies made inside one process. ``copy.copy``,
    ``copy.deepcopy`` and a pickle round trip of a secure stream give a stream with a fresh key
    from the OS (nothing of the original's key or position is carried over, and pickles of a
    secure stream contain no key at all). A seeded stream is copied with its exact state, so the
    copy reproduces the original's next draws.
    """

    __slots__ = ("_generator", "_pid", "seeded")

    def __init__(self, generator: np.random.Generator, *, seeded: bool) -> None:
        self._generator = generator
        self._pid = os.getpid()
        self.seeded = seeded

    def __repr__(self) -> str:
        return f"Randomness(seeded={self.seeded})"

    def __copy__(self) -> Randomness:
        if self.seeded:
            return Randomness(copy.deepcopy(self._generator), seeded=True)
        return Randomness.secure()

    def __deepcopy__(self, memo: dict[int, Any]) -> Randomness:
        return self.__copy__()

    def __reduce__(self) -> tuple[Any, ...]:
        if self.seeded:
            return (_restore_seeded, (self._generator,))
        return (Randomness.secure, ())

    @property
    def generator(self) -> np.random.Generator:
        if not self.seeded and os.getpid() != self._pid:
            self._generator = _secure_generator()
            self._pid = os.getpid()
        return self._generator

    @classmethod
    def secure(cls) -> Randomness:
        """Fresh AES-CTR stream keyed with 128 bits from the OS entropy pool."""
        return cls(_secure_generator(), seeded=False)

    @classmethod
    def from_seed(cls, seed: int) -> Randomness:
        """Reproducible stream for tests and experiments. Never use for a real release."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        return cls(np.random.Generator(AESCounter(seed=seed)), seeded=True)

    def integers_below(self, high: np.ndarray) -> np.ndarray:
        """Exactly uniform int64 draws in [0, high) elementwise (Lemire's rejection method)."""
        return self.generator.integers(0, high, dtype=np.int64)


def _restore_seeded(generator: np.random.Generator) -> Randomness:
    """Unpickle a seeded stream at the exact state it was pickled in."""
    return Randomness(generator, seeded=True)


def _secure_generator() -> np.random.Generator:
    return np.random.Generator(AESCounter(key=secrets.randbits(128)))


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
