"""Differentially private pixelization (DP-Pix, Fan 2018) and DP blur of an image region.

Both mechanisms split a rectangular region of a uint8 image into b x b cells anchored at the
region's top-left corner, release every cell's mean with exact grid noise, and paint the noisy
means back (clipping, rounding to uint8, upsampling and blurring are post-processing).

* :class:`DPPixelization` -- pure epsilon-DP, discrete Laplace noise of scale
  C * 255 m / (b^2 eps) per cell and colour channel (C colour channels; grayscale, C = 1, gives
  DP-Pix's 255 m / (b^2 eps)).
* :class:`DPBlur` -- (epsilon, delta)-DP, discrete Gaussian noise on the cell means, then the cells
  are upsampled and Gaussian-blurred.

Privacy unit: any m pixels of the region. Two images are *m-neighbouring* when they have the same
shape, the same (public) region, are identical outside the region and differ in at most m pixel
positions inside it; a pixel is all its colour channels at once. Pixels outside the region are
released unchanged and are not protected; the region box itself is public (a box computed from
the image, e.g. by a face detector, is not covered by this guarantee).

Padding: a region whose size is not a multiple of b is padded on the bottom/right with a public
constant ``pad_value`` so every cell is full (b^2 entries). The padding copies no pixel, so each
real pixel sits in exactly one cell with weight 1/b^2 and the DP-Pix sensitivity holds unchanged
for border cells. (Edge-replication padding would copy a border pixel up to b^2 times into one
cell and multiply its influence accordingly; it is deliberately not offered.) With
``border="rescale"`` the released mean of a partial cell is turned back into an estimate of the
mean of its real pixels -- post-processing that uses only public geometry.

Colour (C = number of colour channels; alpha is not a colour channel):
* ``"joint"`` -- one query over all cells and channels; one pixel moves each of the C means of
  its cell by <= 255/b^2, so the L1 sensitivity of m pixels is m C 255 / b^2 (L2: see DPBlur).
* ``"split"`` -- one query per channel, each with epsilon/C (and delta/C); sequential composition
  gives epsilon (and delta) for a whole pixel and epsilon/C for a change confined to one channel.
  For Laplace noise both options give the same noise scale.

Alpha (2- and 4-channel images): inside the region the alpha channel is set to 255 (opaque), a
constant, so nothing about the original alpha is released there; outside it is left as it is.

Exactness: cell sums are integers, and each mean S/b^2 is rounded to the mechanism's power-of-two
grid with integer arithmetic, so the grid mechanism receives exactly the grid point nearest the
true mean (no float error enters the sensitivity). Proof: ``proofs/pixelization.md``.
"""

from __future__ import annotations

import abc
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from dp_accounting import dp_event
from scipy import ndimage

from .accounting import compose, pure_event
from .base import (
    Guarantee,
    Mechanism,
    check_positive_finite,
    check_probability,
    format_down,
    format_up,
)
from .budgets import ApproxDP, PureDP, ceil_float, compose_basic
from .gaussian import Calibration, Gaussian, epsilon_at_multiplier, least_epsilon
from .laplace import Laplace, LaplaceCalibration
from .lattice import from_grid
from .metrics import PIXELS, Distance
from .rng import Randomness, resolve

__all__ = [
    "MAX_BLOCK",
    "MAX_PIXELS",
    "MAX_SIGMA_BLUR",
    "Border",
    "Box",
    "Colour",
    "DPBlur",
    "DPPixelization",
    "Region",
    "clip_box",
    "pixel_l1_sensitivity",
    "pixel_l2_sensitivity",
]

Colour = Literal["joint", "split"]
Border = Literal["pad", "rescale"]
Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1): columns x0 <= x < x1 and rows y0 <= y < y1 (half-open, pixel units)."""

UInt8Array = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MAX_VALUE = 255
_I64_LIMIT = 2**62
_F64_EXACT = 2**53

MAX_BLOCK = 1024
"""Largest cell side accepted. A cell larger than the face region only adds constant padding
(no more privacy: the sensitivity of m pixels is already that of a single cell), while every
release paints block x block pixels per cell: block = 10^5 needed ~28 GiB for one cell."""

MAX_PIXELS = 2**40
"""Largest m accepted: more pixels than any image this library can hold in memory (2^40 is a
terabyte of grey pixels); m >= the region's pixel count already protects the whole region."""

