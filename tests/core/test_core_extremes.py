"""Extreme parameters: every mechanism either constructs and draws, or refuses in its constructor.

For each (mechanism, extreme parameter) the constructor either raises ``ValueError`` (naming the
allowed range and why) or returns a mechanism whose first release succeeds: never another
exception, never a failure at draw time (after a ledger would already have charged the release).
Where the refusal advises an epsilon ("use epsilon >= x" / "<= x"), that epsilon is checked to
work. Before these fixes, e.g. epsilon 1e-300 constructed every grid mechanism and failed at the
first draw, ``IdentityVMF(epsilon=1e300)`` raised ``OverflowError`` at the draw, ``DPBlur`` at
epsilon 1e300 raised ``OverflowError`` at the draw, ``DPPixelization(block=100000)`` tried to
allocate ~28 GiB, ``IdentityVMF(dim=3)`` at epsilon 1e-20 released the input direction itself,
and ``Gaussian`` at epsilon 1e50 silently clamped its input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mechanisms.exponential import Exponential
from mechanisms.gaussian import Gaussian
from mechanisms.identity import (
    VMF_MIN_KAPPA_DIM3,
    IdentityGaussian,
    IdentityLaplace,
    IdentityVMF,
    vmf_max_kappa,
)
from mechanisms.laplace import Laplace
from mechanisms.pixelization import MAX_BLOCK, MAX_PIXELS, MAX_SIGMA_BLUR, DPBlur, DPPixelization

EPSILONS = [5e-324, 1e-300, 1e-12, 1e-6, 1e-3, 1.0, 1e6, 1e20, 1e300, 1.7e308]
DELTAS = [5e-324, 1e-300, 1e-50, 1e-6, 0.5, 1 - 2**-53]
IMAGE = (np.arange(20 * 24 * 3) * 37 % 256).astype(np.uint8).reshape(20, 24, 3)
GREY = IMAGE[..., 0].copy()
BOX = (2, 3, 18, 17)  # 16 x 14 pixels


def _unit(dim: int) -> np.ndarray:
    x = np.cos(np.arange(dim, dtype=np.float64))
    return x / np.linalg.norm(x)


def _outcome(build: Callable[[], Any], draw: Callable[[Any], Any]) -> tuple[Any, Any]:
    """(mechanism, release) or (None, the constructor's ValueError); anything else fails."""
    try:
        mech = build()
    except ValueError as exc:
        assert str(exc), "a refusal must say why"
        return None, exc
    out = draw(mech)  # must not raise: a refusal belongs in the constructor
    return mech, out


_NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"


def _advice(exc: ValueError, eps: float) -> tuple[str, float] | None:
    """The last "use epsilon >= x" / "<= x" / "in [a, b]" in a refusal, if any."""
    text = str(exc)
    interval = re.findall(rf"use epsilon in \[{_NUMBER}, {_NUMBER}\]", text)
    if interval:
        low, high = float(interval[-1][0]), float(interval[-1][1])
        return (">=", low) if eps < low else ("<=", high)
    found = re.findall(rf"use epsilon (>=|<=) {_NUMBER}", text)
    return (found[-1][0], float(found[-1][1])) if found else None


def _check(build: Callable[[float], Any], eps: float, draw: Callable[[Any], Any]) -> None:
    mech, result = _outcome(lambda: build(eps), draw)
    if mech is not None:
        out = np.asarray(result)
        assert out.size > 0
        if out.dtype.kind == "f":
            assert np.all(np.isfinite(out))
        return
    advice = _advice(result, eps)
    if advice is not None:  # the advised epsilon must construct and draw
        sign, value = advice
        assert (value > eps) if sign == ">=" else (value < eps)
        mech, again = _outcome(lambda: build(value), draw)
        assert mech is not None, f"advised epsilon {value} refused: {again}"


# ------------------------------------------------------------------ core mechanisms


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("sens", [1e-300, 1.0, 1e300])
def test_laplace_extremes(eps: float, sens: float) -> None:
    # the smallest query (1 coordinate): larger ones are checked by calibration(n)
    _check(lambda e: Laplace(epsilon=e, sensitivity=sens), eps, lambda m: m(np.array([0.5])))


@pytest.mark.parametrize("calibration", ["analytic", "rdp"])
@pytest.mark.parametrize("delta", [1e-300, 1e-6, 0.5])
@pytest.mark.parametrize("eps", EPSILONS)
def test_gaussian_extremes(eps: float, delta: float, calibration: str) -> None:
    def build(e: float) -> Gaussian:
        return Gaussian(epsilon=e, delta=delta, sensitivity=1.0, calibration=calibration)  # type: ignore[arg-type]

    _check(build, eps, lambda m: m(np.array([0.5])))


@pytest.mark.parametrize("delta", DELTAS)
def test_gaussian_delta_extremes(delta: float) -> None:
    _check(
        lambda e: Gaussian(epsilon=e, delta=delta, sensitivity=1.0), 1.0, lambda m: m(np.zeros(1))
    )


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("sens", [1e-300, 1.0, 1e300])
def test_exponential_extremes(eps: float, sens: float) -> None:
    _check(
        lambda e: Exponential(epsilon=e, sensitivity=sens),
        eps,
        lambda m: m(np.array([0.0, 1.0, 2.0, -np.inf])),
    )


def test_larger_core_queries_are_refused_before_any_noise() -> None:
    """A query too large for the parameters fails in calibration(n), naming the least epsilon."""
    lap = Laplace(epsilon=1e-12, sensitivity=1.0)
    with pytest.raises(ValueError, match=r"use epsilon >= ([0-9.e+-]+)") as info:
        lap(np.zeros(8))
    least = float(re.findall(r"use epsilon >= ([0-9.e+-]+) for", str(info.value))[0])
    assert Laplace(epsilon=least, sensitivity=1.0)(np.zeros(8)).shape == (8,)


# ------------------------------------------------------------------ identity mechanisms


@pytest.mark.parametrize("dim", [128, 256, 512])
@pytest.mark.parametrize("eps", EPSILONS)
def test_identity_laplace_extremes(eps: float, dim: int) -> None:
    _check(lambda e: IdentityLaplace(epsilon=e, dim=dim), eps, lambda m: m(_unit(dim)))


@pytest.mark.parametrize("dim", [128, 512])
@pytest.mark.parametrize("delta", [1e-300, 1e-6, 1 - 2**-53])
@pytest.mark.parametrize("eps", EPSILONS)
def test_identity_gaussian_extremes(eps: float, delta: float, dim: int) -> None:
    _check(
        lambda e: IdentityGaussian(epsilon=e, delta=delta, dim=dim), eps, lambda m: m(_unit(dim))
    )


@pytest.mark.parametrize("dim", [2, 3, 4, 128, 256, 512])
@pytest.mark.parametrize("eps", EPSILONS)
def test_identity_vmf_extremes(eps: float, dim: int) -> None:
    _check(lambda e: IdentityVMF(epsilon=e, dim=dim), eps, lambda m: m(_unit(dim)))


def test_vmf_limits_are_exactly_the_sampler_limits() -> None:
    """kappa = vmf_max_kappa(dim) draws (above it scipy's sampler hung, e.g. dim 512 at kappa
    1e19); dim 3 at kappa = 2^-30 draws and follows the uniform law closely; below, dim 3
    returned the input direction itself (now refused)."""
    top = vmf_max_kappa(512)
    big = IdentityVMF(epsilon=2 * top, dim=512, seed=0)
    assert big.kappa == top
    x = _unit(512)
    assert big(x) @ x > 0.999
    with pytest.raises(ValueError, match="use epsilon <="):
        IdentityVMF(epsilon=math.nextafter(2 * top, math.inf) * 1.001, dim=512)
    small = IdentityVMF(epsilon=2 * VMF_MIN_KAPPA_DIM3, dim=3, seed=0)
    y = small.batch(np.repeat(_unit(3)[None, :], 4000, axis=0)) @ _unit(3)
    # nearly uniform on the sphere: the cosine is ~U(-1, 1); the broken sampler gave y == 1
    assert abs(float(np.mean(y))) < 0.1 and float(np.mean(y > 0.999)) < 0.01
    with pytest.raises(ValueError, match="2\\^-30"):
        IdentityVMF(epsilon=1e-20, dim=3)
    assert IdentityVMF(epsilon=1e-20, dim=4, seed=0)(_unit(4)).shape == (4,)


# ------------------------------------------------------------------ image mechanisms


def _pix(**kw: Any) -> Callable[[float], DPPixelization]:
    return lambda e: DPPixelization(epsilon=e, **kw)


def _blur(**kw: Any) -> Callable[[float], DPBlur]:
    kw.setdefault("delta", 1e-6)
    return lambda e: DPBlur(epsilon=e, **kw)


def _release(image: np.ndarray, box: tuple[int, int, int, int] = BOX) -> Callable[[Any], Any]:
    return lambda m: m(image, box)


@pytest.mark.parametrize("image", [IMAGE, GREY], ids=["rgb", "grey"])
@pytest.mark.parametrize("colour", ["joint", "split"])
@pytest.mark.parametrize("kind", [_pix, _blur], ids=["pix", "blur"])
@pytest.mark.parametrize("eps", EPSILONS)
def test_image_epsilon_extremes(eps: float, kind: Any, colour: str, image: np.ndarray) -> None:
    # the constructor checks a one-cell region; a one-cell box must then always be releasable
    _check(kind(block=4, colour=colour), eps, _release(image, (0, 0, 4, 4)))
    mech, _ = _outcome(lambda: kind(block=4, colour=colour)(eps), lambda m: m)
    if mech is not None:  # a larger box either releases or is refused by prepare(), no noise
        try:
            reg = mech.prepare(image.shape, BOX)
        except ValueError as exc:
            assert "For this region" in str(exc)
        else:
            assert reg.n_cells == 16
            assert mech(image, BOX).shape == image.shape


@pytest.mark.parametrize("kind", [_pix, _blur], ids=["pix", "blur"])
@pytest.mark.parametrize(
    "kw",
    [
        {"block": 0},
        {"block": -4},
        {"block": 1},
        {"block": MAX_BLOCK},
        {"block": MAX_BLOCK + 1},
        {"block": 10**5},
        {"block": 4, "m": 0},
        {"block": 4, "m": -1},
        {"block": 4, "m": MAX_PIXELS},
        {"block": 4, "m": MAX_PIXELS + 1},
        {"block": 4, "m": 10**400},
        {"block": 4, "pad_value": 256},
        {"block": 4, "seed": -1},
        {"block": 4, "seed": 2**200},
    ],
)
def test_image_parameter_extremes(kind: Any, kw: dict[str, Any]) -> None:
    _check(kind(**kw), 1.0, _release(IMAGE))


@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("colour", ["joint", "split"])
def test_blur_delta_extremes(delta: float, colour: str) -> None:
    _check(_blur(block=4, delta=delta, colour=colour), 1.0, _release(IMAGE))


@pytest.mark.parametrize("sigma", [0.0, 1e-300, 2.0, MAX_SIGMA_BLUR, 5000.0, 1e300, math.inf])
def test_blur_sigma_extremes(sigma: float) -> None:
    _check(_blur(block=4, sigma_blur=sigma), 1.0, _release(IMAGE))


def test_block_and_m_refusals_say_why() -> None:
    with pytest.raises(ValueError, match=r"block must lie in \[1, 1024\].*memory"):
        DPPixelization(epsilon=1.0, block=10**5)
    with pytest.raises(ValueError, match=r"block must lie in \[1, 1024\]"):
        DPBlur(epsilon=1.0, delta=1e-6, block=0)
    with pytest.raises(ValueError, match=r"m must lie in \[1, "):
        DPPixelization(epsilon=1.0, block=4, m=0)
    with pytest.raises(ValueError, match="sigma_blur must lie in"):
        DPBlur(epsilon=1.0, delta=1e-6, block=4, sigma_blur=1e9)
    big = DPPixelization(epsilon=1.0, block=MAX_BLOCK, seed=0)
    out = big(IMAGE, BOX)  # one padded cell: no block x block allocation beyond the region
    assert out.shape == IMAGE.shape


@pytest.mark.parametrize(
    "build",
    [
        lambda: Laplace(epsilon=1.0, sensitivity=1.0, seed=-1),
        lambda: Gaussian(epsilon=1.0, delta=1e-6, sensitivity=1.0, seed=-1),
        lambda: Exponential(epsilon=1.0, sensitivity=1.0, seed=-1),
        lambda: IdentityLaplace(epsilon=1.0, dim=8, seed=-1),
        lambda: IdentityGaussian(epsilon=1.0, delta=1e-6, dim=8, seed=-1),
        lambda: IdentityVMF(epsilon=1.0, dim=8, seed=-1),
        lambda: DPPixelization(epsilon=1.0, block=4, seed=-1),
        lambda: DPBlur(epsilon=1.0, delta=1e-6, block=4, seed=-1),
    ],
)
def test_negative_seed_is_a_value_error(build: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        build()
