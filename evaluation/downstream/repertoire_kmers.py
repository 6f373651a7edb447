"""The k-mer side of `mnemos downstream repertoire`: k-mer frequencies per repertoire, the L1 logistic-regression
baseline on them (DeepRC's), and the k-mers most enriched in a training fold, which seed the model's kernels."""

from __future__ import annotations

import warnings

import numpy as np

from evaluation.downstream.repertoire_data import AMINO_ACIDS, EncodedRepertoires, Repertoire, encode_repertoire


def kmer_frequencies(idx: np.ndarray, k: int, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One repertoire's k-mers: codes (sum_j a_j 20^(k-1-j)) and frequencies summing to 1, from amino-acid
    indices (n_seq, L) with -1 padding; each occurrence weighs 1, or its sequence's count."""
    idx = np.asarray(idx, dtype=np.int64)
    weights = 20 ** np.arange(k - 1, -1, -1)
    codes, w = [], []
    for j in range(idx.shape[1] - k + 1):
        window = idx[:, j: j + k]
        ok = (window >= 0).all(1)
        codes.append(window[ok] @ weights)
        w.append(counts[ok] if counts is not None else np.ones(ok.sum()))
    codes, w = np.concatenate(codes), np.concatenate(w).astype(float)
    uniq, inv = np.unique(codes, return_inverse=True)
    sums = np.bincount(inv, weights=w)
    return uniq, sums / sums.sum()


def _sparse_rows(rows: list[tuple[np.ndarray, np.ndarray]], k: int):
    from scipy.sparse import csr_matrix
    r = np.concatenate([np.full(len(c), i) for i, (c, _) in enumerate(rows)])
    return csr_matrix((np.concatenate([v for _, v in rows]), (r, np.concatenate([c for c, _ in rows]))),
                      shape=(len(rows), 20**k))


def kmer_matrix(reps: list[Repertoire], k: int = 4, use_counts: bool = False):
    """Sparse (n_repertoires, 20^k) k-mer frequencies (each repertoire's vector sums to 1)."""
    return _sparse_rows([kmer_frequencies(encode_repertoire(rep)[0].numpy(), k, rep.counts if use_counts else None)
                         for rep in reps], k)


def enriched_kmers(encoded: EncodedRepertoires, labels: np.ndarray, train_idx: np.ndarray, k: int,
                   n: int) -> list[tuple[str, float]]:
    """The n k-mers whose frequency is most raised in the positive training repertoires over the negative ones,
    by Welch's t over repertoires, with their t: what the seeded kernels start from. Sees `train_idx` only."""
    train_idx = np.asarray(train_idx)
    X = _sparse_rows([kmer_frequencies(encoded.items[i][0].numpy(), k) for i in train_idx], k)
    stats = []
    for cls in (1, 0):
        Xc = X[labels[train_idx] == cls]
        mean = np.asarray(Xc.mean(0)).ravel()
        var = np.asarray(Xc.multiply(Xc).mean(0)).ravel() - mean**2
        stats.append((mean, var * Xc.shape[0] / max(Xc.shape[0] - 1, 1) / max(Xc.shape[0], 1)))
    (m1, v1), (m0, v0) = stats
    t = (m1 - m0) / np.sqrt(v1 + v0 + 1e-12)
    top = np.argsort(-t, kind="stable")[:n]
    letters = [(top // 20 ** (k - 1 - j)) % 20 for j in range(k)]
    return [("".join(AMINO_ACIDS[letters[j][i]] for j in range(k)), float(t[c])) for i, c in enumerate(top)]


def kmer_baseline_scores(X, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> np.ndarray:
    """L1 logistic regression on (scaled) k-mer frequencies; C chosen by inner 3-fold CV (DeepRC's baseline)."""
    from sklearn.linear_model import LogisticRegressionCV
    scale = X[train_idx].max(axis=0).toarray().ravel()
    scale[scale == 0] = 1.0
    from scipy.sparse import diags
    Xs = X @ diags(1.0 / scale)
    n_splits = max(2, min(3, int(np.bincount(labels[train_idx]).min())))
    clf = LogisticRegressionCV(Cs=[0.1, 1.0, 10.0, 100.0], cv=n_splits, penalty="l1", solver="liblinear",
                               scoring="roc_auc", max_iter=2000, random_state=seed)
    with warnings.catch_warnings():  # scikit-learn 1.8 announces a change of LogisticRegressionCV's attributes
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(Xs[train_idx], labels[train_idx])
    return clf.predict_proba(Xs[test_idx])[:, 1]
