"""Evaluation harness: metric and statistics functions against known values (no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg, stats
from skimage.metrics import structural_similarity

from dpface.evaluation.attacks import Attacker, averaging_protected, rank1, tar_at_far
from dpface.evaluation.measure import frechet_distance, iou, landmark_nme, psnr, ssim
from dpface.evaluation.stats import clustered_mean_ci, mean_ci, wilson


def _img(seed: int = 0, shape: tuple[int, ...] = (120, 160, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_ssim_of_identical_images_is_one_and_psnr_infinite() -> None:
    a = _img()
    assert ssim(a, a.copy()) == 1.0
    assert psnr(a, a.copy()) == math.inf


@pytest.mark.parametrize("box", [(40, 50, 70, 90), (0, 0, 10, 12), (100, 140, 120, 160)])
def test_windowed_ssim_equals_full_scikit_image_ssim(box: tuple[int, int, int, int]) -> None:
    a = _img(1)
    b = a.copy()
    y0, x0, y1, x1 = box
    b[y0:y1, x0:x1] = _img(2, (y1 - y0, x1 - x0, 3))
    want = structural_similarity(a, b, channel_axis=2, data_range=255)
    assert ssim(a, b) == pytest.approx(want, abs=1e-12)
    assert ssim(a, b) < 1.0


def test_psnr_matches_its_formula() -> None:
    a = np.full((10, 10, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 110  # one value off by 10: MSE = 100 / 300
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (100 / 300)))


def test_iou_and_landmark_nme() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    lm = np.random.default_rng(3).uniform(0, 100, (68, 2))
    lm[36], lm[45] = (10.0, 50.0), (50.0, 50.0)  # inter-ocular distance 40
    assert landmark_nme(lm, lm) == 0.0
    assert landmark_nme(lm + np.array([3.0, 4.0]), lm) == pytest.approx(5.0 / 40.0)


def _frechet_reference(x: np.ndarray, y: np.ndarray) -> float:
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    cm = linalg.sqrtm(sx @ sy).real
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(sx + sy - 2 * cm))


def test_frechet_distance_matches_the_matrix_square_root_formula() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 5))
    y = rng.normal(size=(150, 5)) * 1.5 + 0.3
    assert frechet_distance(x, y) == pytest.approx(_frechet_reference(x, y), rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([3.0, 0, 0, 4.0, 0])
    assert frechet_distance(x, x + shift) == pytest.approx(25.0, rel=1e-9)


def test_mean_ci_is_the_student_t_interval() -> None:
    e = mean_ci([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and e.n == 3
    assert e.half_width == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0]).half_width)
    assert mean_ci([np.nan, 4.0, 6.0]).mean == 5.0


def test_clustered_interval_uses_faces_not_draws() -> None:
    v = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # 2 faces × 4 draws
    e = clustered_mean_ci(v)
    assert e.n == 2 and e.mean == 0.5
    assert e.half_width == pytest.approx(stats.t.ppf(0.975, 1) * 0.5)  # sd(0, 1) / sqrt(2)


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


def test_attacker_distances_and_averaging() -> None:
    l2 = Attacker("dlib", "l2", 0.6)
    cos = Attacker("faceres", "cosine", 0.4)
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    assert l2.distance(a, b) == pytest.approx(math.sqrt(5))
    assert cos.distance(a, b) == pytest.approx(1.0)
    assert cos.distance(a, 3 * a) == pytest.approx(0.0)
    # releases scattered symmetrically around the original average back onto it
    orig = np.array([1.0, 0.0])
    rel = np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])
    prot = averaging_protected(l2, rel, orig, (1, 2, 4, 16))
    assert prot == {1: True, 2: False, 4: False}


def test_rank1_and_tar_at_far() -> None:
    # probes 0, 1 are the same person; 2 is someone else
    same = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    known = np.ones((3, 3), dtype=bool)
    selfm = np.eye(3, dtype=bool)
    dist = np.array([[0.9, 0.2, 0.5], [0.1, 0.9, 0.6], [0.3, 0.4, 0.8]])
    assert rank1(dist, same, known).tolist() == [True, True, False]
    # entries whose answer is unknown are left out of the gallery
    known2 = known.copy()
    known2[0, 1] = False
    assert rank1(dist, same, known2).tolist() == [False, True, False]
    # genuine pairs (same person, not self): 0.2, 0.1; impostors: 0.5, 0.6, 0.3, 0.4.
    # At FAR 1/4 the threshold is 0.4 (accept d < 0.4: one impostor in four)
    assert tar_at_far(dist, same, known, selfm, 0.25) == 1.0
    dist2 = dist.copy()
    dist2[0, 1] = 0.45
    assert tar_at_far(dist2, same, known, selfm, 0.25) == 0.5
    assert math.isnan(tar_at_far(dist, same, known, selfm, 0.01))  # too few impostors
