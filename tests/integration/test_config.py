"""``AnonymizeConfig``: the defaults and budget policy the CLI and Python users share, and
validation that refuses unusable settings before anything is read, charged or written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dpface.config import AnonymizeConfig
from dpface.errors import UsageError
from dpface.ledger import default_ledger_path
from mechanisms.budgets import ApproxDP, PureDP


def test_defaults_are_the_command_lines(tmp_path: Path, _private_default_ledger: Path) -> None:
    c = AnonymizeConfig()
    assert (c.mechanism, c.epsilon, c.detector, c.block, c.pixels) == (
        "identity-laplace",
        6.0,
        "full",
        16,
        16,
    )
    assert c.names == "keep" and c.pseudonym == "fresh" and c.composition == "basic"
    assert c.max_megapixels == 100.0 and c.strict is False and c.seed is None
    assert c.ledger == default_ledger_path() == _private_default_ledger
    assert c.default_budget() == PureDP(30.0)  # five releases' worth
    assert not (_private_default_ledger).exists()  # nothing is created by a config


def test_budget_policy_with_delta() -> None:
    c = AnonymizeConfig(mechanism="identity-gaussian", epsilon=2.0, delta=1e-6, budget=7.0)
    assert c.default_budget() == ApproxDP(7.0, 3e-6)  # three whole releases fit in 7
    assert AnonymizeConfig(mechanism="dp-blur", delta=0.2).default_budget() == ApproxDP(30.0, 0.5)


def test_fields_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        AnonymizeConfig("dp-pix")  # type: ignore[misc]
    c = AnonymizeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epsilon = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"detector": "foo"}, "--detector"),
        ({"mechanism": "gaussian-blur"}, "--mechanism"),
        ({"block": 0}, "--block"),
        ({"block": -4}, "--block"),
        ({"block": 100000}, "memory"),
        ({"block": 2.5}, "--block"),
        ({"pixels": 0}, "--pixels"),
        ({"seed": -1}, "--seed"),
        ({"epsilon": 0.0}, "--epsilon"),
        ({"epsilon": float("nan")}, "--epsilon"),
        ({"epsilon": float("inf")}, "--epsilon"),
        ({"epsilon": 1e-300}, "--epsilon"),
        ({"mechanism": "dp-pix", "epsilon": 1e-300}, "--epsilon"),
        ({"mechanism": "identity-vmf", "epsilon": 1e300}, "--epsilon"),
        ({"delta": 0.0}, "--delta"),
        ({"delta": 1.0}, "--delta"),
        ({"budget": float("inf")}, "--budget"),
        ({"budget": 1.0}, "less than one photo.s releases"),
        ({"names": "secret"}, "--names"),
        ({"composition": "sum"}, "--composition"),
        ({"pseudonym": "sometimes"}, "--pseudonym"),
        ({"max_megapixels": 0}, "--max-megapixels"),
        ({"encoder": "nope"}, "unknown encoder"),
        ({"encoder": "dlib"}, "evaluation attacker"),
        ({"encoder": "arcface-onnx"}, "--encoder-model"),
        ({"swap_latent_map": "graph"}, "needs --swap-model"),
        ({"head": "blur"}, "--head"),
        ({"head": "dp-pix", "head_epsilon": 0.0}, "--head-epsilon"),
        ({"head": "dp-pix", "head_epsilon": float("nan")}, "--head-epsilon"),
        ({"head_epsilon": 2.0}, "give --head dp-pix"),
        ({"head": "dp-pix", "mechanism": "dp-pix"}, "identity mechanism"),
        ({"head": "mask", "mechanism": "dp-blur"}, "identity mechanism"),
        ({"head": "dp-pix", "head_epsilon": 2.0, "budget": 7.0}, "--head-epsilon 2"),
    ],
)
def test_unusable_settings_are_usage_errors_naming_the_option(
    tmp_path: Path, kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(UsageError, match=needle.replace("-", r"\-")):
        AnonymizeConfig(ledger=tmp_path / "l.db", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "l.db").exists()


def test_a_mechanism_refusal_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a mechanism's constructor refuses (ValueError) is reported as a usage error."""
    import mechanisms.pixelization as pix

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("block 16 is not allowed by this (patched) mechanism")

    monkeypatch.setattr(pix.DPPixelization, "__init__", refuse)
    with pytest.raises(UsageError, match="--block"):
        AnonymizeConfig(mechanism="dp-pix")


def test_a_folder_as_ledger_and_ledger_as_templates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="folder"):
        AnonymizeConfig(ledger=tmp_path)
    with pytest.raises(UsageError, match="different file"):
        AnonymizeConfig(ledger=tmp_path / "l.db", templates=tmp_path / "l.db")


def test_build_anonymizer_uses_the_settings(tmp_path: Path) -> None:
    c = AnonymizeConfig(
        mechanism="dp-pix",
        epsilon=2.0,
        block=8,
        detector="blazeface",
        ledger=tmp_path / "l.db",
        seed=3,
    )
    anon = c.build_anonymizer()
    try:
        assert anon.detector == "blazeface" and anon.mechanism.block == 8  # type: ignore[attr-defined]
        assert anon.mechanism.seeded and anon.ledger.default_budget == ApproxDP(10.0, 0.0)
        assert anon.ledger.path == tmp_path / "l.db"
    finally:
        anon.ledger.close()


def test_python_users_get_the_same_run_as_the_cli(tmp_path: Path) -> None:
    """``config.run`` checks the inputs before anything is created."""
    photo = tmp_path / "in" / "a.png"
    photo.parent.mkdir()
    photo.write_bytes(b"x")
    c = AnonymizeConfig(mechanism="dp-pix", ledger=tmp_path / "l.db")
    with pytest.raises(UsageError, match="input folder"):
        c.run([photo.parent], photo.parent / "out")
    with pytest.raises(UsageError, match="empty"):
        c.run([photo.parent], tmp_path / "out", subject="  ")
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "out").exists()
