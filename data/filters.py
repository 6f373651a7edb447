"""Cleanup and quality filters.

`TextNormalizer` changes text (Unicode NFC, newlines, control characters, trailing spaces); the
filters only decide. Heuristics follow Gopher's rules (Rae et al. 2021, App. A.1.1) with configurable
thresholds; `ClassifierFilter` is GPT-3's (App. A): a logistic regression on hashed n-gram features,
trained to tell a reference ("high quality") corpus from raw crawl, keeping a document when
`np.random.pareto(alpha) > 1 - score`, alpha = 9.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Sequence

import numpy as np

from .ngrams import _char_tables
from .pipeline import BaseFilter, Document, PipelineStep

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_TRAILING = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


class TextNormalizer(PipelineStep):
    """Language-agnostic cleanup: Unicode normalisation (NFC by default), CRLF/CR -> LF, control and
    zero-width characters removed, trailing spaces and runs of blank lines collapsed."""

    name = "normalize"

    def __init__(self, form: str | None = "NFC", collapse_blank_lines: bool = True):
        super().__init__()
        if form not in (None, "NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"form={form!r} (allowed: NFC, NFKC, NFD, NFKD, None)")
        self.form = form
        self.collapse_blank_lines = collapse_blank_lines

    def clean(self, text: str) -> str:
        if self.form:
            text = unicodedata.normalize(self.form, text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        text = _TRAILING.sub("\n", text)
        if self.collapse_blank_lines:
            text = _MANY_NEWLINES.sub("\n\n", text)
        return text.strip()

    def run(self, docs, rank=0, world_size=1):
        for doc in docs:
            self.stat("documents_in")
            new = self.clean(doc.text)
            if new != doc.text:
                self.stat("changed")
            if not new:
                self.stat("dropped:empty_after_cleanup")
                continue
            doc.text = new
            yield doc


class LengthFilter(BaseFilter):
    """Gopher's word-count rule: keep documents of 50 to 100,000 words. `max_words=None` lifts the upper
    bound (whole books are longer)."""

    name = "length"

    def __init__(self, min_words: int = 50, max_words: int | None = 100_000, **kw):
        super().__init__(**kw)
        self.min_words, self.max_words = min_words, max_words

    def filter(self, doc):
        n = len(doc.text.split())
        if n < self.min_words:
            return False, "too_few_words"
        if self.max_words is not None and n > self.max_words:
            return False, "too_many_words"
        return True


class SymbolRatioFilter(BaseFilter):
    """Gopher: drop documents whose hash/ellipsis-to-word ratio exceeds `max_symbol_word_ratio`,
    whose share of words with an alphabetic character is below `min_alpha_words`, or whose share of
    characters that are neither letters, digits, whitespace nor common punctuation exceeds
    `max_special_char_ratio`."""

    name = "symbols"

    def __init__(self, max_symbol_word_ratio: float = 0.1, min_alpha_words: float = 0.8,
                 max_special_char_ratio: float = 0.3, **kw):
        super().__init__(**kw)
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.min_alpha_words = min_alpha_words
        self.max_special_char_ratio = max_special_char_ratio

    def filter(self, doc):
        words = doc.text.split()
        if not words:
            return False, "no_words"
        symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("\u2026")
        if symbols / len(words) > self.max_symbol_word_ratio:
            return False, "symbol_word_ratio"
        alpha = sum(1 for w in words if any(c.isalpha() for c in w))
        if alpha / len(words) < self.min_alpha_words:
            return False, "alpha_words"
        cps = np.frombuffer(doc.text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        punct, space = _char_tables()
        ascii_alnum = ((cps >= 48) & (cps <= 57)) | ((cps >= 65) & (cps <= 90)) | ((cps >= 97) & (cps <= 122))
        letters = ascii_alnum | (cps >= 0xC0)          # non-ASCII counts as letters: language-agnostic
        ordinary = letters | space[cps] | punct[cps]
        if 1.0 - ordinary.mean() > self.max_special_char_ratio:
            return False, "special_char_ratio"
        return True


class RepetitionFilter(BaseFilter):
    """Gopher's repetition rules: fraction of duplicate lines / of characters in duplicate lines, and
    fraction of characters covered by the most frequent word 2/3/4-gram."""

    name = "repetition"

    def __init__(self, max_dup_line_frac: float = 0.3, max_dup_line_char_frac: float = 0.2,
                 max_top_ngram_char_frac: Sequence[tuple[int, float]] = ((2, 0.2), (3, 0.18), (4, 0.16)), **kw):
        super().__init__(**kw)
        self.max_dup_line_frac = max_dup_line_frac
        self.max_dup_line_char_frac = max_dup_line_char_frac
        self.max_top_ngram_char_frac = tuple(max_top_ngram_char_frac)

    def filter(self, doc):
        lines = [l for l in doc.text.split("\n") if l.strip()]
        if lines:
            seen, dup, dup_chars = set(), 0, 0
            for l in lines:
                if l in seen:
                    dup += 1
                    dup_chars += len(l)
                seen.add(l)
            if dup / len(lines) > self.max_dup_line_frac:
                return False, "duplicate_lines"
            if dup_chars / max(1, sum(map(len, lines))) > self.max_dup_line_char_frac:
                return False, "duplicate_line_chars"
        words = doc.text.split()
        total = sum(map(len, words))
        for n, limit in self.max_top_ngram_char_frac:
            if len(words) < n + 1 or total == 0:
                continue
            counts: dict[tuple, int] = {}
            for k in range(len(words) - n + 1):
                g = tuple(words[k:k + n])
                counts[g] = counts.get(g, 0) + 1
            top, c = max(counts.items(), key=lambda kv: kv[1])
            if c > 1 and c * sum(map(len, top)) / total > limit:
                return False, f"top_{n}gram"
        return True


# ---------------------------------------------------------------------------------------------- GPT-3 classifier
def _features(texts: Iterable[str], n_features: int):
    """Hashed word 1- and 2-gram counts, l2-normalised (GPT-3 used Spark's HashingTF on tokens)."""
    from sklearn.feature_extraction.text import HashingVectorizer
    vec = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2",
                            lowercase=True)
    return vec.transform(list(texts))


