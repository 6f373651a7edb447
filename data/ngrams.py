"""Word n-grams as GPT-3 App. C defines them, hashed to uint64 with vectorized numpy.

Words: the text lowercased, punctuation (Unicode category P*) removed, split on whitespace; a
whitespace token made only of punctuation is no word. Every word hash is a polynomial hash of its
code points (mod 2^64) finished with the splitmix64 mixer, and an n-gram hash mixes n word hashes:
no Python `hash()`, so hashes are identical across processes, runs and machines.

`tokenize_spans(text)` gives, in one vectorized pass over the code points, each word's hash and its
character span in the original text: the contamination filter uses the spans to cut documents.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

_U64 = np.uint64
_WORD_BASE = _U64(0x100000001B3)          # odd: invertible mod 2^64
_NGRAM_BASE = _U64(0x9E3779B97F4A7C15)
_MASK = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer (vectorized, wraps mod 2^64)."""
    x = np.asarray(x, dtype=_U64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U64(30))
        x = x * _U64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> _U64(27))
        x = x * _U64(0x94D049BB133111EB)
        x = x ^ (x >> _U64(31))
    return x


@lru_cache(maxsize=1)
def _char_tables() -> tuple[np.ndarray, np.ndarray]:
    """Boolean tables over all code points: is punctuation (category P*), is whitespace."""
    n = sys.maxunicode + 1
    cats = np.zeros(n, dtype=bool)
    space = np.zeros(n, dtype=bool)
    # Only code points that are assigned can be punctuation; iterate in C-ish speed via str methods.
    for cp in range(n):
        c = chr(cp)
        if unicodedata.category(c)[0] == "P":
            cats[cp] = True
    for cp in range(0x3000 + 1):
        if chr(cp).isspace():
            space[cp] = True
    return cats, space


@lru_cache(maxsize=1)
def _char_class() -> np.ndarray:
    """uint8 per code point: 1 whitespace, 2 punctuation, 0 otherwise (one gather per character)."""
    punct, space = _char_tables()
    return (space.astype(np.uint8) | (punct.astype(np.uint8) << 1))


@lru_cache(maxsize=1)
def _punct_translation() -> dict:
    punct, _ = _char_tables()
    return {int(cp): None for cp in np.flatnonzero(punct)}


