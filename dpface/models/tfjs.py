"""A small TensorFlow.js graph-model interpreter in torch (exact and differentiable).

A TFJS graph model is a ``model.json`` holding a TensorFlow GraphDef (``modelTopology``) and a
``weightsManifest`` naming binary shards. ``TfjsGraph`` reads both, dequantises weights
(float16, uint8/uint16 affine), and evaluates the graph with torch ops, keeping TF's NHWC
layout for every tensor so shapes, axes and paddings keep TF meaning. Convolutions run in
NCHW through zero-copy permutes. TF "SAME" padding is reproduced exactly, including its
asymmetric split (the odd extra pixel goes to the bottom/right).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor

_QUANT_DTYPES: dict[str, Any] = {
    "uint8": np.uint8,
    "uint16": np.uint16,
    "float16": np.float16,
}
_DTYPES: dict[str, Any] = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def _attr(node: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Decode one GraphDef attribute (strings are base64 in the JSON)."""
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "list" in a:
        lst = a["list"]
        if "s" in lst:
            return [base64.b64decode(s).decode() for s in lst["s"]]
        if "i" in lst:
            return [int(i) for i in lst["i"]]
        if "f" in lst:
            return [float(f) for f in lst["f"]]
        return []
    if "type" in a:
        return a["type"]
    return a


