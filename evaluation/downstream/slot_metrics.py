"""Metrics of the Slot Attention paper (Locatello et al. 2020, Section 4) and a k-means baseline.

* `fg_ari`: adjusted Rand index between ground-truth instance labels and predicted segment labels,
  counted on foreground pixels only (FG-ARI; background label 0 excluded, Section 4.1). Batched via
  contingency tables; degenerate cases follow sklearn (a single cluster on both sides scores 1).
* `hungarian_match`: the optimal assignment of predictions to targets under a pairwise cost (scipy).
* `average_precision`: set-prediction AP at a distance threshold (Section 4.2, App. E.2): predictions
  ranked by their "is real" confidence over the whole test set; a prediction is a true positive when its
  argmax attributes all equal an unclaimed target's and its position lies within the threshold.
* `kmeans_fg_ari`: the k-means-on-pixels baseline (per image, k clusters over pixel features).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def _comb2(x: np.ndarray) -> np.ndarray:
    return x * (x - 1) / 2.0


def ari(true_labels: np.ndarray, pred_labels: np.ndarray, include: np.ndarray | None = None) -> np.ndarray:
    """Adjusted Rand index per row. Labels (n, P) ints; `include` (n, P) bool selects the pixels counted.
    Rows with no included pixel give NaN."""
    true_labels = np.asarray(true_labels).reshape(len(true_labels), -1)
    pred_labels = np.asarray(pred_labels).reshape(len(pred_labels), -1)
    include = np.ones_like(true_labels, bool) if include is None else np.asarray(include).reshape(
        len(true_labels), -1)
    n_t = int(true_labels.max()) + 1
    n_p = int(pred_labels.max()) + 1
    out = np.full(len(true_labels), np.nan)
    for i in range(len(true_labels)):  # per image: one bincount over joint labels
        t, p = true_labels[i][include[i]], pred_labels[i][include[i]]
        if t.size == 0:
            continue
        cont = np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p).astype(np.float64)
        sum_ij = _comb2(cont).sum()
        a = _comb2(cont.sum(1)).sum()
        b = _comb2(cont.sum(0)).sum()
        total = _comb2(float(t.size))
        expected = a * b / total if total > 0 else 0.0
        denom = 0.5 * (a + b) - expected
        out[i] = 1.0 if denom == 0 else (sum_ij - expected) / denom
    return out


def fg_ari(true_masks: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """FG-ARI per image. true_masks (n, H, W) with 0 = background; pred_labels (n, H, W) segment ids,
    e.g. the argmax over slots of the decoder's masks."""
    true_masks = np.asarray(true_masks)
    return ari(true_masks, pred_labels, true_masks > 0)


def hungarian_match(cost: np.ndarray) -> np.ndarray:
    """cost (n, K_pred, K_true) -> (n, K_true) index of the prediction assigned to each target."""
    out = np.zeros((cost.shape[0], cost.shape[2]), np.int64)
    for i, c in enumerate(cost):
        rows, cols = linear_sum_assignment(c)
        out[i, cols] = rows
    return out


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve (Pascal VOC, as in the paper's code)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def average_precision(pred: np.ndarray, target: np.ndarray, categorical: list[int],
                      threshold: float) -> float:
    """Set-prediction AP at a position-distance threshold (App. E.2).

    pred, target: (n, K, 2 + sum(categorical) + 1) as built by `scenes.set_targets`: (y, x) in image
    units, one-hot blocks of the sizes in `categorical`, the "is real" flag last (confidence in `pred`).
    threshold: maximal Euclidean distance (image units) for a match; np.inf ignores position.
    """
    def split(x):
        pos, rest, cats = x[..., :2], x[..., 2:], []
        for n_cls in categorical:
            cats.append(rest[..., :n_cls].argmax(-1))
            rest = rest[..., n_cls:]
        return pos, np.stack(cats, -1), rest[..., 0]

    p_pos, p_cat, p_conf = split(pred)
    t_pos, t_cat, t_real = split(target)
    real = t_real > 0.5
    n_true = int(real.sum())
    if n_true == 0:
        return float("nan")
    order = np.argsort(-p_conf.reshape(-1), kind="stable")
    img, slot = np.unravel_index(order, p_conf.shape)
    claimed = np.zeros_like(real)
    tp = np.zeros(len(order))
    for r, (i, k) in enumerate(zip(img, slot)):
        dist = np.linalg.norm(t_pos[i] - p_pos[i, k], axis=-1)  # (K,)
        ok = real[i] & ~claimed[i] & np.all(t_cat[i] == p_cat[i, k], -1) & (dist <= threshold)
        if ok.any():
            j = np.flatnonzero(ok)[np.argmin(dist[ok])]
            claimed[i, j] = True
            tp[r] = 1
    tp_c = np.cumsum(tp)
    precision = tp_c / np.arange(1, len(order) + 1)
    recall = tp_c / n_true
    return _voc_ap(recall, precision)


def kmeans_fg_ari(images: np.ndarray, true_masks: np.ndarray, k: int, features: str = "rgbxy",
                  seed: int = 0) -> np.ndarray:
    """Baseline: per image, k-means (sklearn, k clusters) over pixel features, scored by FG-ARI.

    features: "rgb" (colour only) or "rgbxy" (colour and position, each scaled to [0, 1])."""
    from sklearn.cluster import KMeans

    n, H, W, _ = images.shape
    ys, xs = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    labels = np.zeros((n, H, W), np.int64)
    for i in range(n):
        f = images[i].reshape(-1, 3)
        if features == "rgbxy":
            f = np.concatenate([f, ys.reshape(-1, 1), xs.reshape(-1, 1)], 1)
        elif features != "rgb":
            raise ValueError(f"features must be 'rgb' or 'rgbxy', got {features!r}")
        # jitter breaks ties between identical pixels so k clusters always exist
        f = f + np.random.default_rng(seed + i).normal(0, 1e-4, f.shape)
        km = KMeans(k, n_init=3, random_state=seed).fit(f)
        labels[i] = km.labels_.reshape(H, W)
    return fg_ari(true_masks, labels)
