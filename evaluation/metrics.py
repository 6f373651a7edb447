"""Metrics: a per-example value, an aggregation over examples, and a standard error.

Means (accuracy, exact match, F1) use the sample standard error std/sqrt(n) (as lm-evaluation-harness
does); corpus-level metrics (perplexities, BLEU) use a seeded bootstrap over examples.
"""

from __future__ import annotations

import collections
import functools
import math
import re
import string
from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

import numpy as np


def mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def mean_stderr(xs: Sequence[float]) -> float:
    n = len(xs)
    return float(np.std(xs, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def perplexity(items: Sequence[float]) -> float:
    """exp(-mean log-likelihood) over examples (lm-evaluation-harness's LAMBADA perplexity)."""
    return math.exp(-mean(items)) if len(items) else float("nan")


def weighted_perplexity(items: Sequence[tuple[float, float]]) -> float:
    """exp(-sum log-likelihood / sum units): word or byte perplexity of a corpus."""
    ll = sum(a for a, _ in items)
    units = sum(b for _, b in items)
    return math.exp(-ll / units) if units else float("nan")


def bits_per_byte(items: Sequence[tuple[float, float]]) -> float:
    units = sum(b for _, b in items)
    return -sum(a for a, _ in items) / units / math.log(2) if units else float("nan")


def bootstrap_stderr(agg: Callable[[list], float], items: Sequence[Any], iters: int = 1000, seed: int = 1234) -> float:
    n = len(items)
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(iters):
        idx = rng.integers(0, n, n)
        vals.append(agg([items[i] for i in idx]))
    return float(np.std(vals, ddof=1))


def group_bootstrap_stderr(agg: Callable[[list], float], items: Sequence[tuple], iters: int = 1000,
                           seed: int = 1234) -> float:
    """Bootstrap over groups: items are (group id, ...) tuples and a resample draws whole groups, each
    drawn copy under a new id (MultiRC's per-question exact match resamples questions, not answers)."""
    groups: dict[Any, list[tuple]] = {}
    for it in items:
        groups.setdefault(it[0], []).append(it)

    def agg_groups(drawn: list[list[tuple]]) -> float:
        return agg([(j, *it[1:]) for j, group in enumerate(drawn) for it in group])

    return bootstrap_stderr(agg_groups, list(groups.values()), iters=iters, seed=seed)


# ---------------------------------------------------------------------- answer comparison
def normalize_answer(text: str, how: str = "squad") -> str:
    """'squad': lowercase, drop punctuation and articles, squeeze whitespace (SQuAD / TriviaQA)."""
    if how == "none":
        return text
    if how == "strip":
        return text.strip()
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str], how: str = "squad") -> float:
    p = normalize_answer(prediction, how)
    return float(any(p == normalize_answer(a, how) for a in answers))


def token_f1(prediction: str, answers: Sequence[str], how: str = "squad") -> float:
    """SQuAD token-overlap F1, best over the acceptable answers."""
    best = 0.0
    p = normalize_answer(prediction, how).split()
    for a in answers:
        g = normalize_answer(a, how).split()
        common = collections.Counter(p) & collections.Counter(g)
        same = sum(common.values())
        if not p or not g:
            best = max(best, float(p == g))
            continue
        if same == 0:
            continue
        prec, rec = same / len(p), same / len(g)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


