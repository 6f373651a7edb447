"""Benchmark contamination filter, exactly as GPT-3 App. C, and safe on book-length documents.

For every training document: find the 13-grams (lowercased, punctuation-stripped whitespace words)
it shares with any benchmark text; remove each colliding 13-gram plus 200 characters on either side;
the remaining pieces become documents, pieces shorter than 200 characters are dropped, and a
document split into more than 10 pieces is dropped entirely. 13-grams occurring in more than 10
training documents are ignored (they are common phrases, not leaked examples): `count_training`
counts them in a first pass over the corpus.

Everything is vectorized per document (word spans, hashes, lookups, window merging are numpy), so a
1 MB book costs the same per byte as a tweet — GPT-3's own filter failed on long documents.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from .ngrams import ngram_hashes, tokenize_many, tokenize_spans
from .pipeline import Document, PipelineStep

log = logging.getLogger(__name__)

_U64 = np.uint64


def _is_id(key) -> bool:
    """Identifier fields (SQuAD's hex `id`, `idx`, `qid`, `question_id`) are not text: joined to a short
    question they would keep it from matching whole."""
    key = str(key).lower()
    return key in ("id", "idx", "qid", "guid", "uid") or key.endswith("_id")


def _record_texts(rec) -> Iterator[str]:
    """The benchmark texts of one JSON value: a record's string fields joined (`text`, or `context` +
    `completion`, when it has them), then those of the records nested in it (SQuAD's data -> paragraphs ->
    qas), so a whole released file is read, not just its top-level strings."""
    if isinstance(rec, str):
        yield rec
    elif isinstance(rec, list):
        for item in rec:
            yield from _record_texts(item)
    elif isinstance(rec, dict):
        if isinstance(rec.get("text"), str):
            yield rec["text"]
        elif "context" in rec and isinstance(rec.get("completion"), str):
            yield str(rec.get("context", "")) + rec["completion"]
        else:
            flat = " ".join(v for k, v in rec.items() if isinstance(v, str) and not _is_id(k))
            if flat.strip():
                yield flat
        for value in rec.values():
            if isinstance(value, (dict, list)):
                yield from _record_texts(value)


def eval_texts_from_files(paths: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(source, text) from extra benchmark files: jsonl records (`text`, or `context` + `completion`,
    or `question`/`passage`/... string fields joined, nested records too), a JSON string per line, a whole
    JSON document (.json, e.g. SQuAD's release files), or plain text lines."""
    for path in paths:
        name = os.path.basename(path)
        opener = open
        if path.endswith(".gz"):
            import gzip
            opener = gzip.open
        if path.endswith((".json", ".json.gz")):
            with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
                try:
                    document = json.load(f)
                except ValueError:
                    document = None  # JSON lines under a .json name: read below, line by line
            if document is not None:
                for text in _record_texts(document):
                    yield name, text
                continue
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if path.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        yield name, line
                        continue
                    for text in _record_texts(rec):
                        yield name, text
                else:
                    yield name, line


def registry_eval_texts(tasks: Sequence[str] | None = None, data_dir: str | None = None,
                        skipped: list | None = None) -> Iterator[tuple[str, str]]:
    """Every evaluation text of the harness's task registry (`evaluation.registry.iter_eval_texts`); with all
    tasks, the names of those without data under `data_dir` go to `skipped`."""
    try:
        from evaluation.registry import iter_eval_texts
    except ImportError as err:
        raise RuntimeError("the evaluation harness registry (evaluation.registry.iter_eval_texts) is not "
                           f"available ({err}); pass benchmark files with --eval-file instead") from err
    yield from iter_eval_texts(tasks, data_dir=data_dir, skipped_names=skipped)


# The N of the harness's clean/dirty report (evaluation.contamination.choose_n, GPT-3 Section 4): the
# 5th-percentile example length clamped to [8, 13]; shorter examples are matched whole at their own length
# (8..12). Tasks may fix N instead (`contamination_ngram`: 2 for the word scrambles).
REPORT_NS = range(8, 14)


