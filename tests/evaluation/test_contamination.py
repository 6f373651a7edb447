"""Clean/dirty report (GPT-3 Section 4, Table C.1) against the data pipeline's n-gram index."""

from __future__ import annotations

import json

import pytest

from evaluation.adapters import DummyLM
from evaluation.api import run_eval
from evaluation.contamination import choose_n, dirty_flags
from evaluation.registry import get_task


def test_n_is_the_clamped_5th_percentile():
    assert choose_n(["one two three"] * 10) == 8                       # short examples: clamp to 8
    assert choose_n([" ".join(["w"] * 40)] * 10) == 13                  # long ones: clamp to 13
    assert choose_n([" ".join(["w"] * 9)] * 10 + [" ".join(["w"] * 12)] * 90) == 9  # p5 of 10 x 9 words, 90 x 12
    assert choose_n(["W, w! w. w w w w w w w w"] * 20) == 11  # App. C words: punctuation stripped
    assert choose_n(["a b"], fixed=2) == 2


def test_clean_dirty_report(tmp_path):
    from data.ngrams import NgramIndex
    task = get_task("word_scramble_rw", tmp_path)
    words = ["objects", "machine", "history", "quickly", "letters", "fantastic", "morning", "station"] * 3
    (tmp_path / "wordlist.txt").write_text("\n".join(sorted(set(words))))
    docs = task.eval_docs(limit=40)
    texts = [task.example_text(d) for d in docs]
    # the training corpus contains the reversed-word examples of "objects" and "machine"
    leaked = {"objects", "machine"}
    corpus = ["some unrelated training text about the sea and the sky"] + [
        f"noise {t} noise" for t, d in zip(texts, docs) if d["completion"].strip() in leaked]
    index = NgramIndex.build(corpus, [2, 8, 13])
    flags = dirty_flags(texts, index, 2)
    assert flags == [d["completion"].strip() in leaked for d in docs]

    oracle_for_clean = {d["context"]: d["completion"] for d in docs if d["completion"].strip() not in leaked}
    lm = DummyLM("oracle", answers=oracle_for_clean)  # right on clean examples only
    res = run_eval(lm, ["word_scramble_rw"], [0], tmp_path / "out", data_dir=tmp_path, limit=40,
                   contamination_index=index)
    rep = res["contamination"]["word_scramble_rw"]
    assert rep["ngram_n"] == 2
    row = rep["by_shots"]["0"]
    n_dirty = sum(flags)
    assert row["total_count"] == 40 and row["dirty_count"] == n_dirty and row["clean_count"] == 40 - n_dirty
    assert row["clean"] == 1.0 and row["dirty"] == 0.0
    assert row["all"] == pytest.approx((40 - n_dirty) / 40)
    assert row["relative_difference_clean_vs_all"] == pytest.approx((1.0 - row["all"]) / row["all"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Clean-subset analysis" in md and "relative difference" in md
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["contamination"]["word_scramble_rw"]["by_shots"]["0"]["dirty_count"] == n_dirty
    # the index saved by the data pipeline works by path too, and a missing n is an error naming it
    path = index.save(str(tmp_path / "index"))
    again = run_eval(lm, ["word_scramble_rw"], [0], None, data_dir=tmp_path, limit=40, contamination_index=path)
    assert again["contamination"] == res["contamination"]
    with pytest.raises(ValueError, match="n=2"):
        dirty_flags(texts, NgramIndex.build(corpus, [13]), 2)


def test_arithmetic_uses_gpt3_rule(shared_data):
    task = get_task("gpt3_arithmetic_2da", shared_data)
    texts = [task.example_text(d) for d in task.eval_docs(limit=200)]
    assert choose_n(texts, task.config.contamination_ngram) == 8
