"""DP-Pix and DP blur (mechanisms/pixelization.py): structure, padding, sensitivity, noise scale,
black-box audits with power controls, validation.

Audits use worst-case m-neighbouring images (one pixel 0 vs 255 inside one cell) and the released
(pre-clip) noisy mean of that cell as the statistic; every audit has a broken twin that declares
half the sensitivity (half the noise) and must be flagged. Seeds are fixed; alpha = 1e-6.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms.audit import AuditResult, audit_calibrated
from mechanisms.budgets import ApproxDP, PureDP
from mechanisms.gaussian import Gaussian
from mechanisms.laplace import Laplace
from mechanisms.lattice import GRID_SHARE
from mechanisms.pixelization import (
    DPBlur,
    DPPixelization,
    Region,
    _exact_grid_points,
    clip_box,
    pixel_l1_sensitivity,
    pixel_l2_sensitivity,
)
from mechanisms.rng import Randomness
from tests.stats_helpers import ALPHA, binned_discrete_laplace_test

Array = npt.NDArray[Any]
BoxT = tuple[int, int, int, int]


def _rng(seed: int) -> np.random.Generator:
    return Randomness.from_seed(seed).generator


def _random_image(seed: int, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    return _rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _reference_means(
    image: Array, box: BoxT | None, block: int, pad_value: int
) -> npt.NDArray[np.float64]:
    """Padded cell means computed the obvious way (np.pad with a constant, then average)."""
    img = image if image.ndim == 3 else image[..., np.newaxis]
    colour = img.shape[2] - 1 if img.shape[2] in (2, 4) else img.shape[2]
    y0, y1, x0, x1 = clip_box(box, img.shape[0], img.shape[1])
    part = img[y0:y1, x0:x1, :colour].astype(np.float64)
    h, w = part.shape[:2]
    ph, pw = (-h) % block, (-w) % block
    padded = np.pad(part, ((0, ph), (0, pw), (0, 0)), constant_values=pad_value)
    r, c = padded.shape[0] // block, padded.shape[1] // block
    return np.asarray(padded.reshape(r, block, c, block, colour).mean(axis=(1, 3)))


# ------------------------------------------------------------------------------------------
# Structure: shape, dtype, cells, box, alpha, border cells
# ------------------------------------------------------------------------------------------

SHAPES = [(23, 37), (23, 37, 1), (23, 37, 2), (23, 37, 3), (23, 37, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("colour", ["joint", "split"])
@pytest.mark.parametrize("border", ["pad", "rescale"])
def test_output_is_cellwise_constant_and_untouched_outside_box(
    shape: tuple[int, ...], colour: str, border: str
) -> None:
    image = _random_image(1, shape)
    box = (-3, 4, 30, 40)  # clipped to x 0..30, y 4..23 (neither side divisible by 8)
    mech = DPPixelization(epsilon=2.0, block=8, colour=colour, border=border, seed=5)  # type: ignore[arg-type]
    twin = DPPixelization(epsilon=2.0, block=8, colour=colour, border=border, seed=5)  # type: ignore[arg-type]
    out = mech(image, box)
    noisy = twin.noisy_cell_means(image, box)
    assert out.shape == image.shape and out.dtype == np.uint8
    y0, y1, x0, x1 = 4, 23, 0, 30
    outside = np.ones(shape[:2], dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], image[outside])
    img3 = out if out.ndim == 3 else out[..., np.newaxis]
    colour_ch = img3.shape[2] - 1 if img3.shape[2] in (2, 4) else img3.shape[2]
    if img3.shape[2] in (2, 4):  # alpha made opaque inside, a constant: nothing released
        assert np.all(img3[y0:y1, x0:x1, -1] == 255)
    reg = mech.region(shape, box)
    assert (reg.cell_rows, reg.cell_cols) == (3, 4) and noisy.shape == (3, 4, colour_ch)
    values = noisy
    if border == "rescale":
        real = reg.real_counts()[..., np.newaxis].astype(np.float64)
        values = (noisy * 64 - 128 * (64 - real)) / real
    expected = np.clip(np.rint(np.clip(values, 0, 255)), 0, 255).astype(np.uint8)
    for i, j in itertools.product(range(3), range(4)):
        cell = img3[y0 + 8 * i : min(y0 + 8 * i + 8, y1), x0 + 8 * j : min(x0 + 8 * j + 8, x1)]
        assert cell.size > 0
        for ch in range(colour_ch):
            assert np.all(cell[..., ch] == expected[i, j, ch]), (i, j, ch)


def test_released_means_lie_on_the_mechanism_grid() -> None:
    mech = DPPixelization(epsilon=1.0, block=5, seed=2)  # b^2 = 25: means are not dyadic
    image = _random_image(3, (17, 12, 3))
    noisy = mech.noisy_cell_means(image)
    reg = mech.region(image.shape)
    g = float(mech.laplace(3).calibration(reg.n_cells * 3).grid)
    steps = noisy / g
    assert np.array_equal(steps, np.round(steps))


class _NoiselessPixelization(DPPixelization):
    """Test double: releases the exact padded means (no noise), to check geometry alone."""

    def _noisy_means(self, sums: Any, reg: Region, lay: Any) -> npt.NDArray[np.float64]:
        return np.asarray(sums, dtype=np.float64) / self.block**2


class _NoiselessBlur(DPBlur):
    def _noisy_means(self, sums: Any, reg: Region, lay: Any) -> npt.NDArray[np.float64]:
        return np.asarray(sums, dtype=np.float64) / self.block**2


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    channels=st.sampled_from([0, 1, 2, 3, 4]),
    block=st.integers(1, 9),
    pad_value=st.integers(0, 255),
    box=st.tuples(st.integers(-5, 20), st.integers(-5, 20), st.integers(1, 40), st.integers(1, 40)),
    seed=st.integers(0, 2**16),
)
def test_border_cells_are_the_means_of_constant_padded_cells(
    h: int, w: int, channels: int, block: int, pad_value: int, box: BoxT, seed: int
) -> None:
    """The released query is the mean of each constant-padded cell (reference: np.pad); with
    border="rescale" the painted border cells are the rounded means of their real pixels, and
    with "pad" the rounded padded means."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0 or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        with pytest.raises(ValueError):
            clip_box(box, h, w)
        return
    shape = (h, w) if channels == 0 else (h, w, channels)
    image = _random_image(seed, shape)
    ref = _reference_means(image, box, block, pad_value)
    exact = _NoiselessPixelization(epsilon=1.0, block=block, pad_value=pad_value, seed=seed)
    assert np.array_equal(exact.noisy_cell_means(image, box), ref)
    img = image if image.ndim == 3 else image[..., np.newaxis]
    colour = img.shape[2] - 1 if img.shape[2] in (2, 4) else img.shape[2]
    cy0, cy1, cx0, cx1 = clip_box(box, h, w)
    part = img[cy0:cy1, cx0:cx1, :colour].astype(np.float64)
    for border in ("pad", "rescale"):
        out = _NoiselessPixelization(
            epsilon=1.0, block=block, pad_value=pad_value, border=border, seed=seed
        )(image, box)
        got = (out if out.ndim == 3 else out[..., np.newaxis])[cy0:cy1, cx0:cx1]
        for i in range(0, cy1 - cy0, block):
            for j in range(0, cx1 - cx0, block):
                real = part[i : i + block, j : j + block].mean(axis=(0, 1))
                want = real if border == "rescale" else ref[i // block, j // block]
                assert np.all(np.abs(got[i, j, :colour] - want) <= 0.5 + 1e-9), (border, i, j)


def test_constant_padding_does_not_copy_pixels_but_edge_padding_would() -> None:
    """Why the padding is a constant: with edge replication one real pixel of a 1-pixel-wide
    border strip would fill a whole cell, b^2 times the DP-Pix sensitivity."""
    b = 4
    x0 = np.full((5, 5), 100, dtype=np.uint8)  # 5 = 4 + 1: a one-pixel border strip
    x1 = x0.copy()
    x1[4, 4] = 255
    x0[4, 4] = 0
    const = [_reference_means(x, None, b, 128) for x in (x0, x1)]
    l1_const = float(np.abs(const[0] - const[1]).sum())
    assert l1_const == pytest.approx(255 / b**2)
    assert l1_const <= pixel_l1_sensitivity(block=b, m=1, channels=1)

    def edge_means(x: Array) -> Array:
        padded = np.pad(x.astype(np.float64), ((0, 3), (0, 3)), mode="edge")
        return np.asarray(padded.reshape(2, b, 2, b).mean(axis=(1, 3)))

    l1_edge = float(np.abs(edge_means(x0) - edge_means(x1)).sum())
    assert l1_edge == pytest.approx(255.0)  # the corner cell is all copies of one pixel
    assert l1_edge > 10 * pixel_l1_sensitivity(block=b, m=1, channels=1)


# ------------------------------------------------------------------------------------------
# Sensitivity: formulas, exactness, and a property check on real m-neighbouring images
# ------------------------------------------------------------------------------------------


def test_sensitivity_formulas() -> None:
    assert pixel_l1_sensitivity(block=8, m=1, channels=1) == 255 / 64
    assert pixel_l1_sensitivity(block=8, m=3, channels=3) == 9 * 255 / 64
    assert Fraction(pixel_l1_sensitivity(block=7, m=1, channels=3)) >= Fraction(765, 49)
    assert pixel_l2_sensitivity(block=8, m=1, channels=3) == pytest.approx(255 * math.sqrt(3) / 64)
    # m <= b^2: all m pixels in one cell is worst, 255 m sqrt(C) / b^2
    assert pixel_l2_sensitivity(block=4, m=5, channels=1) == pytest.approx(255 * 5 / 16)
    # m > b^2: fill whole cells, then the rest
    assert pixel_l2_sensitivity(block=2, m=6, channels=1) == pytest.approx(
        255 * math.sqrt(1 + 4 / 16)
    )
    for b, m, c in [(3, 1, 3), (5, 7, 1), (2, 9, 3)]:
        l2 = Fraction(pixel_l2_sensitivity(block=b, m=m, channels=c))
        q, r = divmod(m, b * b)
        assert l2**2 >= Fraction(255**2 * c * (q * b**4 + r * r), b**4)


@pytest.mark.parametrize(("b", "m"), [(1, 3), (2, 5), (2, 9), (3, 11)])
def test_l2_worst_case_matches_brute_force(b: int, m: int) -> None:
    """max sum_c k_c^2 over placements of m pixels into cells of b^2 pixels, by enumeration."""
    b2 = b * b
    cells = -(-m // b2) + 1
    best = 0
    for ks in itertools.product(range(b2 + 1), repeat=cells):
        if sum(ks) == m:
            best = max(best, sum(k * k for k in ks))
    expected = 255 * math.sqrt(best) / b2
    assert pixel_l2_sensitivity(block=b, m=m, channels=1) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    block=st.integers(1, 6),
    m=st.integers(1, 12),
    rgb=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_m_neighbouring_images_move_the_means_by_at_most_the_sensitivity(
    h: int, w: int, block: int, m: int, rgb: bool, seed: int
) -> None:
    """Worst-case changes (each changed channel flipped to the far end) at random positions,
    including the padded border cells: the exact L1/L2 change stays within the derived bound."""
    rng = _rng(seed)
    shape = (h, w, 3) if rgb else (h, w)
    x0 = rng.integers(0, 256, size=shape, dtype=np.uint8)
    x1 = x0.copy()
    k = min(m, h * w)
    flat = rng.choice(h * w, size=k, replace=False)
    rows, cols = np.unravel_index(flat, (h, w))
    x1[rows, cols] = np.where(x0[rows, cols] < 128, 255, 0).astype(np.uint8)
    d = _reference_means(x1, None, block, 128) - _reference_means(x0, None, block, 128)
    c = 3 if rgb else 1
    assert np.abs(d).sum() <= pixel_l1_sensitivity(block=block, m=m, channels=c) + 1e-9
    assert np.sqrt((d**2).sum()) <= pixel_l2_sensitivity(block=block, m=m, channels=c) + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    s=st.integers(0, 255 * 400),
    b=st.integers(1, 20),
    k=st.integers(-30, 4),
)
def test_exact_grid_rounding(s: int, b: int, k: int) -> None:
    """The grid point handed to the noise is the one nearest the exact mean S/b^2."""
    b2 = b * b
    if s > 255 * b2:
        s = s % (255 * b2 + 1)
    g = Fraction(2) ** k
    got = Fraction(float(_exact_grid_points(np.array([s], dtype=np.int64), b2, g)[0]))
    assert got % g == 0
    assert abs(got - Fraction(s, b2)) <= g / 2


# ------------------------------------------------------------------------------------------
# Noise scale: exact discrete Laplace of scale 255 m / (b^2 eps) (x C colour channels)
# ------------------------------------------------------------------------------------------


def _noise_steps(mech: DPPixelization, image: Array, copies: int) -> tuple[Array, Region]:
    batch = np.repeat(image[np.newaxis], copies, axis=0)
    noisy = mech.noisy_cell_means_batch(batch)
    return noisy, mech.region(image.shape)


@pytest.mark.parametrize(
    ("block", "m", "epsilon"), [(8, 1, 1.0), (4, 2, 2.0), (8, 3, 0.5)], ids=["b8m1", "b4m2", "b8m3"]
)
def test_grayscale_noise_is_exact_discrete_laplace_of_dp_pix_scale(
    block: int, m: int, epsilon: float
) -> None:
    image = np.full((64, 64), 128, dtype=np.uint8)  # flat mid-grey: pre-clip values, mean 128
    mech = DPPixelization(epsilon=epsilon, block=block, m=m, seed=11)
    noisy, reg = _noise_steps(mech, image, 200_000 // (64 // block) ** 2 + 1)
    cal = mech.laplace(1).calibration(reg.n_cells)
    g = float(cal.grid)
    z = (noisy - 128.0) / g
    assert np.array_equal(z, np.round(z))
    assert binned_discrete_laplace_test(z.astype(np.int64).ravel(), cal.t) > ALPHA
    nominal = 255 * m / (block**2 * epsilon)
    assert mech.noise_scale() == pytest.approx(nominal, rel=1e-15)
    assert nominal <= cal.scale <= nominal * (1 + float(GRID_SHARE)) + g
    measured = float(np.std(noisy - 128.0)) / math.sqrt(2.0)  # Laplace: var = 2 scale^2
    assert measured == pytest.approx(nominal, rel=0.02)


@pytest.mark.parametrize("colour", ["joint", "split"])
def test_rgb_noise_scale_is_three_times_dp_pix_in_both_colour_modes(colour: str) -> None:
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    mech = DPPixelization(epsilon=1.0, block=8, colour=colour, seed=12)  # type: ignore[arg-type]
    noisy, reg = _noise_steps(mech, image, 8_000)
    coords = reg.n_cells * (3 if colour == "joint" else 1)
    cal = mech.laplace(3).calibration(coords)
    z = ((noisy - 128.0) / float(cal.grid)).astype(np.int64)
    for ch in range(3):
        assert binned_discrete_laplace_test(z[..., ch].ravel(), cal.t) > ALPHA
    nominal = 3 * 255 / 64
    assert mech.noise_scale(3) == pytest.approx(nominal)
    assert nominal <= cal.scale <= nominal * (1 + float(GRID_SHARE)) + float(cal.grid)
    assert float(np.std(noisy - 128.0)) / math.sqrt(2.0) == pytest.approx(nominal, rel=0.02)


def test_factor_two_scale_error_would_be_detected() -> None:
    """Power control: noise from twice the epsilon fails the test at the claimed scale."""
    image = np.full((64, 64), 128, dtype=np.uint8)
    right = DPPixelization(epsilon=1.0, block=8, seed=13)
    wrong = DPPixelization(epsilon=2.0, block=8, seed=13)
    noisy, reg = _noise_steps(wrong, image, 3_200)
    cal = right.laplace(1).calibration(reg.n_cells)
    z = ((noisy - 128.0) / float(cal.grid)).astype(np.int64)
    assert binned_discrete_laplace_test(z.ravel(), cal.t) < ALPHA
    measured = float(np.std(noisy - 128.0)) / math.sqrt(2.0)
    assert measured < 0.6 * right.noise_scale()


# ------------------------------------------------------------------------------------------
# Black-box audits on worst-case m-neighbouring images
# ------------------------------------------------------------------------------------------


def _worst_pair(shape: tuple[int, ...], m: int) -> tuple[Array, Array]:
    """m pixels of cell (0, 0) at 0 in x0 and 255 (all channels) in x1; the rest mid-grey."""
    x0 = np.full(shape, 100, dtype=np.uint8)
    x1 = x0.copy()
    rows, cols = np.unravel_index(np.arange(m), (4, 4))
    x0[rows, cols] = 0
    x1[rows, cols] = 255
    return x0, x1


def _halve_laplace(mech: DPPixelization, channels: int) -> DPPixelization:
    """The classic bug: a mechanism that declares half the true sensitivity (half the noise)."""
    good = mech.laplace(channels)
    mech._laplaces[channels] = Laplace(
        epsilon=good.epsilon, sensitivity=good.sensitivity / 2, randomness=mech.randomness
    )
    return mech


def _cell_release(
    mech: DPPixelization | DPBlur, stat: Callable[[Array], Array]
) -> Callable[[Array, int], Array]:
    def release(x: Array, n: int) -> Array:
        noisy = mech.noisy_cell_means_batch(np.repeat(x[np.newaxis], n, axis=0))
        return stat(noisy)

    return release


def _cell00(noisy: Array) -> Array:
    return np.asarray(noisy[:, 0, 0, 0])


_MU0, _MU1 = 15 * 100 / 16, (255 + 15 * 100) / 16  # cell (0, 0) means of _worst_pair, b = 4


def _cell00_llr(noisy: Array) -> Array:
    """Sum over channels of the cell's values clipped to [mu0, mu1]: an increasing function of
    the Laplace likelihood ratio when every channel mean moves from mu0 to mu1 (the optimal
    statistic for this pair)."""
    return np.asarray(np.clip(noisy[:, 0, 0, :], _MU0, _MU1).sum(axis=-1))


def _audit_pix(
    mech: DPPixelization | DPBlur,
    x0: Array,
    x1: Array,
    n: int,
    claimed: PureDP | ApproxDP,
    stat: Callable[[Array], Array] = _cell00,
) -> AuditResult:
    return audit_calibrated(_cell_release(mech, stat), x0, x1, n=n, claimed=claimed)


@pytest.mark.parametrize("m", [1, 2])
def test_dp_pix_audit_respects_claim_on_m_neighbours(m: int) -> None:
    x0, x1 = _worst_pair((8, 8), m)
    mech = DPPixelization(epsilon=1.0, block=4, m=m, seed=20 + m)
    res = _audit_pix(mech, x0, x1, 200_000, PureDP(1.0))
    exact = (255 * m / 16) / mech.realised_scale(mech.region(x0.shape))  # grid-aligned means
    assert exact <= 1.0
    assert not res.violates, str(res)
    assert exact - 0.12 < res.epsilon_lower_bound <= exact, str(res)


@pytest.mark.parametrize("m", [1, 2])
def test_dp_pix_with_half_the_noise_is_flagged(m: int) -> None:
    x0, x1 = _worst_pair((8, 8), m)
    mech = _halve_laplace(DPPixelization(epsilon=1.0, block=4, m=m, seed=30 + m), 1)
    res = _audit_pix(mech, x0, x1, 200_000, PureDP(1.0))
    assert res.violates, str(res)
    assert res.epsilon_lower_bound > 1.6


def test_dp_pix_audit_on_the_uint8_image_output() -> None:
    """End to end: the painted, clipped, rounded pixel (post-processing) also stays within eps."""
    x0, x1 = _worst_pair((8, 8), 1)
    mech = DPPixelization(epsilon=1.0, block=4, seed=40)

    def release(x: Array, n: int) -> Array:
        return np.asarray(mech.batch(np.repeat(x[np.newaxis], n, axis=0))[:, 3, 3], dtype=float)

    res = audit_calibrated(release, x0, x1, n=200_000, claimed=PureDP(1.0))
    assert not res.violates and 0.8 < res.epsilon_lower_bound <= 1.0, str(res)


@pytest.mark.parametrize("colour", ["joint", "split"])
def test_rgb_audits_respect_claim_and_catch_half_noise(colour: str) -> None:
    """RGB, one pixel changed in all channels (0 -> 255): the whole-pixel claim holds, close to
    tight; the broken twin (half the noise in every channel query) is flagged."""
    x0, x1 = _worst_pair((8, 8, 3), 1)
    good = DPPixelization(epsilon=1.0, block=4, colour=colour, seed=50)  # type: ignore[arg-type]
    exact = 3 * (255 / 16) / good.realised_scale(good.region(x0.shape), 3)
    ok = _audit_pix(good, x0, x1, 200_000, PureDP(1.0), stat=_cell00_llr)
    assert not ok.violates and exact - 0.15 < ok.epsilon_lower_bound <= exact, str(ok)
    bad = _halve_laplace(DPPixelization(epsilon=1.0, block=4, colour=colour, seed=51), 3)  # type: ignore[arg-type]
    flagged = _audit_pix(bad, x0, x1, 200_000, PureDP(1.0), stat=_cell00_llr)
    assert flagged.violates and flagged.epsilon_lower_bound > 1.6, str(flagged)


GAUSS_EPS, GAUSS_DELTA = 1.0, 1e-5


def _halve_gaussian(mech: DPBlur, channels: int) -> DPBlur:
    good = mech.gaussian(channels)
    mech._gaussians[channels] = Gaussian(
        epsilon=good.epsilon,
        delta=good.delta,
        sensitivity=good.sensitivity / 2,
        randomness=mech.randomness,
    )
    return mech


def test_dp_blur_audit_respects_claim() -> None:
    x0, x1 = _worst_pair((8, 8), 1)
    mech = DPBlur(epsilon=GAUSS_EPS, delta=GAUSS_DELTA, block=4, seed=60)
    assert mech.guarantee.budget == ApproxDP(GAUSS_EPS, GAUSS_DELTA)
    res = _audit_pix(mech, x0, x1, 300_000, ApproxDP(GAUSS_EPS, GAUSS_DELTA))
    assert res.claimed_delta == GAUSS_DELTA
    assert not res.violates and 0.3 < res.epsilon_lower_bound <= 1.0, str(res)


def test_dp_blur_with_half_the_noise_is_flagged() -> None:
    x0, x1 = _worst_pair((8, 8), 1)
    mech = _halve_gaussian(DPBlur(epsilon=GAUSS_EPS, delta=GAUSS_DELTA, block=4, seed=61), 1)
    res = _audit_pix(mech, x0, x1, 1_000_000, ApproxDP(GAUSS_EPS, GAUSS_DELTA))
    assert res.violates and res.epsilon_lower_bound > 1.2, str(res)


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 3])
def test_dp_pix_audit_large(m: int) -> None:
    x0, x1 = _worst_pair((8, 8), m)
    mech = DPPixelization(epsilon=1.0, block=4, m=m, seed=70 + m)
    exact = (255 * m / 16) / mech.realised_scale(mech.region(x0.shape))
    ok = _audit_pix(mech, x0, x1, 1_000_000, PureDP(1.0))
    assert not ok.violates and exact - 0.05 < ok.epsilon_lower_bound <= exact, str(ok)
    bad = _halve_laplace(DPPixelization(epsilon=1.0, block=4, m=m, seed=80 + m), 1)
    flagged = _audit_pix(bad, x0, x1, 1_000_000, PureDP(1.0))
    assert flagged.violates and flagged.epsilon_lower_bound > 1.8, str(flagged)