def report_index_ns(include=None) -> list[int]:
    """Every n a training NgramIndex needs so `mnemos eval --contamination` can report any task of the
    registry (shipped YAMLs, $MNEMOS_EVAL_TASKS, `include`): REPORT_NS plus each task's fixed N. Reads the
    task files only (no torch)."""
    try:
        from evaluation.registry import load_configs
    except ImportError as err:
        raise RuntimeError(f"the evaluation task registry is not available ({err}); give --index-ns") from err
    fixed = {c.contamination_ngram for c in load_configs(include).values() if c.contamination_ngram}
    return sorted(set(REPORT_NS) | fixed)


_BATCH_CHARS = 1 << 23  # texts hashed per vectorized pass in from_texts (~8M characters)


def _text_ngrams(texts: Sequence[str], n: int, min_n: int | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(m, hashes, text of each hash) for a batch of texts, in text order: every n-gram inside one text,
    and the whole word sequence of a text with min_n <= m < n words as one m-gram."""
    wh, text_of_word = tokenize_many(texts)
    if wh.size >= n:
        g = ngram_hashes(wh, n)
        inside = np.flatnonzero(text_of_word[:g.size] == text_of_word[n - 1:])
        yield n, g[inside], text_of_word[inside]
    if min_n is None:
        return
    counts = np.bincount(text_of_word, minlength=len(texts))
    first_word = np.cumsum(counts) - counts
    for m in np.unique(counts[(counts >= min_n) & (counts < n)]).tolist():
        short = np.flatnonzero(counts == m)
        yield m, ngram_hashes(wh, m)[first_word[short]], short


class ContaminationIndex:
    """Sorted unique benchmark n-gram hashes (per n), which task each came from, and a bitmap
    prefilter so most training n-grams are rejected with one gather."""

    def __init__(self, hashes: dict[int, np.ndarray], sources: dict[int, np.ndarray], source_names: list[str]):
        self.missing_tasks: list[str] = []  # registry tasks without data (from_registry)
        self.hashes = {n: np.asarray(h, _U64) for n, h in hashes.items()}
        self.sources = sources
        self.source_names = source_names
        self.ignored = {n: np.zeros(h.size, bool) for n, h in self.hashes.items()}
        self._build_bitmap()

    @classmethod
    def from_texts(cls, texts: Iterable[str | tuple[str, str]], n: int = 13, min_n: int | None = None) -> "ContaminationIndex":
        """texts: strings or (source, text) pairs. A text shorter than n words contributes its whole
        word sequence as one m-gram when `min_n` <= m < n (off by default, as in GPT-3)."""
        per_n: dict[int, list[np.ndarray]] = {}
        src_per_n: dict[int, list[np.ndarray]] = {}
        names: dict[str, int] = {}
        pairs = (item if isinstance(item, tuple) else ("texts", item) for item in texts)
        numbered = ((names.setdefault(source, len(names)), text) for source, text in pairs)
        for batch in _batches(numbered, _BATCH_CHARS, key=lambda pair: pair[1], max_items=1 << 20):
            batch_sources = np.fromiter((sid for sid, _ in batch), np.int32, len(batch))
            for m, g, text in _text_ngrams([t for _, t in batch], n, min_n):
                per_n.setdefault(m, []).append(g)
                src_per_n.setdefault(m, []).append(batch_sources[text])
        hashes, sources = {}, {}
        for m in per_n:
            h = np.concatenate(per_n[m])
            s = np.concatenate(src_per_n[m])
            h, first = np.unique(h, return_index=True)
            hashes[m], sources[m] = h, s[first]
        if not hashes:
            hashes[n], sources[n] = np.zeros(0, _U64), np.zeros(0, np.int32)
        return cls(hashes, sources, list(names))

    @classmethod
    def from_registry(cls, tasks: Sequence[str] | None = None, extra_files: Sequence[str] = (),
                      n: int = 13, min_n: int | None = 8, data_dir: str | None = None) -> "ContaminationIndex":
        """Benchmark n-grams of the harness's tasks (all when `tasks` is None) plus extra files.
        `min_n` = 8 by default here: many registry examples (GPT-3's arithmetic: "Q: What is 98 plus
        45? A: 143") have fewer than 13 words and would otherwise never be found, so they are matched whole
        down to 8 words, GPT-3's smallest N for non-synthetic tasks (App. C: spurious collisions below it).
        Long examples still use 13-grams.
        `missing_tasks` of the result names the registry tasks that had no data under `data_dir`."""
        missing: list[str] = []

        def texts():
            if tasks is None or len(tasks):
                yield from registry_eval_texts(tasks, data_dir, missing)
            yield from eval_texts_from_files(extra_files)
        index = cls.from_texts(texts(), n=n, min_n=min_n)
        index.missing_tasks = missing
        return index

    @property
    def ns(self) -> list[int]:
        return sorted(self.hashes)

    def __len__(self) -> int:
        return sum(h.size for h in self.hashes.values())

    def _build_bitmap(self) -> None:
        total = max(1, len(self))
        bits = max(16, min(30, int(np.ceil(np.log2(total))) + 4))
        self._mask = _U64((1 << bits) - 1)
        self._bitmap = np.zeros(1 << bits, dtype=bool)
        for h in self.hashes.values():
            self._bitmap[h & self._mask] = True

    def match(self, n: int, grams: np.ndarray) -> np.ndarray:
        """Index into self.hashes[n] of each gram, or -1 (ignored n-grams count as absent)."""
        out = np.full(grams.size, -1, np.int64)
        table = self.hashes.get(n)
        if table is None or table.size == 0 or grams.size == 0:
            return out
        cand = np.flatnonzero(self._bitmap[grams & self._mask])
        if cand.size == 0:
            return out
        g = grams[cand]
        pos = np.minimum(np.searchsorted(table, g), table.size - 1)
        hit = (table[pos] == g) & ~self.ignored[n][pos]
        out[cand[hit]] = pos[hit]
        return out

    def doc_matches(self, word_hashes: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """[(n, word positions where a colliding n-gram starts, index positions)] for each n."""
        res = []
        for n in self.ns:
            m = self.match(n, ngram_hashes(word_hashes, n))
            hit = np.flatnonzero(m >= 0)
            if hit.size:
                res.append((n, hit, m[hit]))
        return res

    def batch_matches(self, texts: Sequence[str]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Many documents in one vectorized pass: [(n, document of each hit, index position)].
        The texts are joined by newlines (words never span two documents) and n-grams crossing a
        document boundary are discarded."""
        if not texts:
            return []
        wh, doc_of_word = tokenize_many(texts)
        res = []
        for n in self.ns:
            m = self.match(n, ngram_hashes(wh, n))
            hit = np.flatnonzero(m >= 0)
            if hit.size:
                hit = hit[doc_of_word[hit] == doc_of_word[hit + n - 1]]
                if hit.size:
                    res.append((n, doc_of_word[hit], m[hit]))
        return res

    def count_batch(self, texts: Sequence[str], counts: dict[int, np.ndarray]) -> None:
        """`count_document` for many documents at once."""
        for n, docs, idx in self.batch_matches(texts):
            pairs = np.unique(docs * np.int64(self.hashes[n].size + 1) + idx)   # (document, n-gram) once
            np.add.at(counts[n], pairs % (self.hashes[n].size + 1), 1)

    # ---------------------------------------------------------------- frequent n-grams (pass 1)
    def new_counts(self) -> dict[int, np.ndarray]:
        return {n: np.zeros(h.size, np.int64) for n, h in self.hashes.items()}

    def count_document(self, text: str, counts: dict[int, np.ndarray]) -> None:
        wh = tokenize_spans(text)[0]
        for n, _, idx in self.doc_matches(wh):
            counts[n][np.unique(idx)] += 1      # documents, not occurrences

    def count_training(self, texts: Iterable[str], batch_chars: int = 1 << 20) -> dict[int, np.ndarray]:
        counts = self.new_counts()
        for batch in _batches(texts, batch_chars, key=lambda t: t):
            self.count_batch(batch, counts)
        return counts

    def ignore_frequent(self, counts: dict[int, np.ndarray], max_docs: int = 10) -> int:
        """Ignore n-grams found in more than `max_docs` training documents; returns how many."""
        total = 0
        for n, c in counts.items():
            self.ignored[n] = c > max_docs
            total += int(self.ignored[n].sum())
        return total

    def save(self, path: str) -> str:
        arrays = {"ns": np.array(self.ns), "source_names": np.array(self.source_names, dtype=object)}
        for n in self.ns:
            arrays[f"h{n}"], arrays[f"s{n}"], arrays[f"i{n}"] = self.hashes[n], self.sources[n], self.ignored[n]
        tmp = f"{path}.tmp{os.getpid()}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> "ContaminationIndex":
        with np.load(path, allow_pickle=True) as z:
            ns = [int(n) for n in z["ns"]]
            idx = cls({n: z[f"h{n}"] for n in ns}, {n: z[f"s{n}"] for n in ns}, list(z["source_names"]))
            idx.ignored = {n: z[f"i{n}"].astype(bool) for n in ns}
        return idx


def cut_windows(length: int, spans: np.ndarray, window: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Pieces [start, end) of [0, length) left after removing every span widened by `window`
    characters on each side (merged where they overlap). spans: (k, 2) sorted by start."""
    if spans.size == 0:
        return np.array([0]), np.array([length])
    lo = np.maximum(spans[:, 0] - window, 0)
    hi = np.minimum(spans[:, 1] + window, length)
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], np.maximum.accumulate(hi[order])
    new = np.ones(lo.size, bool)
    new[1:] = lo[1:] > hi[:-1]
    g_lo = lo[new]
    g_hi = np.r_[hi[np.flatnonzero(new)[1:] - 1], hi[-1]]
    starts = np.r_[0, g_hi]
    ends = np.r_[g_lo, length]
    keep = ends > starts
    return starts[keep], ends[keep]


class DecontaminationFilter(PipelineStep):
    """GPT-3 App. C cutting step: clean documents pass unchanged; contaminated ones are replaced by
    their surviving pieces (ids `ID#pK`) or dropped (more than `max_pieces` pieces / nothing left)."""

    name = "decontaminate"

    def __init__(self, index: ContaminationIndex, window: int = 200, min_piece_chars: int = 200,
                 max_pieces: int = 10, max_rejects_in_memory: int = 100, batch_chars: int = 1 << 20):
        super().__init__()
        self.index = index
        self.batch_chars = batch_chars
        self.window = window
        self.min_piece_chars = min_piece_chars
        self.max_pieces = max_pieces
        self.max_rejects_in_memory = max_rejects_in_memory
        self.rejects: list[tuple[Document, str]] = []
        self.removed: list[dict] = []   # a sample of what was cut, for the report

    def process(self, doc: Document) -> list[Document] | None:
        """The documents that replace `doc` (itself when clean), or [] when dropped."""
        wh, starts, ends = tokenize_spans(doc.text)
        matches = self.index.doc_matches(wh)
        if not matches:
            return None
        spans = np.concatenate([np.stack([starts[pos], ends[pos + n - 1]], axis=1) for n, pos, _ in matches])
        for n, _, idx in matches:
            for sid in np.unique(self.index.sources[n][idx]):
                self.stat(f"matched_in:{self.index.source_names[sid]}")
            self.stat("colliding_ngrams", int(idx.size))
        p_start, p_end = cut_windows(len(doc.text), spans, self.window)
        removed_chars = len(doc.text) - int((p_end - p_start).sum())
        self.stat("chars_removed", removed_chars)
        if len(self.removed) < 20:
            a, b = int(spans[0, 0]), int(spans[0, 1])
            self.removed.append({"id": doc.id, "first_collision": doc.text[a:b][:300], "chars_removed": removed_chars})
        if p_start.size > self.max_pieces:
            self._reject(doc, "too_many_pieces")
            return []
        long_enough = (p_end - p_start) >= self.min_piece_chars
        self.stat("short_pieces_dropped", int((~long_enough).sum()))
        pieces = [Document(doc.text[a:b], f"{doc.id}#p{k}", {**doc.metadata, "decontaminated_from": doc.id})
                  for k, (a, b) in enumerate(zip(p_start[long_enough], p_end[long_enough]))]
        if not pieces:
            self._reject(doc, "no_piece_left")
        return pieces

    def _reject(self, doc: Document, reason: str) -> None:
        self.stat("dropped")
        self.stat(f"dropped:{reason}")
        if len(self.rejects) < self.max_rejects_in_memory:
            self.rejects.append((doc, reason))

    def run(self, docs, rank=0, world_size=1):
        for batch in _batches(docs, self.batch_chars, key=lambda d: d.text):
            dirty = set()
            if len(batch) > 1:   # one vectorized pass over the batch finds the few documents to cut
                for _, hit_docs, _ in self.index.batch_matches([d.text for d in batch]):
                    dirty.update(hit_docs.tolist())
            for k, doc in enumerate(batch):
                self.stat("documents_in")
                self.stat("chars_in", len(doc.text))
                out = self.process(doc) if (len(batch) == 1 or k in dirty) else None
                if out is None:
                    self.stat("clean")
                    yield doc
                    continue
                if out:
                    self.stat("cut")
                    self.stat("pieces_out", len(out))
                yield from out


def _batches(items, batch_chars: int, key, max_items: int = 4096):
    """Consecutive groups of about `batch_chars` characters (a document at least that long alone)."""
    batch, chars = [], 0
    for it in items:
        n = len(key(it))
        if batch and (chars + n > batch_chars or len(batch) >= max_items):
            yield batch
            batch, chars = [], 0
        batch.append(it)
        chars += n
    if batch:
        yield batch


class ContaminationCounter(PipelineStep):
    """Pass 1: count in how many training documents of this task each benchmark n-gram occurs;
    saves `OUT_DIR/counts_RANK.npz` when the task ends (passes documents through)."""

    name = "contamination_count"

    def __init__(self, index: ContaminationIndex, out_dir: str):
        super().__init__()
        self.index = index
        self.out_dir = out_dir

    def path(self, rank: int) -> str:
        return os.path.join(self.out_dir, f"counts_{rank:05d}.npz")

    def run(self, docs, rank=0, world_size=1):
        counts = self.index.new_counts()
        for batch in _batches(docs, 1 << 20, key=lambda d: d.text):
            self.stat("documents_in", len(batch))
            self.index.count_batch([d.text for d in batch], counts)
            yield from batch
        os.makedirs(self.out_dir, exist_ok=True)
        tmp = self.path(rank) + f".tmp{os.getpid()}.npz"
        np.savez(tmp, **{str(n): c for n, c in counts.items()})
        os.replace(tmp, self.path(rank))

    @staticmethod
    def merge(out_dir: str, tasks: int) -> dict[int, np.ndarray]:
        total: dict[int, np.ndarray] = {}
        for r in range(tasks):
            with np.load(os.path.join(out_dir, f"counts_{r:05d}.npz")) as z:
                for k in z.files:
                    total[int(k)] = total.get(int(k), 0) + z[k]
        return total


class NgramIndexStep(PipelineStep):
    """Builds this task's `NgramIndex` of the training documents (for the harness's clean/dirty
    report) into `OUT_DIR/ngram_index_RANK.npz`; `merge` joins the tasks' indices."""

    name = "ngram_index"

    def __init__(self, ns: Sequence[int], out_dir: str):
        super().__init__()
        self.ns = list(ns)
        self.out_dir = out_dir

    def path(self, rank: int) -> str:
        return os.path.join(self.out_dir, f"ngram_index_{rank:05d}.npz")

    def run(self, docs, rank=0, world_size=1):
        from .ngrams import NgramIndexBuilder
        builder = NgramIndexBuilder(self.ns)
        for doc in docs:
            self.stat("documents_in")
            builder.add(doc.text)
            yield doc
        os.makedirs(self.out_dir, exist_ok=True)
        builder.finish().save(self.path(rank))

    @staticmethod
    def merge(out_dir: str, tasks: int, path: str):
        from .ngrams import NgramIndex, _merge_counts
        tables: dict = {}
        num_docs = 0
        for r in range(tasks):
            part = NgramIndex.load(os.path.join(out_dir, f"ngram_index_{r:05d}.npz"))
            num_docs += part.num_docs
            for n in part.ns:
                tables[n] = _merge_counts(tables[n], part.tables[n]) if n in tables else part.tables[n]
        index = NgramIndex(tables, num_docs)
        index.save(path)
        return index

