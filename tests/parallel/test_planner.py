"""`mnemos plan`: the 175B figures the issue asks for, the DeepSpeed cross-check, refusals."""

import json

import pytest

from launcher.cli import main
from parallel.planner import GB, PlanError, PlanInput, make_plan

BASE = dict(model="gpt3-175b", nodes=128, gpus_per_node=8, tp=8, micro_batch=1, seq_len=2048, precision="bf16",
            activation_checkpointing=True, gpu_mem_gb=80, gpu_tflops=400)


@pytest.fixture(scope="module")
def plans():
    return {z: make_plan(PlanInput(**BASE, zero=z)) for z in (1, 2, 3)}


def test_gpt3_175b_tp8_zero2_and_zero3_fit_zero1_does_not(plans):
    p1, p2, p3 = plans[1], plans[2], plans[3]
    assert p1.dp == 128 and abs(p1.params_per_gpu / 1e9 - 21.85) < 0.01
    assert abs(p1.params_total / 1e9 - 174.6) < 0.1
    assert not p1.fits and p2.fits and p3.fits
    # bf16 weights + unsharded bf16 gradients are already ~87 GB per GPU
    assert 87 < (p1.bytes["weights"] + p1.bytes["grads"]) / GB < 88
    assert "unsharded bf16 gradients alone are 87.4 GB > 80 GB" in p1.why
    assert p3.total_bytes < p2.total_bytes < 80 * GB < p1.total_bytes


def test_model_states_match_deepspeed_estimators(plans):
    p2, p3 = plans[2], plans[3]
    states = lambda p: p.bytes["weights"] + p.bytes["grads"] + p.bytes["optimizer"]
    assert abs(states(p2) - p2.deepspeed_model_states) / p2.deepspeed_model_states < 1e-6  # 2P + 18P/dp exactly
    assert abs(states(p3) - p3.deepspeed_model_states) / p3.deepspeed_model_states < 0.05


def test_step_time_and_mfu(plans):
    p = plans[2]
    assert p.global_batch == 1536 and p.grad_accum == 12  # the paper's 3.2M tokens, a multiple of dp
    n = p.params_total
    assert p.model_flops_per_token == 6 * n + 12 * 96 * 12288 * 2048
    # with recompute the GPUs do 4/3 of the model FLOPs: MFU = 400/989 * 3/4
    assert abs(p.mfu - 400 / 989 * 0.75) < 1e-9
    assert abs(p.step_time_s - p.tokens_per_step * p.model_flops_per_token * 4 / 3 / (1024 * 400e12)) < 1e-9


def test_tp1_without_zero_on_one_node_is_far_out_of_reach():
    p = make_plan(PlanInput(**{**BASE, "nodes": 1, "tp": 1}, zero=0))
    assert not p.fits and p.total_bytes > 40 * 80 * GB
    assert "out of reach on 8 GPUs at any ZeRO stage or TP degree" in p.why


def test_activation_checkpointing_matters():
    off = make_plan(PlanInput(**{**BASE, "activation_checkpointing": False}, zero=2))
    assert off.bytes["activations"] > 40 * GB and not off.fits


@pytest.mark.parametrize("kw, words", [
    (dict(tp=3), "parallel.tp=3 must divide"),
    (dict(tp=16, gpus_per_node=8), "stays inside a node"),
    (dict(model="gpt3-huge"), "not a preset"),
    (dict(seq_len=4096), "n_ctx"),
    (dict(micro_batch=0), r"--micro-batch=0 \(rule: > 0\)"),
    (dict(seq_len=0), r"--seq-len=0 \(rule: > 0\)"),
    (dict(nodes=0), r"--nodes=0 \(rule: > 0\)"),
    (dict(gpu_mem_gb=-1.0), r"--gpu-mem-gb=-1.0 \(rule: > 0\)"),
    (dict(reserve_gb=-2.0), r"--reserve-gb=-2.0 \(rule: >= 0\)"),
])
def test_bad_layouts_refused(kw, words):
    with pytest.raises(PlanError, match=words):
        make_plan(PlanInput(**{**BASE, **kw}, zero=2))


def test_cli(capsys):
    args = ["plan", "--model", "gpt3-175b", "--nodes", "128", "--gpus-per-node", "8", "--tp", "8", "--zero", "2",
            "--micro-batch", "1", "--seq-len", "2048", "--precision", "bf16", "--activation-checkpointing",
            "--gpu-mem-gb", "80", "--gpu-tflops", "400"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "FITS" in out and "DeepSpeed cross-check" in out and "MFU" in out
    assert main(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fits"] is True
    assert main(["plan", "--model", "gpt3-175b", "--nodes", "2", "--tp", "3"]) == 2
    assert "parallel.tp=3" in capsys.readouterr().err


def test_cli_plans_a_run_config(tmp_path, capsys):
    """`--config` takes the shape and layout of a training config (a custom shape no preset has), its data paths
    unread (they live on the cluster); options given on the command line win over the config's."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {preset: gpt3-xl, n_layer: 30, d_model: 2560, n_head: 20}\n"
                   "data: {blend: /cluster/blend, seq_len: 2048, tokenizer: /cluster/tok.model}\n"
                   "train: {global_batch_size: 512, micro_batch_size: 2}\n"
                   "parallel: {tp: 2, zero_stage: 1, activation_checkpointing: true}\nprecision: {dtype: bf16}\n")
    assert main(["plan", "--config", str(cfg), "--nodes", "4", "--gpus-per-node", "8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    same = make_plan(PlanInput(model="custom", shape=dict(n_layer=30, d_model=2560, n_head=20, n_ctx=2048,
                                                         vocab_size=50304), nodes=4, gpus_per_node=8, tp=2, zero=1,
                               micro_batch=2, seq_len=2048, global_batch=512, precision="bf16",
                               activation_checkpointing=True))
    assert plan["params_total"] == same.params_total and plan["total_bytes"] == pytest.approx(same.total_bytes)
    assert plan["input"]["tp"] == 2 and plan["input"]["zero"] == 1 and plan["global_batch"] == 512
    assert main(["plan", "--config", str(cfg), "--nodes", "4", "--zero", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input"]["zero"] == 3
    # a switch the config turned on can be turned off for the plan
    assert plan["input"]["activation_checkpointing"] is True
    assert main(["plan", "--config", str(cfg), "--nodes", "4", "--no-activation-checkpointing", "--json"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["input"]["activation_checkpointing"] is False and off["total_bytes"] > plan["total_bytes"]
    assert main(["plan", "--config", str(tmp_path / "typo.yaml")]) == 2
    assert "config file" in capsys.readouterr().err


def test_cli_sequence_defaults_to_the_models_context(capsys):
    """A 512-position BERT was refused under the old fixed default of 2048 tokens."""
    assert main(["plan", "--model", "bert-base", "--gpus-per-node", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input"]["seq_len"] == 512
    assert main(["plan", "--model", "gpt3-xl", "--gpus-per-node", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input"]["seq_len"] == 2048
