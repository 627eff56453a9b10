"""The one registry of named mechanisms: the CLI, ``dpface audit``, the evaluation, the benches
and the docs all read it, so a mechanism is declared once.

Each :class:`MechanismSpec` says what the mechanism consumes (an identity embedding, an image
region, a real vector, a score vector), the neighbouring relation its guarantee is stated for
(its input metric, as a value), and how to build it from validated :class:`MechanismOptions`.
Whether it needs a delta is read from the guarantee of a built instance, never from its name.

Adding a mechanism: its module (with the proof in ``proofs/`` and tests), one :func:`register`
call below, and (for ``dpface audit``) an audit plan in ``dpface/audits.py`` -- a test checks
that every registered mechanism has one.

Pure: importing this module imports the DP core only (no torch, no image libraries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from .base import Mechanism
from .budgets import PureDP
from .exponential import Exponential
from .gaussian import Gaussian
from .identity import IdentityGaussian, IdentityLaplace, IdentityVMF
from .laplace import Laplace
from .metrics import Metric
from .pixelization import DPBlur, DPPixelization
from .rng import Randomness

__all__ = [
    "InputKind",
    "MechanismOptions",
    "MechanismSpec",
    "get",
    "names",
    "register",
    "spec_for",
    "specs",
]

InputKind = Literal["embedding", "region", "vector", "scores"]
"""What a mechanism consumes: a unit identity embedding (face replacement), a face region of an
image (pixelization/blur), a real vector with bounded sensitivity, or a score vector."""


@dataclass(frozen=True, kw_only=True)
class MechanismOptions:
    """The options a named mechanism is built from; each mechanism's constructor validates the
    ones it reads (``dim`` for embeddings, ``block``/``m`` for regions, ``sensitivity`` for
    vectors and scores). ``seed`` makes the noise reproducible and is NOT private."""

    epsilon: float
    delta: float = 1e-6
    dim: int = 512
    block: int = 16
    m: int = 16
    sensitivity: float = 1.0
    seed: int | None = None
    randomness: Randomness | None = None


@dataclass(frozen=True, kw_only=True)
class MechanismSpec:
    """One registered mechanism."""

    name: str
    cls: type[Mechanism]
    consumes: InputKind
    metric: str  # the neighbouring relation its guarantee is stated for, in words
    summary: str  # one line for help texts and docs
    build: Callable[[MechanismOptions], Mechanism]
    face: bool  # usable by ``dpface anonymize`` (consumes an embedding or a region)

    @property
    def input_metric(self) -> Metric:
        """The metric its privacy map reads distances in (the class's ``input_metric``)."""
        return self.cls.input_metric

    def uses_delta(self) -> bool:
        """Whether a release's guarantee has a delta: read once, at registration, from the
        guarantee of an instance built with default options (anything but pure epsilon-DP
        needs one)."""
        return _USES_DELTA[self.name]


_REGISTRY: dict[str, MechanismSpec] = {}
_USES_DELTA: dict[str, bool] = {}


def register(spec: MechanismSpec) -> MechanismSpec:
    """Add ``spec`` (a name may be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"mechanism {spec.name!r} is already registered")
    if spec.face and spec.consumes not in ("embedding", "region"):
        raise ValueError(f"{spec.name}: a face mechanism consumes an embedding or a region")
    if not isinstance(getattr(spec.cls, "input_metric", None), Metric):
        raise ValueError(f"{spec.name}: {spec.cls.__name__} declares no input_metric")
    probe = spec.build(MechanismOptions(epsilon=1.0))
    if not isinstance(probe, spec.cls):
        raise ValueError(f"{spec.name}: build() made a {type(probe).__name__}, not {spec.cls}")
    _USES_DELTA[spec.name] = not isinstance(probe.guarantee.budget, PureDP)
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> MechanismSpec:
    """The spec registered as ``name``; ValueError naming the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown mechanism {name!r}; choose from {', '.join(_REGISTRY)}"
        ) from None


def names(*, face: bool | None = None, consumes: InputKind | None = None) -> tuple[str, ...]:
    """Registered names in registration order, optionally only face mechanisms / one kind."""
    return tuple(s.name for s in specs(face=face, consumes=consumes))