class _Powers:
    """Cached B^j and B^-j mod 2^64 (B odd, so invertible)."""

    def __init__(self, base: np.uint64):
        self.base = base
        self.n = 0
        self.pow = np.zeros(0, _U64)
        self.inv = np.zeros(0, _U64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n > self.n:
            m = max(n, 2 * self.n, 1 << 16)
            inv_b = pow(int(self.base), -1, 1 << 64)
            with np.errstate(over="ignore"):
                p = np.full(m, self.base, dtype=_U64)
                p[0] = 1
                self.pow = np.cumprod(p, dtype=_U64)
                q = np.full(m, _U64(inv_b), dtype=_U64)
                q[0] = 1
                self.inv = np.cumprod(q, dtype=_U64)
            self.n = m
        return self.pow, self.inv


_POWERS = _Powers(_WORD_BASE)
_NGRAM_POWERS = _Powers(_NGRAM_BASE)


def _lower_same_length(text: str) -> str:
    low = text.lower()
    if len(low) == len(text):
        return low
    # rare: a character whose lowercase is longer (e.g. U+0130); keep offsets aligned
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _hash_runs(cps: np.ndarray, run_start: np.ndarray, run_end: np.ndarray) -> np.ndarray:
    """Hash of each run cps[run_start[k]:run_end[k]] (non-empty runs): sum_j c_j B^(j - start), mixed."""
    if run_start.size == 0:
        return np.zeros(0, _U64)
    powb, invb = _POWERS.get(cps.size + 1)
    with np.errstate(over="ignore"):
        terms = (cps.astype(_U64) + _U64(1)) * powb[:cps.size]
        csum = np.concatenate([np.zeros(1, _U64), np.cumsum(terms, dtype=_U64)])
        h = (csum[run_end] - csum[run_start]) * invb[run_start]
        h = h + (run_end - run_start).astype(_U64) * _U64(0xD6E8FEB86659FD93)
    return _mix64(h)


def tokenize_spans(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word_hashes uint64, start int64, end int64): every normalised word's hash and the character
    span [start, end) of its whitespace token in `text` (punctuation included)."""
    if not text:
        z = np.zeros(0, np.int64)
        return np.zeros(0, _U64), z, z
    cps = np.frombuffer(_lower_same_length(text).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cls = _char_class()[cps]
    is_space = cls == 1
    nonspace = ~is_space
    tok_start = nonspace.copy()
    tok_start[1:] &= is_space[:-1]
    tok_id = np.cumsum(tok_start) - 1                       # token index of each char (valid where nonspace)
    starts = np.flatnonzero(tok_start)
    tok_end_mask = nonspace.copy()
    tok_end_mask[:-1] &= is_space[1:]
    ends = np.flatnonzero(tok_end_mask) + 1
    keep = cls == 0
    kept_idx = np.flatnonzero(keep)
    if kept_idx.size == 0:
        z = np.zeros(0, np.int64)
        return np.zeros(0, _U64), z, z
    kept_tok = tok_id[kept_idx]
    kept_cps = cps[kept_idx]
    new_word = np.ones(kept_tok.size, dtype=bool)
    new_word[1:] = kept_tok[1:] != kept_tok[:-1]
    run_start = np.flatnonzero(new_word)
    run_end = np.concatenate([run_start[1:], [kept_tok.size]])
    hashes = _hash_runs(kept_cps, run_start, run_end)
    words_tok = kept_tok[run_start]
    return hashes, starts[words_tok].astype(np.int64), ends[words_tok].astype(np.int64)


def tokenize_many(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The words of many texts in one vectorized pass: (word hashes of all texts in order, the text each
    word belongs to). The texts are joined by newlines, which no word spans, so each word's hash equals
    the one `tokenize_spans` gives for its own text."""
    if not texts:
        return np.zeros(0, _U64), np.zeros(0, np.int64)
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    starts = np.r_[0, np.cumsum(lens + 1)[:-1]]
    wh, word_start, _ = tokenize_spans("\n".join(texts))
    return wh, np.searchsorted(starts, word_start, side="right") - 1


def normalize_words(text: str) -> list[str]:
    """GPT-3 App. C words: lowercase, strip punctuation, split on whitespace (empty words dropped)."""
    stripped = _lower_same_length(text).translate(_punct_translation())
    # str.split() splits on exactly the characters str.isspace() accepts, the same set as `space`
    return stripped.split()


def word_hashes(words: Sequence[str]) -> np.ndarray:
    """Hash of each (already normalised) word; equal to the hashes `tokenize_spans` computes."""
    words = [w for w in words if w]
    if not words:
        return np.zeros(0, _U64)
    joined = "".join(words)
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lens = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    run_end = np.cumsum(lens)
    return _hash_runs(cps, run_end - lens, run_end)


def ngram_hashes(words, n: int) -> np.ndarray:
    """uint64 hash of every n consecutive words (len(words) - n + 1 of them; none if fewer words).
    `words`: list of normalised words, or their `word_hashes` array."""
    if n <= 0:
        raise ValueError(f"n={n} must be > 0")
    wh = np.asarray(words, dtype=_U64) if isinstance(words, np.ndarray) else word_hashes(words)
    m = wh.size - n + 1
    if m <= 0:
        return np.zeros(0, _U64)
    # window sums of w_j * C^j from one prefix sum, shifted back by C^-i: O(1) passes for any n
    powc, invc = _NGRAM_POWERS.get(wh.size + 1)
    with np.errstate(over="ignore"):
        csum = np.empty(wh.size + 1, _U64)
        csum[0] = 0
        np.cumsum(wh * powc[:wh.size], out=csum[1:])
        h = (csum[n:] - csum[:m]) * invc[:m]
        h += _U64(n) * _U64(0xC2B2AE3D27D4EB4F)
    return _mix64(h)


def text_ngram_hashes(text: str, n: int) -> np.ndarray:
    return ngram_hashes(tokenize_spans(text)[0], n)


class NgramIndex:
    """Sorted unique n-gram hashes of a corpus per n, with the number of documents containing each.

    Used (a) by the contamination filter to ignore benchmark 13-grams frequent in training data
    (GPT-3: > 10 training documents) and (b) by the evaluation harness's clean/dirty report, which
    asks whether an example shares any N-gram with the training corpus."""

    def __init__(self, tables: dict[int, tuple[np.ndarray, np.ndarray]], num_docs: int = 0):
        self.tables = {int(n): (np.asarray(h, _U64), np.asarray(c, np.int64)) for n, (h, c) in tables.items()}
        self.num_docs = int(num_docs)

    @property
    def ns(self) -> list[int]:
        return sorted(self.tables)

    @classmethod
    def build(cls, texts: Iterable[str], ns: Iterable[int], chunk_docs: int = 4096) -> "NgramIndex":
        builder = NgramIndexBuilder(ns, chunk_docs)
        for text in texts:
            builder.add(text)
        return builder.finish()

    def contains(self, n: int, hashes: np.ndarray) -> np.ndarray:
        return self.doc_count(n, hashes) > 0

    def doc_count(self, n: int, hashes: np.ndarray) -> np.ndarray:
        """Number of corpus documents containing each n-gram hash (0 when absent)."""
        if n not in self.tables:
            raise KeyError(f"n={n} not indexed (have {self.ns})")
        table, counts = self.tables[n]
        hashes = np.asarray(hashes, _U64)
        if table.size == 0:
            return np.zeros(hashes.size, np.int64)
        pos = np.searchsorted(table, hashes)
        pos = np.minimum(pos, table.size - 1)
        return np.where(table[pos] == hashes, counts[pos], 0)

    def doc_counts(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted hashes, documents containing each) for n."""
        return self.tables[n]

    def __len__(self) -> int:
        return sum(h.size for h, _ in self.tables.values())

    def save(self, path: str) -> str:
        path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        arrays = {"ns": np.array(self.ns, np.int64), "num_docs": np.array(self.num_docs, np.int64)}
        for n, (h, c) in self.tables.items():
            arrays[f"h{n}"] = h
            arrays[f"c{n}"] = c
        tmp = path + f".tmp{os.getpid()}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> "NgramIndex":
        with np.load(path) as z:
            ns = [int(n) for n in z["ns"]]
            return cls({n: (z[f"h{n}"], z[f"c{n}"]) for n in ns}, int(z["num_docs"]))

    def __repr__(self) -> str:
        return f"NgramIndex(ns={self.ns}, docs={self.num_docs}, ngrams={len(self)})"


class NgramIndexBuilder:
    """Streaming construction: `add(text)` per document, `finish()` -> NgramIndex."""

    def __init__(self, ns: Iterable[int], chunk_docs: int = 4096):
        self.ns = sorted({int(n) for n in ns})
        self.chunk_docs = chunk_docs
        self.parts: dict[int, list[np.ndarray]] = {n: [] for n in self.ns}
        self.merged = {n: (np.zeros(0, _U64), np.zeros(0, np.int64)) for n in self.ns}
        self.num_docs = 0

    def add(self, text: str) -> None:
        wh = tokenize_spans(text)[0]
        for n in self.ns:
            g = ngram_hashes(wh, n)
            if g.size:
                self.parts[n].append(np.unique(g))   # per document: count documents, not occurrences
        self.num_docs += 1
        if self.num_docs % self.chunk_docs == 0:
            self._flush()

    def _flush(self) -> None:
        for n in self.ns:
            if self.parts[n]:
                h, c = np.unique(np.concatenate(self.parts[n]), return_counts=True)
                self.merged[n] = _merge_counts(self.merged[n], (h, c.astype(np.int64)))
                self.parts[n] = []

    def finish(self) -> "NgramIndex":
        self._flush()
        return NgramIndex(self.merged, self.num_docs)


def _merge_counts(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if a[0].size == 0:
        return b
    h = np.concatenate([a[0], b[0]])
    c = np.concatenate([a[1], b[1]])
    order = np.argsort(h, kind="stable")
    h, c = h[order], c[order]
    first = np.ones(h.size, bool)
    first[1:] = h[1:] != h[:-1]
    starts = np.flatnonzero(first)
    return h[starts], np.add.reduceat(c, starts)
