"""Input metrics as values: every mechanism declares the metric its privacy map reads, a
distance in another metric is refused, and a distance in its own metric means exactly what the
plain number means."""

from __future__ import annotations

import inspect

import pytest

import mechanisms
from mechanisms import registry
from mechanisms.base import Mechanism
from mechanisms.metrics import (
    EMBEDDING_L1,
    EMBEDDING_L2,
    L1,
    L2,
    LINF,
    PIXELS,
    RECORDS,
    Distance,
    Metric,
    MetricMismatch,
)
from mechanisms.registry import MechanismOptions

ALL_METRICS = (L1, L2, LINF, EMBEDDING_L1, EMBEDDING_L2, PIXELS, RECORDS)


def _concrete_mechanisms() -> list[type[Mechanism]]:
    names = [n for n in mechanisms.__all__ if n[0].isupper()]
    classes = [getattr(mechanisms, n) for n in names]
    found = {
        c
        for c in classes
        if inspect.isclass(c) and issubclass(c, Mechanism) and not inspect.isabstract(c)
    }
    return sorted(found, key=lambda c: c.__name__)


def test_every_public_mechanism_declares_its_input_metric() -> None:
    classes = _concrete_mechanisms()
    assert len(classes) >= 10
    for cls in classes:
        assert isinstance(cls.input_metric, Metric), cls.__name__


def test_the_declared_metrics_are_the_ones_the_proofs_state() -> None:
    from mechanisms import (
        DPBlur,
        DPPixelization,
        Exponential,
        Gaussian,
        IdentityGaussian,
        IdentityLaplace,
        IdentityVMF,
        KAnonymousVoting,
        Laplace,
        TClosenessSelector,
    )

    assert Laplace.input_metric == L1 and Gaussian.input_metric == L2
    assert Exponential.input_metric == LINF
    assert IdentityLaplace.input_metric == EMBEDDING_L1
    assert IdentityGaussian.input_metric == IdentityVMF.input_metric == EMBEDDING_L2
    assert DPPixelization.input_metric == DPBlur.input_metric == PIXELS
    assert KAnonymousVoting.input_metric == TClosenessSelector.input_metric == RECORDS


def test_l1_on_embeddings_is_not_l1_on_query_answers() -> None:
    assert EMBEDDING_L1 != L1 and EMBEDDING_L2 != L2 and L1 != L2
    assert L1 == Metric("l1", L1.space)


@pytest.mark.parametrize("name", registry.names())
def test_a_registered_mechanism_refuses_every_other_metric(name: str) -> None:
    spec = registry.get(name)
    mech = spec.build(MechanismOptions(epsilon=1.0))
    own = spec.input_metric
    assert own is type(mech).input_metric
    for metric in ALL_METRICS:
        if metric == own:
            continue
        with pytest.raises(MetricMismatch, match="privacy map is stated in"):
            mech.privacy_map(metric(1.0))
    # MetricMismatch is a ValueError and a DpfaceError: callers catching either see it
    assert issubclass(MetricMismatch, ValueError)
    assert issubclass(MetricMismatch, mechanisms.DpfaceError)


@pytest.mark.parametrize("name", registry.names())
@pytest.mark.parametrize("d", [0.0, 0.25, 1.0, 2.0])
def test_a_distance_in_the_own_metric_is_the_plain_number(name: str, d: float) -> None:
    mech = registry.get(name).build(MechanismOptions(epsilon=1.0))
    assert mech.privacy_map(mech.input_metric(d)) == mech.privacy_map(d)


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_a_distance_is_a_non_negative_number(bad: float) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Distance(bad, L1)
    with pytest.raises(TypeError):
        Distance("1", L1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Distance(True, L1)


def test_the_registry_refuses_a_mechanism_without_a_metric() -> None:
    class NoMetric(Mechanism):
        guarantee = None  # type: ignore[assignment]

        def privacy_map(self, d_in: float | Distance) -> mechanisms.Budget:
            raise NotImplementedError

        def event(self):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    spec = registry.MechanismSpec(
        name="no-metric",
        cls=NoMetric,
        consumes="vector",
        metric="-",
        summary="-",
        build=lambda o: NoMetric(),
        face=False,
    )
    with pytest.raises(ValueError, match="declares no input_metric"):
        registry.register(spec)
    assert "no-metric" not in registry.names()
