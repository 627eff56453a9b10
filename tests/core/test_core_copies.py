"""Copies of a mechanism never share its secure noise stream; seeded copies reproduce it.

copy.copy, copy.deepcopy and a pickle round trip of a mechanism built with secure (unseeded)
randomness must give a mechanism whose draws differ from the original's next draws (before the
fix, deepcopy and pickle copied the AES key and counter, so the copy repeated the original's
noise exactly). A seeded mechanism is reproducible by design: its copies draw exactly what the
original draws next. Also: Mechanism.statement() says when the randomness is seeded.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mechanisms.attributes import KAnonymousVoting, TClosenessSelector
from mechanisms.base import SEEDED_SUFFIX, Mechanism
from mechanisms.exponential import Exponential
from mechanisms.gaussian import Gaussian
from mechanisms.identity import IdentityGaussian, IdentityLaplace, IdentityVMF
from mechanisms.laplace import Laplace
from mechanisms.pixelization import DPBlur, DPPixelization
from mechanisms.rng import Randomness
from mechanisms.subsampling import PoissonSubsample

Array = np.ndarray
_IMAGE = (np.arange(16 * 16 * 3) * 7 % 256).astype(np.uint8).reshape(16, 16, 3)
_UNIT = np.ones(16) / 4.0
_FEATURES = np.arange(40.0).reshape(20, 2)
_LABELS = (np.arange(60).reshape(20, 3) % 2).astype(np.int8)


def _voting(seed: int | None) -> KAnonymousVoting:
    return KAnonymousVoting(
        epsilon=1.0, k=5, rate=0.5, tau=2.0, attributes=["a", "b", "c"], seed=seed
    )


def _tcloseness(seed: int | None) -> TClosenessSelector:
    sel = TClosenessSelector(t=0.3, epsilon_population=1.0, attributes=["a", "b"], seed=seed)
    return sel.set_population([0.5, 0.5])


# (name, factory(seed), draw(mechanism) -> array with enough entropy that two independent
# draws coincide with negligible probability)
CASES: list[tuple[str, Callable[[int | None], Any], Callable[[Any], Array]]] = [
    ("Laplace", lambda s: Laplace(epsilon=1.0, sensitivity=1.0, seed=s), lambda m: m(np.zeros(64))),
    (
        "Gaussian",
        lambda s: Gaussian(epsilon=1.0, delta=1e-6, sensitivity=1.0, seed=s),
        lambda m: m(np.zeros(64)),
    ),
    (
        "Exponential",
        lambda s: Exponential(epsilon=1.0, sensitivity=1.0, seed=s),
        lambda m: m.batch(np.zeros((128, 8))),
    ),
    ("IdentityLaplace", lambda s: IdentityLaplace(epsilon=1.0, dim=16, seed=s), lambda m: m(_UNIT)),
    (
        "IdentityGaussian",
        lambda s: IdentityGaussian(epsilon=1.0, delta=1e-6, dim=16, seed=s),
        lambda m: m(_UNIT),
    ),
    ("IdentityVMF", lambda s: IdentityVMF(epsilon=1.0, dim=16, seed=s), lambda m: m(_UNIT)),
    (
        "DPPixelization",
        lambda s: DPPixelization(epsilon=1.0, block=4, seed=s),
        lambda m: m(_IMAGE, (0, 0, 16, 16)),
    ),
    (
        "DPBlur",
        lambda s: DPBlur(epsilon=1.0, delta=1e-6, block=4, seed=s),
        lambda m: m.noisy_cell_means(_IMAGE, (0, 0, 16, 16)),
    ),
    (
        "KAnonymousVoting",
        _voting,
        lambda m: m.release_many(_FEATURES, _LABELS, np.array([3.0, 4.0]), 64),
    ),
    (
        "TClosenessSelector",
        _tcloseness,
        lambda m: m.batch(np.full((128, 2), 0.5)),
    ),
    (
        "PoissonSubsample",
        lambda s: PoissonSubsample(rate=0.5, seed=s),
        lambda m: m.sample_mask(256),
    ),
    (
        "Randomness",
        lambda s: Randomness.secure() if s is None else Randomness.from_seed(s),
        lambda r: r.generator.bit_generator.random_raw(4),
    ),
]

COPIERS: list[tuple[str, Callable[[Any], Any]]] = [
    ("copy", copy.copy),
    ("deepcopy", copy.deepcopy),
    ("pickle", lambda obj: pickle.loads(pickle.dumps(obj))),
]


def test_every_mechanism_with_randomness_is_covered() -> None:
    """Every Mechanism subclass in the core that holds a ``randomness`` is in CASES."""
    import mechanisms.attributes
    import mechanisms.exponential
    import mechanisms.gaussian
    import mechanisms.identity
    import mechanisms.laplace
    import mechanisms.pixelization

    modules = [
        mechanisms.attributes,
        mechanisms.exponential,
        mechanisms.gaussian,
        mechanisms.identity,
        mechanisms.laplace,
        mechanisms.pixelization,
    ]
    concrete = {
        name
        for module in modules
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and issubclass(obj, Mechanism)
        and not getattr(obj, "__abstractmethods__", None)
        and not name.startswith("_")
    }
    assert concrete <= {name for name, _, _ in CASES}


@pytest.mark.parametrize("how,copier", COPIERS, ids=[c[0] for c in COPIERS])
@pytest.mark.parametrize("name,factory,draw", CASES, ids=[c[0] for c in CASES])
def test_copy_of_a_secure_mechanism_draws_fresh_noise(
    name: str,
    factory: Callable[[int | None], Any],
    draw: Callable[[Any], Array],
    how: str,
    copier: Callable[[Any], Any],
) -> None:
    original = factory(None)
    draw(original)  # the original has already released something
    twin = copier(original)
    assert twin.seeded is False
    assert type(twin) is type(original)
    mine, theirs = draw(original), draw(twin)
    assert np.asarray(mine).shape == np.asarray(theirs).shape
    assert not np.array_equal(mine, theirs), f"{how} of {name} repeats the original's noise"


@pytest.mark.parametrize("how,copier", COPIERS, ids=[c[0] for c in COPIERS])
@pytest.mark.parametrize("name,factory,draw", CASES, ids=[c[0] for c in CASES])
def test_copy_of_a_seeded_mechanism_reproduces_it(
    name: str,
    factory: Callable[[int | None], Any],
    draw: Callable[[Any], Array],
    how: str,
    copier: Callable[[Any], Any],
) -> None:
    original = factory(12345)
    draw(original)
    twin = copier(original)
    assert twin.seeded is True
    np.testing.assert_array_equal(draw(twin), draw(original))
    # and the copy is its own stream: drawing from it again does not advance the original
    draw(twin)
    reference = factory(12345)
    for _ in range(3):
        expected = draw(reference)
    np.testing.assert_array_equal(draw(original), expected)


def test_nested_mechanisms_keep_sharing_one_stream_inside_a_copy() -> None:
    """A deep copy keeps the inner noise mechanism on the copy's (new) stream, not the old one."""
    mech = IdentityLaplace(epsilon=1.0, dim=8)
    twin = copy.deepcopy(mech)
    assert twin.randomness is twin._noise.randomness
    assert twin.randomness is not mech.randomness
    voting = _voting(None)
    again = pickle.loads(pickle.dumps(voting))
    assert again.randomness is again._exp.randomness is again._sampler.randomness