@pytest.mark.slow
def test_dp_blur_audit_large() -> None:
    x0, x1 = _worst_pair((8, 8), 1)
    claim = ApproxDP(GAUSS_EPS, GAUSS_DELTA)
    for seed in (90, 91):
        mech = DPBlur(epsilon=GAUSS_EPS, delta=GAUSS_DELTA, block=4, seed=seed)
        ok = _audit_pix(mech, x0, x1, 1_000_000, claim)
        assert not ok.violates and 0.5 < ok.epsilon_lower_bound <= 1.0, str(ok)


# ------------------------------------------------------------------------------------------
# DP blur output, guarantees and privacy maps
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dp_blur_output_shape_dtype_range_and_box(shape: tuple[int, ...]) -> None:
    image = _random_image(7, shape)
    mech = DPBlur(epsilon=0.5, delta=1e-6, block=4, seed=8)
    out = mech(image, (3, 2, 19, 21))
    assert out.shape == image.shape and out.dtype == np.uint8
    outside = np.ones(shape[:2], dtype=bool)
    outside[2:21, 3:19] = False
    assert np.array_equal(out[outside], image[outside])
    # heavy noise clipped to [0, 255] and then blurred: smooth, and not the original
    assert not np.array_equal(out[2:21, 3:19], image[2:21, 3:19])


