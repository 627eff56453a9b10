"""The torch TFJS interpreter against outputs recorded with TensorFlow.js itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dpface.models.tfjs import _same_pads
from dpface.models.tfjs_models import SPECS, load, prepare, run

FIXTURE = Path(__file__).parent / "fixtures" / "models" / "tfjs_reference.npz"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_matches_tfjs_reference(name: str, reference: dict[str, np.ndarray]) -> None:
    spec = SPECS[name]
    x = prepare(name, reference[f"{name}/input"])
    with torch.no_grad():
        out = run(name, x)
    for key, node in spec.outputs.items():
        ref = reference[f"{name}/{node}"]
        got = out[key].numpy().reshape(ref.shape)
        scale = max(1.0, float(np.abs(ref).max()))
        # float32 through ~30-60 layers: agreement to ~1e-5 relative to the output's range
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * scale, err_msg=f"{name}.{key}")


def test_same_padding_is_asymmetric() -> None:
    # 112 input, 3×3 kernel, stride 2: TF pads 0 before and 1 after
    assert _same_pads(112, 3, 2, 1) == (0, 1)
    assert _same_pads(7, 3, 1, 1) == (1, 1)
    assert _same_pads(64, 2, 2, 1) == (0, 0)
    assert _same_pads(5, 4, 1, 1) == (1, 2)


def test_symmetric_padding_would_be_detected(reference: dict[str, np.ndarray]) -> None:
    """Guard that the fixture is sensitive to the padding convention: shifting the input by
    one pixel (what symmetric padding effectively does) moves the output well past the
    tolerance used above."""
    u8 = reference["mobileface/input"]
    shifted = np.roll(u8, 1, axis=(1, 2))
    with torch.no_grad():
        a = run("mobileface", prepare("mobileface", u8))["embedding"].numpy()
        b = run("mobileface", prepare("mobileface", shifted))["embedding"].numpy()
    assert np.abs(a - b).max() > 1e-2


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradients_reach_the_input(name: str, reference: dict[str, np.ndarray]) -> None:
    x = prepare(name, reference[f"{name}/input"]).requires_grad_(True)
    out = run(name, x)
    first = next(iter(out.values()))
    # a weighted sum: a plain sum of softmax probabilities is constant (zero gradient)
    weights = torch.linspace(0.5, 1.5, first.numel()).reshape(first.shape)
    (first.float() * weights).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_batch_matches_single(reference: dict[str, np.ndarray]) -> None:
    x = prepare("mobileface", reference["mobileface/input"])
    with torch.no_grad():
        both = run("mobileface", x)["embedding"]
        one = run("mobileface", x[1:2])["embedding"]
    torch.testing.assert_close(both[1:2], one, rtol=0, atol=1e-4)


def test_unsupported_op_is_reported(tmp_path: Path) -> None:
    import json
    import shutil

    src = load("emotion").path
    spec = json.loads(src.read_text())
    spec["modelTopology"]["node"].append(
        {"name": "weird", "op": "FancyNewOp", "input": ["input_1"], "attr": {}}
    )
    (tmp_path / "m.json").write_text(json.dumps(spec))
    shutil.copy(src.with_suffix(".bin"), tmp_path / "emotion.bin")
    from dpface.models.tfjs import TfjsGraph

    with pytest.raises(NotImplementedError, match="FancyNewOp"):
        TfjsGraph(tmp_path / "m.json")


def _node(op: str, k: int, s: int, padding: str) -> dict[str, object]:
    import base64

    def enc(v: str) -> str:
        return base64.b64encode(v.encode()).decode()

    return {
        "op": op,
        "attr": {
            "ksize": {"list": {"i": ["1", str(k), str(k), "1"]}},
            "strides": {"list": {"i": ["1", str(s), str(s), "1"]}},
            "padding": {"s": enc(padding)},
        },
    }


@pytest.mark.parametrize(("size", "k", "s"), [(5, 2, 2), (5, 3, 2), (6, 3, 1), (7, 3, 3)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_pooling_matches_tf_semantics(size: int, k: int, s: int, padding: str) -> None:
    """Max/avg pooling against a direct loop over TF's window definition (average pooling
    divides by the number of real pixels in the window, not the padded size)."""
    from dpface.models.tfjs import _OPS

    rng = np.random.default_rng(size * 100 + k * 10 + s)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    if padding == "SAME":
        out = -(-size // s)
        before, _ = _same_pads(size, k, s, 1)
    else:
        out = (size - k) // s + 1
        before = 0
    ref_max = np.empty((2, out, out, 3), np.float32)
    ref_avg = np.empty_like(ref_max)
    for i in range(out):
        for j in range(out):
            r0, c0 = i * s - before, j * s - before
            win = x[:, max(r0, 0) : min(r0 + k, size), max(c0, 0) : min(c0 + k, size)]
            ref_max[:, i, j] = win.max(axis=(1, 2))
            ref_avg[:, i, j] = win.mean(axis=(1, 2))
    t = torch.from_numpy(x)
    got_max = _OPS["MaxPool"](None, _node("MaxPool", k, s, padding), [t])  # type: ignore[arg-type]
    got_avg = _OPS["AvgPool"](None, _node("AvgPool", k, s, padding), [t])  # type: ignore[arg-type]
    np.testing.assert_allclose(got_max.numpy(), ref_max, atol=1e-6)
    np.testing.assert_allclose(got_avg.numpy(), ref_avg, atol=1e-6)
