import numpy as np

from data.filters import (ClassifierFilter, LengthFilter, QualityClassifier, RepetitionFilter, SymbolRatioFilter,
                          TextNormalizer)
from data.io import ListReader
from data.pipeline import Document


def test_normalizer_changes_text_filters_decide():
    n = TextNormalizer()
    assert n.clean("Cafe\u0301\r\nline two  \n\n\n\nend\x00") == "Caf\u00e9\nline two\n\nend"
    good = " ".join(["the cat sat on the mat and looked at the birds outside"] * 1)
    assert LengthFilter(min_words=5).filter(Document(good, "a")) is True
    assert LengthFilter(min_words=50).filter(Document(good, "a")) == (False, "too_few_words")
    book = " ".join(["word"] * 100_001)  # Gopher's upper bound is 100,000 words; books may lift it
    assert LengthFilter().filter(Document(book, "b")) == (False, "too_many_words")
    assert LengthFilter(max_words=None).filter(Document(book, "b")) is True
    assert SymbolRatioFilter().filter(Document("# # # # a b c", "s")) == (False, "symbol_word_ratio")
    assert SymbolRatioFilter().filter(Document("12 34 56 78 90 ab", "s")) == (False, "alpha_words")
    assert SymbolRatioFilter().filter(Document(good, "s")) is True
    rep = "\n".join(["buy now cheap pills"] * 10)
    assert RepetitionFilter().filter(Document(rep, "r"))[0] is False
    assert RepetitionFilter().filter(Document(good, "r")) is True


def test_gpt3_classifier_filter(shared_data):
    lines = [l for l in (shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines() if len(l.split()) > 30]
    rng = np.random.default_rng(0)
    vocab = np.array(" ".join(lines).split())
    junk = [" ".join(rng.choice(vocab, 60)) + " click here buy now free" for _ in range(300)]
    ref, test_good = lines[:300], lines[300:500]
    clf = QualityClassifier(n_features=2 ** 16).fit(ref, junk[:200])
    good_scores, bad_scores = clf.score(test_good), clf.score(junk[200:])
    assert good_scores.mean() > 0.7 > 0.3 > bad_scores.mean()
    docs = [Document(t, f"g{i}") for i, t in enumerate(test_good)] + [Document(t, f"b{i}") for i, t in enumerate(junk[200:])]
    f = ClassifierFilter(clf, alpha=9.0, seed=1)
    kept = [d.id for d in f.run(ListReader(docs).run())]
    kept_good = sum(k.startswith("g") for k in kept) / len(test_good)
    kept_bad = sum(k.startswith("b") for k in kept) / 100
    assert kept_good > 5 * kept_bad and f.stats["documents_in"] == len(docs) == f.stats["kept"] + f.stats["dropped"]
    # numpy's pareto is Lomax: P(keep | score s) = P(draw > 1 - s) = (2 - s)^-alpha
    p = (2 - np.r_[good_scores, bad_scores]) ** -9.0
    assert abs(len(kept) - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum()) + 1
    # the pareto draw is deterministic per document id: a second run keeps exactly the same documents
    again = [d.id for d in ClassifierFilter(clf, alpha=9.0, seed=1).run(ListReader(docs).run())]
    assert again == kept
    # P(keep) = P(pareto(9) > 1 - s) = (2 - s)^-9 (numpy's pareto is Lomax): check the rule itself
    draws = np.random.default_rng(0).pareto(9.0, 200_000)
    assert abs((draws > 1 - 0.5).mean() - 1.5 ** -9) < 0.005


class _RunsCode:
    """What an attacker's pickle holds: unpickling it calls open(path, "w")."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_classifier_is_stored_without_pickle_and_a_pickle_is_refused(shared_data, tmp_path, capsys):
    import json
    import pickle
    import zipfile

    from sklearn.linear_model import LogisticRegression

    from data.filters import _features
    from tests.data.test_cli_pipeline import mnemos_data
    lines = [l for l in (shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines() if len(l.split()) > 30]
    rng = np.random.default_rng(0)
    vocab = np.array(" ".join(lines).split())
    junk = [" ".join(rng.choice(vocab, 60)) + " click here buy now free" for _ in range(120)]
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[:120]))
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in junk))
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                                  for i, t in enumerate(lines[200:260] + junk[:60])))
    common = ["-i", tmp_path / "mixed.jsonl", "--no-heuristics", "--seed", 3]
    assert mnemos_data("filter", *common, "-o", tmp_path / "a", "--train-classifier-reference", tmp_path / "ref.jsonl",
                       "--train-classifier-raw", tmp_path / "raw.jsonl") == 0
    saved = tmp_path / "a" / "quality_classifier.npz"
    assert not (tmp_path / "a" / "quality_classifier.pkl").exists()
    assert zipfile.is_zipfile(saved) and all(n.endswith(".npy") for n in zipfile.ZipFile(saved).namelist())
    with np.load(saved, allow_pickle=False) as z:  # plain arrays only: loads without pickle
        assert z["coef"].shape == (2 ** 18,)

    # the loaded parameters score as sklearn's fitted model does
    clf = QualityClassifier.load(str(saved))
    x = _features(lines[:120] + junk, 2 ** 18)
    sk = LogisticRegression(C=1.0, max_iter=1000, random_state=3).fit(x, np.r_[np.ones(120), np.zeros(120)])
    texts = lines[300:340] + junk[60:80]
    assert np.allclose(clf.score(texts), sk.predict_proba(_features(texts, 2 ** 18))[:, 1], rtol=0, atol=1e-9)
    # and the filter run from the file keeps what the run that trained it kept
    assert mnemos_data("filter", *common, "-o", tmp_path / "b", "--classifier", saved) == 0
    kept = [json.load(open(tmp_path / d / "stats.json"))["kept"] for d in "ab"]
    assert kept[0] == kept[1] > 0

    # an old .pkl (or anything pickled) is refused with one line, and never unpickled
    marker = tmp_path / "code_ran"
    evil = tmp_path / "quality_classifier.pkl"
    evil.write_bytes(pickle.dumps({"n_features": 8, "C": 1.0, "model": _RunsCode(str(marker))}))
    capsys.readouterr()
    assert mnemos_data("filter", *common, "-o", tmp_path / "c", "--classifier", evil) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "c").exists()
    assert len(err.strip().splitlines()) == 1 and "--classifier=" in err and "pickle" in err and "Traceback" not in err
