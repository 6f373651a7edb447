"""`mnemos eval` and `mnemos eval-data` from the command line."""

from __future__ import annotations

import json

import pytest

from launcher.cli import main


@pytest.fixture
def fake_checkpoint(monkeypatch, tiny_gpt, byte_tok):
    import launcher.inference
    seen = {}

    def load_for_eval(path, device="cpu"):
        seen["path"] = path
        return tiny_gpt, byte_tok, None
    monkeypatch.setattr(launcher.inference, "load_for_eval", load_for_eval)
    return seen


def test_eval_command_writes_json_markdown_plots(fake_checkpoint, tmp_path, capsys):
    from data.ngrams import NgramIndex
    from evaluation.registry import iter_eval_texts
    leaked = [t for _, t in iter_eval_texts(["arithmetic_2da"])][:3]
    NgramIndex.build(["unrelated text"] + leaked, [8, 9, 10, 11, 12, 13]).save(str(tmp_path / "idx"))
    out = tmp_path / "eval"
    rc = main(["eval", "--checkpoint", str(tmp_path / "run"), "--tasks", "arithmetic_2da,arithmetic_2ds",
               "--shots", "0,1,4", "--limit", "10", "--out", str(out), "--contamination", str(tmp_path / "idx"),
               "--batch-size", "4", "--device", "cpu"])
    assert rc == 0 and fake_checkpoint["path"] == str(tmp_path / "run")
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]["arithmetic_2da"]) == {"0", "1", "4"}
    assert res["contamination"]["arithmetic_2da"]["by_shots"]["0"]["dirty_count"] == 3
    assert res["contamination"]["arithmetic_2ds"]["by_shots"]["0"]["dirty_count"] == 0
    assert (out / "plots" / "arithmetic_2da.png").exists() and (out / "plots" / "overview.png").exists()
    assert (out / "cache.sqlite").exists()
    printed = capsys.readouterr().out
    assert "results.md" in printed and "2D+" in printed
    # a re-run is answered from the cache
    rc = main(["eval", "--checkpoint", str(tmp_path / "run"), "--tasks", "arithmetic_2da", "--shots", "0,1",
               "--limit", "10", "--out", str(out), "--device", "cpu"])
    again = json.loads((out / "results.json").read_text())
    assert rc == 0 and again["config"]["cache"]["misses"] == 0


def test_eval_errors_and_listing(fake_checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", "x", "--tasks", "no_such_task", "--out", str(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert "path" not in fake_checkpoint  # refused before the model was loaded
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "broken.yaml").write_text("task: mytask\n  bad: [\n")
    for argv in (["--list-tasks"], ["--checkpoint", "x", "--tasks", "mytask", "--out", str(tmp_path / "o")]):
        assert main(["eval", *argv, "--include-tasks", str(tmp_path / "mine")]) == 2
        err = capsys.readouterr().err
        assert "broken.yaml: not valid YAML at line 2, column 6: mapping values are not allowed here" in err
        assert "Traceback" not in err
    assert main(["eval", "--list-tasks"]) == 0
    assert "gpt3_arithmetic_1dc (1DC)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", "x", "--tasks", "arithmetic_2da", "--shots", "a,b"])
    with pytest.raises(SystemExit):  # a repeated K would count its examples twice
        main(["eval", "--checkpoint", "x", "--tasks", "arithmetic_2da", "--shots", "0,1,0"])
    assert "'0,1,0': expected each number once" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line_not_a_traceback(tmp_path, capsys):
    """The same for eval and the checkpoint tools: exit code 2 and the path in one line."""
    missing = str(tmp_path / "no_run")
    for argv in (["eval", "--checkpoint", missing, "--tasks", "arithmetic_2da", "--out", str(tmp_path)],
                 ["ckpt", "reshard", missing, "--out", str(tmp_path / "resharded"), "--tp", "1"],
                 ["ckpt", "export-hf", missing, "--out", str(tmp_path / "hf")]):
        assert main(argv) == 2
        assert f"mnemos: no valid checkpoint under {missing}" in capsys.readouterr().err


def test_eval_data_helpers(tmp_path, shared_data):
    assert main(["eval-data", "words", str(shared_data / "corpus" / "wikitext2_valid.txt"), "--out",
                 str(tmp_path / "words.txt"), "--n", "500"]) == 0
    words = (tmp_path / "words.txt").read_text().split()
    assert len(words) == 500
    assert main(["eval-data", "synthetic", "--out", str(tmp_path / "syn"), "--n", "20",
                 "--word-list", str(tmp_path / "words.txt")]) == 0
    lines = (tmp_path / "syn" / "two_digit_addition.jsonl").read_text().splitlines()
    assert len(lines) == 20 and json.loads(lines[0])["context"].startswith("\n\nQ: What is ")
    assert (tmp_path / "syn" / "scramble_rw.jsonl").exists()


def test_word_list_reads_jsonl_documents_not_their_markup(tmp_path, shared_data):
    """The GPT-3 samples file is JSON strings holding <|endoftext|>: read as raw lines, "endoftext" (1,523
    times) was its most frequent long word. Words come from the documents, as the data stages read them."""
    samples = shared_data / "corpus" / "gpt3_175b_samples.jsonl"
    assert main(["eval-data", "words", "-i", str(samples), "-o", str(tmp_path / "w.txt"), "--n", "200"]) == 0
    words = (tmp_path / "w.txt").read_text().split()
    assert len(words) == 200 and "endoftext" not in words and "which" in words
    assert main(["eval-data", "words", "-o", str(tmp_path / "none.txt")]) == 2
    assert not (tmp_path / "none.txt").exists()


