"""BERT sentence-pair sampling: masking statistics, NSP rate and truth, packing, determinism."""

import numpy as np
import pytest

from data.bert_samples import (IS_NEXT, NOT_NEXT, BertSentencePairDataset, BertVocab, PhasedBertDataset,
                               collate)

V = 4000
PAD, CLS, SEP, MASK, DOT, EOS = 0, 1, 2, 3, 4, 5


def _vocab():
    sentence_end = np.zeros(V, bool)
    sentence_end[DOT] = True
    word_start = np.zeros(V, bool)
    word_start[::3] = True  # every third id starts a word
    word_start[:10] = True
    return BertVocab(vocab_size=V, cls_id=CLS, sep_id=SEP, mask_id=MASK, pad_id=PAD, eos_id=EOS,
                     sentence_end=sentence_end, word_start=word_start,
                     replacement_ids=np.arange(10, V, dtype=np.int64))


def _docs(n_docs=40, seed=0):
    """Documents of unique tokens (so any token tells its document and position), '.' every 5-15 tokens.
    Two documents share one entry, separated by end-of-text, as a GPT-style shard would store them."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(10, V))
    docs, where, k = [], {}, 0
    for d in range(n_docs):
        n = int(rng.integers(30, 90))
        toks = []
        while len(toks) < n:
            s = int(rng.integers(5, 15))
            toks.extend(ids[k:k + s].tolist())
            k += s
            toks.append(DOT)
        docs.append(np.array(toks, np.int64))
    entries = []
    for d in range(0, n_docs, 2):
        entries.append(np.concatenate([docs[d], [EOS], docs[d + 1], [EOS]]).astype(np.uint16))
    for d, toks in enumerate(docs):
        for p, t in enumerate(toks):
            if t != DOT:
                where[int(t)] = (d, p)
    return entries, docs, where


def _original(s):
    orig = s["input_ids"].copy()
    orig[s["masked_positions"]] = s["masked_labels"]
    return orig


def _segments(s):
    orig = _original(s)
    seps = np.flatnonzero(orig == SEP)
    return orig[1:seps[0]], orig[seps[0] + 1:seps[1]]


def _locate(seg, docs, where):
    """(document, start) of a segment, asserting it is a contiguous span of that document."""
    k = next(j for j, t in enumerate(seg) if t != DOT)
    d, p = where[int(seg[k])]
    np.testing.assert_array_equal(seg, docs[d][p - k:p - k + seg.size])
    return d, p - k


def test_masking_statistics():
    entries, _, _ = _docs()
    ds = BertSentencePairDataset(entries, _vocab(), seq_len=64, seed=3, num_samples=3000)
    n_cand = n_pred = n_mask = n_same = n_rand = 0
    for i in range(len(ds)):
        s = ds[i]
        x, pos, lab = s["input_ids"], s["masked_positions"], s["masked_labels"]
        assert x.size <= 64 and x[0] == CLS and (x == SEP).sum() == 2
        assert not np.isin(lab, [CLS, SEP]).any() and np.all(np.diff(pos) > 0)
        n_cand += x.size - 3
        n_pred += pos.size
        n_mask += (x[pos] == MASK).sum()
        n_same += (x[pos] == lab).sum()
        n_rand += ((x[pos] != MASK) & (x[pos] != lab)).sum()
        # positions outside the prediction set are untouched
        untouched = np.setdiff1d(np.arange(x.size), pos)
        assert not (x[untouched] == MASK).any()
    assert abs(n_pred / n_cand - 0.15) < 0.01, n_pred / n_cand
    assert abs(n_mask / n_pred - 0.8) < 0.02
    assert abs(n_same / n_pred - 0.1) < 0.015
    assert abs(n_rand / n_pred - 0.1) < 0.015


def test_next_sentence_rate_and_truth():
    entries, docs, where = _docs()
    ds = BertSentencePairDataset(entries, _vocab(), seq_len=48, seed=5, num_samples=2000)
    labels = []
    for i in range(len(ds)):
        s = ds[i]
        a, b = _segments(s)
        assert np.all(s["token_type_ids"][: a.size + 2] == 0) and np.all(s["token_type_ids"][a.size + 2:] == 1)
        a_doc = {where[int(t)][0] for t in a if t != DOT}
        b_doc = {where[int(t)][0] for t in b if t != DOT}
        assert len(a_doc) <= 1 and len(b_doc) <= 1  # a segment never crosses a document
        labels.append(s["next_sentence_label"])
        if s["next_sentence_label"] == IS_NEXT and a_doc and b_doc:
            # A and B are contiguous spans of one document, B after A (truncation may trim between them)
            (da, sa), (db, sb) = _locate(a, docs, where), _locate(b, docs, where)
            assert da == db and sb >= sa + a.size
        elif a_doc and b_doc:
            assert a_doc != b_doc
    rate = np.mean(np.array(labels) == NOT_NEXT)
    assert abs(rate - 0.5) < 0.04, rate


def test_packing_fills_sequences():
    entries, _, _ = _docs(n_docs=60)
    ds = BertSentencePairDataset(entries, _vocab(), seq_len=40, seed=1, short_seq_prob=0.0)
    lengths = np.array([ds[i]["input_ids"].size for i in range(len(ds))])
    assert lengths.max() <= 40
    assert np.mean(lengths >= 40 - 15) > 0.8  # a sentence is at most 15 tokens: chunks fill up
    short = BertSentencePairDataset(entries, _vocab(), seq_len=40, seed=1, short_seq_prob=0.5)
    assert np.mean([short[i]["input_ids"].size for i in range(len(short))]) < lengths.mean()


def test_deterministic_and_dynamic_masking():
    entries, _, _ = _docs()
    ds = BertSentencePairDataset(entries, _vocab(), seq_len=64, seed=7, num_samples=500)
    again = BertSentencePairDataset(entries, _vocab(), seq_len=64, seed=7, num_samples=500)
    for i in (0, 17, 499):
        for k in ds[i]:
            np.testing.assert_array_equal(ds[i][k], again[i][k])
    # the same chunk seen in the next pass gets a new mask / pairing
    c = ds.n_chunks
    assert any(not np.array_equal(ds[i]["masked_positions"], ds[i + c]["masked_positions"]) for i in range(10))
    other = BertSentencePairDataset(entries, _vocab(), seq_len=64, seed=8, num_samples=500)
    assert any(not np.array_equal(ds[i]["input_ids"], other[i]["input_ids"]) for i in range(10))
    again.load_state_dict(ds.state_dict())
    with pytest.raises(ValueError, match="differs"):
        other.load_state_dict(ds.state_dict())
    with pytest.raises(IndexError):
        ds[500]


def test_whole_word_masking_takes_whole_words():
    entries, _, _ = _docs()
    v = _vocab()
    ds = BertSentencePairDataset(entries, v, seq_len=64, seed=2, whole_word_masking=True, num_samples=400)
    n_pred = n_cand = 0
    for i in range(len(ds)):
        s = ds[i]
        orig = _original(s)
        chosen = np.zeros(orig.size, bool)
        chosen[s["masked_positions"]] = True
        for p in range(2, orig.size):  # a chosen continuation piece has its word's previous piece chosen
            inside = orig[p - 1] not in (CLS, SEP) and orig[p] not in (CLS, SEP) and not v.word_start[orig[p]]
            if inside:
                assert chosen[p] == chosen[p - 1], (i, p)
        n_pred += chosen.sum()
        n_cand += orig.size - 3
    assert 0.12 < n_pred / n_cand <= 0.16


def test_phases_and_collate():
    entries, _, _ = _docs()
    short = BertSentencePairDataset(entries, _vocab(), seq_len=32, seed=1, num_samples=300)
    long = BertSentencePairDataset(entries, _vocab(), seq_len=64, seed=1, num_samples=300)
    ds = PhasedBertDataset([short, long])
    assert len(ds) == 300 and ds.seq_len == 32 and ds[0]["input_ids"].size <= 32
    ds.set_phase(1)
    assert ds.seq_len == 64 and max(ds[i]["input_ids"].size for i in range(20)) > 32
    state = ds.state_dict()
    fresh = PhasedBertDataset([short, long])
    fresh.load_state_dict(state)
    assert fresh.phase == 1
    b = collate([ds[i] for i in range(4)], pad_id=PAD, max_predictions=long.max_predictions)
    assert b["input_ids"].shape == b["attention_mask"].shape == b["token_type_ids"].shape
    assert b["masked_positions"].shape == (4, long.max_predictions) == b["masked_labels"].shape
    assert set(np.unique(b["next_sentence_label"])) <= {0, 1}
    assert np.all((b["masked_labels"] == -100) == (np.arange(long.max_predictions)[None] >=
                                                    np.array([ds[i]["masked_positions"].size for i in range(4)])[:, None]))
    assert np.all(b["input_ids"][b["attention_mask"] == 0] == PAD)


def test_unpunctuated_text_still_pairs():
    v = _vocab()
    entries = [np.arange(10, 400, dtype=np.int64), np.arange(400, 800, dtype=np.int64)]  # no '.' at all
    ds = BertSentencePairDataset(entries, v, seq_len=64, seed=0, num_samples=200)
    labels = [ds[i]["next_sentence_label"] for i in range(200)]
    assert 0.35 < np.mean(labels) < 0.65
    assert all(ds[i]["input_ids"].size <= 64 for i in range(200))
