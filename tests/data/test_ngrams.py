import subprocess
import sys

import numpy as np

from data.ngrams import NgramIndex, ngram_hashes, normalize_words, text_ngram_hashes, tokenize_spans, word_hashes


def test_normalize_words_gpt3_app_c():
    assert normalize_words("The QUICK, brown fox -- jumped!  Don't\n(stop)") == \
        ["the", "quick", "brown", "fox", "jumped", "dont", "stop"]
    text = "Hello, World!  It's   a   ‘test’."
    h, start, end = tokenize_spans(text)
    assert [text[a:b] for a, b in zip(start, end)] == ["Hello,", "World!", "It's", "a", "‘test’."]
    np.testing.assert_array_equal(h, word_hashes(normalize_words(text)))


def test_ngram_hashes_stable_across_processes():
    words = "one two three four five six".split()
    g = ngram_hashes(words, 3)
    assert g.dtype == np.uint64 and g.size == 4 and len(set(g.tolist())) == 4
    assert ngram_hashes(words, 7).size == 0
    code = ("import sys; sys.path.insert(0, '.'); from data.ngrams import ngram_hashes; "
            "print(ngram_hashes('one two three four five six'.split(), 3).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert eval(out) == g.tolist()
    # punctuation and case do not change n-grams
    np.testing.assert_array_equal(text_ngram_hashes("One, two; THREE four!", 2),
                                  ngram_hashes(["one", "two", "three", "four"], 2))


def test_ngram_index_counts_documents(tmp_path):
    docs = ["a b c d e", "a b c x y a b c", "q r s", "b c d"]
    idx = NgramIndex.build(docs, ns=[3, 2])
    assert idx.ns == [2, 3] and idx.num_docs == 4
    q = ngram_hashes(["a", "b", "c"], 3)
    assert idx.doc_count(3, q).tolist() == [2]                 # documents, not occurrences
    assert idx.contains(3, ngram_hashes(["b", "c", "d"], 3)).tolist() == [True]
    assert idx.contains(3, ngram_hashes(["z", "z", "z"], 3)).tolist() == [False]
    path = idx.save(str(tmp_path / "idx.npz"))
    back = NgramIndex.load(path)
    assert back.ns == idx.ns and back.doc_count(2, ngram_hashes(["b", "c"], 2)).tolist() == [3]
    # incremental merging (small chunks) gives the same tables
    chunked = NgramIndex.build(docs, ns=[3, 2], chunk_docs=1)
    for n in (2, 3):
        for x, y in zip(chunked.doc_counts(n), idx.doc_counts(n)):
            np.testing.assert_array_equal(x, y)