CLASSIFIER_FORMAT = "mnemos-quality-classifier-v1"


class QualityClassifier:
    """Logistic regression on hashed n-gram features: P(document resembles the reference corpus).

    Saved as an .npz of its parameters (weights, intercept, settings), never a pickle: loading a pickle
    runs whatever code it names, and a classifier file is passed around by path like data."""

    def __init__(self, n_features: int = 2 ** 18, C: float = 1.0):
        self.n_features = n_features
        self.C = C
        self.coef: np.ndarray | None = None   # (n_features,) weights of the reference class
        self.intercept = 0.0

    def fit(self, reference_texts: Sequence[str], raw_texts: Sequence[str], seed: int = 0) -> "QualityClassifier":
        from sklearn.linear_model import LogisticRegression
        x = _features(list(reference_texts) + list(raw_texts), self.n_features)
        y = np.r_[np.ones(len(reference_texts)), np.zeros(len(raw_texts))]
        model = LogisticRegression(C=self.C, max_iter=1000, random_state=seed).fit(x, y)
        self.coef = np.asarray(model.coef_[0], np.float64)   # classes_ = [0, 1]: the weights of 1 (reference)
        self.intercept = float(model.intercept_[0])
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("QualityClassifier.score before fit()/load()")
        from scipy.special import expit
        return expit(_features(texts, self.n_features) @ self.coef + self.intercept)

    def save(self, path: str) -> str:
        import os
        if self.coef is None:
            raise RuntimeError("QualityClassifier.save before fit()")
        tmp = f"{path}.tmp{os.getpid()}.npz"
        np.savez_compressed(tmp, format=np.array(CLASSIFIER_FORMAT), n_features=np.array(self.n_features),
                            C=np.array(self.C), coef=self.coef, intercept=np.array(self.intercept))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> "QualityClassifier":
        """Reads only the .npz that `save` writes (no pickled objects); ValueError names what else it is."""
        with open(path, "rb") as f:
            head = f.read(4)
        if head != b"PK\x03\x04":  # not a zip, so not an .npz
            if head[:1] == b"\x80" or str(path).endswith((".pkl", ".pickle")):
                raise ValueError(f"{path} is a pickle (a quality_classifier.pkl of an older mnemos); pickles are not "
                                 f"loaded, since loading one runs arbitrary code (rule: the quality_classifier.npz "
                                 f"that `mnemos data filter --train-classifier-reference ... --train-classifier-raw "
                                 f"...` writes; train it again)")
            raise ValueError(f"{path} is not a quality classifier file (rule: the quality_classifier.npz that "
                             f"`mnemos data filter --train-classifier-reference/--train-classifier-raw` writes)")
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != CLASSIFIER_FORMAT:
                raise ValueError(f"{path} is an .npz but not a quality classifier (rule: format "
                                 f"{CLASSIFIER_FORMAT!r}, written by `mnemos data filter`)")
            q = cls(int(z["n_features"]), float(z["C"]))
            q.coef = np.asarray(z["coef"], np.float64)
            q.intercept = float(z["intercept"])
        if q.coef.shape != (q.n_features,):
            raise ValueError(f"{path}: {q.coef.size} weights for n_features={q.n_features} (rule: one per feature)")
        return q


def doc_seed(doc_id: str, seed: int) -> int:
    """Stable per-document seed (same decision on every run and every machine)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest(), "little")


class ClassifierFilter(BaseFilter):
    """GPT-3 App. A: keep a document iff `np.random.pareto(alpha) > 1 - score`, alpha = 9; mostly keeps
    high-score documents but also some low-score ones. The draw is seeded by (seed, document id)."""

    name = "gpt3_classifier"

    def __init__(self, classifier: QualityClassifier, alpha: float = 9.0, seed: int = 0, batch_size: int = 256, **kw):
        super().__init__(**kw)
        self.classifier = classifier
        self.alpha = alpha
        self.seed = seed
        self.batch_size = batch_size

    def keep(self, doc: Document, score: float) -> bool:
        draw = np.random.default_rng(doc_seed(doc.id, self.seed)).pareto(self.alpha)
        return bool(draw > 1.0 - score)

    def filter(self, doc):
        score = doc.metadata.get("quality_score")
        if score is None:
            score = round(float(self.classifier.score([doc.text])[0]), 6)
            doc.metadata["quality_score"] = score
        return self.keep(doc, score) or (False, "pareto_draw")

    def run(self, docs, rank=0, world_size=1):
        # batched scoring, then the base class's per-document bookkeeping
        def scored():
            batch: list[Document] = []
            for doc in docs:
                batch.append(doc)
                if len(batch) == self.batch_size:
                    yield from self._score(batch)
                    batch = []
            yield from self._score(batch)
        yield from super().run(scored(), rank, world_size)

    def _score(self, batch):
        if batch:
            for doc, s in zip(batch, self.classifier.score([d.text for d in batch])):
                doc.metadata["quality_score"] = round(float(s), 6)
        return batch
