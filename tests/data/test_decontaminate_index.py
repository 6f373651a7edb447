"""`mnemos data decontaminate --write-index`: the training n-gram index the harness's clean/dirty report
reads (GPT-3 Table C.1) describes the documents written to the output, which is what the model trains on."""
import json

import numpy as np

from data.io import DocumentReader
from data.ngrams import NgramIndex, normalize_words, text_ngram_hashes
from tests.data.test_cli_pipeline import mnemos_data


def _corpus(shared_data, tmp_path):
    paras = [line.strip() for line in (shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines()
             if len(line.split()) > 200][:30]
    passage = " ".join([line for line in (shared_data / "corpus" / "wikitext2_test.txt").read_text().splitlines()
                        if len(line.split()) > 60][0].split()[:40])
    docs = {f"wiki{i}": t for i, t in enumerate(paras)}
    docs["short"] = passage + " and a few more words"    # no 200-character piece survives: dropped whole
    mid = docs["wiki5"].index(" ", len(docs["wiki5"]) // 2)
    docs["wiki5"] = docs["wiki5"][:mid] + " " + passage + " " + docs["wiki5"][mid:]   # cut around the passage
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in docs.items()))
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"text": passage}) + "\n")
    return docs, passage, raw, bench


def test_the_written_index_holds_the_output_documents_not_the_input(shared_data, tmp_path):
    docs, passage, raw, bench = _corpus(shared_data, tmp_path)
    index_path = tmp_path / "train_ngrams.npz"
    assert mnemos_data("decontaminate", "-i", raw, "-o", tmp_path / "clean", "--tasks-from-registry", "none",
                       "--eval-file", bench, "--write-index", index_path, "--index-ns", "8,13", "--tasks", 2) == 0
    written = list(DocumentReader([str(tmp_path / "clean")]).run())
    ids = {d.id for d in written}
    assert "short" not in ids and "wiki5" not in ids and {"wiki5#p0", "wiki5#p1"} <= ids  # the filter did its job
    index = NgramIndex.load(str(index_path))
    assert index.num_docs == len(written) == len(docs) - 2 + 2

    # the benchmark passage, and the dropped document, are not in what the model trains on
    assert not index.contains(13, text_ngram_hashes(passage, 13)).any()
    assert not index.contains(8, text_ngram_hashes(docs["short"], 8)).any()
    # every written document (the pieces of the cut one included) is, whole
    for d in written:
        for n in (8, 13):
            assert index.contains(n, text_ngram_hashes(d.text, n)).all(), d.id
    # and it is the same index as one built from the output afterwards
    again = NgramIndex.build((d.text for d in written), [8, 13])
    for n in (8, 13):
        assert np.array_equal(index.tables[n][0], again.tables[n][0])
        assert np.array_equal(index.tables[n][1], again.tables[n][1])


def test_the_default_index_ns_cover_every_n_the_shipped_tasks_can_ask_for(shared_data, tmp_path, monkeypatch):
    from data.contamination import REPORT_NS, report_index_ns
    from evaluation.contamination import choose_n, dirty_flags
    from evaluation.registry import TASKS_ENV, load_configs

    monkeypatch.delenv(TASKS_ENV, raising=False)  # the shipped task files only
    ns = report_index_ns()
    # N is clamped to [8, 13] (shortest and longest examples), or fixed by the task file
    assert choose_n(["two words"]) == min(REPORT_NS) and choose_n([" ".join(["w"] * 500)]) == max(REPORT_NS)
    assert set(range(choose_n(["two words"]), choose_n([" ".join(["w"] * 500)]) + 1)) <= set(ns)
    fixed = {c.contamination_ngram for c in load_configs().values() if c.contamination_ngram}
    assert fixed == {2} and ns == [2, 8, 9, 10, 11, 12, 13]      # the word scrambles' 2-grams

    # the CLI's default index answers a word-scramble report (n=2) and the others
    docs = [line for line in (shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines()
            if len(line.split()) > 50][:20]
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    assert mnemos_data("decontaminate", "-i", tmp_path / "raw.jsonl", "-o", tmp_path / "clean",
                       "--tasks-from-registry", "none", "--write-index", tmp_path / "idx.npz") == 0
    index = NgramIndex.load(str(tmp_path / "idx.npz"))
    assert index.ns == ns
    w = normalize_words(docs[0])
    assert dirty_flags([f"\n{w[3]} {w[4]}", "\nzqxw vvkj ="], index, 2) == [True, False]
    assert dirty_flags([" ".join(w[:13])], index, 13) == [True]