def test_dp_blur_without_noise_is_a_blurred_pixelization() -> None:
    """Without noise (test double) and without blur the output is the rounded cell means; the
    blur then only smooths (its output stays within the range of the cell values)."""
    image = _random_image(9, (16, 16))
    ref = _reference_means(image, None, 4, 128)
    sharp = _NoiselessBlur(epsilon=1.0, delta=1e-6, block=4, sigma_blur=0, seed=1)(image)
    assert np.array_equal(sharp[::4, ::4], np.rint(ref[..., 0]).astype(np.uint8))
    blurred = _NoiselessBlur(epsilon=1.0, delta=1e-6, block=4, sigma_blur=2.0, seed=1)(image)
    assert blurred.min() >= np.floor(ref.min()) and blurred.max() <= np.ceil(ref.max())
    assert (
        np.abs(np.diff(blurred.astype(int), axis=1)).max()
        < np.abs(np.diff(sharp.astype(int), axis=1)).max()
    )


def test_dp_blur_sigma_matches_the_gaussian_calibration() -> None:
    mech = DPBlur(epsilon=1.0, delta=1e-5, block=8, seed=3)
    reg = mech.region((64, 64, 3))
    sens = 3**0.5 * 255 / 64
    sigma = mech.sigma(reg, 3)
    ref = Gaussian(epsilon=1.0, delta=1e-5, sensitivity=sens).calibration(reg.n_cells * 3).sigma
    assert sigma == pytest.approx(ref)
    split = DPBlur(epsilon=1.0, delta=1e-5, block=8, colour="split", seed=3)
    assert split.sigma(reg, 3) > sigma  # splitting (eps, delta) costs more than joint L2


