"""Clean-subset report (GPT-3 Section 4 and Appendix C, Table C.1).

An example is dirty if it shares any N-gram with the training corpus, where N is the 5th-percentile
example length in words (words as in App. C: lowercased, punctuation stripped, whitespace split),
clamped to [8, 13]; the word-scramble tasks use N = 2 (`contamination_ngram` in the task YAML; GPT-3 Table C.1,
where RI has 7: see evaluation/tasks/word_scramble.yaml).
The report gives the task's metric on all, clean and dirty examples and the relative change of the
clean score against the full one.

The corpus side is the data pipeline's `data.ngrams.NgramIndex` (anything with `.ns` and
`.contains(n, hashes) -> bool array`); the hashing of example words is `data.ngrams.ngram_hashes`,
so both sides hash identically.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def _ngrams():
    import data.ngrams as m  # the data pipeline owns word normalisation and hashing
    return m


def load_index(path: str, what: str = "contamination_index"):
    """The n-gram index at `path`; TaskError naming `what` (the option) when it is missing or not an index."""
    import os
    from evaluation.task import TaskError
    rule = "rule: an n-gram index written by `mnemos data decontaminate ... --write-index FILE`"
    if os.path.isdir(path):
        raise TaskError(f"{what} {path} is a directory ({rule})")
    if not os.path.isfile(path):
        raise TaskError(f"{what} {path}: no such file ({rule})")
    try:
        return _ngrams().NgramIndex.load(path)
    except Exception:  # noqa: BLE001  numpy's own words ("pickled data", "not a zip file") would only mislead
        raise TaskError(f"{what} {path} is not an n-gram index ({rule})") from None


def _ns_text(ns: Sequence[int]) -> str:
    ns = sorted(ns)
    if len(ns) > 2 and ns == list(range(ns[0], ns[-1] + 1)):
        return f"[{ns[0]}..{ns[-1]}]"
    return "[" + ", ".join(map(str, ns)) + "]"


def check_index_covers(needs: dict[str, int], index: Any, what: str = "the contamination index") -> None:
    """TaskError when the index lacks an n a task needs (task name -> its N): before any scoring."""
    from evaluation.task import TaskError
    missing: dict[int, list[str]] = {}
    for name, n in needs.items():
        if n not in index.ns:
            missing.setdefault(n, []).append(name)
    if missing:
        parts = "; ".join(f"{', '.join(names)} need{'s' if len(names) == 1 else ''} n={n}"
                          for n, names in sorted(missing.items()))
        want = ",".join(map(str, sorted(set(index.ns) | set(missing))))
        raise TaskError(f"{what} holds n-grams for n in {_ns_text(index.ns)}, but {parts} (rule: the index holds "
                        f"every n the tasks need; build one that does with `mnemos data decontaminate ... "
                        f"--write-index FILE --index-ns {want}`)")


def choose_n(texts: Sequence[str], fixed: int | None = None) -> int:
    """GPT-3's N: 5th-percentile example length in words, clamped to [8, 13]; `fixed` wins."""
    if fixed is not None:
        return int(fixed)
    lens = [len(_ngrams().normalize_words(t)) for t in texts]
    if not lens:
        return 13
    return int(min(13, max(8, math.floor(np.percentile(lens, 5)))))


def dirty_flags(texts: Sequence[str], index: Any, n: int, min_n: int = 8) -> list[bool]:
    """True for each text that shares an n-gram with the indexed training corpus.

    A text shorter than n words (at most 5% of a task, by the choice of n) is matched whole when it has
    at least `min_n` words and the index holds that length -- the rule the data pipeline's filter
    applies (`mnemos data decontaminate --min-n`); shorter ones are never dirty, as in GPT-3.
    """
    if n not in index.ns:
        raise ValueError(f"the contamination index holds n-grams for n in {index.ns}, but this task needs "
                         f"n={n}; rebuild the index with n={n} included")
    m = _ngrams()
    out = []
    for t in texts:
        words = m.normalize_words(t)
        k = n
        if len(words) < n and len(words) >= min(min_n, n) and len(words) in index.ns:
            k = len(words)
        h = m.ngram_hashes(words, k)
        out.append(bool(h.size) and bool(np.asarray(index.contains(k, h)).any()))
    return out


def split_scores(items: list, flags: Sequence[bool], metric: str) -> dict:
    """The metric on all / clean / dirty examples (a row of GPT-3 Table C.1)."""
    from evaluation.metrics import aggregate
    clean = [x for x, d in zip(items, flags) if not d]
    dirty = [x for x, d in zip(items, flags) if d]
    v_all = aggregate(metric, items, bootstrap_iters=100)[0]
    v_clean = aggregate(metric, clean, bootstrap_iters=100)[0] if clean else float("nan")
    v_dirty = aggregate(metric, dirty, bootstrap_iters=100)[0] if dirty else float("nan")
    rel = (v_clean - v_all) / abs(v_all) if clean and v_all not in (0.0,) and not math.isnan(v_all) else float("nan")
    return {"metric": metric, "all": v_all, "total_count": len(items), "dirty": v_dirty, "dirty_count": len(dirty),
            "clean": v_clean, "clean_count": len(clean),
            "clean_percentage": 100.0 * len(clean) / len(items) if items else float("nan"),
            "relative_difference_clean_vs_all": rel}
