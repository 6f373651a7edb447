"""End-to-end training equivalences on CPU with gloo (Foundation acceptance)."""

import json
import math
import os

import numpy as np
import pytest

from parallel.manifest import list_checkpoints, verify
from tests.launcher.conftest import run_train, write_config
from tests.step_log import step_losses


def _train(tmp_path, shards, name, nproc=1, extra=(), env=None, **sections):
    cfg = write_config(tmp_path / f"{name}.yaml", tmp_path / name, shards, **sections)
    proc = run_train(cfg, *extra, nproc=nproc, env=env)
    return proc, tmp_path / name


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def zero0_losses(tiny_data, tmp_path_factory):
    proc, run = _train(tmp_path_factory.mktemp("z0"), tiny_data, "z0", parallel={"zero_stage": 0})
    _ok(proc)
    losses = step_losses(run)
    assert sorted(losses) == list(range(1, 11))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_on_two_ranks_match_zero0_on_one(tiny_data, tmp_path, zero0_losses, stage):
    proc, run = _train(tmp_path, tiny_data, f"z{stage}", nproc=2, parallel={"zero_stage": stage})
    _ok(proc)
    losses, ref = step_losses(run), step_losses(zero0_losses)
    assert sorted(losses) == sorted(ref) == list(range(1, 11))
    np.testing.assert_allclose([losses[s] for s in range(1, 11)], [ref[s] for s in range(1, 11)], rtol=1e-5)
    assert losses[10] < losses[1]  # and it actually trains
    # the logged global gradient norm (before clipping) agrees too
    norms, ref_norms = step_losses(run, "grad_norm"), step_losses(zero0_losses, "grad_norm")
    np.testing.assert_allclose([norms[s] for s in range(1, 11)], [ref_norms[s] for s in range(1, 11)], rtol=1e-4)


