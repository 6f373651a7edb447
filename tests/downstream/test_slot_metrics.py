"""FG-ARI against hand-computed cases and sklearn; set-prediction AP; Hungarian matching; k-means baseline."""

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from evaluation.downstream.slot_metrics import (ari, average_precision, fg_ari, hungarian_match,
                                                kmeans_fg_ari)


def test_ari_hand_computed():
    # contingency [[2, 0], [1, 1]]: sum C(n_ij,2) = 1, rows 2, cols 3, C(4,2) = 6 -> expected 1, max 2.5 -> 0
    assert ari(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 0, 1]]))[0] == pytest.approx(0.0)
    # contingency [[2, 1, 0], [0, 1, 2]]: index 2, rows 6, cols 3, C(6,2) = 15 -> (2 - 1.2) / (4.5 - 1.2)
    got = ari(np.array([[0, 0, 0, 1, 1, 1]]), np.array([[0, 0, 1, 1, 2, 2]]))[0]
    assert got == pytest.approx(0.8 / 3.3)
    # the same partition under other names scores 1
    assert ari(np.array([[1, 1, 2, 2, 3]]), np.array([[7, 7, 0, 0, 4]]))[0] == pytest.approx(1.0)
    # one cluster on both sides: sklearn's convention, 1
    assert ari(np.array([[2, 2, 2]]), np.array([[5, 5, 5]]))[0] == 1.0


def test_fg_ari_ignores_background_pixels():
    true = np.array([[[0, 0, 1], [0, 2, 2]]])
    pred_good = np.array([[[3, 1, 0], [1, 2, 2]]])  # background pixels labelled arbitrarily
    assert fg_ari(true, pred_good)[0] == pytest.approx(1.0)
    pred_bad = np.array([[[0, 0, 2], [0, 2, 2]]])  # objects 1 and 2 merged
    assert fg_ari(true, pred_bad)[0] == pytest.approx(0.0)
    assert math.isnan(fg_ari(np.zeros((1, 2, 3), int), pred_bad)[0])  # no foreground: undefined


def test_fg_ari_matches_sklearn_on_foreground_pixels():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, (20, 12, 12))
    pred = np.where(rng.random((20, 12, 12)) < 0.7, true, rng.integers(0, 6, (20, 12, 12)))
    ours = fg_ari(true, pred)
    for i in range(20):
        fg = true[i] > 0
        assert ours[i] == pytest.approx(adjusted_rand_score(true[i][fg], pred[i][fg]), abs=1e-12)


def test_hungarian_match_is_optimal():
    rng = np.random.default_rng(1)
    cost = rng.random((5, 4, 4))
    match = hungarian_match(cost)
    for c, m in zip(cost, match):
        best = min(sum(c[p[j], j] for j in range(4)) for p in itertools.permutations(range(4)))
        assert sum(c[m[j], j] for j in range(4)) == pytest.approx(best)


def _obj(y, x, shape, colour, real=1.0, n_shape=3, n_colour=2):
    return np.concatenate([[y, x], np.eye(n_shape)[shape], np.eye(n_colour)[colour], [real]])


def test_average_precision_cases():
    cats = [3, 2]
    target = np.array([[_obj(0.2, 0.2, 0, 1), _obj(0.7, 0.5, 2, 0), np.zeros(8)]])
    perfect = target.copy()
    perfect[0, 2, -1] = 0.1  # the empty slot says "not real" with low confidence
    for thr in [math.inf, 0.1, 0.01]:
        assert average_precision(perfect, target, cats, thr) == pytest.approx(1.0)
    # position off by 0.07: counts at 0.1, not at 0.05
    moved = perfect.copy()
    moved[0, :2, 0] += 0.07
    assert average_precision(moved, target, cats, 0.1) == pytest.approx(1.0)
    assert average_precision(moved, target, cats, 0.05) == pytest.approx(0.0)
    # wrong attribute never counts
    wrong = perfect.copy()
    wrong[0, 0, 2:5] = np.eye(3)[1]
    wrong[0, 0, -1] = 0.5  # ranked after the correct one: precision 1 at recall 1/2, then nothing
    assert average_precision(wrong, target, cats, math.inf) == pytest.approx(0.5)
    # ranking: a false positive at the top. precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> AP = 2/3
    ranked = np.array([[_obj(0.9, 0.9, 1, 1, 0.9), _obj(0.2, 0.2, 0, 1, 0.8), _obj(0.7, 0.5, 2, 0, 0.7)]])
    assert average_precision(ranked, target, cats, math.inf) == pytest.approx(2 / 3)
    # a duplicate of a claimed target is a false positive
    dup = np.array([[_obj(0.2, 0.2, 0, 1, 0.9), _obj(0.2, 0.2, 0, 1, 0.8), _obj(0.7, 0.5, 2, 0, 0.7)]])
    assert average_precision(dup, target, cats, math.inf) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_kmeans_baseline_on_colour_separable_scene():
    img = np.zeros((1, 8, 8, 3))
    masks = np.zeros((1, 8, 8), int)
    img[0, :4, :4] = [1, 0, 0]
    masks[0, :4, :4] = 1
    img[0, 5:, 5:] = [0, 0, 1]
    masks[0, 5:, 5:] = 2
    assert kmeans_fg_ari(img, masks, k=3, features="rgb")[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kmeans_fg_ari(img, masks, k=3, features="hsv")