def specs(
    *, face: bool | None = None, consumes: InputKind | None = None
) -> Iterator[MechanismSpec]:
    """Registered specs in registration order, filtered like :func:`names`."""
    for s in _REGISTRY.values():
        if (face is None or s.face == face) and (consumes is None or s.consumes == consumes):
            yield s


def spec_for(mechanism: Mechanism) -> MechanismSpec:
    """The spec of a built mechanism (its class or a subclass of it); ValueError for any other
    object."""
    for s in _REGISTRY.values():
        if isinstance(mechanism, s.cls):
            return s
    raise ValueError(
        f"{type(mechanism).__name__} is not a registered mechanism (mechanisms.registry)"
    )


# --------------------------------------------------------------------------------------------
# The shipped mechanisms (the order is the order of help texts and tables)

_UNIT_SPHERE = "any two unit embeddings (L1 <= 2 sqrt(d), L2 <= 2)"
_PIXELS = "images differing in at most m pixels of the face region (same region box)"

register(
    MechanismSpec(
        name="identity-laplace",
        cls=IdentityLaplace,
        consumes="embedding",
        metric=_UNIT_SPHERE,
        summary="a new face from the identity embedding + exact Laplace noise (epsilon-DP)",
        build=lambda o: IdentityLaplace(
            epsilon=o.epsilon, dim=o.dim, seed=o.seed, randomness=o.randomness
        ),
        face=True,
    )
)
register(
    MechanismSpec(
        name="identity-gaussian",
        cls=IdentityGaussian,
        consumes="embedding",
        metric=_UNIT_SPHERE,
        summary="a new face from the identity embedding + exact Gaussian noise ((eps, delta)-DP)",
        build=lambda o: IdentityGaussian(
            epsilon=o.epsilon, delta=o.delta, dim=o.dim, seed=o.seed, randomness=o.randomness
        ),
        face=True,
    )
)
register(
    MechanismSpec(
        name="identity-vmf",
        cls=IdentityVMF,
        consumes="embedding",
        metric=_UNIT_SPHERE,
        summary="a new face from a von Mises-Fisher draw around the embedding (float sampler)",
        build=lambda o: IdentityVMF(
            epsilon=o.epsilon, dim=o.dim, seed=o.seed, randomness=o.randomness
        ),
        face=True,
    )
)
register(
    MechanismSpec(
        name="dp-pix",
        cls=DPPixelization,
        consumes="region",
        metric=_PIXELS,
        summary="DP pixelization of the face region: noisy cell means (epsilon-DP)",
        build=lambda o: DPPixelization(
            epsilon=o.epsilon, block=o.block, m=o.m, seed=o.seed, randomness=o.randomness
        ),
        face=True,
    )
)
register(
    MechanismSpec(
        name="dp-blur",
        cls=DPBlur,
        consumes="region",
        metric=_PIXELS,
        summary="DP blur of the face region: Gaussian-noised cell means ((eps, delta)-DP)",
        build=lambda o: DPBlur(
            epsilon=o.epsilon,
            delta=o.delta,
            block=o.block,
            m=o.m,
            seed=o.seed,
            randomness=o.randomness,
        ),
        face=True,
    )
)
register(
    MechanismSpec(
        name="laplace",
        cls=Laplace,
        consumes="vector",
        metric="vectors at L1 distance <= sensitivity",
        summary="exact discrete Laplace noise on a real vector (epsilon-DP)",
        build=lambda o: Laplace(
            epsilon=o.epsilon, sensitivity=o.sensitivity, seed=o.seed, randomness=o.randomness
        ),
        face=False,
    )
)
register(
    MechanismSpec(
        name="gaussian",
        cls=Gaussian,
        consumes="vector",
        metric="vectors at L2 distance <= sensitivity",
        summary="exact discrete Gaussian noise on a real vector ((eps, delta)-DP)",
        build=lambda o: Gaussian(
            epsilon=o.epsilon,
            delta=o.delta,
            sensitivity=o.sensitivity,
            seed=o.seed,
            randomness=o.randomness,
        ),
        face=False,
    )
)
register(
    MechanismSpec(
        name="exponential",
        cls=Exponential,
        consumes="scores",
        metric="score vectors at L-infinity distance <= sensitivity",
        summary="the exponential mechanism over candidates' scores (epsilon-DP)",
        build=lambda o: Exponential(
            epsilon=o.epsilon, sensitivity=o.sensitivity, seed=o.seed, randomness=o.randomness
        ),
        face=False,
    )
)
