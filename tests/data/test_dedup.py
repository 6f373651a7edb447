import numpy as np
import pytest

from data.dedup import (MinHasher, candidate_pairs, dedup_texts, exact_hash, format_s_curve, s_curve,
                        shingle_hashes)


def _corpus(shared_data, n=300):
    lines = [l for l in (shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines() if len(l.split()) > 150]
    return lines[:n]


def test_exact_hash_ignores_case_punctuation_whitespace():
    assert exact_hash("Hello, World!  foo") == exact_hash("hello world\nfoo")
    assert exact_hash("hello world") != exact_hash("hello word")


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_bit_identical_to_datasketch(shared_data, scheme):
    datasketch = pytest.importorskip("datasketch")
    docs = _corpus(shared_data, 60)
    sh = [shingle_hashes(t) for t in docs] + [np.zeros(0, np.uint64)]
    ours = MinHasher(64, seed=7, scheme=scheme, chunk_rows=500).signatures(sh)
    for i, s in enumerate(sh):
        m = datasketch.MinHash(num_perm=64, seed=7, scheme=scheme, hashfunc=int)
        m.update_batch(s.tolist())
        np.testing.assert_array_equal(ours[i], np.asarray(m.hashvalues, dtype=ours.dtype))
    lsh = datasketch.MinHashLSH(num_perm=64, params=(8, 8))
    ms = []
    for i, s in enumerate(sh[:-1]):
        m = datasketch.MinHash(num_perm=64, seed=7, scheme=scheme, hashfunc=int)
        m.update_batch(s.tolist())
        lsh.insert(i, m)
        ms.append(m)
    theirs = {(min(i, j), max(i, j)) for i, m in enumerate(ms) for j in lsh.query(m) if j != i}
    assert candidate_pairs(ours[:-1], 8, 8) == theirs


def test_s_curve():
    curve = dict(s_curve(16, 8))
    assert curve[1.0] == 1.0 and curve[0.1] < 1e-6
    assert all(a <= b for a, b in zip(list(curve.values()), list(curve.values())[1:]))
    assert abs(curve[0.7] - (1 - (1 - 0.7 ** 8) ** 16)) < 1e-12
    assert "16 bands x 8 rows" in format_s_curve(16, 8)


def test_planted_duplicates_found_everything_else_kept(shared_data):
    base = _corpus(shared_data, 200)
    rng = np.random.default_rng(0)
    docs = list(base)
    exact_of, near_of = {}, {}
    for i in range(10):      # exact copies with case/punctuation noise
        exact_of[len(docs)] = i
        docs.append(base[i].upper().replace(",", ""))
    for i in range(10, 25):  # near copies: 2 words changed
        w = base[i].split()
        for j in rng.choice(len(w), 2, replace=False):
            w[j] = "xyzzy"
        near_of[len(docs)] = i
        docs.append(" ".join(w))
    keep, report = dedup_texts(docs, num_perm=128, bands=16, rows=8)
    assert keep[:200].all()
    assert not keep[200:].any()
    assert sorted(tuple(c) for c in report["exact"]) == sorted((i, k) for k, i in exact_of.items())
    assert sorted(tuple(c) for c in report["fuzzy"]) == sorted((i, k) for k, i in near_of.items())
