"""Resharding acceptance: a checkpoint saved in one (TP, DP, ZeRO) layout continues in another with the
same loss curve and the same data stream; TP=2 resume is bit-identical (CPU/gloo, tiny GPT)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.launcher.conftest import build_shards, run_train, write_config
from tests.step_log import step_losses

REPO = Path(__file__).resolve().parents[2]
STEPS = 14
SAVE_AT = 2


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    return build_shards(shared_data, tmp_path_factory.mktemp("reshard_data"))


def _config(tmp_path, shards, name, tp, zero, micro, **sections):
    sections.setdefault("checkpoint", {"every_steps": SAVE_AT, "keep_last": 10, "save_at_end": False})
    sections.setdefault("train", {})
    sections["train"] = {"max_steps": STEPS, "global_batch_size": 8, "micro_batch_size": micro, **sections["train"]}
    return write_config(tmp_path / f"{name}.yaml", tmp_path / name, shards,
                        model={"n_ctx": 32, **sections.pop("model", {})}, data={"seq_len": 32},
                        parallel={"tp": tp, "zero_stage": zero}, **sections)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _continue_in(tmp_path, shards, src_run, name, tp, zero, micro, nproc, step):
    """A new run directory holding only src_run's checkpoint at `step`, resumed in another layout."""
    cfg = _config(tmp_path, shards, name, tp, zero, micro)
    dst = tmp_path / name / "checkpoints"
    dst.mkdir(parents=True)
    shutil.copytree(src_run / "checkpoints" / f"step_{step:08d}", dst / f"step_{step:08d}")
    proc = run_train(cfg, nproc=nproc)
    _ok(proc)
    return proc, tmp_path / name


def _assert_same_continuation(ref_run, new_run, first):
    a, b = step_losses(ref_run), step_losses(new_run)
    assert sorted(b) == list(range(first, STEPS + 1))  # exactly the next steps: nothing repeated or skipped
    assert STEPS + 1 - first >= 10
    np.testing.assert_allclose([b[s] for s in range(first, STEPS + 1)], [a[s] for s in range(first, STEPS + 1)],
                               rtol=1e-4)
    summary = json.loads((new_run / "results" / "train_summary.json").read_text())
    assert summary["consumed_samples"] == STEPS * 8  # global batch unchanged: the same stream, once