def test_hf_model_with_sentencepiece_tokenizer(tiny_gpt, tmp_path, shared_data):
    """Exported weights + a real sentencepiece tokenizer, through accelerate's loader."""
    from launcher.config import ModelConfig
    from model.gpt import build_gpt
    from data.tokenizer import train_tokenizer
    from evaluation.hf import export_hf
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join((shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines()[:400]))
    tok_path = train_tokenizer([str(text)], str(tmp_path / "tok"), vocab_size=400, input_sentence_size=2000)
    model = build_gpt(ModelConfig(n_layer=1, d_model=32, n_head=2, n_ctx=128, vocab_size=512), seed=1)
    export_hf(model, tmp_path / "hf", tokenizer_path=tok_path)
    rc = main(["eval", "--hf-model", str(tmp_path / "hf"), "--tasks", "arithmetic_1dc", "--shots", "0,2",
               "--limit", "6", "--out", str(tmp_path / "out"), "--no-cache", "--device", "cpu"])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["results"]["arithmetic_1dc"]["2"]["n"] == 6


def test_a_model_the_harness_cannot_score_is_refused(tmp_path, capsys):
    """A BERT export (or a directory without config.json) used to fail inside accelerate's loader."""
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "bert" / "tokenizer.model").write_bytes(b"")
    assert main(["eval", "--hf-model", str(tmp_path / "bert"), "--tasks", "arithmetic_1dc", "--shots", "0"]) == 2
    assert "is a 'bert' model (rule: the harness loads GPT-2 causal language models" in capsys.readouterr().err
    import launcher.inference
    from launcher.config import load_config
    bert_config = load_config(None, ["model.preset=bert-tiny"])
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(launcher.inference, "load_for_eval", lambda path, device="cpu": (None, None, bert_config))
    try:
        assert main(["eval", "--checkpoint", str(tmp_path), "--tasks", "arithmetic_1dc", "--shots", "0"]) == 2
    finally:
        monkeypatch.undo()
    assert "holds a model.arch='bert' model (rule: the harness scores decoder language models" in \
        capsys.readouterr().err


def test_windows_default_to_the_runs_training_length(monkeypatch, tiny_gpt, byte_tok, tmp_path, capsys):
    """A model with n_ctx 96 trained on 32-token sequences never trained positions 32-95: its windows are 32
    tokens unless --max-length says otherwise (at most n_ctx)."""
    import launcher.inference
    from launcher.config import RunConfig
    run_config = RunConfig(data={"seq_len": 32}, model={"n_ctx": 96, "vocab_size": 257})
    monkeypatch.setattr(launcher.inference, "load_for_eval", lambda path, device="cpu": (tiny_gpt, byte_tok, run_config))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tmp_path / "play.txt").write_text("First line of a play.\n\nSecond speech here.\nIt runs on.\n\n")
    (tasks / "play.yaml").write_text(
        f"task: play_ppl\ndataset: {{loader: text, files: {{test: '{tmp_path / 'play.txt'}'}}}}\neval_split: test\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: '{{ text }}'\ndoc_to_target: ''\n")
    base = ["eval", "--checkpoint", "run", "--tasks", "play_ppl", "--include-tasks", str(tasks), "--shots", "0",
            "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert "windows of 32 tokens, the run's data.seq_len" in capsys.readouterr().err
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["config"]["model"]["max_length"] == 32
    assert res["results"]["play_ppl"]["0"]["n"] == 3  # three non-blank lines: a blank line is no document
    assert main(base + ["--out", str(tmp_path / "b"), "--max-length", "64"]) == 0
    assert json.loads((tmp_path / "b" / "results.json").read_text())["config"]["model"]["max_length"] == 64
    assert main(base + ["--out", str(tmp_path / "c"), "--max-length", "97"]) == 2
    assert "--max-length=97 (rule: at most the model's n_ctx, 96)" in capsys.readouterr().err


def test_list_tasks_with_a_data_dir_says_which_files_are_in_place(std_data, shared_data, capsys, monkeypatch):
    monkeypatch.delenv("MNEMOS_EVAL_DATA", raising=False)
    assert main(["eval", "--list-tasks", "--data-dir", str(std_data)]) == 0
    lines = {line.split(" ", 1)[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["hellaswag"].endswith("data: ok") and lines["race_high"].endswith("data: ok")
    assert lines["arithmetic_2da"].endswith("data: generated")
    assert lines["cb"].endswith(f"data: missing {std_data}/CB/val.jsonl")  # the path the user must fill
    assert lines["word_scramble_cl"].endswith(f"data: missing {std_data}/wordlist.txt (mnemos eval-data words)")
    assert main(["eval", "--list-tasks", "--data-dir", str(shared_data)]) == 0
    lines = {line.split(" ", 1)[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["gpt3_arithmetic_1dc"].endswith("data: ok")  # the released files in ../shared/data
    assert main(["eval", "--list-tasks"]) == 0
    assert "data:" not in capsys.readouterr().out
