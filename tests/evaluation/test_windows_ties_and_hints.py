"""Scoring and command-line fixes from a new-user audit of the harness: each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evaluation.adapters import DummyLM
from evaluation.api import run_eval
from launcher.cli import main


def _mc_task(root: Path) -> Path:
    """A 4-choice task whose continuations (" " + choice) are 47, 51, 94 and 95 characters long: lengths
    where -n log V / n is not exactly -log V in floats. Gold rotates over the positions."""
    lengths = [46, 50, 93, 94]
    docs = [{"q": f"Question {i}?", "choices": ["x" * n for n in lengths], "gold": i % 4} for i in range(8)]
    (root / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(
        f"task: uniform_mc\ndataset: {{loader: jsonl, files: {{test: '{root / 'mc.jsonl'}'}}}}\n"
        "eval_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{ q }}'\n"
        "doc_to_choice: 'choices'\ndoc_to_target: '{{ gold }}'\n")
    return tasks


def test_a_uniform_model_scores_exactly_chance_on_four_choices(tmp_path):
    tasks = _mc_task(tmp_path)
    res = run_eval(DummyLM("uniform"), ["uniform_mc"], [0], include=[str(tasks)], log_samples=True)
    row = res["results"]["uniform_mc"]["0"]
    for metric in ("acc", "acc_norm_token", "acc_norm_char", "acc_uncond"):
        assert row[metric] == 0.25, metric
    for sample in res["samples"]["uniform_mc"][0]:  # every choice ties: each example is worth 1/4
        assert sample["scores"]["acc_norm_token"] == 0.25 and sample["scores"]["acc_uncond"] == 0.25


# ---------------------------------------------------------------------- a real run directory and export
@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory, shared_data):
    """A step-0 checkpoint of a tiny GPT (n_ctx 96) whose run trained on 32-token sequences, with a real
    sentencepiece tokenizer, and the same weights exported as a Hugging Face GPT-2 directory."""
    from data.tokenizer import train_tokenizer
    from evaluation.hf import export_hf
    from launcher.config import RunConfig
    from model.gpt import build_gpt
    from parallel.manifest import step_dirname, write_latest
    from parallel.reshard import FullState, write_universal
    root = tmp_path_factory.mktemp("run")
    text = root / "corpus.txt"
    text.write_text("\n".join((shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines()[:400]))
    tok = train_tokenizer([str(text)], str(root / "tok"), vocab_size=400, input_sentence_size=2000)
    cfg = RunConfig(run_dir=str(root / "run"), data={"seq_len": 32, "tokenizer": tok},
                    model={"n_ctx": 96, "vocab_size": 512, "n_layer": 1, "d_model": 32, "n_head": 2})
    model = build_gpt(cfg.model, seed=0)
    params = {n: p.detach() for n, p in model.named_parameters()}
    ckpts = root / "run" / "checkpoints"
    write_universal(FullState(fp32=params, client={"config": cfg.model_dump(mode="json")}), ckpts / step_dirname(0),
                    meta={})
    write_latest(ckpts, step_dirname(0))
    (root / "run" / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))  # as train writes it
    export_hf(model, root / "hf", tokenizer_path=tok)
    return root / "run", root / "hf"


def test_python_adapter_windows_follow_the_runs_training_length(run_and_export):
    """`mnemos eval --checkpoint` scored in windows of data.seq_len, MnemosLM(model, tokenizer) in n_ctx."""
    from evaluation.adapters import MnemosLM
    from launcher.inference import load_for_eval
    model, tokenizer, cfg = load_for_eval(run_and_export[0])
    assert MnemosLM(model, tokenizer, progress=False).max_length == 32 == cfg.data.seq_len
    assert MnemosLM(model, tokenizer, progress=False, max_length=64).max_length == 64


def test_hf_model_says_which_window_it_uses(run_and_export, tmp_path, capsys):
    """An export records n_positions, not data.seq_len: the window is n_ctx, and the command says so."""
    rc = main(["eval", "--hf-model", str(run_and_export[1]), "--tasks", "arithmetic_2da", "--shots", "0",
               "--limit", "2", "--out", str(tmp_path / "o"), "--no-cache", "--device", "cpu"])
    assert rc == 0
    assert "windows of 96 tokens, the model's n_positions" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "results.json").read_text())["config"]["model"]["max_length"] == 96


def test_a_max_memory_that_fits_no_layer_is_one_line(run_and_export, tmp_path, capsys):
    rc = main(["eval", "--hf-model", str(run_and_export[1]), "--tasks", "arithmetic_2da", "--shots", "0",
               "--limit", "2", "--out", str(tmp_path / "o"), "--max-memory", "cpu=1KB", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("mnemos eval: --max-memory {'cpu': 1000} leaves no room"), err
    assert not (tmp_path / "o").exists()


def test_the_out_hint_only_when_out_was_not_given(run_and_export, tmp_path, capsys):
    base = ["eval", "--checkpoint", str(run_and_export[0]), "--tasks", "arithmetic_2da", "--shots", "0",
            "--limit", "2", "--device", "cpu"]
    for _ in range(2):
        assert main(base + ["--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "holds an earlier evaluation; its report is replaced" in err and "--out DIR keeps it" not in err
    for _ in range(2):  # the default OUT, RUN/results/eval
        assert main(base) == 0
    assert "its report is replaced (--out DIR keeps it)" in capsys.readouterr().err
    assert (run_and_export[0] / "results" / "eval" / "results.json").exists()


def test_every_word_scramble_task_uses_2_grams():
    """GPT-3 App. C: the minimum N of 8 is for non-synthetic tasks; the scrambles use N = 2 (random insertion
    had none, so it was clamped to 8 and its ~3-word examples could never be dirty)."""
    from evaluation.registry import load_configs
    configs = load_configs()
    assert {t: configs[t].contamination_ngram for t in configs if t.startswith("word_scramble_")} == {
        f"word_scramble_{k}": 2 for k in ("cl", "a1", "a2", "ri", "rw")}
