"""Exact and fuzzy (MinHash-LSH) deduplication, vectorized numpy.

Exact: a 64-bit hash of the normalised words (lowercase, no punctuation, single spaces), so copies
differing only in case, punctuation or whitespace are duplicates.

Fuzzy: shingles are word k-grams (32-bit hashes of `ngrams.ngram_hashes`); a signature holds, per
permutation, the minimum of a random affine map of the shingle hashes. Two permutation families,
bit-identical to `datasketch` with the same `seed`:
- "affine32" (datasketch >= 2.0 default): murmur3 fmix32 of the shingle, then `a*h + b mod 2^32`, a odd;
- "legacy" (datasketch < 2.0): `((a*h + b) mod 2^64) mod (2^61 - 1)`, truncated to 32 bits.
Signatures are computed for many documents at once (a (shingles x permutations) block per chunk,
min-reduced per document with `np.minimum.reduceat`). LSH splits a signature into b bands of r rows;
documents whose rows agree in any band are candidates (P = 1 - (1 - s^r)^b for Jaccard s, the
S-curve); candidates are joined into clusters with union-find and every cluster keeps its first
document (in input order).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Iterable, Sequence

import numpy as np

from .ngrams import _mix64, ngram_hashes, normalize_words, tokenize_spans
from .pipeline import BaseFilter, PipelineStep

log = logging.getLogger(__name__)

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)


# ------------------------------------------------------------------------------------------- exact
def exact_hash(text: str) -> int:
    """64-bit hash of the normalised words (stable across processes)."""
    norm = " ".join(normalize_words(text)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(norm, digest_size=8).digest(), "little")


# ------------------------------------------------------------------------------------------- minhash
def shingle_hashes(text: str, k: int = 5) -> np.ndarray:
    """Unique 32-bit hashes (as uint64) of the word k-grams; a text shorter than k words is one shingle."""
    wh = tokenize_spans(text)[0]
    if wh.size == 0:
        return np.zeros(0, np.uint64)
    g = ngram_hashes(wh, min(k, wh.size))
    return np.unique(g & _MAX32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h.astype(np.uint32)
    with np.errstate(over="ignore"):
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    return h


class MinHasher:
    """Batched MinHash signatures: `signatures(list of shingle-hash arrays) -> (docs, num_perm)`."""

    def __init__(self, num_perm: int = 128, seed: int = 1, scheme: str = "affine32", chunk_rows: int = 8192):
        if scheme not in ("affine32", "legacy"):
            raise ValueError(f"scheme={scheme!r} (allowed: affine32, legacy)")
        self.num_perm, self.seed, self.scheme, self.chunk_rows = num_perm, seed, scheme, chunk_rows
        gen = np.random.RandomState(seed)   # the same draws as datasketch.MinHash(num_perm, seed, scheme)
        if scheme == "legacy":
            ab = np.array([(gen.randint(1, _MERSENNE, dtype=np.uint64), gen.randint(0, _MERSENNE, dtype=np.uint64))
                           for _ in range(num_perm)], dtype=np.uint64).T
            self.a, self.b = ab[0], ab[1]
            self.empty = _MAX32
            self.dtype = np.uint64
        else:
            self.a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
            self.b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
            self.empty = np.uint32((1 << 32) - 1)
            self.dtype = np.uint32

    def _permute(self, h: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(rows,) shingle hashes -> (num_perm, rows) permuted values (rows contiguous: the min
        over a document's shingles is then a fast reduction along the last axis)."""
        if out is None:
            out = np.empty((self.num_perm, h.size), dtype=self.dtype)
        with np.errstate(over="ignore"):
            if self.scheme == "affine32":
                np.multiply(self.a[:, None], _fmix32(h)[None, :], out=out)
                out += self.b[:, None]
                return out
            np.multiply(self.a[:, None], h[None, :], out=out)
            out += self.b[:, None]
            # out mod (2^61 - 1) by folding (2^61 = 1 mod p): equal to datasketch's `% _mersenne_prime`
            hi = out >> np.uint64(61)
            out &= _MERSENNE
            out += hi                                  # < 2p: one conditional subtraction left
            np.subtract(out, _MERSENNE, out=hi)        # out - p, wrapping around when out < p
            np.minimum(out, hi, out=out)               # out - p when out >= p, else out
            out &= _MAX32
            return out

    def signatures(self, shingles: Sequence[np.ndarray]) -> np.ndarray:
        n = len(shingles)
        sig = np.full((n, self.num_perm), self.empty, dtype=self.dtype)
        lens = np.fromiter((s.size for s in shingles), dtype=np.int64, count=n)
        if lens.sum() == 0:
            return sig
        flat = np.concatenate([np.asarray(s, np.uint64) for s in shingles])
        doc_of_row = np.repeat(np.arange(n), lens)
        buf = np.empty((self.num_perm, min(self.chunk_rows, flat.size)), dtype=self.dtype)
        for r0 in range(0, flat.size, self.chunk_rows):
            r1 = min(flat.size, r0 + self.chunk_rows)
            vals = self._permute(flat[r0:r1], buf[:, :r1 - r0])
            docs = doc_of_row[r0:r1]
            seg = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
            mins = np.minimum.reduceat(vals, seg, axis=1).T
            d = docs[seg]
            sig[d] = np.minimum(sig[d], mins)
        return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64 key of each band's rows."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {sig.shape[1]}")
    s = sig[:, :bands * rows].astype(np.uint64).reshape(sig.shape[0], bands, rows)
    key = np.zeros((sig.shape[0], bands), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            key = _mix64(key * np.uint64(0x9E3779B97F4A7C15) + s[:, :, j])
    return key


def _sorted_buckets(sig: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """All (band, band key) buckets at once: (document of each sorted entry, bucket id of each)."""
    n = sig.shape[0]
    keys = band_keys(sig, bands, rows)                         # (n, bands)
    salt = (np.arange(bands, dtype=np.uint64) + np.uint64(1)) * np.uint64(0xA0761D6478BD642F)
    flat = _mix64(keys ^ salt[None, :]).T.ravel()               # band-major; (band, key) -> one 64-bit key
    docs = np.tile(np.arange(n, dtype=np.int64), bands)
    order = np.argsort(flat, kind="stable")
    ks = flat[order]
    bucket = np.cumsum(np.r_[True, ks[1:] != ks[:-1]]) - 1
    return docs[order], bucket


def candidate_edges(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(E, 2) edges joining every document of a bucket to the bucket's first document (enough for
    clusters; vectorized)."""
    docs, bucket = _sorted_buckets(sig, bands, rows)
    if docs.size == 0:
        return np.zeros((0, 2), np.int64)
    first = np.r_[True, bucket[1:] != bucket[:-1]]
    head = docs[np.flatnonzero(first)][bucket]                  # first document of each entry's bucket
    e = np.stack([head[~first], docs[~first]], axis=1)
    e = e[e[:, 0] != e[:, 1]]
    return np.unique(np.sort(e, axis=1), axis=0)


def candidate_groups(sig: np.ndarray, bands: int, rows: int) -> list[np.ndarray]:
    """Buckets with >= 2 documents, as sorted arrays of document indices."""
    docs, bucket = _sorted_buckets(sig, bands, rows)
    brk = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1], True])
    sizes = np.diff(brk)
    return [np.sort(docs[brk[g]:brk[g + 1]]) for g in np.flatnonzero(sizes >= 2)]


def candidate_pairs(sig: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """All (i, j), i < j, sharing at least one band (what datasketch's MinHashLSH.query returns).
    Two-document buckets (nearly all of them) are paired vectorized; bigger ones expand all pairs."""
    n = sig.shape[0]
    docs, bucket = _sorted_buckets(sig, bands, rows)
    brk = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1], True])
    sizes = np.diff(brk)
    two = brk[:-1][sizes == 2]
    a, b = docs[two], docs[two + 1]
    codes = [np.minimum(a, b) * n + np.maximum(a, b)]
    for g in np.flatnonzero(sizes > 2):
        m = np.sort(docs[brk[g]:brk[g + 1]])
        ii, jj = np.triu_indices(m.size, 1)
        codes.append(m[ii] * n + m[jj])
    codes = np.unique(np.concatenate(codes))
    codes = codes[codes // n != codes % n]
    return set(zip((codes // n).tolist(), (codes % n).tolist()))


def cluster_roots(n: int, edges: np.ndarray) -> np.ndarray:
    """Smallest member index of each element's connected component (scipy connected_components)."""
    if edges.size == 0:
        return np.arange(n)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    g = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, label = connected_components(g, directed=False)
    root_of_label = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(root_of_label, label, np.arange(n))
    return root_of_label[label]


def union_find(n: int, groups: Iterable[np.ndarray]) -> np.ndarray:
    """Cluster root (smallest member index) of every element, from groups of joined elements."""
    edges = [np.stack([np.full(g.size - 1, g[0]), g[1:]], axis=1) for g in groups if len(g) > 1]
    return cluster_roots(n, np.concatenate(edges) if edges else np.zeros((0, 2), np.int64))


def s_curve(bands: int, rows: int, points: Sequence[float] = tuple(np.round(np.arange(0.1, 1.0001, 0.1), 2))) -> list[tuple[float, float]]:
    """[(Jaccard s, P(candidate) = 1 - (1 - s^r)^b)]."""
    return [(float(s), float(1 - (1 - s ** rows) ** bands)) for s in points]


def format_s_curve(bands: int, rows: int) -> str:
    thr = (1 / bands) ** (1 / rows)
    lines = [f"MinHash-LSH S-curve, {bands} bands x {rows} rows (threshold ~ (1/b)^(1/r) = {thr:.3f})",
             "| Jaccard | P(detected) |", "| --- | --- |"]
    for s, p in s_curve(bands, rows):
        lines.append(f"| {s:.1f} | {p:.4f} {'#' * int(round(p * 40))} |")
    return "\n".join(lines)


def plot_s_curve(bands: int, rows: int, path: str) -> str:
    """PNG of P(candidate) against Jaccard similarity for b x r (and the threshold (1/b)^(1/r))."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(s, 1 - (1 - s ** rows) ** bands, label=f"{bands} bands x {rows} rows")
    ax.axvline((1 / bands) ** (1 / rows), color="gray", ls="--", lw=1, label="threshold (1/b)^(1/r)")
    ax.set_xlabel("Jaccard similarity of shingle sets")
    ax.set_ylabel("P(pair becomes a candidate)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def dedup_texts(texts: Sequence[str], num_perm: int = 128, bands: int = 16, rows: int = 8, shingle: int = 5,
                seed: int = 1, exact: bool = True, fuzzy: bool = True, scheme: str = "affine32") -> tuple[np.ndarray, dict]:
    """In-memory deduplication: (keep mask, {"exact": clusters, "fuzzy": clusters}) where clusters
    are lists of document indices (first one kept)."""
    n = len(texts)
    keep = np.ones(n, bool)
    report: dict = {"exact": [], "fuzzy": []}
    if exact:
        hashes = np.array([exact_hash(t) for t in texts], dtype=np.uint64)
        roots = _clusters_from_keys(hashes)
        report["exact"] = _cluster_lists(roots)
        keep &= roots == np.arange(n)
    if fuzzy:
        idx = np.flatnonzero(keep)
        mh = MinHasher(num_perm, seed, scheme)
        sig = mh.signatures([shingle_hashes(texts[i], shingle) for i in idx])
        roots = cluster_roots(idx.size, candidate_edges(sig, bands, rows))
        report["fuzzy"] = [[int(idx[j]) for j in c] for c in _cluster_lists(roots)]
        keep[idx[roots != np.arange(idx.size)]] = False
    return keep, report


def _clusters_from_keys(keys: np.ndarray) -> np.ndarray:
    """Root (first index) of the equal-key group of every element."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    first = np.r_[True, ks[1:] != ks[:-1]]
    group_first = order[np.flatnonzero(first)][np.cumsum(first) - 1]
    roots = np.empty_like(order)
    roots[order] = group_first
    return roots


def _cluster_lists(roots: np.ndarray) -> list[list[int]]:
    members = {}
    for i, r in enumerate(roots.tolist()):
        members.setdefault(r, []).append(i)
    return [m for m in members.values() if len(m) > 1]


# ------------------------------------------------------------------------------------------- pipeline steps
class DedupSignatures(PipelineStep):
    """Pass 1 (per task): exact hash and MinHash signature of every document, saved to
    `WORK_DIR/sigs_RANK.npz` with the document ids; documents pass through."""

    name = "dedup_signatures"

    def __init__(self, work_dir: str, num_perm: int = 128, shingle: int = 5, seed: int = 1,
                 scheme: str = "affine32", batch_docs: int = 1024):
        super().__init__()
        self.work_dir, self.shingle, self.batch_docs = work_dir, shingle, batch_docs
        self.hasher = MinHasher(num_perm, seed, scheme)

    def path(self, rank: int) -> str:
        return os.path.join(self.work_dir, f"sigs_{rank:05d}.npz")

    def run(self, docs, rank=0, world_size=1):
        ids, exact, sigs, batch = [], [], [], []
        for doc in docs:
            self.stat("documents_in")
            ids.append(doc.id)
            exact.append(exact_hash(doc.text))
            batch.append(shingle_hashes(doc.text, self.shingle))
            if len(batch) == self.batch_docs:
                sigs.append(self.hasher.signatures(batch))
                batch = []
            yield doc
        sigs.append(self.hasher.signatures(batch))
        os.makedirs(self.work_dir, exist_ok=True)
        tmp = self.path(rank) + f".tmp{os.getpid()}.npz"
        np.savez(tmp, ids=np.array(ids, dtype=object), exact=np.array(exact, np.uint64),
                 sig=np.concatenate(sigs) if sigs else np.zeros((0, self.hasher.num_perm), self.hasher.dtype))
        os.replace(tmp, self.path(rank))


def find_duplicates(work_dir: str, tasks: int, bands: int, rows: int, exact: bool = True, fuzzy: bool = True,
                    max_report_clusters: int = 1000) -> dict:
    """Pass 2 (one process): exact and LSH clusters over all tasks' signatures; writes
    `WORK_DIR/remove_RANK.npz` (ordinals to drop, with reasons) and `WORK_DIR/clusters.json`."""
    ids, ex, sigs, rank_of, ord_of = [], [], [], [], []
    for r in range(tasks):
        with np.load(os.path.join(work_dir, f"sigs_{r:05d}.npz"), allow_pickle=True) as z:
            ids.extend(z["ids"].tolist())
            ex.append(z["exact"])
            sigs.append(z["sig"])
            rank_of.append(np.full(z["exact"].size, r, np.int64))
            ord_of.append(np.arange(z["exact"].size))
    n = len(ids)
    ex = np.concatenate(ex) if ex else np.zeros(0, np.uint64)
    sig = np.concatenate(sigs) if sigs else np.zeros((0, 1), np.uint32)
    rank_of = np.concatenate(rank_of) if rank_of else np.zeros(0, np.int64)
    ord_of = np.concatenate(ord_of) if ord_of else np.zeros(0, np.int64)
    reason = np.zeros(n, np.int8)  # 0 keep, 1 exact, 2 near
    report = {"documents": n, "bands": bands, "rows": rows, "exact_clusters": [], "fuzzy_clusters": []}
    if exact and n:
        roots = _clusters_from_keys(ex)
        reason[roots != np.arange(n)] = 1
        report["exact_clusters"] = [[ids[i] for i in c] for c in _cluster_lists(roots)]
    if fuzzy and n:
        alive = np.flatnonzero(reason == 0)
        roots = cluster_roots(alive.size, candidate_edges(sig[alive], bands, rows))
        reason[alive[roots != np.arange(alive.size)]] = 2
        report["fuzzy_clusters"] = [[ids[alive[i]] for i in c] for c in _cluster_lists(roots)]
    report["exact_duplicates"] = int((reason == 1).sum())
    report["near_duplicates"] = int((reason == 2).sum())
    report["num_exact_clusters"] = len(report["exact_clusters"])
    report["num_fuzzy_clusters"] = len(report["fuzzy_clusters"])
    sizes = [len(c) for c in report["fuzzy_clusters"]]
    report["largest_fuzzy_cluster"] = max(sizes, default=0)
    report["exact_clusters"] = report["exact_clusters"][:max_report_clusters]
    report["fuzzy_clusters"] = report["fuzzy_clusters"][:max_report_clusters]
    decision = hashlib.sha1()
    for r in range(tasks):
        m = (rank_of == r) & (reason > 0)
        decision.update(np.ascontiguousarray(ord_of[m]).tobytes() + b"|" + reason[m].tobytes() + b"/")
        tmp = os.path.join(work_dir, f"remove_{r:05d}.tmp{os.getpid()}.npz")
        np.savez(tmp, ordinals=ord_of[m], reasons=reason[m])
        os.replace(tmp, os.path.join(work_dir, f"remove_{r:05d}.npz"))
    with open(os.path.join(work_dir, "clusters.json.tmp"), "w") as f:
        json.dump(report, f, indent=1)
    os.replace(os.path.join(work_dir, "clusters.json.tmp"), os.path.join(work_dir, "clusters.json"))
    report["removal_digest"] = decision.hexdigest()  # not in clusters.json: it names the decision for pass 3
    return report


class DedupFilter(BaseFilter):
    """Pass 3 (per task): drops the documents pass 2 marked, by their ordinal in this task's input.
    `removal_digest` (find_duplicates' report) names what pass 2 decided: it is part of the pipeline's
    fingerprint, so a re-run with other --bands/--rows/--no-exact/--no-fuzzy filters again instead of
    finding the task completed and keeping the earlier output."""

    name = "dedup"

    def __init__(self, work_dir: str, removal_digest: str, **kw):
        super().__init__(**kw)
        self.work_dir = work_dir
        self.removal_digest = removal_digest
        self._remove: dict[int, int] = {}
        self._ordinal = 0

    def run(self, docs, rank=0, world_size=1):
        with np.load(os.path.join(self.work_dir, f"remove_{rank:05d}.npz")) as z:
            self._remove = dict(zip(z["ordinals"].tolist(), z["reasons"].tolist()))
        self._ordinal = 0
        yield from super().run(docs, rank, world_size)

    def filter(self, doc):
        r = self._remove.get(self._ordinal, 0)
        self._ordinal += 1
        if r == 0:
            return True
        return False, "exact_duplicate" if r == 1 else "near_duplicate"