def _ngrams(tokens: list[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


@functools.lru_cache(maxsize=1 << 17)
def _bleu_stats(hyp: str, refs: tuple[str, ...], max_n: int) -> tuple[int, ...]:
    """One segment's clipped n-gram matches, n-gram totals, its length and the closest reference length."""
    h = hyp.split()
    rs = [r.split() for r in refs]
    match, total = [], []
    for n in range(1, max_n + 1):
        hc = _ngrams(h, n)
        maxref: collections.Counter = collections.Counter()
        for r in rs:
            maxref |= _ngrams(r, n)
        match.append(sum(min(c, maxref[g]) for g, c in hc.items()))
        total.append(max(0, len(h) - n + 1))
    ref_len = min((abs(len(r) - len(h)), len(r)) for r in rs)[1] if rs else 0
    return (*match, *total, len(h), ref_len)


def corpus_bleu(items: Sequence[tuple[str, Sequence[str]]], max_n: int = 4) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002) in percent over (hypothesis, references) pairs, whitespace
    tokens, brevity penalty against the closest reference length; 0 when any n-gram order has no match.

    The score is a function of the summed per-segment counts, which are cached: a bootstrap resample
    only adds them up."""
    if not items:
        return 0.0
    stats = np.sum([_bleu_stats(hyp, tuple(refs), max_n) for hyp, refs in items], axis=0)
    match, total, hyp_len, ref_len = stats[:max_n], stats[max_n:2 * max_n], stats[-2], stats[-1]
    if hyp_len == 0 or min(match) == 0:
        return 0.0
    log_prec = sum(math.log(m / t) for m, t in zip(match, total)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_prec)


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    aggregate: Callable[[list], float]
    stderr: str                 # "mean", "bootstrap", or "group_bootstrap" (items are (group id, ...) tuples)
    higher_is_better: bool = True
    percent: bool = False       # a fraction that reports show as a percentage


METRICS: dict[str, Metric] = {
    "acc": Metric(mean, "mean", percent=True),
    "acc_norm_token": Metric(mean, "mean", percent=True),
    "acc_norm_char": Metric(mean, "mean", percent=True),
    "acc_uncond": Metric(mean, "mean", percent=True),
    "exact_match": Metric(mean, "mean", percent=True),
    "f1": Metric(mean, "mean", percent=True),
    "f1_macro": Metric(lambda items: macro_f1(items), "bootstrap", percent=True),
    "bleu": Metric(corpus_bleu, "bootstrap"),
    "perplexity": Metric(perplexity, "bootstrap", higher_is_better=False),
    "word_perplexity": Metric(weighted_perplexity, "bootstrap", higher_is_better=False),
    "byte_perplexity": Metric(weighted_perplexity, "bootstrap", higher_is_better=False),
    "bits_per_byte": Metric(bits_per_byte, "bootstrap", higher_is_better=False),
}


def register(name: str, metric: Metric) -> None:
    """Add a metric that task families (evaluation/formats/) compute; a name is registered once."""
    if name in METRICS and METRICS[name] != metric:
        raise ValueError(f"metric {name!r} is already registered")
    METRICS[name] = metric


def macro_f1(items: Sequence[tuple[int, int]]) -> float:
    """Unweighted mean of each class's F1 from (predicted, gold) pairs, over the classes that occur on
    either side (scikit-learn's average="macro"): SuperGLUE's F1 for CB."""
    classes = sorted({g for _, g in items} | {p for p, _ in items})
    f1s = []
    for c in classes:
        tp = sum(1 for p, g in items if p == c and g == c)
        fp = sum(1 for p, g in items if p == c and g != c)
        fn = sum(1 for p, g in items if p != c and g == c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s)) if f1s else float("nan")


def aggregate(name: str, items: list, bootstrap_iters: int = 1000) -> tuple[float, float]:
    """(value, standard error) of metric `name` over per-example items."""
    m = METRICS[name]
    if not items:
        return float("nan"), float("nan")
    value = m.aggregate(items)
    if m.stderr == "mean":
        return value, mean_stderr(items)
    if m.stderr == "group_bootstrap":
        return value, group_bootstrap_stderr(m.aggregate, items, iters=bootstrap_iters)
    return value, bootstrap_stderr(m.aggregate, items, iters=bootstrap_iters)


def tied_best(scores: Sequence[float]) -> list[int]:
    """Indices of the choices tied for the best score, ties within rounding: -n L / n is not always -L in
    floats (n = 47 is not), so exact equality split a uniform model's ties and moved it off chance."""
    best = max(scores)
    return [i for i, s in enumerate(scores) if math.isclose(s, best, rel_tol=1e-9, abs_tol=1e-12)]


def tie_aware_argmax_accuracy(scores: Sequence[float], gold: int | Collection[int]) -> float:
    """The share of the choices tied for the best score that are right (gold: one index or several).

    The expected accuracy of picking uniformly among ties: a model that scores every choice alike gets
    exactly chance, not the accuracy of 'always the first choice'.
    """
    winners = tied_best(scores)
    right = {gold} if isinstance(gold, int) else set(gold)
    return sum(1 for i in winners if i in right) / len(winners)