def test_guarantees_state_the_unit_and_are_dp() -> None:
    pix = DPPixelization(epsilon=2.0, block=8, m=3)
    g = pix.guarantee
    assert g.budget == PureDP(2.0) and g.is_dp
    assert "3 pixel" in g.privacy_unit and "3-neighbouring" in g.neighbouring
    assert "constant 128" in g.note and "alpha" in g.note
    assert not pix.seeded and DPPixelization(epsilon=1, block=2, seed=0).seeded
    blur = DPBlur(epsilon=1.0, delta=1e-6, block=8)
    assert blur.guarantee.budget == ApproxDP(1.0, 1e-6) and "blur" in blur.guarantee.note


@pytest.mark.parametrize("colour", ["joint", "split"])
def test_privacy_maps(colour: str) -> None:
    pix = DPPixelization(epsilon=1.0, block=8, m=2, colour=colour)  # type: ignore[arg-type]
    for c in (1, 3):
        assert pix.privacy_map(2, channels=c).epsilon == pytest.approx(1.0, abs=1e-9)
        assert pix.privacy_map(4, channels=c).epsilon == pytest.approx(2.0, abs=1e-9)
        assert pix.privacy_map(1, channels=c).epsilon <= 0.51
        assert pix.privacy_map(0, channels=c).epsilon <= 1.0 / 256 + 1e-9
    blur = DPBlur(epsilon=1.0, delta=1e-6, block=4, colour=colour)  # type: ignore[arg-type]
    assert blur.privacy_map(1, channels=3).epsilon == pytest.approx(1.0, abs=1e-9)
    assert blur.privacy_map(3, channels=3).epsilon > 1.5
    assert blur.privacy_map(1, channels=3).delta == pytest.approx(1e-6)


