"""Fixes from the new-user audit of the evaluation harness: each test failed on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.adapters import DummyLM
from evaluation.api import run_eval


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
