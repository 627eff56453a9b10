"""The mechanism registry: one declaration per mechanism, read by every caller."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dpface.audits import PLANS
from dpface.report import CLI_MECHANISMS, IDENTITY_MECHANISMS
from mechanisms import registry
from mechanisms.budgets import PureDP
from mechanisms.registry import MechanismOptions, MechanismSpec


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_mechanism_builds_draws_and_states_its_guarantee(name: str) -> None:
    spec = registry.get(name)
    mech = spec.build(MechanismOptions(epsilon=1.0, dim=8, block=4, m=1, seed=3))
    assert type(mech) is spec.cls and registry.spec_for(mech) is spec
    assert mech.seeded and "SEEDED" in mech.statement()
    if spec.consumes == "embedding":
        x = np.ones(8) / np.sqrt(8)
        assert np.asarray(mech(x)).shape == (8,)  # type: ignore[operator]
    elif spec.consumes == "region":
        img = np.full((16, 16, 3), 100, np.uint8)
        assert np.asarray(mech(img, (0, 0, 16, 16))).shape == img.shape  # type: ignore[operator]
    # delta comes from the guarantee, not from the name
    assert spec.uses_delta() == (not isinstance(mech.guarantee.budget, PureDP))


def test_face_mechanisms_and_their_inputs() -> None:
    assert registry.names(face=True) == (
        "identity-laplace",
        "identity-gaussian",
        "identity-vmf",
        "dp-pix",
        "dp-blur",
    )
    assert set(registry.names(consumes="embedding")) | set(registry.names(consumes="region")) == (
        set(registry.names(face=True))
    )
    assert [n for n in registry.names() if registry.get(n).uses_delta()] == [
        "identity-gaussian",
        "dp-blur",
        "gaussian",
    ]


def test_every_caller_reads_the_registry() -> None:
    assert set(PLANS) == set(registry.names())  # an audit plan for every mechanism
    assert set(CLI_MECHANISMS) == set(registry.names(face=True))
    assert set(IDENTITY_MECHANISMS) == {
        registry.get(n).cls.__name__ for n in registry.names(consumes="embedding")
    }


def test_unknown_names_duplicates_and_unregistered_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="choose from identity-laplace"):
        registry.get("identity-laplac")
    spec = registry.get("laplace")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(spec)
    with pytest.raises(ValueError, match="embedding or a region"):
        registry.register(
            MechanismSpec(
                name="scores-as-face",
                cls=spec.cls,
                consumes="scores",
                metric="-",
                summary="-",
                build=spec.build,
                face=True,
            )
        )
    assert "scores-as-face" not in registry.names()

    with pytest.raises(ValueError, match="not a registered mechanism"):
        registry.spec_for(object())  # type: ignore[arg-type]


def test_the_registry_is_pure() -> None:
    """Importing the registry (and so every mechanism) pulls in no torch and no image code."""
    code = (
        "import sys, mechanisms.registry; "
        "bad = [m for m in ('torch', 'cv2', 'PIL', 'onnxruntime', 'dpface') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