def test_split_epsilon_parts_never_exceed_the_total() -> None:
    for eps in (1.0, 0.1, 0.7, 1e-3, 3.3):
        pix = DPPixelization(epsilon=eps, block=2, colour="split")
        assert Fraction(pix.laplace(3).epsilon) * 3 <= Fraction(eps)


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"epsilon": 0.0, "block": 4}, ValueError),
        ({"epsilon": -1.0, "block": 4}, ValueError),
        ({"epsilon": math.inf, "block": 4}, ValueError),
        ({"epsilon": math.nan, "block": 4}, ValueError),
        ({"epsilon": "1", "block": 4}, TypeError),
        ({"epsilon": 1.0, "block": 0}, ValueError),
        ({"epsilon": 1.0, "block": 2.5}, TypeError),
        ({"epsilon": 1.0, "block": True}, TypeError),
        ({"epsilon": 1.0, "block": 4, "m": 0}, ValueError),
        ({"epsilon": 1.0, "block": 4, "colour": "rgb"}, ValueError),
        ({"epsilon": 1.0, "block": 4, "border": "edge"}, ValueError),
        ({"epsilon": 1.0, "block": 4, "pad_value": 256}, ValueError),
        (
            {"epsilon": 1.0, "block": 4, "seed": 1, "randomness": Randomness.from_seed(1)},
            ValueError,
        ),
    ],
)
def test_pixelization_constructor_validation(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        DPPixelization(**kwargs)


def test_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        DPPixelization(1.0, 4)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"delta": 0.0}, ValueError),
        ({"delta": 1.0}, ValueError),
        ({"epsilon": 0.0}, ValueError),
        ({"sigma_blur": -1.0}, ValueError),
        ({"sigma_blur": math.inf}, ValueError),
        ({"block": 0}, ValueError),
        ({"m": 0}, ValueError),
        ({"calibration": "exact"}, ValueError),
    ],
)
def test_blur_constructor_validation(kwargs: dict[str, Any], error: type[Exception]) -> None:
    base: dict[str, Any] = {"epsilon": 1.0, "delta": 1e-6, "block": 4}
    with pytest.raises(error):
        DPBlur(**(base | kwargs))


