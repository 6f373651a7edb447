"""GPT-3 App. C contamination filter."""
import json

import numpy as np
import pytest

from data.contamination import ContaminationIndex, DecontaminationFilter, cut_windows, eval_texts_from_files
from data.ngrams import normalize_words
from data.pipeline import Document

PASSAGE = ("Q: What is 98 plus 45? A: 143. In the benchmark passage the committee reviewed the annual "
           "budget report, the river flooded the old mill and nobody remembered the name of the ferryman Zebulon.")


def _run(filt, docs):
    return list(filt.run([Document(t, f"d{i}") for i, t in enumerate(docs)]))


def test_passage_in_the_middle_of_a_1mb_document_is_cut_with_its_windows(shared_data):
    book = (shared_data / "corpus" / "tinyshakespeare.txt").read_text()[:1_000_000]
    mid = book.index("\n", len(book) // 2) + 1
    doc = book[:mid] + PASSAGE + "\n" + book[mid:]
    assert len(doc) > 1_000_000
    index = ContaminationIndex.from_texts([("arith_like", PASSAGE)])
    filt = DecontaminationFilter(index)
    out = _run(filt, [doc])
    assert [d.id for d in out] == ["d0#p0", "d0#p1"]
    left, right = out[0].text, out[1].text
    p_start, p_end = mid, mid + len(PASSAGE)
    # the first colliding 13-gram starts at the passage's first word, the last ends at its last word
    assert left == doc[:p_start - 200]
    assert right == doc[p_end + 200:]
    assert len(left) + len(right) == len(doc) - (len(PASSAGE) + 400)
    assert filt.stats["cut"] == 1 and filt.stats["chars_removed"] == len(PASSAGE) + 400
    assert filt.stats["matched_in:arith_like"] == 1
    # nothing of the passage survives; everything else does
    for piece in (left, right):
        assert "Zebulon" not in piece and "98 plus 45" not in piece


def test_rules_short_pieces_too_many_pieces_frequent_ngrams():
    filler = [" ".join(f"w{k}x{j}" for j in range(120)) for k in range(20)]   # 120 unique words, ~800 chars
    p_words = normalize_words(PASSAGE)
    bench = " ".join(p_words[:13])
    index = ContaminationIndex.from_texts([bench])
    clean = filler[0]
    # passage near the start: the piece before it is < 200 chars and dropped, the piece after is kept
    intro = "intro " * 50                          # 300 chars: 100 survive the window, < 200
    near_start = intro + bench + " " + filler[1]
    # 11 occurrences separated by long filler: 12 pieces > 10 -> the whole document is dropped
    many = (" " + bench + " ").join(filler[:12])
    filt = DecontaminationFilter(index)
    out = _run(filt, [clean, near_start, many])
    assert [d.id for d in out] == ["d0", "d1#p0"]
    assert out[1].text == near_start[len(intro) + len(bench) + 200:]
    assert filt.stats["short_pieces_dropped"] == 1 and filt.stats["dropped:too_many_pieces"] == 1
    assert filt.stats["documents_in"] == 3 and filt.stats["clean"] == 1 and filt.stats["cut"] == 1
    # the same 13-gram in > 10 training documents is a common phrase: ignored (GPT-3 App. C)
    corpus = [f"doc {k} " + bench + " " + filler[k % 20] for k in range(11)] + [clean]
    counts = index.count_training(corpus)
    assert counts[13].max() == 11
    assert index.ignore_frequent(counts, max_docs=10) == 1
    assert [d.id for d in _run(DecontaminationFilter(index), [near_start])] == ["d0"]


def test_case_and_punctuation_do_not_hide_contamination():
    index = ContaminationIndex.from_texts([PASSAGE])
    disguised = ("x " * 400) + PASSAGE.upper().replace(",", " ,").replace("?", "") + (" y" * 400)
    out = _run(DecontaminationFilter(index), [disguised])
    assert all("FERRYMAN" not in d.text for d in out) and len(out) == 2


def test_cut_windows_merges_overlaps():
    s, e = cut_windows(1000, np.array([[300, 310], [400, 420], [900, 950]]), window=50)
    assert list(zip(s.tolist(), e.tolist())) == [(0, 250), (470, 850)]


def test_eval_texts_from_files_and_short_examples(shared_data, tmp_path):
    path = shared_data / "gpt3_arithmetic" / sorted(p.name for p in (shared_data / "gpt3_arithmetic").iterdir())[0]
    texts = list(eval_texts_from_files([str(path)]))
    assert len(texts) == 2000 and "Q: What is" in texts[0][1]
    # arithmetic items are ~8 words: no 13-gram, but `min_n` indexes them whole
    assert len(ContaminationIndex.from_texts(texts[:50])) == 0
    short = ContaminationIndex.from_texts(texts[:50], min_n=6)
    doc = ("filler words " * 100) + texts[0][1] + (" more filler" * 100)
    out = _run(DecontaminationFilter(short), [doc])
    assert len(out) == 2 and texts[0][1].strip() not in " ".join(d.text for d in out)


def test_a_released_benchmark_json_is_read_whole(shared_data, tmp_path):
    """SQuAD ships one JSON document (data -> paragraphs -> qas). Read as JSON lines, its single line gave only
    the top-level strings ("1.1"): the passages were never indexed and training text copied from them stayed."""
    paras = [p for p in (shared_data / "corpus" / "wikitext2_test.txt").read_text().splitlines()
             if len(p.split()) > 60][:3]
    release = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": p, "qas": [{"id": f"5733be28{k}", "question": "Which river flows through the old town of the "
                                "city in the north?", "answers": [{"text": "x", "answer_start": 0}]}]}
        for k, p in enumerate(paras)]}]}
    for name, indent in (("dev-v1.1.json", None), ("pretty.json", 2)):  # one line as released, and pretty-printed
        (tmp_path / name).write_text(json.dumps(release, indent=indent))
        texts = [t for _, t in eval_texts_from_files([str(tmp_path / name)])]
        assert all(p in texts for p in paras)
        assert "Which river flows through the old town of the city in the north?" in texts  # without its id
        index = ContaminationIndex.from_texts(texts)
        doc = " ".join(["lorem"] * 300) + " " + paras[1] + " " + " ".join(["ipsum"] * 300)
        out = _run(DecontaminationFilter(index), [doc])
        assert paras[1] not in " ".join(d.text for d in out)


