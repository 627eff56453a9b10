"""``dpface evaluate`` measures the product: its dpface rows are exactly what
``Anonymizer.anonymize`` returns for the same photo, seed and settings, its baselines change
exactly the regions the product protects, and its releases are charged to a ledger."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dpface.config import AnonymizeConfig
from dpface.evaluation import anonymisers as A
from dpface.evaluation.faces import load_image
from dpface.models import store


def _config(meta: dict[str, object], ledger: Path) -> AnonymizeConfig:
    """What a user would write for the saved release's condition and seed."""
    cond = str(meta["condition"])
    params = meta["params"]
    assert isinstance(params, dict)
    seed = meta["seed"]
    assert isinstance(seed, int)
    eps = float(meta["epsilon"])  # type: ignore[arg-type]
    if cond.startswith("dp-pix"):
        return AnonymizeConfig(
            mechanism="dp-pix",
            epsilon=eps,
            block=int(params["b"]),
            pixels=int(params["m"]),
            seed=seed,
            ledger=ledger,
        )
    assert cond.startswith("identity-laplace")
    head, head_eps = "keep", None
    if "+head=dp-pix@" in cond:
        head, head_eps = "dp-pix", float(cond.rsplit("@", 1)[1])
    elif cond.endswith("+head=mask"):
        head = "mask"
    return AnonymizeConfig(
        mechanism="identity-laplace",
        epsilon=eps,
        head=head,  # type: ignore[arg-type]
        head_epsilon=head_eps,
        seed=seed,
        ledger=ledger,
    )


def test_evaluate_dpface_rows_are_the_anonymizers_own_images(tmp_path: Path) -> None:
    from dpface.cli import app

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(store.path("samples/fr-obama.jpg"), folder / "fr-obama.jpg")
    out = tmp_path / "res"
    args = [
        "evaluate",
        str(folder),
        "--mechanisms",
        "identity-laplace,dp-pix",
        "--epsilons",
        "6",
        "--dppix",
        "2:16:16",
        "--heads",
        "keep,dp-pix:1,mask",
        "--draws",
        "1",
        "--averaging",
        "",
        "--no-parrot",
        "--attackers",
        "mobileface",
        "--seed",
        "7",
        "--workers",
        "1",
        "--save-images",
        "-o",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "budget refusals: 0" in (out / "table51.md").read_text()
    saved = sorted((out / "images").rglob("*.json"))
    assert {p.parent.name for p in saved} == {
        "identity-laplace_eps6",
        "identity-laplace_eps6+headdp-pix_1",
        "identity-laplace_eps6+headmask",
        "dp-pix_eps2_b16_m16",
    }
    rgb = load_image(str(folder / "fr-obama.jpg"))
    for k, meta_path in enumerate(saved):
        meta = json.loads(meta_path.read_text())
        evaluated = np.asarray(Image.open(meta_path.with_suffix(".png")))
        # the product's DP-Pix fallback is not seeded: this photo's face never needs it
        assert [f["protection"] for f in meta["faces"]] in (["generator"], ["mechanism"])
        anon = _config(meta, tmp_path / f"user-{k}.db").build_anonymizer()
        try:
            result = anon.anonymize(rgb)
        finally:
            anon.ledger.close()
        assert result.image is not None and not np.array_equal(result.image, rgb)
        np.testing.assert_array_equal(evaluated, result.image)
        assert [list(f.box) for f in result.faces] == [f["region"] for f in meta["faces"]]


def test_baselines_change_exactly_the_regions_the_product_protects() -> None:
    source = str(store.path("samples/face-api-sample1.jpg"))
    rgb = load_image(source)
    anon = AnonymizeConfig(
        mechanism="dp-pix", epsilon=2.0, ledger=Path(":memory:"), seed=1
    ).build_anonymizer()
    try:
        regions = [r.box for r in anon.anonymize(rgb).faces]
    finally:
        anon.ledger.close()
    assert len(regions) >= 3
    mask = next(c for c in A.baselines() if c.name == "mask")
    rel = A.release_photo(mask, source, 0)
    assert [f.region for f in rel.faces] == regions
    inside = np.zeros(rgb.shape[:2], bool)
    for x0, y0, x1, y1 in regions:
        inside[y0:y1, x0:x1] = True
    assert (rel.image[inside] == 0).all()
    np.testing.assert_array_equal(rel.image[~inside], rgb[~inside])


def test_one_path_only() -> None:
    """The evaluation's own anonymiser class is gone; a dpface row is a pipeline.Anonymizer
    with the configuration's settings."""
    from dpface.ledger import Ledger
    from dpface.pipeline import Anonymizer
    from mechanisms.budgets import PureDP
    from mechanisms.pixelization import DPPixelization

    assert not hasattr(A, "Anonymiser") and not hasattr(A, "face_region")
    cond = A.dp_pix(2.0, 12, 9)
    with Ledger(":memory:", default_budget=PureDP(10.0)) as led:
        anon = A.product_anonymizer(cond, 5, led)
        assert isinstance(anon, Anonymizer) and anon.ledger is led
        assert isinstance(anon.mechanism, DPPixelization)
        assert (anon.mechanism.block, anon.mechanism.m) == (12, 9)
        assert anon.seeded and anon.detector == AnonymizeConfig.detector


@pytest.mark.parametrize("family", ["identity-gaussian", "identity-laplace"])
def test_the_protocol_budget_covers_every_release(family: str) -> None:
    from dpface.evaluation.runner import RunConfig, protocol_budget

    conds = [
        A.identity(family, 2.0),
        A.identity(family, 6.0),
        A.dp_pix(1.0),
        A.original(),
        A.generator_inf(),
        *A.baselines(),
    ]
    cfg = RunConfig(seed=1, draws=2, averaging=(1, 4, 16), parrot=True)
    eps, delta = protocol_budget(conds, cfg)
    # 16 + 1 releases at 2 and 6, 2 + 1 at DP-Pix 1 and at the reference, fallbacks doubled
    assert eps == pytest.approx(2 * (17 * 2 + 17 * 6 + 3 * 1 + 3 * A.NOISELESS_CHARGE) + 1)
    assert delta == (0.5 if family == "identity-gaussian" else 0.0)


def test_head_rows_are_parsed_named_and_charged() -> None:
    assert A.parse_heads("keep, dp-pix:2,mask,dp-pix") == [
        ("keep", None),
        ("dp-pix", 2.0),
        ("mask", None),
        ("dp-pix", None),
    ]
    assert A.parse_heads("") == [("keep", None)]
    for bad in ("blur", "mask:2", "dp-pix:x"):
        with pytest.raises(ValueError, match="--heads"):
            A.parse_heads(bad)
    rows = A.build_conditions(["identity-laplace"], [6.0], [], A.parse_heads("keep,dp-pix,mask"))
    assert [c.name for c in rows] == [
        "identity-laplace@eps=6",
        "identity-laplace@eps=6+head=dp-pix@1",
        "identity-laplace@eps=6+head=mask",
    ]
    assert [c.charge for c in rows] == [6.0, 7.0, 6.0]  # the head release is charged too
    config = A.product_config(rows[1], 3, ":memory:")
    assert (config.head, config.head_eps, config.photo_epsilon) == ("dp-pix", 1.0, 7.0)
