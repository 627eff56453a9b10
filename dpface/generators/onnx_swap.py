"""``OnnxFaceSwapGenerator``: adapter for learned identity-conditioned face-swap models in
ONNX form, with the common signature of insightface's ``inswapper_128``:

* input ``target``: (1, 3, 128, 128) float32, the ArcFace-aligned 128×128 crop of the face
  to replace, RGB scaled to [0, 1];
* input ``source``: (1, 512) float32, the identity latent (the unit identity embedding,
  optionally through the model's fixed ``emap`` matrix and renormalised);
* output: (1, 3, 128, 128) float32 RGB in [0, 1], the swapped crop.

The swapped crop is warped back and blended with a soft mask (eroded and blurred crop
square). Users who have such weights point to a local path; dpface never downloads them.

Privacy: the identity latent is the privatised embedding, so what the network derives from
it is covered by post-processing. The network also reads the *raw* target crop; a learned
swapper is not guaranteed to discard the target's identity, so everything it derives from
the crop is NOT covered and the evaluation must measure it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dpface.face import Face
from dpface.generators.base import (
    AttributeChannel,
    ChannelRecord,
    GeneratedFace,
    Generator,
    check_image,
)
from dpface.generators.warp import face_width, fit_similarity

MIN_FACE_WIDTH = 24.0


def swap_template_matrix(points5: np.ndarray, size: int = 128) -> np.ndarray:
    """2×3 similarity photo -> ``size`` crop in insightface's ArcFace convention for
    128-multiples (template scaled by size/128 and shifted 8·size/128 px right)."""
    from dpface.generators.bank import canonical_template

    return fit_similarity(
        np.asarray(points5, dtype=np.float64).reshape(5, 2), canonical_template(size)
    )


class OnnxFaceSwapGenerator(Generator):
    """Run a local ONNX face-swap model (see module doc) as a frozen generator."""

    name = "onnx-faceswap"

    def __init__(
        self,
        path: str | Path,
        *,
        encoder: str = "arcface-onnx",
        latent_map: np.ndarray | str | None = None,
        threads: int = 1,
    ) -> None:
        """``latent_map``: None (the latent is the unit embedding), a (d_id, d_latent)
        matrix, or ``"graph"`` to use the model's last initializer when it is a square
        matrix of the latent size (how inswapper ships its ``emap``)."""
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"face-swap ONNX model not found at {p}: pass the path of a"
                " local .onnx file; dpface never downloads weights"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        img_in = [i for i in inputs if len(i.shape) == 4]
        lat_in = [i for i in inputs if len(i.shape) == 2]
        if len(img_in) != 1 or len(lat_in) != 1:
            raise ValueError(
                "expected one 4-D image input and one 2-D latent input, got "
                + ", ".join(f"{i.name}{i.shape}" for i in inputs)
            )
        self.target_name = img_in[0].name
        self.latent_name = lat_in[0].name
        side = img_in[0].shape[2]
        self.crop_size = int(side) if isinstance(side, int) else 128
        dim = lat_in[0].shape[1]
        if not isinstance(dim, int):
            raise ValueError("the latent input needs a fixed size")
        self.latent_dim = dim
        if isinstance(latent_map, str):
            if latent_map != "graph":
                raise ValueError("latent_map must be None, a matrix or 'graph'")
            latent_map = self._graph_map(p, dim)
        self.latent_map = None if latent_map is None else np.asarray(latent_map, np.float64)
        self.identity_dim = dim if self.latent_map is None else int(self.latent_map.shape[0])
        if self.latent_map is not None and self.latent_map.shape[1] != dim:
            raise ValueError(f"latent_map maps to {self.latent_map.shape[1]}, model wants {dim}")
        self.encoder = encoder
        self.path = p

    @staticmethod
    def _graph_map(path: Path, dim: int) -> np.ndarray:
        import onnx
        from onnx import numpy_helper

        inits = onnx.load(str(path)).graph.initializer
        if not inits:
            raise ValueError("the model has no initializer to use as latent map")
        m = numpy_helper.to_array(inits[-1])
        if m.shape != (dim, dim):
            raise ValueError(f"last initializer has shape {m.shape}, not ({dim}, {dim})")
        return np.asarray(m)

    def latent(self, identity: np.ndarray) -> np.ndarray:
        """(1, latent_dim) float32 latent from a privatised embedding."""
        v = self.check_identity(identity)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        if self.latent_map is not None:
            v = v @ self.latent_map
            v = v / max(float(np.linalg.norm(v)), 1e-12)
        return v.astype(np.float32)[None]

    def swap_crop(self, crop: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """Run the network: (S, S, 3) uint8 RGB crop + latent -> (S, S, 3) float RGB 0..255."""
        blob = (crop.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None]
        out: Any = self.session.run(
            None, {self.target_name: np.ascontiguousarray(blob), self.latent_name: latent}
        )[0]
        img = np.asarray(out, dtype=np.float32)[0].transpose(1, 2, 0)
        return np.asarray(np.clip(img, 0.0, 1.0) * np.float32(255.0))

    def channels(self, attributes: AttributeChannel | None = None) -> ChannelRecord:
        """What the output derives from."""
        covered = [
            f"identity latent: the privatised {self.encoder} embedding (through the"
            " fixed latent map)"
        ]
        uncovered = [
            "the raw aligned target crop the network reads: pose, expression,"
            " lighting, skin, hair, background, and any identity the network lets"
            " through from it (a learned swapper is not guaranteed to discard it)",
            "face geometry: the five alignment points (crop placement)",
            "everything outside the soft paste-back mask",
        ]
        if attributes is not None:
            uncovered.append("attribute channel: ignored by this generator")
        return ChannelRecord(tuple(covered), tuple(uncovered), (f"model: {self.path.name}",))

    def generate(
        self,
        image: np.ndarray,
        face: Face,
        identity: np.ndarray,
        attributes: AttributeChannel | None = None,
    ) -> GeneratedFace:
        """Align, swap, paste back with a soft mask."""
        img = check_image(image)
        record = self.channels(attributes)
        lat = self.latent(identity)
        fw = face_width(face.landmarks68)
        if fw < MIN_FACE_WIDTH:
            return GeneratedFace(
                img,
                "untouched",
                record,
                reason=(
                    f"face is {fw:.0f} px wide (< {MIN_FACE_WIDTH:.0f}); NOT de-identified,"
                    " protect it another way (e.g. DP-Pix)"
                ),
            )
        s = self.crop_size
        m = swap_template_matrix(face.points5, s)
        crop = cv2.warpAffine(
            img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        swapped = self.swap_crop(crop, lat)
        inv = cv2.invertAffineTransform(m)
        # paste back inside the crop's footprint only
        corners = np.array([[0, 0], [s, 0], [s, s], [0, s]], dtype=np.float64)
        foot = corners @ inv[:, :2].T + inv[:, 2]
        h, w = img.shape[:2]
        x0, y0 = (max(0, int(np.floor(v))) for v in foot.min(axis=0))
        x1 = min(w, int(np.ceil(foot[:, 0].max())))
        y1 = min(h, int(np.ceil(foot[:, 1].max())))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return GeneratedFace(
                img, "untouched", record, reason="face lies outside the photo; NOT de-identified"
            )
        shift = inv.copy()
        shift[:, 2] -= [x0, y0]
        size = (x1 - x0, y1 - y0)
        back = cv2.warpAffine(
            swapped, shift, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        square = np.zeros((s, s), np.float32)
        edge = max(2, s // 16)
        square[edge:-edge, edge:-edge] = 1.0
        alpha = cv2.warpAffine(square, shift, size, flags=cv2.INTER_LINEAR)
        scale = float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
        k = max(1, int(s * scale / 12))
        alpha = cv2.erode(alpha, np.ones((k, k), np.uint8))
        alpha = np.asarray(cv2.GaussianBlur(alpha, (0, 0), max(1.0, k / 2.0)), np.float32)
        region = img[y0:y1, x0:x1].astype(np.float32)
        blended = region * (1.0 - alpha[..., None]) + back * alpha[..., None]
        out = img.copy()
        out[y0:y1, x0:x1] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
        return GeneratedFace(
            out,
            "replaced",
            record,
            region=(x0, y0, x1, y1),
            alpha=alpha,
            layer=np.asarray(back, dtype=np.float32),
        )