# One chain of runs covers the three layout changes (4-rank runs are slow on 2 cores):
#   A: TP2 x DP2, ZeRO-1 (4 ranks), saves at step 2
#   B: A@2 resharded on load into TP1 x DP4, ZeRO-3 (4 ranks): continues A, saves at step 4
#   C: B@4 through `mnemos ckpt reshard` (universal) into TP2 x DP1, ZeRO-1 (2 ranks): continues B
@pytest.fixture(scope="module")
def run_a(shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    _ok(run_train(_config(tmp, shards, "a_tp2dp2z1", tp=2, zero=1, micro=2), nproc=4))
    return tmp / "a_tp2dp2z1"


@pytest.fixture(scope="module")
def run_b(shards, run_a):
    proc, run = _continue_in(run_a.parent, shards, run_a, "b_tp1dp4z3", tp=1, zero=3, micro=2, nproc=4, step=2)
    return proc, run


@pytest.mark.slow
def test_reshard_tp2xdp2_to_tp1xdp4_and_zero1_to_zero3_on_load(run_a, run_b):
    proc, run = run_b
    assert "resharding step_00000002: saved tp=2 dp=2 zero=1 -> now tp=1 dp=4 zero=3" in proc.stdout + proc.stderr
    _assert_same_continuation(run_a, run, 3)
    # two steps later both layouts hold the same weights and Adam moments (up to fp32 reduction order)
    from parallel.reshard import read_full_state
    a = read_full_state(run_a / "checkpoints" / "step_00000004")
    b = read_full_state(run / "checkpoints" / "step_00000004")
    assert a.step == b.step == 4 and set(a.fp32) == set(b.fp32) and b.layout["zero_stage"] == 3
    for n in a.fp32:
        np.testing.assert_allclose(b.fp32[n].numpy(), a.fp32[n].numpy(), atol=2e-5)
        np.testing.assert_allclose(b.optim["exp_avg"][n].numpy(), a.optim["exp_avg"][n].numpy(), atol=1e-6)
        np.testing.assert_allclose(b.optim["exp_avg_sq"][n].numpy(), a.optim["exp_avg_sq"][n].numpy(), atol=1e-8)
    assert a.client["sampler"] == b.client["sampler"] and a.client["trainer"] == b.client["trainer"]


@pytest.mark.slow
def test_reshard_tp1xdp4_zero3_to_tp2xdp1_zero1_four_ranks_to_two_via_universal(shards, run_b):
    _, run_b = run_b
    tmp = run_b.parent
    cfg = _config(tmp, shards, "c_tp2dp1z1", tp=2, zero=1, micro=4)
    src = run_b / "checkpoints" / "step_00000004"
    conv = subprocess.run([sys.executable, "-m", "launcher.cli", "ckpt", "reshard", str(src), "--out",
                           str(tmp / "c_tp2dp1z1"), "--tp", "2", "--dp", "1", "--zero", "1"],
                          cwd=REPO, capture_output=True, text=True)
    assert conv.returncode == 0, conv.stdout + conv.stderr
    universal = tmp / "c_tp2dp1z1" / "checkpoints" / "step_00000004"
    assert (universal / "fp32.safetensors").exists() and not list(universal.glob("*.pt"))  # no pickles at all
    proc = run_train(cfg, nproc=2)
    _ok(proc)
    assert "resharding step_00000004: saved tp=1 dp=4 zero=3 -> now tp=2 dp=1 zero=1" in proc.stdout + proc.stderr
    _assert_same_continuation(run_b, tmp / "c_tp2dp1z1", 5)


@pytest.mark.slow
def test_resume_with_tp2_is_bit_identical(shards, tmp_path):
    """Stop after step 4 and resume (TP=2, dropout on: the TP RNG tracker is part of the state) equals
    the uninterrupted run bit for bit. The uninterrupted run saves at step 4; saving does not perturb it."""
    common = dict(checkpoint={"every_steps": 4, "keep_last": 5, "save_at_end": False}, model={"dropout": 0.1})
    _ok(run_train(_config(tmp_path, shards, "full", tp=2, zero=1, micro=4, **common), nproc=2))
    cfg = _config(tmp_path, shards, "split", tp=2, zero=1, micro=4, **common)
    (tmp_path / "split" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000004",
                    tmp_path / "split" / "checkpoints" / "step_00000004")
    second = run_train(cfg, nproc=2)
    _ok(second)
    out = second.stdout + second.stderr
    assert "resumed from" in out and "resharding" not in out
    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "split")
    assert sorted(b) == list(range(5, STEPS + 1))
    assert [a[s] for s in range(5, STEPS + 1)] == [b[s] for s in range(5, STEPS + 1)]  # bit-identical


@pytest.mark.slow
def test_zero3_resume_in_the_same_layout_is_bit_identical(shards, run_b):
    """B (TP1 x DP4, ZeRO-3) stopped at step 10 and resumed from its checkpoint through DeepSpeed's own
    loader (weights_only) continues bit for bit."""
    _, run_b = run_b
    tmp = run_b.parent
    cfg = _config(tmp, shards, "b_again", tp=1, zero=3, micro=2)
    (tmp / "b_again" / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_b / "checkpoints" / "step_00000010", tmp / "b_again" / "checkpoints" / "step_00000010")
    proc = run_train(cfg, nproc=4)
    _ok(proc)
    assert "resharding" not in proc.stdout + proc.stderr
    a, b = step_losses(run_b), step_losses(tmp / "b_again")
    assert sorted(b) == list(range(11, STEPS + 1)) and [a[s] for s in b] == [b[s] for s in b]