def test_pickle_of_a_secure_stream_holds_no_key() -> None:
    rand = Randomness.secure()
    blob = pickle.dumps(rand)
    assert len(blob) < 200  # just "call Randomness.secure()": no generator state inside
    assert b"AESCounter" not in blob
    restored = pickle.loads(blob)
    assert restored.seeded is False
    a = restored.generator.bit_generator.random_raw(4)
    assert not np.array_equal(a, rand.generator.bit_generator.random_raw(4))
    # a seeded stream does carry its state (that is what makes it reproducible)
    assert b"AESCounter" in pickle.dumps(Randomness.from_seed(1))


# ------------------------------------------------------------------ Mechanism.statement()


@pytest.mark.parametrize("name,factory,draw", CASES[:10], ids=[c[0] for c in CASES[:10]])
def test_statement_says_seeded_and_not_private(
    name: str, factory: Callable[[int | None], Any], draw: Callable[[Any], Array]
) -> None:
    secure, seeded = factory(None), factory(3)
    assert secure.statement() == secure.guarantee.statement()
    assert "SEEDED" not in secure.statement()
    assert seeded.statement() == seeded.guarantee.statement() + SEEDED_SUFFIX
    assert seeded.statement().endswith(
        "SEEDED randomness: reproducible by anyone who knows the seed, so this release is NOT "
        "private."
    )


def test_statement_with_a_seeded_randomness_object() -> None:
    mech = Laplace(epsilon=1.0, sensitivity=2.0, randomness=Randomness.from_seed(0))
    assert mech.statement().endswith(SEEDED_SUFFIX)
    assert mech.statement().startswith(mech.guarantee.statement())
    assert not Laplace(epsilon=1.0, sensitivity=2.0).statement().endswith(SEEDED_SUFFIX)