def load_weights(model_json: Path, spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Read and dequantise every weight listed in a TFJS ``weightsManifest``."""
    out: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        buf = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q is not None:
                qdt = np.dtype(_QUANT_DTYPES[q["dtype"]])
                raw = np.frombuffer(buf, dtype=qdt, count=n, offset=off)
                off += n * qdt.itemsize
                if q["dtype"] == "float16":
                    arr = raw.astype(np.float32)
                else:
                    arr = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
                    if w["dtype"] == "int32":
                        arr = np.round(arr).astype(np.int32)
            else:
                dt = np.dtype(_DTYPES[w["dtype"]])
                arr = np.frombuffer(buf, dtype=dt, count=n, offset=off).copy()
                off += n * dt.itemsize
            out[w["name"]] = arr.reshape(shape)
        if off != len(buf):
            raise ValueError(f"{model_json.name}: weights use {off} bytes, shards hold {len(buf)}")
    return out


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME' padding for one axis: (before, after); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_nhwc(
    x: Tensor,
    padding: str,
    k: Sequence[int],
    s: Sequence[int],
    d: Sequence[int],
    value: float = 0.0,
) -> Tensor:
    """Apply TF padding to an NHWC tensor (kept NHWC-contiguous for channels-last convs)."""
    if padding == "VALID":
        return x
    if padding != "SAME":
        raise NotImplementedError(f"padding {padding!r}")
    top, bottom = _same_pads(x.shape[1], k[0], s[0], d[0])
    left, right = _same_pads(x.shape[2], k[1], s[1], d[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (0, 0, left, right, top, bottom), value=value)


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


class TfjsGraph:
    """A loaded TFJS graph model, callable on NHWC float tensors.

    ``graph(x)`` returns the model's (first) output; ``graph.run({input: x}, outputs)``
    returns named outputs. Everything is plain torch, so gradients flow to the input.
    """

    def __init__(self, model_json: str | Path, device: str | torch.device = "cpu") -> None:
        self.path = Path(model_json)
        spec = json.loads(self.path.read_text())
        self.nodes: dict[str, dict[str, Any]] = {
            n["name"]: n for n in spec["modelTopology"]["node"]
        }
        self.device = torch.device(device)
        self.consts: dict[str, Tensor] = {
            k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
            for k, v in load_weights(self.path, spec).items()
        }
        self.inputs = [n for n, v in self.nodes.items() if v["op"] == "Placeholder"]
        sig = spec.get("signature") or (spec.get("userDefinedMetadata") or {}).get("signature")
        outs: list[str] = []
        if sig:
            outs = [o["name"].split(":")[0] for o in sig["outputs"].values()]
        if not outs:
            used = {self._src(i)[0] for v in self.nodes.values() for i in v.get("input", [])}
            outs = [n for n, v in self.nodes.items() if n not in used and v["op"] != "Const"]
        self.outputs = outs
        self._cache: dict[tuple[str, str], Tensor] = {}
        missing = {v["op"] for v in self.nodes.values()} - set(_OPS) - {"Const", "Placeholder"}
        if missing:
            raise NotImplementedError(f"{self.path.name}: unsupported ops {sorted(missing)}")

    @staticmethod
    def _src(name: str) -> tuple[str, int]:
        base, _, idx = name.partition(":")
        return base, int(idx) if idx else 0

    @staticmethod
    def to_layout(w: Tensor, layout: str) -> Tensor:
        """A TF filter in a torch layout: 'conv' [kh,kw,in,out] -> [out,in,kh,kw];
        'dw' [kh,kw,in,mult] -> [in*mult,1,kh,kw]; both channels-last in memory."""
        cl = torch.channels_last
        if layout == "conv":
            return w.permute(3, 2, 0, 1).contiguous(memory_format=cl)
        if layout == "dw":
            kh, kw, cin, mult = w.shape
            return w.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw).contiguous(memory_format=cl)
        return w

    def weight(self, name: str, layout: str) -> Tensor:
        """A constant converted to a torch layout (cached per name and layout)."""
        key = (name, layout)
        t = self._cache.get(key)
        if t is None:
            t = self.to_layout(self.consts[name], layout)
            self._cache[key] = t
        return t

    def run(
        self, feeds: Mapping[str, Tensor], outputs: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Evaluate ``outputs`` (default: the model's outputs) given input tensors."""
        want = list(outputs) if outputs is not None else self.outputs
        values: dict[str, Tensor] = {k.split(":")[0]: v for k, v in feeds.items()}
        # iterative post-order evaluation (graphs are deep enough to trouble recursion)
        for target in want:
            stack = [(self._src(target)[0], False)]
            while stack:
                name, ready = stack.pop()
                if name in values:
                    continue
                node = self.nodes[name]
                if node["op"] == "Const":
                    values[name] = self.consts[name]
                    continue
                if node["op"] == "Placeholder":
                    raise KeyError(f"no value fed for input {name!r}")
                ins = [i for i in node.get("input", []) if not i.startswith("^")]
                if not ready:
                    stack.append((name, True))
                    deps = (self._src(i)[0] for i in ins)
                    stack.extend((d, False) for d in deps if d not in values)
                    continue
                args = [values[self._src(i)[0]] for i in ins]
                values[name] = _OPS[node["op"]](self, node, args)
        return {t: values[self._src(t)[0]] for t in want}

    def __call__(self, x: Tensor) -> Tensor:
        """Run on one NHWC input and return the first output."""
        return self.run({self.inputs[0]: x})[self.outputs[0]]


# --------------------------------------------------------------------------- ops

Op = Callable[[TfjsGraph, dict[str, Any], list[Tensor]], Tensor]


def _activation(kind: str, x: Tensor, extra: list[Tensor], node: dict[str, Any]) -> Tensor:
    if kind == "Relu":
        return torch.relu(x)
    if kind == "Relu6":
        return torch.clamp(x, 0.0, 6.0)
    if kind == "Prelu":
        alpha = extra[0]
        return torch.where(x < 0, x * alpha, x)
    if kind == "LeakyRelu":
        return F.leaky_relu(x, _attr(node, "leakyrelu_alpha", 0.2))
    if kind == "Elu":
        return F.elu(x)
    if kind == "Sigmoid":
        return torch.sigmoid(x)
    raise NotImplementedError(f"fused activation {kind}")


def _conv_common(g: TfjsGraph, node: dict[str, Any], args: list[Tensor], depthwise: bool) -> Tensor:
    fname = node["input"][1].split(":")[0]
    layout = "dw" if depthwise else "conv"
    # filters are constants in every shipped model; a computed filter is converted per call
    w = g.weight(fname, layout) if fname in g.consts else TfjsGraph.to_layout(args[1], layout)
    strides = _attr(node, "strides", [1, 1, 1, 1])[1:3]
    dil = _attr(node, "dilations", [1, 1, 1, 1])[1:3]
    if _attr(node, "data_format", "NHWC") != "NHWC":
        raise NotImplementedError("only NHWC graphs are supported")
    x = _pad_nhwc(args[0].contiguous(), _attr(node, "padding", "VALID"), w.shape[2:], strides, dil)
    x = _nchw(x)  # a channels-last view: no copy
    groups = x.shape[1] if depthwise else 1
    y = F.conv2d(x, w, stride=tuple(strides), dilation=tuple(dil), groups=groups)
    y = _nhwc(y)
    fused = _attr(node, "fused_ops", [])
    rest = args[2:]
    for op in fused:
        if op == "BiasAdd":
            y = y + rest[0]
            rest = rest[1:]
        else:
            y = _activation(op, y, rest, node)
    return y


def _conv2d(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
    return _conv_common(g, n, a, depthwise=False)


def _depthwise(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
    return _conv_common(g, n, a, depthwise=True)


def _pool(g: TfjsGraph, n: dict[str, Any], a: list[Tensor], kind: str) -> Tensor:
    x = a[0].contiguous()
    k = _attr(n, "ksize")[1:3]
    s = _attr(n, "strides")[1:3]
    pad = _attr(n, "padding", "VALID")
    if kind == "max":
        x = _pad_nhwc(x, pad, k, s, (1, 1), value=float("-inf"))
        return _nhwc(F.max_pool2d(_nchw(x), tuple(k), tuple(s)))
    # average pooling: TF divides by the number of real (unpadded) pixels in each window
    xp = _pad_nhwc(x, pad, k, s, (1, 1))
    total = F.avg_pool2d(_nchw(xp), tuple(k), tuple(s))
    if xp.shape == x.shape:
        return _nhwc(total)
    ones = _pad_nhwc(torch.ones_like(x[:1, :, :, :1]), pad, k, s, (1, 1))
    frac = F.avg_pool2d(_nchw(ones), tuple(k), tuple(s))
    return _nhwc(total / frac)


def _matmul(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
    x, w = a[0], a[1]
    if _attr(n, "transpose_a", False):
        x = x.transpose(-1, -2)
    if _attr(n, "transpose_b", False):
        w = w.transpose(-1, -2)
    y = x @ w
    rest = a[2:]
    for op in _attr(n, "fused_ops", []):
        if op == "BiasAdd":
            y = y + rest[0]
            rest = rest[1:]
        else:
            y = _activation(op, y, rest, n)
    return y


def _ints(t: Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _pad(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
    p = _ints(a[1])  # [[before, after] per dim] in NHWC order
    flat: list[int] = []
    for d in reversed(range(len(p) // 2)):
        flat += [p[2 * d], p[2 * d + 1]]
    value = float(a[2].item()) if len(a) > 2 else 0.0
    return F.pad(a[0], tuple(flat), value=value)


def _mean(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
    axes = tuple(_ints(a[1]))
    return a[0].mean(dim=axes, keepdim=bool(_attr(n, "keep_dims", False)))


def _reshape(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
    return a[0].reshape(_ints(a[1]))


def _concat(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
    axis = int(a[-1].item())
    return torch.cat(a[:-1], dim=axis)


def _squeeze(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
    dims = _attr(n, "squeeze_dims", [])
    x = a[0]
    if not dims:
        return x.squeeze()
    for d in sorted((d % x.ndim for d in dims), reverse=True):
        x = x.squeeze(d)
    return x


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    def op(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
        return fn(a[0], a[1])

    return op


def _unary(fn: Callable[[Tensor], Tensor]) -> Op:
    def op(g: TfjsGraph, n: dict[str, Any], a: list[Tensor]) -> Tensor:
        return fn(a[0])

    return op


_OPS: dict[str, Op] = {
    "Identity": _unary(lambda x: x),
    "Conv2D": _conv2d,
    "_FusedConv2D": _conv2d,
    "DepthwiseConv2dNative": _depthwise,
    "FusedDepthwiseConv2dNative": _depthwise,
    "MaxPool": lambda g, n, a: _pool(g, n, a, "max"),
    "AvgPool": lambda g, n, a: _pool(g, n, a, "avg"),
    "MatMul": _matmul,
    "_FusedMatMul": _matmul,
    "BiasAdd": _binary(torch.add),
    "Add": _binary(torch.add),
    "AddV2": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "RealDiv": _binary(torch.div),
    "Maximum": _binary(torch.maximum),
    "Minimum": _binary(torch.minimum),
    "Relu": _unary(torch.relu),
    "Relu6": _unary(lambda x: torch.clamp(x, 0.0, 6.0)),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Neg": _unary(torch.neg),
    "Exp": _unary(torch.exp),
    "Sqrt": _unary(torch.sqrt),
    "Rsqrt": _unary(torch.rsqrt),
    "Square": _unary(torch.square),
    "Softmax": _unary(lambda x: torch.softmax(x, dim=-1)),
    "Prelu": lambda g, n, a: torch.where(a[0] < 0, a[0] * a[1], a[0]),
    "Pad": _pad,
    "PadV2": _pad,
    "Mean": _mean,
    "Reshape": _reshape,
    "ConcatV2": _concat,
    "Squeeze": _squeeze,
}
