"""`mnemos plan --measured-layer`: step time from one measured layer plus TP/DP communication volumes."""

import json
import subprocess
import sys

import pytest

from launcher.cli import main
from parallel.planner import PlanError, PlanInput, make_plan
from parallel.projection import dp_volume_factor

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
BASE = dict(model="gpt3-175b", nodes=128, gpus_per_node=8, tp=8, micro_batch=1, seq_len=2048, precision="bf16",
            activation_checkpointing=True, gpu_mem_gb=141, tp_busbw_gbs=360.0, dp_busbw_gbs=40.0)


def measured(**over):
    """A layer_175b.py result with round numbers (hand-checkable), at the 175B TP-8 shapes."""
    m = {"shape": {"d_model": 12288, "n_head": 96}, "tp": 8, "micro_batch": 1, "seq_len": 2048,
         "device_name": "test", "timings": {"fwd_bwd": {"ms": 5.0}, "fwd_bwd_recompute": {"ms": 6.5},
                                            "fwd_bwd_recompute_compiled": {"ms": 6.0},
                                            "fwd_bwd_compiled": {"error": "failed"}, "head_fwd_bwd": {"ms": 2.0}}}
    m.update(over)
    return m


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_step_time_terms_by_hand(zero):
    p = make_plan(PlanInput(**BASE, zero=zero, measured_layer=measured()))
    m = p.measured
    assert p.grad_accum == 12 and p.dp == 128
    # fastest recompute timing (the compiled one), 96 layers + the head, 12 micro-batches
    assert m["layer_ms"] == 6.0 and m["layer_timing"] == "fwd_bwd_recompute_compiled"
    assert m["compute_s"] == pytest.approx(12 * (96 * 6.0 + 2.0) / 1e3)
    # Megatron f/g: 4 all-reduces per layer + 2 for the recompute, + embedding and head input
    assert m["tp_allreduces_per_micro_batch"] == 96 * 6 + 2
    act = 1 * 2048 * 12288 * 2
    assert m["tp_bytes_per_gpu"] == pytest.approx(12 * 578 * act * 2 * 7 / 8)
    assert m["tp_s"] == pytest.approx(m["tp_bytes_per_gpu"] / 360e9)
    per_collective = 2 * p.params_per_gpu * 127 / 128
    factor = {0: 2, 1: 2, 2: 13, 3: 12 * 4}[zero]  # ZeRO-2: every micro-batch; ZeRO-3: +1 gather for recompute
    assert m["dp_bytes_per_gpu"] == pytest.approx(factor * per_collective)
    assert m["step_s_dp_exposed"] == pytest.approx(m["compute_s"] + m["tp_s"] + m["dp_s"])
    assert m["step_s_dp_hidden"] == pytest.approx(max(m["compute_s"] + m["tp_s"], m["dp_s"]))
    assert m["mfu_dp_hidden"] == pytest.approx(
        p.tokens_per_step * p.model_flops_per_token / m["step_s_dp_hidden"] / (1024 * 989e12))
    assert m["mfu_dp_exposed"] <= m["mfu_dp_hidden"]


def test_no_recompute_uses_the_plain_timing_and_fewer_allreduces():
    p = make_plan(PlanInput(**{**BASE, "activation_checkpointing": False, "gpu_mem_gb": 1000}, zero=1,
                            measured_layer=measured()))
    assert p.measured["layer_ms"] == 5.0 and p.measured["tp_allreduces_per_micro_batch"] == 96 * 4 + 2
    assert dp_volume_factor(3, 12, False) == 36


def test_tp1_has_no_tp_communication():
    m = measured(tp=1)
    p = make_plan(PlanInput(**{**BASE, "tp": 1, "gpu_mem_gb": 10000}, zero=3, measured_layer=m))
    assert p.measured["tp_bytes_per_gpu"] == 0 and p.measured["tp_s"] == 0


@pytest.mark.parametrize("over, words", [
    (dict(tp=4), "measured with tp=4 but the plan has tp=8"),
    (dict(micro_batch=2), "micro_batch=2 but the plan has micro_batch=1"),
    (dict(seq_len=1024), "seq_len=1024 but the plan has seq_len=2048"),
    (dict(shape={"d_model": 2048, "n_head": 16}), "d_model=2048 but the plan has d_model=12288"),
    (dict(timings={"fwd": {"ms": 1.0}}), "no 'fwd_bwd_recompute' timing"),
])
def test_a_layer_measured_at_other_shapes_is_refused(over, words):
    with pytest.raises(PlanError, match=words):
        make_plan(PlanInput(**BASE, zero=1, measured_layer=measured(**over)))


def test_cli_reads_the_json_and_refuses_bad_input(tmp_path, capsys):
    f = tmp_path / "layer.json"
    f.write_text(json.dumps(measured()))
    args = ["plan", "--model", "gpt3-175b", "--nodes", "128", "--gpus-per-node", "8", "--tp", "8", "--zero", "1",
            "--activation-checkpointing", "--gpu-mem-gb", "141", "--measured-layer", str(f)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "TP communication" in out and "GB per GPU per step" in out and "MFU (measured)" in out
    assert main(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measured"]["tp_allreduces_per_micro_batch"] == 578
    assert main(args[:-1] + [str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(args + ["--dp-busbw-gbs", "0"]) == 2
    assert "--dp-busbw-gbs=0.0 (rule: > 0)" in capsys.readouterr().err


def test_layer_benchmark_smoke_feeds_the_planner(tmp_path, capsys):
    """bench/layer_175b.py --smoke (CPU, gpt-mini at TP 2) writes a result `mnemos plan` accepts."""
    out = tmp_path / "layer.json"
    proc = subprocess.run([sys.executable, "bench/layer_175b.py", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["local_shapes"] == {"qkv": [128, 192], "attn_proj": [64, 128], "mlp_fc": [128, 256],
                                    "mlp_proj": [256, 128], "heads": 2}
    assert all(t["ms"] > 0 for t in data["timings"].values())
    assert main(["plan", "--model", "gpt-mini", "--nodes", "1", "--gpus-per-node", "2", "--tp", "2",
                 "--seq-len", "256", "--global-batch", "8", "--measured-layer", str(out)]) == 0
    assert "step time (measured)" in capsys.readouterr().out
