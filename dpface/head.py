"""Head protection (opt-in): the head around a face -- hair, ears, the face's outline, the
neck -- released through the DP core instead of copied from the photo.

A generated face replaces only the inner face; recognisers still identify people from the
head around it (``docs/generator.md``). With ``head="dp-pix"`` the **head box** of every face
(a square ``HEAD_SCALE`` face-box widths across, centred ``HEAD_LIFT`` widths above the face
box, clipped to the photo) is released with DP-Pix **from the original photo's pixels**,
charged to the face's privacy unit like any release, and the face's own protection is then put
back on top: a generated face through its soft mask (``layer`` and ``alpha`` of
:class:`~dpface.generators.base.GeneratedFace`), so where the mask fades out the face blends
into the released head, never into the photo's pixels; a DP fallback region or a mask as it
was. The released cells are drawn smoothly, interpolated between their centres
(:func:`smooth_cells`, post-processing): a soft blur rather than a mosaic, measured to protect
as well. A grey photo (every pixel outside the head boxes and face regions has equal R, G
and B) gets its released heads drawn in grey too (the channels' mean, post-processing; the
choice reads only pixels published unchanged). ``head="mask"`` paints the head box flat grey
instead (nothing released, nothing charged).

**Guarantee.** The head box's pixels are covered by DP-Pix's m-pixel guarantee at the head's
ε (``mechanisms.pixelization``): it hides any m pixels of the box, not the hair or outline as
a whole -- what a coarse cell grid (``cells`` cells across the box) removes is measured, not
proved. The release composes with the face's identity release on the same unit: a photo costs
the identity ε plus the head ε. The box's position and size come from the detection and are not
covered; nothing beyond the box is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

HeadMode = Literal["keep", "dp-pix", "mask"]
HEAD_MODES: tuple[HeadMode, ...] = ("keep", "dp-pix", "mask")
HEAD_SCALE = 1.6  # head box side, in face-box widths (measured: 2.0 protects no better)
HEAD_LIFT = 0.15  # head box centre above the face box centre, in face-box widths
HEAD_EPSILON = 1.0  # default ε of the head release (measured: protects as well as 2 or 6)
HEAD_CELLS = 6  # default DP-Pix cells across the head box (measured: 6 protects more than 8)
HEAD_PIXELS = 16  # m of the head's DP-Pix release


def head_box(box: Sequence[float], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The head box of a face box (x0, y0, x1, y1) in a photo of ``shape``: a square
    ``HEAD_SCALE`` face widths across, centred ``HEAD_LIFT`` widths above the face box centre,
    clipped to the photo (integer pixel bounds, x1/y1 exclusive)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    w = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - HEAD_LIFT * w
    half = HEAD_SCALE * w / 2
    h_img, w_img = shape[0], shape[1]
    return (
        max(0, math.floor(cx - half)),
        max(0, math.floor(cy - half)),
        min(w_img, math.ceil(cx + half)),
        min(h_img, math.ceil(cy + half)),
    )


def cell_block(box: tuple[int, int, int, int], cells: int) -> int:
    """DP-Pix cell side (pixels, 4 to 256) so ``box`` is at most ``cells`` cells across: the
    head box here, a face region for the DP fallback (:mod:`dpface.pipeline`)."""
    x0, y0, x1, y1 = box
    return max(4, min(256, math.ceil(max(x1 - x0, y1 - y0) / cells)))


@dataclass(frozen=True)
class FaceLayer:
    """A generated face to put back over a released head: its box, soft mask and colours."""

    region: tuple[int, int, int, int]
    alpha: np.ndarray = field(repr=False)  # (h, w) in [0, 1]
    layer: np.ndarray = field(repr=False)  # (h, w, 3) float colours before blending

    def over(self, canvas: np.ndarray) -> None:
        """Blend the face onto ``canvas`` (uint8 RGB, changed in place) through its mask."""
        x0, y0, x1, y1 = self.region
        a = np.asarray(self.alpha, dtype=np.float32)[..., None]
        under = canvas[y0:y1, x0:x1].astype(np.float32)
        out = a * self.layer + (1.0 - a) * under
        canvas[y0:y1, x0:x1] = np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ProtectedRegion:
    """A face region whose final pixels (a DP fallback or a mask) go back on top unchanged."""

    region: tuple[int, int, int, int]
    pixels: np.ndarray = field(repr=False)

    def over(self, canvas: np.ndarray) -> None:
        x0, y0, x1, y1 = self.region
        canvas[y0:y1, x0:x1] = self.pixels


# how the generators' and the fallback's channel records name what lies around the face
AROUND_THE_FACE = (
    "(outside the mask)",
    "outside the soft paste-back mask",
    "everything outside the face region",
)


def head_channels(
    channels: dict[str, list[str]], box: tuple[int, int, int, int], how: str
) -> dict[str, list[str]]:
    """A face's channel record with its head box protected: the items about what lies around
    the face (``AROUND_THE_FACE``) are replaced by the head release (``how``) and what lies
    beyond the box."""
    uncovered = [
        c for c in channels.get("uncovered", []) if not any(a in c for a in AROUND_THE_FACE)
    ]
    x0, y0, x1, y1 = box
    return {
        **channels,
        "covered": [
            *channels.get("covered", []),
            f"the head box around the face ({x1 - x0}x{y1 - y0} px at ({x0}, {y0}): hair, "
            f"ears, face outline, neck) around the face's own protection: {how}",
        ],
        "uncovered": [
            *uncovered,
            "everything beyond the head box (background, clothing, other people)",
            "the head box's position and size (from the detection)",
        ],
    }


def smooth_cells(pixels: np.ndarray, block: int) -> np.ndarray:
    """A DP-Pix release drawn smoothly: the cell values (``block`` px cells anchored at the
    top-left corner of ``pixels``) interpolated bilinearly between cell centres instead of
    flat squares. It reads only the released cell values, so it is post-processing and
    changes no guarantee."""
    import cv2

    h, w = pixels.shape[:2]
    ny, nx = -(-h // block), -(-w // block)
    grid = np.ascontiguousarray(pixels[::block, ::block][:ny, :nx]).astype(np.float32)
    up = cv2.resize(grid, (nx * block, ny * block), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.round(up[:h, :w]), 0, 255).astype(np.uint8)


def grey_outside(image: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> bool:
    """True when every pixel of ``image`` outside ``boxes`` has equal R, G and B (a grey
    photo). It reads only pixels that are published unchanged, so the choice it drives (a
    grey head for a grey photo) reveals nothing about the protected ones; False when nothing
    lies outside."""
    keep = np.ones(image.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in boxes:
        keep[y0:y1, x0:x1] = False
    if not keep.any():
        return False
    px = image[keep]
    return bool(np.array_equal(px[:, 0], px[:, 1]) and np.array_equal(px[:, 1], px[:, 2]))


def as_grey(pixels: np.ndarray) -> np.ndarray:
    """A released head drawn in grey (the mean of its colour channels; post-processing)."""
    mean = np.rint(pixels.astype(np.float32).mean(axis=2, keepdims=True))
    return np.repeat(np.clip(mean, 0, 255).astype(np.uint8), 3, axis=2)


def published_head(pixels: np.ndarray, block: int, grey: bool) -> np.ndarray:
    """What is published of a head box's DP-Pix release ``pixels`` (cells of ``block`` px):
    the cells drawn smoothly, in grey for a grey photo -- post-processing only."""
    drawn = smooth_cells(pixels, block)
    return as_grey(drawn) if grey else drawn
