"""Interop: the GPT-2 export computes the same logits; lm-evaluation-harness's HF backend on the export
and mnemos give the same per-request log-likelihoods; a mnemos model runs inside lm_eval; accelerate's
big-model loading (with offload) evaluates the exported weights."""

from __future__ import annotations

import pytest
import torch

from evaluation.adapters import MnemosLM
from evaluation.registry import get_task

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def hf_export(tiny_gpt):
    from evaluation.hf import to_hf
    return to_hf(tiny_gpt)


def test_gpt2_export_same_logits(tiny_gpt, hf_export):
    x = torch.randint(0, 257, (3, 50))
    with torch.no_grad():
        assert torch.allclose(hf_export(x).logits, tiny_gpt(x), atol=1e-5)


def _shared_requests(shared_data):
    """Requests of a shared task: 1-shot GPT-3 arithmetic (released file), 2D+ and 1DC."""
    reqs = []
    for name in ("gpt3_arithmetic_2da", "gpt3_arithmetic_1dc"):
        task = get_task(name, shared_data)
        for i, d in enumerate(task.eval_docs(limit=12)):
            reqs.append((task.fewshot_context(i, d, 1, seed=0), d["completion"]))
    return reqs + [("", "hello world"), ("trailing space ", "x")]


def test_per_request_loglikelihoods_match_lm_eval(tiny_gpt, byte_tok, hf_export, shared_data):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evaluation.hf import byte_hf_tokenizer
    from evaluation.lm_eval_adapter import MnemosHarnessLM

    reqs = _shared_requests(shared_data)
    inst = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=0) for r in reqs]
    peer = HFLM(pretrained=hf_export, tokenizer=byte_hf_tokenizer(), batch_size=8, device="cpu")
    theirs = peer.loglikelihood(inst)
    ours = MnemosLM(tiny_gpt, byte_tok, batch_size=8, progress=False).loglikelihood(reqs)
    wrapped = MnemosHarnessLM(model=tiny_gpt, tokenizer=byte_tok, batch_size=8).loglikelihood(inst)
    assert len(theirs) == len(ours) == len(reqs)
    for (a, ga), (b, gb), (c, gc) in zip(theirs, ours, wrapped):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
        assert (b, gb) == (c, gc)
    text = " = Alpha = \n Alpha is a letter . " * 12  # longer than n_ctx: several rolling windows
    roll = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)]
    assert peer.loglikelihood_rolling(roll)[0] == pytest.approx(
        MnemosLM(tiny_gpt, byte_tok, progress=False).loglikelihood_rolling([text])[0], abs=1e-3)


def test_mnemos_model_runs_under_lm_eval(tiny_gpt, byte_tok, shared_data):
    from lm_eval import simple_evaluate

    from evaluation.lm_eval_adapter import MnemosHarnessLM

    task = {"task": "mnemos_2da", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(shared_data / "gpt3_arithmetic" / "two_digit_addition.jsonl")}},
            "test_split": "test", "output_type": "loglikelihood", "doc_to_text": "{{context}}",
            "doc_to_target": "{{completion}}", "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    from lm_eval.tasks import TaskManager
    out = simple_evaluate(model=MnemosHarnessLM(model=tiny_gpt, tokenizer=byte_tok, batch_size=8), tasks=[task],
                          limit=8, num_fewshot=0, task_manager=TaskManager(include_defaults=False))
    assert out["results"]["mnemos_2da"]["acc,none"] == 0.0  # a random model does not do arithmetic


def test_accelerate_big_model_loading_with_offload(tiny_gpt, byte_tok, tmp_path):
    pytest.importorskip("accelerate")
    from evaluation.hf import export_hf, load_hf_big_model
    export_hf(tiny_gpt, tmp_path / "hf")
    # a memory cap smaller than the model: part of the blocks are offloaded to disk
    model = load_hf_big_model(tmp_path / "hf", device_map="auto", max_memory={"cpu": 90_000},
                              offload_folder=str(tmp_path / "offload"))
    assert "disk" in set(model.hf.hf_device_map.values())
    x = torch.randint(0, 257, (2, 40))
    with torch.no_grad():
        assert torch.allclose(model(x), tiny_gpt(x), atol=1e-5)
    reqs = [("Q: What is 2 plus 2?\n\nA:", " 4"), ("hello", " world")]
    a = MnemosLM(model, byte_tok, batch_size=2, progress=False).loglikelihood(reqs)
    b = MnemosLM(tiny_gpt, byte_tok, batch_size=2, progress=False).loglikelihood(reqs)
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-4)
