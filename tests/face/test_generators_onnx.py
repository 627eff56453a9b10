"""The ONNX face-swap adapter, on a small model these tests export themselves with torch."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dpface.face import Face
from dpface.generators.onnx_swap import OnnxFaceSwapGenerator, swap_template_matrix
from dpface.models.samples import SampleFace, sample_faces


class TinySwapper(torch.nn.Module):
    """Face-swap shaped: (target NCHW 128×128 in [0, 1], latent (N, 512)) -> NCHW [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.lin = torch.nn.Linear(512, 3)

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        bias = self.lin(source)[:, :, None, None]
        return torch.sigmoid(self.conv(target) * 4.0 - 2.0 + 3.0 * bias)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = TinySwapper().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny_swap.onnx"
    torch.onnx.export(
        net,
        (torch.rand(1, 3, 128, 128), torch.randn(1, 512)),
        str(path),
        input_names=["target", "source"],
        output_names=["output"],
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def face() -> SampleFace:
    return sample_faces()[21]  # fr-obama.jpg, frontal


def _unit(seed: int, dim: int = 512) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


def test_adapter_swaps_the_face_only(model_path: Path, face: SampleFace) -> None:
    gen = OnnxFaceSwapGenerator(model_path)
    assert gen.identity_dim == 512 and gen.crop_size == 128
    before = face.image.copy()
    res = gen.generate(face.image, face, _unit(1))
    np.testing.assert_array_equal(face.image, before)  # input never modified
    assert res.replaced and res.region is not None and res.alpha is not None
    changed = np.any(res.image != face.image, axis=2)
    x0, y0, x1, y1 = res.region
    assert changed[y0:y1, x0:x1].mean() > 0.3
    outside = changed.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    # the face centre is fully replaced by the network's output for the aligned crop
    m = swap_template_matrix(face.points5, 128)
    crop = cv2.warpAffine(
        face.image, m, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    ref = gen.swap_crop(crop, gen.latent(_unit(1)))
    centre = cv2.warpAffine(res.image, m, (128, 128), flags=cv2.INTER_LINEAR)[54:74, 54:74]
    assert np.abs(centre.astype(np.float32) - ref[54:74, 54:74]).mean() < 6.0


def test_adapter_is_a_deterministic_function_of_the_latent(
    model_path: Path, face: SampleFace
) -> None:
    gen = OnnxFaceSwapGenerator(model_path)
    a = gen.generate(face.image, face, _unit(1)).image
    b = gen.generate(face.image.copy(), face, _unit(1).copy()).image
    c = gen.generate(face.image, face, _unit(2)).image
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).sum() > 0


def test_adapter_records_uncovered_channels(model_path: Path, face: SampleFace) -> None:
    res = OnnxFaceSwapGenerator(model_path).generate(face.image, face, _unit(3))
    rec = res.channels.as_dict()
    assert any("privatised" in c for c in rec["covered"])
    assert any("raw aligned target crop" in u for u in rec["uncovered"])
    assert any("outside" in u for u in rec["uncovered"])


def test_adapter_latent_map_from_the_graph(tmp_path: Path, face: SampleFace) -> None:
    class WithEmap(TinySwapper):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("emap", torch.eye(512) * 2.0)

    torch.manual_seed(1)
    net = WithEmap().eval()
    path = tmp_path / "emap.onnx"
    torch.onnx.export(
        net,
        (torch.rand(1, 3, 128, 128), torch.randn(1, 512)),
        str(path),
        input_names=["target", "source"],
        output_names=["output"],
        dynamo=False,
    )
    # the unused buffer is not exported: 'graph' then finds a non-square initializer
    with pytest.raises(ValueError, match="initializer"):
        OnnxFaceSwapGenerator(path, latent_map="graph")
    gen = OnnxFaceSwapGenerator(path, latent_map=np.eye(512)[:, ::-1])
    lat = gen.latent(_unit(4))
    np.testing.assert_allclose(lat[0], _unit(4)[::-1], atol=1e-6)


def test_adapter_refuses_bad_inputs(model_path: Path, face: SampleFace, tmp_path: Path) -> None:
    gen = OnnxFaceSwapGenerator(model_path)
    with pytest.raises(ValueError, match="512"):
        gen.generate(face.image, face, np.ones(256))
    with pytest.raises(ValueError, match="non-finite"):
        gen.generate(face.image, face, np.full(512, np.nan))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        OnnxFaceSwapGenerator(tmp_path / "absent.onnx")


def test_adapter_leaves_tiny_faces_with_a_reason(model_path: Path, face: SampleFace) -> None:
    small = cv2.resize(face.image, None, fx=0.06, fy=0.06, interpolation=cv2.INTER_AREA)
    tiny = Face(small, (0.0, 0.0, 1.0, 1.0), face.landmarks68 * 0.06)
    res = OnnxFaceSwapGenerator(model_path).generate(small, tiny, _unit(5))
    assert res.status == "untouched" and res.reason and "NOT de-identified" in res.reason
    np.testing.assert_array_equal(res.image, small)


def test_adapter_runs_in_the_anonymiser_with_an_encoder_instance(
    model_path: Path, tmp_path: Path
) -> None:
    """A learned swapper plugged into the full pipeline: the privatised 256-d MobileFace
    embedding reaches the model through a fixed latent map, the ledger is charged and the
    receipt names the raw crop as not covered. An encoder of another name is refused."""
    from dpface.ledger import Ledger
    from dpface.models import store
    from dpface.models.encoders import get_encoder
    from dpface.pipeline import Anonymizer
    from mechanisms.budgets import PureDP
    from mechanisms.identity import IdentityLaplace

    latent_map = np.random.default_rng(5).standard_normal((256, 512)) / 16.0
    gen = OnnxFaceSwapGenerator(model_path, encoder="mobileface", latent_map=latent_map)
    assert gen.identity_dim == 256
    led = Ledger(tmp_path / "l.db", default_budget=PureDP(12.0))
    anon = Anonymizer(
        mechanism=IdentityLaplace(epsilon=6.0, dim=256),
        generator=gen,
        ledger=led,
        encoder=get_encoder("mobileface"),
    )
    res = anon.anonymize(store.path("samples/fr-obama.jpg"), subject="o")
    assert res.ok and [f.status for f in res.faces] == ["replaced"]
    assert led.spent("o").epsilon == pytest.approx(6.0)
    uncovered = " ".join(res.faces[0].channels["uncovered"])  # type: ignore[index]
    assert "crop" in uncovered
    with pytest.raises(ValueError, match="faceres"):
        Anonymizer(
            mechanism=IdentityLaplace(epsilon=6.0, dim=256),
            generator=gen,
            encoder=get_encoder("faceres"),
        )


def test_cli_anonymize_with_a_swap_model(model_path: Path, tmp_path: Path) -> None:
    """``dpface anonymize --swap-model``: the learned swapper replaces the face and the
    receipt says so; a latent of the wrong size is a usage error with the reason."""
    import json

    from typer.testing import CliRunner

    from dpface.cli import app
    from dpface.models import store

    runner = CliRunner()
    photo = store.path("samples/fr-obama.jpg")
    latent = tmp_path / "map.npy"
    np.save(latent, np.random.default_rng(2).standard_normal((256, 512)) / 16.0)
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "anonymize",
            str(photo),
            "-o",
            str(out),
            "--swap-model",
            str(model_path),
            "--swap-latent-map",
            str(latent),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    receipt = json.loads((out / "fr-obama.receipt.json").read_text())
    face = receipt["faces"][0]
    assert face["status"] == "replaced"
    assert "crop" in " ".join(face["channels"]["uncovered"])
    bad = runner.invoke(
        app, ["anonymize", str(photo), "-o", str(tmp_path / "o2"), "--swap-model", str(model_path)]
    )
    assert bad.exit_code == 2 and "256-d" in bad.output
    nopix = runner.invoke(
        app,
        [
            "anonymize",
            str(photo),
            "-o",
            str(tmp_path / "o3"),
            "-m",
            "dp-pix",
            "--swap-model",
            str(model_path),
        ],
    )
    assert nopix.exit_code == 2 and "identity mechanism" in nopix.output