@pytest.mark.parametrize(
    ("image", "box", "error"),
    [
        (np.zeros((8, 8), dtype=np.uint16), None, TypeError),
        (np.zeros((8, 8), dtype=np.float32), None, TypeError),
        (np.zeros((8, 8, 5), dtype=np.uint8), None, ValueError),
        (np.zeros((8,), dtype=np.uint8), None, ValueError),
        (np.zeros((0, 8), dtype=np.uint8), None, ValueError),
        (np.zeros((8, 8), dtype=np.uint8), (8, 0, 12, 4), ValueError),  # right of the image
        (np.zeros((8, 8), dtype=np.uint8), (-9, -9, -1, -1), ValueError),  # above-left
        (np.zeros((8, 8), dtype=np.uint8), (4, 4, 4, 6), ValueError),  # empty
        (np.zeros((8, 8), dtype=np.uint8), (0, 0, 4), TypeError),
        (np.zeros((8, 8), dtype=np.uint8), (0.5, 0, 4, 4), TypeError),
    ],
)
def test_bad_images_and_boxes(image: Array, box: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        DPPixelization(epsilon=1.0, block=4, seed=1)(image, box)
    with pytest.raises(error):
        DPBlur(epsilon=1.0, delta=1e-6, block=4, seed=1)(image, box)