def test_registry_missing_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "evaluation.registry", None)
    with pytest.raises(RuntimeError, match="--eval-file"):
        ContaminationIndex.from_registry(None)


def test_batched_pass_equals_per_document_pass():
    words = normalize_words(PASSAGE)
    bench = " ".join(words[:13])
    index = ContaminationIndex.from_texts([bench])
    filler = [" ".join(f"f{k}y{j}" for j in range(150)) for k in range(40)]
    docs = list(filler)
    docs[3] = filler[3] + " " + bench + " " + filler[4]
    docs[10] = filler[10] + " " + " ".join(words[:6])          # an n-gram split across two documents:
    docs[11] = " ".join(words[6:13]) + " " + filler[11]        # not a collision
    batched = _run(DecontaminationFilter(index), docs)
    single = _run(DecontaminationFilter(index, batch_chars=1), docs)
    assert [(d.id, d.text) for d in batched] == [(d.id, d.text) for d in single]
    assert [d.id for d in batched if "#" in d.id] == ["d3#p0", "d3#p1"]
    counts = index.count_training(docs)
    assert counts[13].tolist() == [1]


def test_eval_files_with_a_byte_order_mark_are_read_as_json(tmp_path):
    """Saved by a Windows tool, a .json starts with a byte-order mark; json.load refused it and the file's JSON
    syntax was indexed as text."""
    import json
    from data.contamination import eval_texts_from_files
    doc = {"data": [{"question": "Which river flows through the old mill town?", "id": "q1"}]}
    (tmp_path / "dev.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    (tmp_path / "dev.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(doc["data"][0]).encode() + b"\n")
    for name in ("dev.json", "dev.jsonl"):
        assert [t for _, t in eval_texts_from_files([str(tmp_path / name)])] == [doc["data"][0]["question"]], name


def test_from_texts_hashes_in_batches_exactly_what_each_text_gives_alone(shared_data, monkeypatch):
    """from_texts hashes many texts per vectorized pass; its index (hashes, and the first source of each)
    equals the definition applied text by text, across batch boundaries and with texts that hold no word."""
    import data.contamination as contamination
    from data.ngrams import ngram_hashes, tokenize_spans
    lines = (shared_data / "corpus" / "wikitext2_test.txt").read_text(encoding="utf-8").splitlines()[:400]
    texts = [(f"src{i % 3}", line) for i, line in enumerate(lines)] + [("src9", "?! ..."), ("src9", "")]
    texts += [("short", "One two three four five six seven eight nine."), ("short", "Ten words, no more: a b c d e f")]
    expect: dict[int, dict[int, str]] = {}
    for source, text in texts:  # the definition: first text in order wins the n-gram
        wh = tokenize_spans(text)[0]
        m = 13 if wh.size >= 13 else (wh.size if wh.size >= 8 else 0)
        for h in (ngram_hashes(wh, m).tolist() if m else []):
            expect.setdefault(m, {}).setdefault(h, source)
    monkeypatch.setattr(contamination, "_BATCH_CHARS", 2000)  # many batches
    index = ContaminationIndex.from_texts(texts, min_n=8)
    assert sorted(index.hashes) == sorted(expect) and {9, 10, 13} <= set(expect)
    for m, first in expect.items():
        assert index.hashes[m].tolist() == sorted(first)
        assert [index.source_names[s] for s in index.sources[m]] == [first[h] for h in sorted(first)]