MAX_SIGMA_BLUR = 4096.0
"""Largest DP-blur smoothing sigma (pixels): its kernel spans 8 sigma + 1 pixels, and beyond a
few thousand pixels the blur is flat over any face region while time and memory keep growing."""

MIN_CELL_SIGMA = Fraction(1, 2**34)
"""DPBlur: smallest noise parameter sigma = multiplier x sensitivity of the per-cell Gaussian.
With >= 1024 grid steps per sigma the grid step exceeds sigma/2048, so cell means <= 255 have
grid indices below 255 * 2^11 * 2^34 + 1 < 2^53, which ``_exact_grid_points`` needs."""


# --------------------------------------------------------------------------------------------
# Validation and geometry
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: int, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")
    return v


def _check_int_why(name: str, value: int, minimum: int, maximum: int, why: str) -> int:
    """Like _check_int, with the reason for the range in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if not minimum <= v <= maximum:
        raise ValueError(f"{name} must lie in [{minimum}, {maximum}], got {value}: {why}")
    return v


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def pixel_l1_sensitivity(*, block: int, m: int, channels: int) -> float:
    """L1 change of all cell means (all channels) when m pixels change: m C 255 / b^2, rounded up.

    Each real pixel lies in exactly one cell (constant padding copies no pixel) and moves each of
    that cell's C means by at most 255/b^2.
    """
    return ceil_float(Fraction(MAX_VALUE * m * channels, block * block))


def pixel_l2_sensitivity(*, block: int, m: int, channels: int) -> float:
    """L2 change of all cell means when m pixels change, rounded up.

    k pixels of one cell move each of its C means by <= 255 k / b^2 (k <= b^2). Over cells with
    sum k_c = m the squared L2 change is <= C (255/b^2)^2 sum k_c^2, which (convexity) is largest
    when the pixels fill whole cells: sum k_c^2 <= q b^4 + r^2 with (q, r) = divmod(m, b^2).
    """
    b2 = block * block
    q, r = divmod(m, b2)
    squared = Fraction(MAX_VALUE**2 * channels * (q * b2 * b2 + r * r), b2 * b2)
    value = math.sqrt(float(squared))
    while Fraction(value) ** 2 < squared:
        value = math.nextafter(value, math.inf)
    return value


def _split_down(value: float, parts: int) -> float:
    """Largest float x <= value/parts (so parts * x never exceeds value)."""
    x = value / parts
    while Fraction(x) * parts > Fraction(value):
        x = math.nextafter(x, 0.0)
    return x


def clip_box(box: Box | None, height: int, width: int) -> tuple[int, int, int, int]:
    """Validate ``box`` = (x0, y0, x1, y1) and clip it to the image: returns (y0, y1, x0, x1).

    ``None`` means the whole image. A box with x1 <= x0 or y1 <= y0, or one that does not overlap
    the image, is an error (nothing would be protected).
    """
    if box is None:
        return 0, height, 0, width
    if not isinstance(box, (tuple, list)) or len(box) != 4:
        raise TypeError(f"box must be a tuple (x0, y0, x1, y1), got {box!r}")
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"box coordinates must be ints, got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box!r} is empty: need x0 < x1 and y0 < y1")
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(
            f"box {box!r} lies outside the {width}x{height} image (width x height): "
            "nothing to protect"
        )
    return cy0, cy1, cx0, cx1


@dataclass(frozen=True)
class Region:
    """A clipped region (rows y0:y1, columns x0:x1) and its grid of b x b cells."""

    y0: int
    y1: int
    x0: int
    x1: int
    block: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def cell_rows(self) -> int:
        return -(-self.height // self.block)

    @property
    def cell_cols(self) -> int:
        return -(-self.width // self.block)

    @property
    def n_cells(self) -> int:
        return self.cell_rows * self.cell_cols

    def real_counts(self) -> IntArray:
        """Real (unpadded) pixels per cell, shape (cell_rows, cell_cols)."""
        b = self.block
        rows = np.minimum(b, self.height - b * np.arange(self.cell_rows, dtype=np.int64))
        cols = np.minimum(b, self.width - b * np.arange(self.cell_cols, dtype=np.int64))
        return np.asarray(np.outer(rows, cols), dtype=np.int64)


@dataclass(frozen=True)
class _Layout:
    """Channel layout of an image batch (N, H, W, channels)."""

    channels: int
    colour: int
    alpha: int | None


def _as_batch(images: npt.ArrayLike) -> tuple[UInt8Array, bool]:
    """(N, H, W, K) uint8 view of a batch, and whether the input had no channel axis."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"images must be uint8 (0..255), got dtype {arr.dtype}; convert first "
            "(e.g. 16-bit: (img >> 8).astype(np.uint8))"
        )
    if arr.ndim == 3:
        return arr[..., np.newaxis], True
    if arr.ndim == 4:
        if arr.shape[-1] not in (1, 2, 3, 4):
            raise ValueError(
                f"images must have 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, "
                f"got {arr.shape[-1]}"
            )
        return arr, False
    raise ValueError(
        "batch must have shape (N, H, W) or (N, H, W, channels), "
        f"got {arr.ndim - 1}-dimensional images of shape {arr.shape[1:]}"
    )


