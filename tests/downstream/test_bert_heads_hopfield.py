"""BERT heads through the Hopfield lens: k at 90% mass, operating classes I-IV, CLI outputs."""

import json

import numpy as np
import torch

from evaluation.downstream import bert_heads as bh


def test_k_for_mass_and_classes():
    N = 64
    uniform = torch.full((N, N), 1.0 / N)
    assert (bh.k_for_mass(uniform) == int(np.ceil(0.9 * N))).all()  # 58 > N/2: class I
    one_hot = torch.eye(N)
    assert (bh.k_for_mass(one_hot) == 1).all()  # class IV
    assert list(bh.operating_class([58, 32, 33, 8, 9, 2, 3], N)) == [0, 1, 0, 2, 1, 3, 2]
    # a head spreading its mass evenly over 6 keys: k = 6 (ceil 0.9*6=5.4 -> 6) -> N/32=2 < 6 <= N/8=8: class III
    six = torch.zeros(N, N)
    six[:, :6] = 1 / 6
    assert (bh.k_for_mass(six) == 6).all()


def test_analyze_builds_per_layer_distribution():
    N = 64
    heads = [torch.full((N, N), 1.0 / N), torch.eye(N)]
    attn = torch.stack([torch.stack(heads), torch.stack(heads[::-1])])  # (2 layers, 2 heads, N, N)
    res = bh.analyze_attention(attn)
    assert res["class_counts"].tolist() == [[1, 0, 0, 1], [1, 0, 0, 1]]
    assert res["class_head"].tolist() == [[0, 3], [3, 0]]
    assert np.allclose(res["token_class_fraction"].sum(1), 1)


def _run(argv):
    from launcher.cli import main
    assert main(["downstream", "bert-heads"] + argv) == 0


def test_cli_with_saved_probabilities(tmp_path):
    attn = torch.softmax(torch.randn(3, 4, 32, 32) * 3, dim=-1)
    np.save(tmp_path / "attn.npy", attn.numpy())
    _run(["--attention", str(tmp_path / "attn.npy"), "--out", str(tmp_path / "run")])
    res = json.loads((tmp_path / "run" / "results" / "bert_heads.json").read_text())
    assert len(res["per_layer"]) == 3 and sum(res["per_layer"][0]["class_counts"].values()) == 4
    assert (tmp_path / "run" / "results" / "bert_heads.png").stat().st_size > 1000


