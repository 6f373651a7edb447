"""`mnemos quickstart`, the README's first command, end to end as a user runs it (shortened to 40 training
steps): the planted duplicates and benchmark items are removed, 2 ranks train, stop half-way and resume,
and the few-shot evaluation writes its clean/dirty report."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "quickstart", "--out", str(out), "--steps", "40",
                           "--eval-limit", "20"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "resumed from" in log and "at step 20" in log

    report = json.loads((out / "run" / "results" / "quickstart.json").read_text())
    planted = report["planted"]
    assert report["dedup"]["exact_duplicates"] == planted["planted_exact_duplicates"] > 0
    assert report["dedup"]["near_duplicates"] == planted["planted_near_duplicates"] > 0
    assert report["decontaminate"]["cut"] == len(planted["planted_eval_examples"]) > 0
    assert report["validation_perplexity_after"] < report["validation_perplexity_before"] / 10

    assert sorted(p.name for p in (out / "run" / "checkpoints").glob("step_*")) == ["step_00000020",
                                                                                    "step_00000040"]
    evaluation = json.loads((out / "run" / "results" / "eval" / "results.json").read_text())
    for task in ("arithmetic_2da", "arithmetic_2ds"):
        assert sorted(evaluation["results"][task]) == ["0", "1", "4"]
        assert evaluation["results"][task]["4"]["n"] == 20
        assert evaluation["contamination"][task]["by_shots"]["0"]["clean_count"] == 20


@pytest.mark.slow
def test_quickstart_on_your_corpus_validates_on_held_out_documents(tmp_path, shared_data):
    """With --corpus the validation shards were the last corpus file tokenized again: with one file the
    "validation" curve was measured on the training documents. A blend now holds 5% of them out."""
    import yaml
    records = (shared_data / "corpus" / "gpt3_175b_samples.jsonl").read_text(encoding="utf-8").splitlines()[:120]
    (tmp_path / "mine.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    play = (shared_data / "corpus" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    (tmp_path / "play.txt").write_text(play, encoding="utf-8")  # one document: --txt-sample-by document
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "quickstart", "--corpus", str(tmp_path / "mine.jsonl"),
                           str(tmp_path / "play.txt"), "--txt-sample-by", "document", "--out", str(out), "--steps",
                           "20", "--eval-limit", "5", "--vocab-size", "1024"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dedup = json.loads((out / "data" / "dedup" / "stats.json").read_text())
    reader = next(st for st in dedup["steps"] if st["step"] == "reader")
    assert reader["text_files_by_document"] == 1 and reader["files"] == 2
    blend = json.loads((out / "data" / "blend" / "blend.json").read_text())
    config = yaml.safe_load((out / "run" / "config.yaml").read_text())["data"]
    assert config["valid"] == blend["config"]["data.valid"] and config["train"] == blend["config"]["data.train"]
    assert all("/valid/" in p for p in config["valid"]) and not set(config["valid"]) & set(config["train"])
    assert blend["splits"]["valid"]["samples"] > 0
    report = json.loads((out / "run" / "results" / "quickstart.json").read_text())
    assert report["validation_perplexity_after"] < report["validation_perplexity_before"]
