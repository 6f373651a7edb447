"""`mnemos finetune` on small fixtures written here: classification beats the majority class, regression
beats predicting the mean, span extraction runs end to end with SQuAD metrics."""

import csv
import json

import numpy as np
import pytest

from launcher import finetune

FILLER = ("the a movie film story plot actor scene music ending it was and very quite this that with "
          "some of in on at for by from time people place day night city house car road").split()
POS = ["excellent", "wonderful", "delightful", "brilliant"]
NEG = ["terrible", "awful", "dreadful", "boring"]


def _sentence(rng, label):
    words = list(rng.choice(FILLER, size=int(rng.integers(4, 9))))
    for _ in range(2 if label != "neutral" else 0):
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(POS if label == "positive" else NEG)))
    return " ".join(words)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from data.bert_samples import BERT_SYMBOLS
    from data.tokenizer import train_tokenizer
    d = tmp_path_factory.mktemp("tok")
    rng = np.random.default_rng(0)
    text = d / "text.txt"
    text.write_text("\n".join(_sentence(rng, lab) for lab in ["neutral", "positive", "negative"] * 300)
                    + "\nWhat is the code ? The code is zeta .\n")
    return train_tokenizer([str(text)], str(d / "sp"), 320, user_defined_symbols=BERT_SYMBOLS,
                           hard_vocab_limit=False)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_classification_beats_majority_class(tmp_path, tokenizer):
    rng = np.random.default_rng(1)
    labels = rng.choice(["neutral", "positive", "negative"], p=[0.5, 0.3, 0.2], size=600)
    rows = [{"sentence": _sentence(rng, lab), "label": str(lab)} for lab in labels]
    train = _write_jsonl(tmp_path / "train.jsonl", rows[:400])
    valid = _write_jsonl(tmp_path / "valid.jsonl", rows[400:])
    out = tmp_path / "out"
    rc = finetune.main(["--task", "classification", "--train", train, "--valid", valid, "--text-field", "sentence",
                        "--label-field", "label", "--init", "random", "--tokenizer", tokenizer,
                        "--epochs", "8", "--lr", "1e-3", "--max-len", "32", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    acc, base = res["final"]["accuracy"], res["baseline"]["accuracy"]
    print(f"classification accuracy {acc:.3f} macro-F1 {res['final']['macro_f1']:.3f} vs majority {base:.3f}")
    assert res["baseline"]["majority_class"] == "neutral"
    assert acc > base + 0.2
    assert "labels: `negative`, `neutral`, `positive`" in (out / "results.md").read_text()


def test_binary_results_name_the_class_f1_is_of():
    md = finetune._markdown({"task": "classification", "train": "t", "valid": "v", "n_train": 2, "n_valid": 2,
                             "init": "random", "steps": 1, "labels": ["play", "wiki"],
                             "final": {"epoch": 1, "step": 1, "accuracy": 1.0, "macro_f1": 1.0, "f1": 1.0}})
    assert "(f1: of `wiki`, the second in sorted order)" in md


def test_regression_from_tsv(tmp_path, tokenizer):
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(500):
        lab = str(rng.choice(["neutral", "positive", "negative"]))
        rows.append({"a": _sentence(rng, lab), "b": _sentence(rng, "neutral"),
                     "score": {"neutral": 0.0, "positive": 1.0, "negative": -1.0}[lab]})
    for name, part in (("train.tsv", rows[:400]), ("valid.tsv", rows[400:])):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["a", "b", "score"], delimiter="\t")
            w.writeheader()
            w.writerows(part)
    out = tmp_path / "out"
    finetune.main(["--task", "regression", "--train", str(tmp_path / "train.tsv"), "--valid",
                   str(tmp_path / "valid.tsv"), "--text-field", "a", "--text-pair-field", "b", "--label-field",
                   "score", "--init", "random", "--tokenizer", tokenizer, "--epochs", "8", "--lr", "1e-3",
                   "--max-len", "48", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    print("regression", res["final"], res["baseline"])
    assert res["final"]["mse"] < 0.75 * res["baseline"]["mse"] and res["final"]["pearson"] > 0.5


def test_span_extraction_runs(tmp_path, tokenizer):
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(300):
        answer = str(rng.choice(POS + NEG))
        before, after = _sentence(rng, "neutral"), _sentence(rng, "neutral")
        context = f"{before} . the code is {answer} . {after} ."
        rows.append({"question": "what is the code ?", "context": context,
                     "answers": {"text": [answer], "answer_start": [context.index(f"is {answer}") + 3]}})
    train = _write_jsonl(tmp_path / "train.jsonl", rows[:240])
    valid = _write_jsonl(tmp_path / "valid.jsonl", rows[240:])
    out = tmp_path / "out"
    finetune.main(["--task", "span", "--train", train, "--valid", valid, "--init", "random", "--tokenizer",
                   tokenizer, "--epochs", "3", "--lr", "1e-3", "--max-len", "32", "--doc-stride", "8",
                   "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    print("span", res["final"])
    assert set(res["final"]) >= {"exact_match", "f1"}
    assert res["final"]["f1"] > 20  # finds the answer well above chance even with short windows


def test_squad_release_format_is_read_as_rows(tmp_path):
    """SQuAD v1.1 ships one nested json (data -> paragraphs -> qas); read whole by `datasets` it was one row
    with columns version and data, and span fine-tuning stopped on missing columns."""
    ctx = "The tower was finished in 1889 and stands in Paris ."
    release = {"version": "1.1", "data": [{"title": "Tower", "paragraphs": [{"context": ctx, "qas": [
        {"id": "a", "question": "When was it finished?", "answers": [{"text": "1889", "answer_start": ctx.index("1889")}]},
        {"id": "b", "question": "Where is it?", "answers": [{"text": "Paris", "answer_start": ctx.index("Paris")},
                                                        {"text": "in Paris", "answer_start": ctx.index("in Paris")}]},
    ]}]}]}
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(release))
    table = finetune.read_table(str(tmp_path / "dev-v1.1.json"))
    assert table.num_rows == 2 and {"question", "context", "answers", "id"} <= set(table.column_names)
    assert table[1]["answers"] == {"text": ["Paris", "in Paris"], "answer_start": [ctx.index("Paris"), ctx.index("in Paris")]}
    assert finetune._answer(table[0]["answers"], table[0]["context"]) == ("1889", ctx.index("1889"))
    (tmp_path / "rows.json").write_text(json.dumps([{"text": "x", "label": 1}, {"text": "y", "label": 0}]))
    assert finetune.read_table(str(tmp_path / "rows.json")).num_rows == 2  # other json is read as before


def test_tsv_quotes_are_text_and_empty_cells_are_refused(tmp_path):
    """GLUE's TSVs hold unbalanced quotes (MNLI, QQP): read with CSV quoting, a quote opened a field that ran
    over the following rows, silently merging 4 rows into 2. An empty label became a class named "None"."""
    from launcher.config import ConfigError
    (tmp_path / "q.tsv").write_text('sentence\tlabel\n"the movie is good\t1\nbad film\t0\nit\'s "great" fun\t1\n'
                                    'awful\t0\n')
    table = finetune.read_table(str(tmp_path / "q.tsv"))
    assert table["sentence"] == ['"the movie is good', "bad film", 'it\'s "great" fun', "awful"]
    assert table["label"] == [1, 0, 1, 0]
    (tmp_path / "gap.tsv").write_text("sentence\tlabel\ngood\t1\nfine\t\nawful\t0\n")
    gap = finetune.read_table(str(tmp_path / "gap.tsv"))
    with pytest.raises(ConfigError, match=r"gap.tsv: 1 row\(s\) with no 'label', the first is data row 2"):
        finetune._need(gap, ["sentence", "label"], str(tmp_path / "gap.tsv"))
    (tmp_path / "extra.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\tstray\n")
    with pytest.raises(ConfigError, match=r"extra.tsv: not a readable tsv table: .*Expected 2 fields in line 3, saw 3"):
        finetune.read_table(str(tmp_path / "extra.tsv"))


def test_span_features_and_squad_metrics():
    class Tok:  # one id per character-word: enough to check the offsets
        def encode(self, s):
            return [10 + (hash(w) % 50) for w in s.split()]
    from data.bert_samples import BertVocab
    v = BertVocab(vocab_size=64, cls_id=1, sep_id=2, mask_id=3, pad_id=0)
    ctx = "alpha beta gamma delta epsilon zeta eta theta"
    feats = finetune.span_features(Tok(), v, "q", ctx, ("delta epsilon", ctx.index("delta")), max_len=8, stride=2)
    assert len(feats) > 1 and all(len(f["ids"]) <= 8 for f in feats)
    hits = [f for f in feats if f["start"]]
    assert hits and all(f["tok_word"][f["start"] - f["offset"]] == 3 and f["tok_word"][f["end"] - f["offset"]] == 4
                        for f in hits)
    assert finetune.squad_em_f1("The Delta!", ["delta"]) == (1.0, 1.0)
    em, f1 = finetune.squad_em_f1("delta epsilon zeta", ["delta epsilon"])
    assert em == 0.0 and abs(f1 - 0.8) < 1e-9


def test_checkpoint_init_needs_loader_or_says_so(tmp_path, tokenizer):
    from launcher.config import ConfigError
    with pytest.raises((ConfigError, FileNotFoundError, ValueError)):
        finetune.main(["--task", "classification", "--train", "x.jsonl", "--valid", "y.jsonl",
                       str(tmp_path / "no-such-run")])


def test_finetune_from_a_bert_checkpoint(tmp_path, tokenizer):
    """--init checkpoint: the encoder comes from a mnemos checkpoint (launcher.inference.load_for_eval)."""
    import argparse

    import torch

    from launcher.config import RunConfig
    from model.bert import build_bert
    from parallel.reshard import FullState, write_universal
    cfg = RunConfig(run_dir=str(tmp_path / "run"),
                    model=dict(arch="bert", n_layer=2, d_model=64, n_head=4, n_ctx=64, vocab_size=512,
                               layer_norm_eps=1e-12),
                    data=dict(tokenizer=tokenizer, seq_len=64))
    pre = build_bert(cfg.model, seed=11)
    sd = {k: v for k, v in pre.state_dict().items() if k != "mlm.decoder.weight"}
    ckpt = write_universal(FullState(fp32=sd, client={"config": cfg.model_dump(mode="json"), "trainer": {"step": 0}}),
                           tmp_path / "run" / "checkpoints" / "step_00000000")
    p = argparse.ArgumentParser()
    finetune.add_arguments(p)
    args = p.parse_args([str(ckpt), "--task", "classification", "--train", "x", "--valid", "y"])
    loaded, tok, mcfg = finetune.load_backbone(args)
    assert mcfg.arch == "bert" and tok.vocab_size <= mcfg.vocab_size
    for k, v in pre.bert.state_dict().items():
        torch.testing.assert_close(loaded.bert.state_dict()[k], v)
    rng = np.random.default_rng(4)
    labels = rng.choice(["neutral", "positive", "negative"], size=120)
    rows = [{"text": _sentence(rng, lab), "label": str(lab)} for lab in labels]
    train = _write_jsonl(tmp_path / "train.jsonl", rows[:80])
    valid = _write_jsonl(tmp_path / "valid.jsonl", rows[80:])
    out = tmp_path / "out"
    assert finetune.main([str(ckpt), "--task", "classification", "--train", train, "--valid", valid,
                          "--epochs", "1", "--max-len", "32", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["init"] == "checkpoint" and 0 <= res["final"]["accuracy"] <= 1


def test_data_mistakes_are_one_line_errors(tmp_path, tokenizer, capsys):
    from launcher.cli import main
    train = _write_jsonl(tmp_path / "train.jsonl", [{"text": "a good day", "label": "pos"},
                                                    {"text": "a bad day", "label": "neg"}])
    valid = _write_jsonl(tmp_path / "valid.jsonl", [{"text": "a fine day", "label": "meh"}])
    common = ["finetune", "--task", "classification", "--init", "random", "--tokenizer", tokenizer,
              "--epochs", "1", "--out", str(tmp_path / "out")]
    cases = [
        (["--train", train, "--valid", train, "--text-field", "sentence"],
         "mnemos: finetune: " + train + ": no column(s) ['sentence'] (columns: ['text', 'label'])"),
        (["--train", train, "--valid", valid],
         f"mnemos: finetune: {valid}: labels ['meh'] never occur in {train}"),
        (["--train", str(tmp_path / "train.txt"), "--valid", valid], "does not exist"),
    ]
    (tmp_path / "empty.jsonl").write_text("\n")
    one_label = _write_jsonl(tmp_path / "one.jsonl", [{"text": "a good day", "label": "pos"}] * 2)
    scores = _write_jsonl(tmp_path / "scores.jsonl", [{"text": "a good day", "label": 0.5},
                                                      {"text": "a bad day", "label": 1.5}])
    same = _write_jsonl(tmp_path / "same.jsonl", [{"text": "a good day", "label": 2}] * 3)
    cases += [
        (["--train", str(tmp_path / "empty.jsonl"), "--valid", valid], "empty.jsonl: the file is empty"),
        (["--train", one_label, "--valid", one_label], "every row has label='pos' (rule: classification needs "
                                                       "at least two labels"),
        (["--task", "regression", "--train", train, "--valid", scores],
         f"{train}: label='pos' in data row 1 is not a number"),
        (["--task", "regression", "--train", scores, "--valid", same],
         f"{same}: 3 row(s) with 1 distinct score(s) (rule: Pearson and Spearman"),
    ]
    for extra, message in cases:
        assert main(common + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--model-preset", "gpt3-small"], "argument --model-preset: must be a BERT preset (bert-base, bert-large, "
                                       "bert-tiny), got 'gpt3-small' (a gpt preset)"),
    (["--tokenizer", "NOT_SP"], "mnemos: finetune: --tokenizer NOT_SP: not a sentencepiece model file"),
    (["--device", "cuda"], "mnemos: finetune: --device cuda, but "),
])
def test_unusable_setup_is_a_one_line_error(tmp_path, tokenizer, capsys, monkeypatch, extra, message):
    import torch
    from launcher.cli import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also on a GPU one
    not_sp = tmp_path / "some.txt"
    not_sp.write_text("not a sentencepiece model\n")
    extra = [str(not_sp) if a == "NOT_SP" else a for a in extra]
    message = message.replace("NOT_SP", str(not_sp))
    train = _write_jsonl(tmp_path / "train.jsonl", [{"text": "a good day", "label": "pos"},
                                                    {"text": "a bad day", "label": "neg"}])
    args = ["finetune", "--task", "classification", "--init", "random", "--tokenizer", tokenizer, "--epochs", "1",
            "--train", train, "--valid", train, "--out", str(tmp_path / "out"), *extra]
    try:
        code = main(args)
    except SystemExit as stop:  # argparse
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_max_len_above_n_ctx_is_capped_and_said(tmp_path, tokenizer, caplog):
    import logging
    train = _write_jsonl(tmp_path / "train.jsonl", [{"text": "a good day", "label": "pos"},
                                                    {"text": "a bad day", "label": "neg"}])
    with caplog.at_level(logging.WARNING, logger=finetune.log.name):
        assert finetune.main(["--task", "classification", "--train", train, "--valid", train, "--init", "random",
                              "--tokenizer", tokenizer, "--epochs", "1", "--max-len", "4096",
                              "--out", str(tmp_path / "out")]) == 0
    assert "--max-len 4096 exceeds the model's n_ctx 128; inputs of at most 128 tokens are used" in caplog.text