def test_cli_runs_through_the_bert_export(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Hopfield networks store patterns and retrieve them with one update. " * 20)
    _run(["--init", "random", "--model-preset", "bert-tiny", "--text", str(text), "--seq-len", "64",
          "--max-windows", "2", "--out", str(tmp_path / "run")])
    res = json.loads((tmp_path / "run" / "results" / "bert_heads.json").read_text())
    assert res["seq_len"] == 64 and res["windows"] == 2 and len(res["per_layer"]) == 2


def test_cli_from_a_bert_checkpoint(tmp_path):
    """--checkpoint: weights and tokenizer come from a mnemos run (launcher.inference.load_for_eval)."""
    from data.bert_samples import BERT_SYMBOLS
    from data.tokenizer import train_tokenizer
    from launcher.config import RunConfig
    from model.bert import attention_probabilities, build_bert
    from parallel.reshard import FullState, write_universal

    words = "the cat sat on a mat while hopfield nets store and retrieve many patterns".split()
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(300)))
    tok = train_tokenizer([str(corpus)], str(tmp_path / "sp"), 320, user_defined_symbols=BERT_SYMBOLS,
                          hard_vocab_limit=False)
    cfg = RunConfig(run_dir=str(tmp_path / "run"),
                    model=dict(arch="bert", n_layer=2, d_model=32, n_head=4, n_ctx=64, vocab_size=512,
                               layer_norm_eps=1e-12),
                    data=dict(tokenizer=tok, seq_len=64))
    pre = build_bert(cfg.model, seed=3)
    sd = {k: v for k, v in pre.state_dict().items() if k != "mlm.decoder.weight"}
    write_universal(FullState(fp32=sd, client={"config": cfg.model_dump(mode="json"), "trainer": {"step": 0}}),
                    tmp_path / "run" / "checkpoints" / "step_00000000")
    _run(["--checkpoint", str(tmp_path / "run"), "--text", str(corpus), "--seq-len", "32", "--max-windows", "2",
          "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "results" / "bert_heads.json").read_text())
    assert res["seq_len"] == 32 and res["windows"] == 2 and res["source"].startswith("checkpoint")
    # the per-head k equals the analysis of model.bert's export on the same windows
    from data.bert_samples import BertVocab
    from data.tokenizer import Tokenizer
    t = Tokenizer(tok)
    v = BertVocab.from_tokenizer(t)
    windows = bh.text_windows(t.encode(corpus.read_text()), 32, 2, v.cls_id, v.sep_id)
    pre.eval()
    ref = bh.analyze_attention(attention_probabilities(pre, windows))
    got = [[h["k"] for h in layer["heads"]] for layer in res["per_layer"]]
    assert np.allclose(got, ref["k_head"])


def test_random_bert_takes_the_tokenizers_size_and_says_when_windows_shrink(shared_data, tmp_path, caplog):
    """A 600-piece tokenizer on bert-tiny (512 ids) used to fail inside the embedding; --seq-len above n_ctx
    used to shrink to n_ctx without a word."""
    from data.bert_samples import BERT_SYMBOLS
    from data.tokenizer import train_tokenizer
    text = shared_data / "corpus" / "wikitext2_valid.txt"
    tok = train_tokenizer([str(text)], str(tmp_path / "sp"), 600, user_defined_symbols=BERT_SYMBOLS)
    with caplog.at_level("WARNING"):
        _run(["--init", "random", "--model-preset", "bert-tiny", "--tokenizer", tok, "--text", str(text),
              "--seq-len", "4096", "--max-windows", "2", "--out", str(tmp_path / "run")])
    res = json.loads((tmp_path / "run" / "results" / "bert_heads.json").read_text())
    assert res["seq_len"] == 128 and res["windows"] == 2
    assert "--seq-len 4096 exceeds the model's n_ctx; windows of 128 tokens are used" in caplog.text


def test_text_is_read_as_documents_not_as_raw_json(shared_data):
    """--text of a jsonl file (the GPT-3 samples) fed BERT its JSON quotes and backslash escapes; its
    documents are read as the data pipeline reads them, and a plain file stays as it is."""
    from evaluation.downstream.bert_heads import read_text
    samples = read_text(str(shared_data / "corpus" / "gpt3_175b_samples.jsonl"))
    assert samples.startswith("Glacier Ridge Christian School\n\n") and '\\n' not in samples[:2000]
    assert "<|endoftext|>" not in samples
    book = shared_data / "corpus" / "tinyshakespeare.txt"
    assert read_text(str(book)) == book.read_text()


def test_unusable_inputs_are_one_line_errors(tmp_path, capsys):
    """A GPT preset, a tokenizer that is no sentencepiece model, a --text that is not UTF-8: one line each."""
    import pytest
    from launcher.cli import main as mnemos
    text = tmp_path / "t.txt"
    text.write_text("some text to read\n")
    binary = tmp_path / "bags.npz"
    np.savez(binary, x=np.arange(1000, dtype=np.float64) * 0.37)
    out = tmp_path / "run"
    base = ["downstream", "bert-heads", "--init", "random", "--out", str(out)]
    with pytest.raises(SystemExit) as stop:
        mnemos(base + ["--text", str(text), "--model-preset", "gpt3-small"])
    assert stop.value.code == 2
    assert ("argument --model-preset: must be a BERT preset (bert-base, bert-large, bert-tiny), got 'gpt3-small' "
            "(a gpt preset)") in capsys.readouterr().err
    assert mnemos(base + ["--text", str(text), "--tokenizer", str(text)]) == 2
    err = capsys.readouterr().err
    assert f"mnemos: bert-heads: --tokenizer {text}: not a sentencepiece model file" in err and "Traceback" not in err
    assert mnemos(base + ["--text", str(binary)]) == 2  # refused in one line
    assert f"bert-heads: --text {binary}: not UTF-8 text" in capsys.readouterr().err
    assert not out.exists()
