"""Attribute steering: voting and t-closeness fill the generator's attribute channel, charge
the right privacy unit first, and say in the receipt whom the guarantee covers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpface.generators.surrogate import SurrogateGenerator
from dpface.ledger import Ledger
from dpface.models import store
from dpface.models.attributes import age_gender
from dpface.models.encoders import get_encoder
from dpface.models.samples import sample_faces
from dpface.pipeline import Anonymizer
from dpface.steering import TClosenessSteering, VotingSteering
from mechanisms.attributes import KAnonymousVoting, TClosenessSelector
from mechanisms.budgets import PureDP
from mechanisms.identity import IdentityLaplace


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    faces = sample_faces()
    feats = get_encoder("mobileface").embed(faces)
    male = (age_gender(faces)[1] >= 0.5).astype(np.int8)[:, None]
    return feats, male


def _anon(gen: SurrogateGenerator, led: Ledger, steering: object) -> Anonymizer:
    mech = IdentityLaplace(epsilon=6.0, dim=gen.identity_dim)
    return Anonymizer(mechanism=mech, generator=gen, ledger=led, steering=steering)  # type: ignore[arg-type]


def test_voting_charges_the_reference_set_and_says_the_face_is_not_covered(
    tmp_path: Path, generator: SurrogateGenerator, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    feats, labels = reference
    voting = KAnonymousVoting(epsilon=1.0, k=5, rate=0.5, tau=1.0, attributes=["Male"])
    steer = VotingSteering(voting=voting, reference_features=feats, reference_labels=labels)
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    res = _anon(generator, led, steer).anonymize(store.path("samples/fr-obama.jpg"), subject="o")
    face = res.faces[0]
    assert face.status == "replaced" and face.channels is not None
    assert any("not DP" in n for n in face.channels["notes"])
    assert any("attribute channel (male)" in u for u in face.channels["uncovered"])
    ref_events = led.events("reference:reference-set")
    assert len(ref_events) == 1 and ref_events[0]["mechanism"] == "KAnonymousVoting"
    assert ref_events[0]["epsilon"] == pytest.approx(voting.guarantee.budget.epsilon)
    assert len(led.events("o")) == 1  # the face paid only for its identity release
    entry = res.receipt["attribute_steering"]
    assert entry["covers_the_face"] is False and entry["charged_to"] == "reference:reference-set"


def test_voting_refused_by_the_reference_budget_leaves_the_channel_empty(
    tmp_path: Path, generator: SurrogateGenerator, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    feats, labels = reference
    voting = KAnonymousVoting(epsilon=1.0, k=5, rate=0.5, tau=1.0, attributes=["Male"])
    steer = VotingSteering(voting=voting, reference_features=feats, reference_labels=labels)
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    led.set_budget("reference:reference-set", PureDP(0.01))
    res = _anon(generator, led, steer).anonymize(store.path("samples/fr-biden.jpg"))
    face = next(f for f in res.faces if not f.uncertain)  # fr-biden also has an unsure box
    assert face.status == "replaced" and face.channels is not None
    assert any("reference:reference-set" in n for n in face.channels["notes"])
    assert not any("attribute channel" in c for c in face.channels["covered"])
    assert led.events("reference:reference-set") == []


@pytest.mark.parametrize("t", [0.0, 0.2])
def test_t_closeness_charges_the_face_its_own_loss(
    tmp_path: Path,
    generator: SurrogateGenerator,
    reference: tuple[np.ndarray, np.ndarray],
    t: float,
) -> None:
    sel = TClosenessSelector(t=t, epsilon_population=1.0, attributes=["male"])
    sel.fit(reference[1])
    steer = TClosenessSteering(selector=sel)
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(30.0))
    res = _anon(generator, led, steer).anonymize(store.path("samples/fr-obama.jpg"), subject="o")
    face = res.faces[0]
    assert face.status == "replaced" and face.channels is not None
    eps = sel.face_epsilon()
    events = led.events("o")
    if t == 0.0:
        assert eps == 0.0 and len(events) == 1
    else:
        assert 0 < eps < np.inf and len(events) == 2
        assert events[1]["mechanism"] == "TClosenessSelector"
        assert events[1]["epsilon"] == pytest.approx(eps)
        assert face.spent is not None and face.spent["epsilon"] == pytest.approx(6.0 + eps)
    assert any("attribute channel (male)" in c for c in face.channels["covered"])
    assert res.receipt["attribute_steering"]["covers_the_face"] is True


def test_steering_needs_a_fitted_selector_and_matching_reference() -> None:
    with pytest.raises(ValueError, match="fit"):
        TClosenessSteering(
            selector=TClosenessSelector(t=0.1, epsilon_population=1.0, attributes=["male"])
        )
    voting = KAnonymousVoting(epsilon=1.0, k=2, rate=0.5, tau=1.0, attributes=["Male", "Young"])
    with pytest.raises(ValueError, match="columns"):
        VotingSteering(
            voting=voting, reference_features=np.zeros((3, 4)), reference_labels=np.zeros((3, 1))
        )