def test_gradient_accumulation_4x1_equals_1x4(tiny_data, tmp_path, zero0_losses):
    proc, run = _train(tmp_path, tiny_data, "acc", train={"micro_batch_size": 1, "global_batch_size": 8})
    _ok(proc)
    losses, ref = step_losses(run), step_losses(zero0_losses)
    np.testing.assert_allclose([losses[s] for s in range(1, 11)], [ref[s] for s in range(1, 11)], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("nproc, stage", [(1, 0), (2, 1), (2, 2)])
def test_stop_and_resume_is_bit_identical(tiny_data, tmp_path, nproc, stage):
    common = dict(parallel={"zero_stage": stage}, model={"dropout": 0.1})
    full, run_full = _train(tmp_path, tiny_data, "full", nproc=nproc, **common)
    _ok(full)
    # The same run, stopped after step 4 with a checkpoint, then started again with the full length.
    first, run_split = _train(tmp_path, tiny_data, "split", nproc=nproc, extra=("--set", "train.max_steps=4"),
                              checkpoint={"save_at_end": True}, **common)
    _ok(first)
    assert [p.name for p in list_checkpoints(run_split / "checkpoints")] == ["step_00000004"]
    second = run_train(run_split / "config.yaml", "--set", "train.max_steps=10", nproc=nproc)
    _ok(second)
    assert "resumed from" in second.stdout + second.stderr
    a, b = step_losses(run_full), step_losses(run_split)
    assert [a[s] for s in range(5, 11)] == [b[s] for s in range(5, 11)]  # bit-identical


@pytest.mark.slow
def test_rank_killed_during_save_resumes_from_previous_checkpoint(tiny_data, tmp_path):
    env = dict(os.environ, MNEMOS_FAULT_KILL_DURING_SAVE="4:1")
    crashed, run = _train(tmp_path, tiny_data, "crash", nproc=2, env=env, checkpoint={"every_steps": 2})
    assert crashed.returncode != 0
    ckpts = list_checkpoints(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002"]
    assert verify(ckpts[0])[0]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert (run / "checkpoints" / ".tmp" / "step_00000004").exists()  # the partial save, never loaded
    again = run_train(run / "config.yaml", nproc=2)
    _ok(again)
    out = again.stdout + again.stderr
    assert "resumed from" in out and "step_00000002" in out
    ref, ref_run = _train(tmp_path, tiny_data, "ref", nproc=2, checkpoint={"every_steps": 2})
    _ok(ref)
    a, b = step_losses(run), step_losses(ref_run)
    assert [a[s] for s in range(3, 11)] == [b[s] for s in range(3, 11)]


def test_corrupt_checkpoint_is_reported_and_skipped(tiny_data, tmp_path):
    """The final checkpoint of a finished run is corrupt: the rerun skips it, resumes from the one before,
    trains to the end again and saves a final checkpoint that verifies in place of the corrupt one."""
    proc, run = _train(tmp_path, tiny_data, "c", nproc=2, extra=("--set", "train.max_steps=4"),
                       checkpoint={"every_steps": 2, "save_at_end": True, "keep_last": 3},
                       parallel={"zero_stage": 2})
    _ok(proc)
    ckpts = list_checkpoints(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000004", "step_00000002"]
    victim = max((p for p in ckpts[0].rglob("*optim_states.pt")), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    ok, reason = verify(ckpts[0])
    assert not ok and "checksum" in reason
    again = run_train(run / "config.yaml", nproc=2)  # the same max_steps: step 4 is trained again
    _ok(again)
    out = again.stdout + again.stderr
    assert "skipping checkpoint" in out and "resumed from" in out and "step_00000002" in out
    ckpts = list_checkpoints(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000004", "step_00000002"]
    assert verify(ckpts[0]) == (True, "ok")  # the corrupt directory was replaced by a new save
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert not [p for p in (run / "checkpoints" / ".tmp").iterdir() if p.is_dir()]  # nothing left aside
    summary = json.loads((run / "results" / "train_summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
    # and the next start finds nothing left to do
    third = run_train(run / "config.yaml", nproc=2)
    _ok(third)
    out = third.stdout + third.stderr
    assert "skipping checkpoint" not in out and "resumed from" in out and "step_00000004" in out
    assert "saved checkpoint" not in out


@pytest.mark.parametrize("nproc, how", [(2, "SIGTERM"), (2, "Ctrl-C"), (1, "Ctrl-C")])
def test_stop_signal_saves_and_exits_0_without_a_traceback(tiny_data, tmp_path, nproc, how):
    """SIGTERM to `mnemos train` (a scheduler's preemption), or Ctrl-C at its terminal (SIGINT to its process
    group): the ranks finish their step, save a checkpoint that verifies, and the command exits 0."""
    import signal
    import subprocess
    import sys
    import time
    from tests.launcher.conftest import REPO
    cfg = write_config(tmp_path / "s.yaml", tmp_path / "s", tiny_data, train={"max_steps": 500})
    env = dict(os.environ, MNEMOS_FAULT_STEP_DELAY_S="0.05")  # ~25 s unless stopped
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "train", str(cfg), "--nproc", str(nproc)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a process group of its own, as at a terminal
    steps = tmp_path / "s" / "logs" / "steps.jsonl"
    deadline = time.monotonic() + 120
    while not (steps.exists() and '"step": 3,' in steps.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "Traceback" not in out + err and "exited with code" not in out + err, out[-3000:] + err[-3000:]
    assert "training preempted" in out + err
    summary = json.loads((tmp_path / "s" / "results" / "train_summary.json").read_text())
    assert summary["status"] == "preempted" and 3 <= summary["step"] < 500
    # the ranks of a local launch get SIGTERM for a Ctrl-C; a single-rank run catches the SIGINT itself
    assert summary["stop_signal"] == ("SIGINT" if (nproc, how) == (1, "Ctrl-C") else "SIGTERM")
    ckpts = list_checkpoints(tmp_path / "s" / "checkpoints")
    assert [p.name for p in ckpts] == [f"step_{summary['step']:08d}"] and verify(ckpts[0])[0]
    assert (tmp_path / "s" / "checkpoints" / "latest").read_text().strip() == ckpts[0].name


def test_resume_refuses_a_different_architecture(tiny_data, tmp_path):
    proc, run = _train(tmp_path, tiny_data, "arch", extra=("--set", "train.max_steps=2"),
                       checkpoint={"save_at_end": True})
    _ok(proc)
    config_before = (run / "config.yaml").read_text()
    again = run_train(run / "config.yaml", "--set", "model.n_layer=3")
    assert again.returncode == 2  # refused before any rank starts, and RUN/config.yaml is left as it was
    assert "model.n_layer=3 differs from the checkpoint" in again.stdout + again.stderr
    assert (run / "config.yaml").read_text() == config_before
    # other training data: the sampler could not continue its order
    again = run_train(run / "config.yaml", "--set", "data.seed=99")
    assert again.returncode == 2
    assert "data.seed=99 differs from the checkpoint" in again.stdout + again.stderr
    assert "`mnemos ckpt import-run`" in again.stdout + again.stderr


CPU_REFUSALS = [
    ("precision.dtype=bf16", "precision.dtype='bf16' needs a CUDA GPU; this run is on cpu (rule: bf16/fp16 only "
                             "where the hardware supports it; use fp32)"),
    ("perf.sdpa_backend=cudnn", "perf.sdpa_backend='cudnn' on cpu (rule: that kernel is CUDA's; use 'auto', "
                                "'flash' or 'math')"),
    ("perf.band_kernel=flex", "perf.band_kernel='flex' on cpu (rule: torch has no FlexAttention backward off CUDA; "
                              "use band_kernel='dense')"),
]


@pytest.mark.parametrize("override, message", CPU_REFUSALS, ids=[o for o, _ in CPU_REFUSALS])
@pytest.mark.parametrize("dry_run", [False, True])
def test_cuda_only_settings_are_refused_before_any_rank_starts_on_cpu(tiny_data, tmp_path, override, message,
                                                                      dry_run):
    from launcher.launch import _cuda_available
    if _cuda_available():
        pytest.skip("this machine has CUDA: the settings are allowed here")
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_data)
    proc = run_train(cfg, "--set", override, *(["--dry-run"] if dry_run else []), nproc=2)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [f"mnemos: {message}"]  # one line, no traceback
    assert "torch.distributed.run" not in proc.stdout  # nothing was launched (or printed to launch)
    assert not (tmp_path / "run").exists()  # and no run directory was left behind


def test_cuda_only_settings_pass_the_launcher_check_on_a_gpu_machine(tiny_data, tmp_path, monkeypatch):
    import launcher.launch
    from launcher.config import ConfigError
    from launcher.train_cli import prepare_run
    monkeypatch.setattr(launcher.launch, "_cuda_available", lambda: True)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_data)
    overrides = [o for o, _ in CPU_REFUSALS]
    run_cfg, _ = prepare_run(str(cfg), overrides, nproc=2, write=False)
    assert (run_cfg.precision.dtype, run_cfg.perf.sdpa_backend, run_cfg.perf.band_kernel) == ("bf16", "cudnn", "flex")
    with pytest.raises(ConfigError, match="needs a CUDA GPU; this run is on cpu"):  # unless told device=cpu
        prepare_run(str(cfg), ["precision.dtype=bf16", "device=cpu"], nproc=2, write=False)
    monkeypatch.setattr(launcher.launch, "_cuda_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device='cuda' but no CUDA device is visible"):
        prepare_run(str(cfg), ["device=cuda"], nproc=2, write=False)


def test_run_directory_layout_and_logs(tiny_data, tmp_path):
    proc, run = _train(tmp_path, tiny_data, "layout", train={"eval_every_steps": 5, "max_steps": 5},
                       logging={"tensorboard": True}, checkpoint={"save_at_end": True})
    _ok(proc)
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "latest").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run / "results" / "train_summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 5
    assert summary["validation"][0]["step"] == 0 and summary["validation"][-1]["step"] == 5
    assert "ETA" in proc.stdout + proc.stderr


def test_validation_loss_does_not_depend_on_the_layout(tiny_data, tmp_path):
    """The same weights give the same validation loss at dp=2, at tp=2 (dp=1) and on one rank with another
    micro batch size: the validation set is eval_batches x global_batch_size samples, not a count of
    per-rank micro-batches. The set here is shorter than that, and not a whole number of micro-batches."""
    import shutil
    from data.gpt_dataset import PackedGPTDataset
    from data.tokenizer import Tokenizer
    n_valid = len(PackedGPTDataset([tiny_data["valid"]], seq_len=64, eos_id=Tokenizer(tiny_data["tokenizer"]).eos_id))
    assert n_valid % 4 and n_valid > 16
    eval_batches = n_valid // 6  # per-rank micro-batch counts would read 4x, 8x or 2x eval_batches samples
    common = dict(train={"max_steps": 4, "eval_every_steps": 4, "eval_batches": eval_batches},
                  checkpoint={"save_at_end": True})
    proc, run = _train(tmp_path, tiny_data, "dp2", nproc=2, parallel={"zero_stage": 2}, **common)
    _ok(proc)
    losses = {"dp2": json.loads((run / "results" / "train_summary.json").read_text())["validation"][-1]}
    for name, nproc, sections in (("tp2", 2, {"parallel": {"tp": 2}}),
                                  ("dp1_micro2", 1, {"train": {**common["train"], "micro_batch_size": 2}})):
        other = tmp_path / name
        shutil.copytree(run / "checkpoints", other / "checkpoints")  # the same weights, read in another layout
        cfg = write_config(tmp_path / f"{name}.yaml", other, tiny_data, **{**common, **sections})
        # eval_every_steps=3: the resumed run (already at max_steps) evaluates once at the end, trains nothing
        proc = run_train(cfg, "--set", "train.eval_every_steps=3", nproc=nproc)
        _ok(proc)
        summary = json.loads((other / "results" / "train_summary.json").read_text())
        assert summary["step"] == 4 and "saved checkpoint" not in proc.stdout + proc.stderr
        losses[name] = summary["validation"][-1]
    assert {v["step"] for v in losses.values()} == {4}
    ref = losses["dp2"]["loss"]
    for name, v in losses.items():
        assert v["loss"] == pytest.approx(ref, rel=1e-5), (name, losses)


def _unigram_perplexity(train_prefix, valid_prefix, vocab):
    from data.indexed import IndexedDataset
    tr = np.concatenate([IndexedDataset(train_prefix)[i] for i in range(len(IndexedDataset(train_prefix)))])
    va = np.concatenate([IndexedDataset(valid_prefix)[i] for i in range(len(IndexedDataset(valid_prefix)))])
    counts = np.bincount(tr.astype(np.int64), minlength=vocab) + 1.0
    p = counts / counts.sum()
    return math.exp(-np.log(p[va.astype(np.int64)]).mean())


@pytest.mark.slow
def test_training_on_real_corpus_beats_unigram_baseline(tiny_data, tmp_path):
    proc, run = _train(tmp_path, tiny_data, "ppl", nproc=2,
                       model={"n_layer": 2, "d_model": 128, "n_head": 4, "n_ctx": 128},
                       data={"seq_len": 128},
                       train={"max_steps": 150, "global_batch_size": 16, "micro_batch_size": 8,
                              "eval_every_steps": 150, "eval_batches": 8},
                       optim={"lr": 3e-3}, schedule={"warmup_tokens": 20 * 16 * 128, "decay_tokens": 150 * 16 * 128},
                       parallel={"zero_stage": 2})
    _ok(proc)
    summary = json.loads((run / "results" / "train_summary.json").read_text())
    before, after = summary["validation"][0]["perplexity"], summary["validation"][-1]["perplexity"]
    unigram = _unigram_perplexity(tiny_data["train"], tiny_data["valid"], tiny_data["vocab_size"])
    print(f"valid perplexity {before:.1f} -> {after:.1f}; unigram baseline {unigram:.1f}")
    assert after < 0.75 * unigram


@pytest.mark.slow
@pytest.mark.parametrize("nproc, stage", [(2, 0), (4, 3)])
def test_tensor_parallel_training_reproduces_the_single_process_curve(tiny_data, tmp_path, zero0_losses,
                                                                       nproc, stage):
    """TP=2 (x DP=2 with ZeRO-3 on 4 ranks) through `mnemos train` gives the TP=1, 1-rank losses."""
    proc, run = _train(tmp_path, tiny_data, f"tp2_{nproc}", nproc=nproc,
                       parallel={"tp": 2, "zero_stage": stage})
    _ok(proc)
    losses, ref = step_losses(run), step_losses(zero0_losses)
    np.testing.assert_allclose([losses[s] for s in range(1, 11)], [ref[s] for s in range(1, 11)], rtol=1e-5)
    norms, ref_norms = step_losses(run, "grad_norm"), step_losses(zero0_losses, "grad_norm")
    np.testing.assert_allclose([norms[s] for s in range(1, 11)], [ref_norms[s] for s in range(1, 11)], rtol=1e-4)


def test_asynchronous_finalize_leaves_verified_checkpoints(tiny_data, tmp_path):
    proc, run = _train(tmp_path, tiny_data, "async", extra=("--set", "train.max_steps=4"),
                       checkpoint={"every_steps": 2, "save_at_end": True, "keep_last": 3, "async_finalize": True})
    _ok(proc)
    ckpts = list_checkpoints(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000004", "step_00000002"]
    assert all(verify(p)[0] for p in ckpts)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