def _layout(channels: int) -> _Layout:
    if channels in (2, 4):
        return _Layout(channels=channels, colour=channels - 1, alpha=channels - 1)
    return _Layout(channels=channels, colour=channels, alpha=None)


def _exact_grid_points(sums: IntArray, b2: int, grid: Fraction) -> FloatArray:
    """Grid point nearest each exact mean sums / b2 (ties up), computed in integers."""
    num, den = grid.denominator, grid.numerator * b2  # mean / g = sums * num / den
    top = 2 * MAX_VALUE * b2 * num + den
    if top < _I64_LIMIT:
        k = (2 * sums * num + den) // (2 * den)
    else:  # astronomically fine grid: exact Python integers
        k = np.asarray(
            [(2 * int(s) * num + den) // (2 * den) for s in sums.ravel()], dtype=object
        ).reshape(sums.shape)
    if int(np.max(k, initial=0)) >= _F64_EXACT:
        raise OverflowError("grid index beyond 2^53: the grid is too fine for this block size")
    return from_grid(np.asarray(k, dtype=np.int64), grid)


class _GridMechanism(Protocol):
    """What the cell mechanisms need from the grid Laplace / Gaussian."""

    def batch(self, xs: npt.ArrayLike) -> FloatArray: ...


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


class _CellMechanism(Mechanism):
    """Cell means of a region, released by a grid mechanism; painting back is post-processing."""

    input_metric = PIXELS

    epsilon: float

    def __init__(
        self,
        *,
        block: int,
        m: int,
        colour: Colour,
        pad_value: int,
        border: Border,
        randomness: Randomness | None,
        seed: int | None,
    ) -> None:
        self.block = _check_int_why(
            "block",
            block,
            1,
            MAX_BLOCK,
            "the side of a cell in pixels; larger cells only add padding to a face region "
            "and every release paints block x block pixels per cell (memory)",
        )
        self.m = _check_int_why(
            "m",
            m,
            1,
            MAX_PIXELS,
            "the number of pixels one privacy unit may change; at least 1, and beyond 2^40 "
            "no image has that many pixels",
        )
        self.colour: Colour = colour
        _check_choice("colour", colour, ("joint", "split"))
        self.pad_value = _check_int("pad_value", pad_value, minimum=0, maximum=MAX_VALUE)
        self.border: Border = border
        _check_choice("border", border, ("pad", "rescale"))
        self.randomness = resolve(randomness, seed)

    # -- the noise, per subclass ------------------------------------------------------------

    @abc.abstractmethod
    def _mechanism(self, channels: int) -> _GridMechanism:
        """The grid mechanism for one query (all channels if joint, one channel if split)."""

    @abc.abstractmethod
    def _grid(self, channels: int, coords: int) -> Fraction:
        """Grid step of that mechanism for a query with ``coords`` coordinates."""

    # -- geometry and release ----------------------------------------------------------------

    def region(self, image_shape: tuple[int, ...], box: Box | None = None) -> Region:
        """The clipped region and cell grid for an image of shape (H, W) or (H, W, channels)."""
        if len(image_shape) < 2:
            raise ValueError(f"image shape must be (H, W[, channels]), got {image_shape}")
        height, width = int(image_shape[0]), int(image_shape[1])
        if height < 1 or width < 1:
            raise ValueError(f"image is empty: shape {image_shape}")
        y0, y1, x0, x1 = clip_box(box, height, width)
        return Region(y0=y0, y1=y1, x0=x0, x1=x1, block=self.block)

    def _check_calibrations(self, cells: int, colours: tuple[int, ...] = (1, 3)) -> None:
        """Refuse (ValueError, before any noise) a region of ``cells`` cells that the noise
        mechanisms cannot calibrate for images with these numbers of colour channels. The
        advised epsilon is the largest of the least epsilons over ``colours``, so it works for
        every colour layout checked here."""
        for channels in colours:
            coords = cells * (channels if self.colour == "joint" else 1)
            try:
                self._grid(channels, coords)
            except ValueError as exc:
                leasts = [
                    self._least_epsilon(c, cells * (c if self.colour == "joint" else 1))
                    for c in colours
                ]
                least = None if None in leasts else max(x for x in leasts if x is not None)
                advice = (
                    f"use epsilon >= {format_up(least)} (or a larger block, or a smaller region)"
                    if least is not None and self.epsilon < least
                    else "use a larger block or a smaller region"
                )
                split = ", epsilon split over the channels" if self.colour == "split" else ""
                raise ValueError(
                    f"{type(self).__name__}(epsilon={self.epsilon:g}, block={self.block}, "
                    f"m={self.m}, colour={self.colour!r}) cannot release a region of {cells} "
                    f"cell(s) with {channels} colour channel(s){split}: {exc}. For this "
                    f"region: {advice}"
                ) from None

    @abc.abstractmethod
    def _least_epsilon(self, channels: int, coords: int) -> Fraction | None:
        """About the least (outer) epsilon with which a query of ``coords`` coordinates fits the
        exact sampler, or None if no epsilon does."""

    def prepare(self, image_shape: tuple[int, ...], box: Box | None = None) -> Region:
        """Validate the region of an image of ``image_shape`` and calibrate its noise, drawing
        nothing: raises ``ValueError`` for a box or region this mechanism cannot release. Call
        it before charging a budget; every release runs it too."""
        reg = self.region(image_shape, box)
        colours = _layout(int(image_shape[2])).colour if len(image_shape) > 2 else 1
        self._check_calibrations(reg.n_cells, (colours,))
        return reg

    def _cell_sums(self, batch: UInt8Array, reg: Region, lay: _Layout) -> IntArray:
        """Integer sums over each padded cell: shape (N, cell_rows, cell_cols, colour)."""
        b = self.block
        part = batch[:, reg.y0 : reg.y1, reg.x0 : reg.x1, : lay.colour]
        rows = np.add.reduceat(part, np.arange(0, reg.height, b), axis=1, dtype=np.int64)
        sums = np.add.reduceat(rows, np.arange(0, reg.width, b), axis=2, dtype=np.int64)
        padded = b * b - reg.real_counts()
        return np.asarray(sums + self.pad_value * padded[np.newaxis, :, :, np.newaxis])

    def _noisy_means(self, sums: IntArray, reg: Region, lay: _Layout) -> FloatArray:
        n = sums.shape[0]
        b2 = self.block * self.block
        if self.colour == "joint":
            rows = sums.reshape(n, -1)
            grid = self._grid(lay.colour, rows.shape[1])
            exact = _exact_grid_points(rows, b2, grid)
            return self._mechanism(lay.colour).batch(exact).reshape(sums.shape)
        per_channel = np.moveaxis(sums, -1, 1).reshape(n * lay.colour, reg.n_cells)
        grid = self._grid(lay.colour, reg.n_cells)
        exact = _exact_grid_points(per_channel, b2, grid)
        noisy = self._mechanism(lay.colour).batch(exact)
        shaped = noisy.reshape(n, lay.colour, reg.cell_rows, reg.cell_cols)
        return np.ascontiguousarray(np.moveaxis(shaped, 1, -1))

    def noisy_cell_means_batch(self, images: npt.ArrayLike, box: Box | None = None) -> FloatArray:
        """The DP release itself: noisy means of the padded cells, one release per image.

        Shape (N, cell_rows, cell_cols, colour channels); values lie on the mechanism's grid and
        are not clipped (everything after this is post-processing).
        """
        batch, _ = _as_batch(images)
        if batch.shape[0] == 0:
            raise ValueError("batch needs at least one image")
        lay = _layout(batch.shape[-1])
        reg = self.prepare(batch.shape[1:], box)
        return self._noisy_means(self._cell_sums(batch, reg, lay), reg, lay)

    def noisy_cell_means(self, image: npt.ArrayLike, box: Box | None = None) -> FloatArray:
        """Noisy cell means of one image: shape (cell_rows, cell_cols, colour channels)."""
        arr = np.asarray(image)
        out: FloatArray = self.noisy_cell_means_batch(arr[np.newaxis, ...], box)[0]
        return out

    def _cell_values(self, noisy: FloatArray, reg: Region) -> FloatArray:
        """Post-processing of released means: optional border rescaling, then clip to [0, 255]."""
        values = noisy
        if self.border == "rescale":
            real = reg.real_counts().astype(np.float64)[np.newaxis, :, :, np.newaxis]
            b2 = float(self.block * self.block)
            values = (noisy * b2 - self.pad_value * (b2 - real)) / real
        return np.clip(values, 0.0, float(MAX_VALUE))

    def _paint(
        self, batch: UInt8Array, region_values: UInt8Array, reg: Region, lay: _Layout
    ) -> UInt8Array:
        out = batch.copy()
        out[:, reg.y0 : reg.y1, reg.x0 : reg.x1, : lay.colour] = region_values
        if lay.alpha is not None:
            out[:, reg.y0 : reg.y1, reg.x0 : reg.x1, lay.alpha] = MAX_VALUE
        return out

    def _upsample(self, cells: npt.NDArray[np.generic], reg: Region) -> npt.NDArray[np.generic]:
        b = self.block
        big = np.repeat(np.repeat(cells, b, axis=1), b, axis=2)
        return big[:, : reg.height, : reg.width]

    @abc.abstractmethod
    def _render(self, cells: FloatArray, reg: Region) -> UInt8Array:
        """Clipped cell values (N, R, C, colour) -> region pixels (N, h, w, colour) uint8."""

    def batch(self, images: npt.ArrayLike, box: Box | None = None) -> UInt8Array:
        """Independent releases for a batch (N, H, W[, channels]) of uint8 images, same box."""
        batch, squeezed = _as_batch(images)
        if batch.shape[0] == 0:
            raise ValueError("batch needs at least one image")
        lay = _layout(batch.shape[-1])
        reg = self.prepare(batch.shape[1:], box)
        noisy = self._noisy_means(self._cell_sums(batch, reg, lay), reg, lay)
        out = self._paint(batch, self._render(self._cell_values(noisy, reg), reg), reg, lay)
        return out[..., 0] if squeezed else out

    def __call__(self, image: npt.ArrayLike, box: Box | None = None) -> UInt8Array:
        """One release on a uint8 image (H, W), (H, W, 1|2|3|4); same shape and dtype out."""
        arr = np.asarray(image)
        if arr.ndim not in (2, 3):
            raise ValueError(f"image must have shape (H, W) or (H, W, channels), got {arr.shape}")
        out: UInt8Array = self.batch(arr[np.newaxis, ...], box)[0]
        return out

    # -- statements ---------------------------------------------------------------------------

    def _unit(self) -> str:
        return (
            f"any {self.m} pixel(s) of the region (a pixel is all its colour channels); "
            "pixels outside the region are released unchanged and not protected"
        )

    def _neighbouring(self) -> str:
        return (
            f"{self.m}-neighbouring images: same shape and same public region box, identical "
            f"outside the region, differing in at most {self.m} pixel positions inside it"
        )

    def _common_note(self) -> str:
        return (
            f"cells {self.block}x{self.block} anchored at the region's top-left corner; partial "
            f"cells padded with the constant {self.pad_value} (no pixel is copied); alpha inside "
            "the region set to 255; the box must not be derived from the pixels it protects "
            "(a detector's box is outside this guarantee); clipping, rounding"
            + (", rescaling of border cells" if self.border == "rescale" else "")
        )


# --------------------------------------------------------------------------------------------
# DP-Pix
# --------------------------------------------------------------------------------------------


class DPPixelization(_CellMechanism):
    """DP-Pix: epsilon-DP pixelization for any m pixels of an image region (Fan 2018).

    Each b x b cell is replaced by its mean plus discrete Laplace noise of scale
    C * 255 m / (b^2 epsilon) (C colour channels; grayscale: 255 m / (b^2 epsilon)), clipped to
    [0, 255] and rounded to uint8. Guarantee: epsilon-DP for m-neighbouring images (see the module
    docstring for padding, colour and alpha). Proof: ``proofs/pixelization.md``.
    """

    def __init__(
        self,
        *,
        epsilon: float,
        block: int,
        m: int = 1,
        colour: Colour = "joint",
        pad_value: int = 128,
        border: Border = "pad",
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self.epsilon = check_positive_finite("epsilon", epsilon)
        super().__init__(
            block=block,
            m=m,
            colour=colour,
            pad_value=pad_value,
            border=border,
            randomness=randomness,
            seed=seed,
        )
        self._laplaces: dict[int, Laplace] = {}
        # refuse now what could not release even a one-cell region, grey or colour
        self._check_calibrations(1)

    def laplace(self, channels: int = 1) -> Laplace:
        """The grid Laplace behind one query for an image with ``channels`` colour channels."""
        channels = _check_int("channels", channels, minimum=1, maximum=3)
        mech = self._laplaces.get(channels)
        if mech is None:
            if self.colour == "joint":
                eps = self.epsilon
                sens = pixel_l1_sensitivity(block=self.block, m=self.m, channels=channels)
            else:
                eps = _split_down(self.epsilon, channels)
                sens = pixel_l1_sensitivity(block=self.block, m=self.m, channels=1)
            mech = Laplace(epsilon=eps, sensitivity=sens, randomness=self.randomness)
            self._laplaces[channels] = mech
        return mech

    def _mechanism(self, channels: int) -> Laplace:
        return self.laplace(channels)

    def _least_epsilon(self, channels: int, coords: int) -> Fraction | None:
        per_query = channels if self.colour == "joint" else 1
        sens = pixel_l1_sensitivity(block=self.block, m=self.m, channels=per_query)
        least = LaplaceCalibration.least_epsilon(sens, coords)
        # split: each channel runs at (about) epsilon / C; a little more for _split_down
        return least if self.colour == "joint" else least * channels * (1 + Fraction(1, 10**9))

    def _grid(self, channels: int, coords: int) -> Fraction:
        return self.laplace(channels).calibration(coords).grid

    def _render(self, cells: FloatArray, reg: Region) -> UInt8Array:
        return np.asarray(self._upsample(np.rint(cells).astype(np.uint8), reg), dtype=np.uint8)

    def noise_scale(self, channels: int = 1) -> float:
        """Nominal Laplace scale per cell mean: C * 255 m / (b^2 epsilon) (both colour modes)."""
        channels = _check_int("channels", channels, minimum=1, maximum=3)
        return float(
            Fraction(MAX_VALUE * self.m * channels, self.block**2) / Fraction(self.epsilon)
        )

    def realised_scale(self, region: Region, channels: int = 1) -> float:
        """Scale t*g the grid Laplace really uses for ``region`` (within 1/256 + one grid step
        above :meth:`noise_scale`)."""
        coords = region.n_cells * (channels if self.colour == "joint" else 1)
        return self.laplace(channels).calibration(coords).scale

    @property
    def guarantee(self) -> Guarantee:
        per_channel = pixel_l1_sensitivity(block=self.block, m=self.m, channels=1)
        if self.colour == "joint":
            sens = (
                f"L1 sensitivity of all cell means C*255*m/b^2 = {per_channel:g}*C "
                "(C colour channels, one query)"
            )
        else:
            sens = (
                f"L1 sensitivity {per_channel:g} = 255*m/b^2 per colour channel; each of the C "
                "channel queries gets epsilon/C"
            )
        return Guarantee(
            budget=PureDP(self.epsilon),
            privacy_unit=self._unit(),
            neighbouring=self._neighbouring(),
            sensitivity=sens,
            note=f"{self._common_note()} are post-processing",
        )

    def privacy_map(self, d_in: float | Distance, *, channels: int = 1) -> PureDP:
        """Loss for images differing in ``d_in`` pixels of the region (any number, not just m)."""
        d = self._check_d_in(d_in)
        channels = _check_int("channels", channels, minimum=1, maximum=3)
        per_channel = Fraction(MAX_VALUE, self.block**2) * Fraction(d)
        if self.colour == "joint":
            return self.laplace(channels).privacy_map(ceil_float(per_channel * channels))
        one = self.laplace(channels).privacy_map(ceil_float(per_channel))
        total = compose_basic([one] * channels)
        assert isinstance(total, PureDP)
        return total

    def event(self) -> dp_event.DpEvent:
        """Any epsilon-DP release is dominated by 2-bucket randomised response at epsilon."""
        return pure_event(self.epsilon)


# --------------------------------------------------------------------------------------------
# DP blur
# --------------------------------------------------------------------------------------------


class DPBlur(_CellMechanism):
    """DP blur: (epsilon, delta)-DP pixelization with Gaussian noise, upsampled and blurred.

    Each b x b cell mean gets discrete Gaussian noise calibrated (analytic Gaussian by default) to
    the L2 sensitivity of m pixels (:func:`pixel_l2_sensitivity`); the noisy cells are clipped,
    upsampled to the region and smoothed with a Gaussian of ``sigma_blur`` pixels (default b/2;
    0 disables it) -- post-processing. Guarantee: (epsilon, delta)-DP for m-neighbouring images.
    Proof: ``proofs/pixelization.md``.
    """

    def __init__(
        self,
        *,
        epsilon: float,
        delta: float,
        block: int,
        m: int = 1,
        sigma_blur: float | None = None,
        colour: Colour = "joint",
        pad_value: int = 128,
        border: Border = "pad",
        calibration: Calibration = "analytic",
        randomness: Randomness | None = None,
        seed: int | None = None,
    ) -> None:
        self.epsilon = check_positive_finite("epsilon", epsilon)
        self.delta = check_probability("delta", delta, open_low=True, open_high=True)
        super().__init__(
            block=block,
            m=m,
            colour=colour,
            pad_value=pad_value,
            border=border,
            randomness=randomness,
            seed=seed,
        )
        if sigma_blur is None:
            self.sigma_blur = self.block / 2.0
        else:
            if isinstance(sigma_blur, bool) or not isinstance(sigma_blur, (int, float)):
                raise TypeError(
                    f"sigma_blur must be a real number, got {type(sigma_blur).__name__}"
                )
            s = float(sigma_blur)
            if not 0.0 <= s <= MAX_SIGMA_BLUR:  # also refuses NaN and inf
                raise ValueError(
                    f"sigma_blur must lie in [0, {MAX_SIGMA_BLUR:g}] pixels, got {sigma_blur}: "
                    "the blur kernel spans 8*sigma_blur + 1 pixels, and a wider blur is flat "
                    "over any face region while its time and memory keep growing"
                )
            self.sigma_blur = s
        _check_choice("calibration", calibration, ("analytic", "rdp"))
        self.calibration_method: Calibration = calibration
        self._gaussians: dict[int, Gaussian] = {}
        # refuse now an epsilon so large that cell means would leave the exact grid range,
        # then what could not release even a one-cell region, grey or colour
        most = min(self._most_epsilon(channels) for channels in (1, 3))
        if self.epsilon > most:
            raise ValueError(
                f"DPBlur(epsilon={self.epsilon:g}, delta={self.delta:g}, block={self.block}, "
                f"m={self.m}) would give cell means a noise sigma below 2^-34: with >= 1024 "
                "grid steps per sigma, a mean of 255 would sit beyond grid index 2^53, where "
                f"the exact cell means are no longer exact; use epsilon <= {format_down(most)} "
                "at this delta"
            )
        self._check_calibrations(1)
        for channels in (1, 3):
            self._check_cell_sigma(channels)

    def _query(self, channels: int) -> tuple[float, float]:
        """(L2 sensitivity, delta) of the Gaussian query behind ``channels`` colour channels."""
        if self.colour == "joint":
            return pixel_l2_sensitivity(block=self.block, m=self.m, channels=channels), self.delta
        sens = pixel_l2_sensitivity(block=self.block, m=self.m, channels=1)
        return sens, _split_down(self.delta, channels)

    def _most_epsilon(self, channels: int) -> Fraction:
        """About the largest (outer) epsilon whose per-cell noise sigma is >= MIN_CELL_SIGMA
        (10^-6 relative margin)."""
        sens, delta = self._query(channels)
        if delta <= 0.0:
            return Fraction(sys.float_info.max)
        inner = epsilon_at_multiplier(
            MIN_CELL_SIGMA / Fraction(sens), delta=delta, calibration=self.calibration_method
        )
        return inner * (1 - Fraction(1, 10**6)) * (channels if self.colour == "split" else 1)

    def _check_cell_sigma(self, channels: int) -> None:
        """Refuse a per-cell noise so small that cell means leave the exact 2^53 grid range
        (a guard behind the _most_epsilon check, which should already have refused)."""
        mech = self.gaussian(channels)
        sigma = Fraction(mech.noise_multiplier) * Fraction(mech.sensitivity)
        if sigma < MIN_CELL_SIGMA:
            raise ValueError(
                f"DPBlur(epsilon={self.epsilon:g}, delta={self.delta:g}, block={self.block}) "
                f"gives cell means a noise sigma of {float(sigma):.3g}, below 2^-34; use "
                f"epsilon <= {format_down(self._most_epsilon(channels))} at this delta"
            )

    def gaussian(self, channels: int = 1) -> Gaussian:
        """The grid Gaussian behind one query for an image with ``channels`` colour channels."""
        channels = _check_int("channels", channels, minimum=1, maximum=3)
        mech = self._gaussians.get(channels)
        if mech is None:
            if self.colour == "joint":
                eps, delta = self.epsilon, self.delta
                sens = pixel_l2_sensitivity(block=self.block, m=self.m, channels=channels)
            else:
                eps = _split_down(self.epsilon, channels)
                delta = _split_down(self.delta, channels)
                sens = pixel_l2_sensitivity(block=self.block, m=self.m, channels=1)
            mech = Gaussian(
                epsilon=eps,
                delta=delta,
                sensitivity=sens,
                calibration=self.calibration_method,
                randomness=self.randomness,
            )
            self._gaussians[channels] = mech
        return mech

    def _mechanism(self, channels: int) -> Gaussian:
        return self.gaussian(channels)

    def _least_epsilon(self, channels: int, coords: int) -> Fraction | None:
        sens, delta = self._query(channels)
        if delta <= 0.0:
            return None
        least = least_epsilon(
            delta=delta, sensitivity=sens, coords=coords, calibration=self.calibration_method
        )
        if least is None or self.colour == "joint":
            return least
        return least * channels * (1 + Fraction(1, 10**9))

    def _grid(self, channels: int, coords: int) -> Fraction:
        return self.gaussian(channels).calibration(coords).grid

    def sigma(self, region: Region, channels: int = 1) -> float:
        """Noise standard-deviation parameter per cell mean for ``region``."""
        coords = region.n_cells * (channels if self.colour == "joint" else 1)
        return self.gaussian(channels).calibration(coords).sigma

    def _render(self, cells: FloatArray, reg: Region) -> UInt8Array:
        big = np.asarray(self._upsample(cells, reg), dtype=np.float64)
        if self.sigma_blur > 0.0:
            big = ndimage.gaussian_filter(
                big, sigma=(0.0, self.sigma_blur, self.sigma_blur, 0.0), mode="nearest"
            )
        return np.clip(np.rint(big), 0, MAX_VALUE).astype(np.uint8)

    @property
    def guarantee(self) -> Guarantee:
        one = pixel_l2_sensitivity(block=self.block, m=self.m, channels=1)
        if self.colour == "joint":
            sens = (
                f"L2 sensitivity of all cell means sqrt(C)*{one:g} "
                "(C colour channels, one query; 255*sqrt(C*(q*b^4+r^2))/b^2 with "
                "(q, r) = divmod(m, b^2))"
            )
        else:
            sens = (
                f"L2 sensitivity {one:g} per colour channel; each of the C channel queries gets "
                "(epsilon/C, delta/C)"
            )
        return Guarantee(
            budget=ApproxDP(self.epsilon, self.delta),
            privacy_unit=self._unit(),
            neighbouring=self._neighbouring(),
            sensitivity=sens,
            note=(
                f"{self._common_note()}, upsampling and the Gaussian blur "
                f"(sigma {self.sigma_blur:g} px) are post-processing"
            ),
        )

    def privacy_map(self, d_in: float | Distance, *, channels: int = 1) -> ApproxDP:
        """(epsilon, delta) for images differing in ``d_in`` pixels of the region."""
        d = self._check_d_in(d_in)
        channels = _check_int("channels", channels, minimum=1, maximum=3)
        pixels = math.ceil(d)
        if pixels == 0:
            return ApproxDP(0.0, 0.0)
        per_query = channels if self.colour == "joint" else 1
        dist = pixel_l2_sensitivity(block=self.block, m=pixels, channels=per_query)
        one = self.gaussian(channels).privacy_map(dist)
        if self.colour == "joint":
            return one
        total = compose_basic([one] * channels)
        assert isinstance(total, ApproxDP)
        return total

    def event(self, *, channels: int = 1) -> dp_event.DpEvent:
        """Gaussian event(s) of one release (composed over channels when split)."""
        channels = _check_int("channels", channels, minimum=1, maximum=3)
        one = self.gaussian(channels).event()
        return one if self.colour == "joint" else compose([one] * channels)
