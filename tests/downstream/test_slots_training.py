"""`mnemos downstream slots`: CLI registration, a CI-sized object-discovery run against the k-means
baseline, exact resume from checkpoints, set-prediction loss and run, data parallel with torchrun (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.downstream import scenes, slots, slots_eval, slots_model, slots_run
from evaluation.downstream.cli import TASK_MODULES, task_parser
from launcher.config import ConfigError
from tests.downstream.slots_ci import CI_ARGS, CI_STEPS

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv):
    return task_parser("evaluation.downstream.slots").parse_args(["slots", *argv])


def test_cli_registers_slots(tmp_path):
    assert TASK_MODULES["slots"][0] == "evaluation.downstream.slots"
    args = parse("--dataset", "sprites", "--task", "set-prediction", "--steps", "7", "--seeds", "0,1,2",
                 "--out", str(tmp_path))
    assert args.func is slots.main and args.dataset == "sprites" and args.steps == 7 and args.seeds == "0,1,2"
    with pytest.raises(SystemExit):
        parse("--dataset", "clevr", "--out", str(tmp_path))


@pytest.fixture(scope="module")
def ci_run(slots_ci_run):
    """The CI-sized training run (tiny model, 14x14 Tetrominoes, 10,000 steps), started in the background
    after collection (slots_ci.py)."""
    out = slots_ci_run.wait()
    return out, json.loads((out / "results" / "slots_tetrominoes-mini_discovery.json").read_text())


@pytest.mark.slow
def test_ci_run_writes_run_directory(ci_run):
    out, res = ci_run
    assert (out / "config.yaml").exists() and (out / "logs" / "slots.log").exists()
    assert sorted(p.name for p in (out / "checkpoints" / "seed0").glob("*.pt")) == ["step00005000.pt",
                                                                                   "step00010000.pt"]
    assert list((out / "tensorboard" / "seed0").glob("events.out.tfevents.*"))
    assert (out / "results" / "slots_tetrominoes-mini_discovery.md").read_text().startswith("# Slot Attention")
    assert Path(res["per_seed"][0]["picture"]).stat().st_size > 1000
    grid = {(r["num_slots"], r["iters"]) for r in res["per_seed"][0]["flexibility"]}
    assert grid == {(4, 3), (4, 6), (4, 9), (6, 3), (6, 6), (6, 9)}  # more slots and iterations at test time
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(out / "tensorboard" / "seed0"), size_guidance={"scalars": 0})  # 0: keep all
    ea.Reload()
    assert "train/loss" in ea.Tags()["scalars"] and "eval/fg_ari" in ea.Tags()["scalars"]
    # the losses are read back once per log line, yet every step's loss is in the curve
    curve = ea.Scalars("train/loss")
    assert [e.step for e in curve] == list(range(1, CI_STEPS + 1))
    assert curve[-1].value == pytest.approx(res["per_seed"][0]["final_train_loss"], rel=1e-6)
    assert "masks/input_recon_slots" in ea.Tags()["images"]


@pytest.mark.slow
def test_ci_run_learns(ci_run):
    out, res = ci_run
    spec = scenes.SPECS["tetrominoes-mini"]
    args = parse(*CI_ARGS, "--out", str(out))
    torch.manual_seed(0)
    untrained = slots_model.build(args, spec)
    ev = scenes.render(spec.name, 256, slots_eval.EVAL_SEED)
    before = slots_eval.evaluate(untrained, args, spec, ev, torch.device("cpu"), 0)
    after, kmeans = res["median"], res["kmeans_baseline"]
    assert res["eval_iters"] == 6 and res["implicit_grad"]
    assert after["mse"] < before["mse"] * 0.2  # the reconstruction is learnt
    # Slot attention's own grouping clearly beats k-means on pixels, colour alone or colour and position.
    assert after["fg_ari_attention"] > kmeans["rgb"] + 0.03
    assert after["fg_ari_attention"] > before["fg_ari_attention"] + 0.2
    # The decoder's masks (the paper's figure) beat position-aware k-means clearly; against colour-only
    # k-means they need longer training (README).
    assert after["fg_ari"] > kmeans["rgbxy"] + 0.1


@pytest.mark.parametrize("preset", sorted(slots_model.PRESETS))
@pytest.mark.parametrize("dataset", sorted(scenes.SPECS))
def test_every_preset_builds_for_every_scene_family(preset, dataset):
    """`--preset P --dataset D` must build for every pair the CLI offers, and its autoencoder draws D's size."""
    spec = scenes.SPECS[dataset]
    args = parse("--dataset", dataset, "--preset", preset, "--out", "unused")
    model = slots_model.build(args, spec)
    decoder = model.decoder
    assert decoder.image_size == spec.image_size
    if preset == "pixel":  # a per-pixel decoder: full-resolution broadcast, only 1x1 convolutions
        assert decoder.broadcast_size == spec.image_size
        convs = [m for m in decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        assert convs and all(m.kernel_size == (1, 1) for m in convs)
    set_args = parse("--dataset", dataset, "--preset", preset, "--task", "set-prediction", "--out", "unused")
    pred = slots_model.build(set_args, spec)(torch.rand(1, 3, *spec.image_size))["pred"]
    assert pred.shape == (1, spec.num_slots, slots_model.target_dim(spec))


def test_upsample_nearest_maps_each_pixel_to_its_feature_cell():
    labels = np.arange(4).reshape(1, 2, 2)  # a 2x2 attention grid, as a stride-2 encoder gives for 3x3 or 4x4
    np.testing.assert_array_equal(slots_eval.upsample_nearest(labels, (4, 4))[0],
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    np.testing.assert_array_equal(slots_eval.upsample_nearest(labels, (3, 3))[0], [[0, 0, 1], [0, 0, 1], [2, 2, 3]])
    same = np.random.default_rng(0).integers(0, 5, (2, 7, 7))
    np.testing.assert_array_equal(slots_eval.upsample_nearest(same, (7, 7)), same)


def test_fg_ari_by_number_of_objects():
    per_scene = np.array([0.0, 1.0, 0.5, 0.7, 0.9])
    present = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], bool)
    by_count = slots_eval.fg_ari_by_count(per_scene, present)
    assert by_count == pytest.approx({"fg_ari_1_objects": 0.5, "fg_ari_2_objects": 0.5, "fg_ari_3_objects": 0.8})
    assert slots_eval.fg_ari_by_count(per_scene[3:], present[3:]) == {}  # one count (Tetrominoes): nothing to split


def test_mask_entropy_term():
    """--mask-entropy adds WEIGHT x the mean per-pixel entropy of the slot masks to the MSE from step
    --mask-entropy-from on: zero for masks where one slot draws each pixel, log K where K slots share every
    pixel equally."""
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 7, 7)), 5).permute(0, 3, 1, 2).float()
    assert slots_model.mask_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-9)
    assert slots_model.mask_entropy(torch.full((2, 5, 7, 7), 0.2)).item() == pytest.approx(np.log(5), rel=1e-6)
    plain = parse("--dataset", "tetrominoes-mini", "--preset", "tiny", "--out", "unused")
    weighted = parse("--dataset", "tetrominoes-mini", "--preset", "tiny", "--mask-entropy", "0.5",
                     "--mask-entropy-from", "100", "--out", "unused")
    torch.manual_seed(0)
    model = slots_model.build(plain, scenes.SPECS["tetrominoes-mini"])
    batch = slots_model.training_batch(plain, scenes.SPECS["tetrominoes-mini"], 0, 0, 4, "cpu", 0)
    out = model(batch["x"], generator=torch.Generator().manual_seed(1))
    base = slots_model.compute_loss(model, plain, batch, torch.Generator().manual_seed(1))
    total = slots_model.compute_loss(model, weighted, batch, torch.Generator().manual_seed(1), step=100)
    assert total.item() == pytest.approx(base.item() + 0.5 * slots_model.mask_entropy(out["masks"]).item(), rel=1e-5)
    assert total.item() > base.item()
    before = slots_model.compute_loss(model, weighted, batch, torch.Generator().manual_seed(1), step=99)
    assert before.item() == base.item()  # not yet: --mask-entropy-from 100


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path):
    common = ["--dataset", "tetrominoes-mini", "--preset", "tiny", "--batch-size", "4", "--eval-size", "8",
              "--ckpt-every", "2", "--eval-every", "100", "--threads", "1", "--no-baseline", "--seeds", "3"]
    a = parse(*common, "--steps", "4", "--out", str(tmp_path / "a"))
    a.func(a)
    b = parse(*common, "--steps", "2", "--out", str(tmp_path / "b"))
    b.func(b)
    b = parse(*common, "--steps", "4", "--out", str(tmp_path / "b"))
    b.func(b)  # resumes from step 2
    wa = _weights(tmp_path / "a" / "checkpoints" / "seed3" / "step00000004.pt")
    wb = _weights(tmp_path / "b" / "checkpoints" / "seed3" / "step00000004.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    # a torn newest checkpoint is skipped, the previous one is used
    (tmp_path / "b" / "checkpoints" / "seed3" / "step00000006.pt").write_bytes(b"torn")
    spec = scenes.SPECS["tetrominoes-mini"]
    model = slots_model.build(b, spec)
    opt = torch.optim.Adam(model.parameters())
    assert slots_run.load_latest(tmp_path / "b" / "checkpoints" / "seed3", model, opt, "cpu") == 4


def test_time_limit_stops_checkpoints_and_resumes(tmp_path):
    common = ["--dataset", "tetrominoes-mini", "--preset", "tiny", "--batch-size", "4", "--eval-size", "8",
              "--ckpt-every", "100", "--eval-every", "100", "--threads", "1", "--no-baseline", "--seeds", "2",
              "--steps", "3"]
    full = parse(*common, "--out", str(tmp_path / "full"))
    full.func(full)
    cut = parse(*common, "--time-limit", "0", "--out", str(tmp_path / "cut"))
    cut.func(cut)  # the limit is reached after the first step
    res = json.loads((tmp_path / "cut" / "results" / "slots_tetrominoes-mini_discovery.json").read_text())
    assert res["per_seed"][0]["steps"] == 1 and "fg_ari" in res["per_seed"][0]
    assert "1 of 3 steps (stopped by --time-limit)" in (
        tmp_path / "cut" / "results" / "slots_tetrominoes-mini_discovery.md").read_text()
    assert [p.name for p in (tmp_path / "cut" / "checkpoints" / "seed2").glob("*.pt")] == ["step00000001.pt"]
    again = parse(*common, "--out", str(tmp_path / "cut"))
    again.func(again)  # resumes at step 1 and finishes
    res2 = json.loads((tmp_path / "cut" / "results" / "slots_tetrominoes-mini_discovery.json").read_text())
    first = torch.load(tmp_path / "cut" / "checkpoints" / "seed2" / "step00000003.pt", weights_only=True)
    assert first["train_seconds"] >= res["per_seed"][0]["train_seconds"] - 0.05  # both sessions counted
    assert res2["per_seed"][0]["train_seconds"] == pytest.approx(first["train_seconds"], abs=0.1)
    wa = _weights(tmp_path / "full" / "checkpoints" / "seed2" / "step00000003.pt")
    wb = _weights(tmp_path / "cut" / "checkpoints" / "seed2" / "step00000003.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_cpu_run_leaves_denormals_as_it_found_them(tmp_path):
    """Training flushes denormals to zero on the CPU for speed, and turns that off again when it returns."""
    args = parse("--dataset", "tetrominoes-mini", "--preset", "tiny", "--batch-size", "2", "--eval-size", "8",
                 "--threads", "1", "--no-baseline", "--seeds", "0", "--steps", "1", "--out", str(tmp_path))
    assert args.func(args) == 0
    assert (torch.tensor([1e-38]) * 0.1).item() > 0


def test_prefetch_trains_on_the_same_batches(tmp_path):
    """Scenes rendered one step ahead in the background thread are the scenes the step would render."""
    common = ["--dataset", "sprites", "--task", "set-prediction", "--preset", "tiny", "--batch-size", "4",
              "--eval-size", "8", "--ckpt-every", "3", "--threads", "1", "--seeds", "1", "--steps", "3"]
    for flag in ("--prefetch", "--no-prefetch"):
        args = parse(*common, flag, "--out", str(tmp_path / flag))
        assert args.func(args) == 0
    wa = _weights(tmp_path / "--prefetch" / "checkpoints" / "seed1" / "step00000003.pt")
    wb = _weights(tmp_path / "--no-prefetch" / "checkpoints" / "seed1" / "step00000003.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """`--compile` trains the same model: after 6 steps the weights agree to float rounding, and the compiled
    graph really ran (inductor wrote its kernels' cache)."""
    common = ["--dataset", "tetrominoes-mini", "--preset", "tiny", "--batch-size", "8", "--eval-size", "8",
              "--ckpt-every", "6", "--threads", "1", "--no-baseline", "--seeds", "0", "--steps", "6",
              "--implicit-grad"]
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        args = parse(*common, *extra, "--out", str(tmp_path / name))
        assert args.func(args) == 0
    import torch._dynamo.utils as dynamo_utils
    assert dynamo_utils.counters["inductor"], "nothing was compiled"
    we = _weights(tmp_path / "eager" / "checkpoints" / "seed0" / "step00000006.pt")
    wc = _weights(tmp_path / "compiled" / "checkpoints" / "seed0" / "step00000006.pt")
    assert we.keys() == wc.keys()  # checkpoints keep the plain module's names
    for k in we:
        torch.testing.assert_close(wc[k], we[k], rtol=1e-3, atol=1e-4)


def test_bf16_autocast_follows_the_fp32_loss_curve():
    spec = scenes.SPECS["tetrominoes-mini"]
    args = parse("--dataset", "tetrominoes-mini", "--preset", "tiny", "--implicit-grad", "--out", "unused")
    curves = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = slots_model.build(args, spec)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        losses = []
        for step in range(120):
            batch = slots_model.training_batch(args, spec, 0, 0, 16, torch.device("cpu"), step)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = slots_model.compute_loss(model, args, batch, torch.Generator().manual_seed(step))
            assert loss.dtype == torch.float32
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves[bf16] = np.array(losses)
    assert not np.array_equal(curves[True], curves[False])  # bf16 did run: the losses differ in low bits
    late = slice(80, 120)
    assert curves[True][late].mean() < 0.8 * curves[True][:10].mean()  # it learns
    np.testing.assert_allclose(curves[True][late].mean(), curves[False][late].mean(), rtol=0.03)


def test_set_prediction_loss_is_permutation_invariant():
    torch.manual_seed(0)
    target = torch.rand(3, 2, 6)
    pred = torch.rand(3, 4, 6)
    perm = torch.tensor([2, 0, 3, 1])
    l1 = slots_model.set_prediction_loss(pred, target)
    l2 = slots_model.set_prediction_loss(pred[:, perm], target)
    torch.testing.assert_close(l1, l2)
    exact = torch.nn.functional.pad(target, (0, 0, 0, 2))[:, perm]  # targets hidden among "absent" rows
    assert slots_model.set_prediction_loss(exact, target).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 target objects for 1 slots"):
        slots_model.set_prediction_loss(pred[:, :1], target)  # fewer slots than objects: no object is dropped silently


def test_ap_thresholds_are_the_papers_as_fractions_of_the_coordinate_span():
    """App. E.2's thresholds are in CLEVR units (coordinates in [-3, 3]); an object predicted 0.1 image
    units away (0.6 CLEVR units) is found at threshold 1 but not at 0.5."""
    target = np.array([[[0.5, 0.5, 1.0, 0.0, 1.0]]])  # (y, x), a 2-class one-hot, "is real"
    pred = np.array([[[0.5, 0.6, 1.0, 0.0, 0.9]]])
    scores = slots_eval.set_prediction_scores(pred, target, [2])
    assert scores == {"ap_inf": 1.0, "ap_1": 1.0, "ap_0.5": 0.0, "ap_0.25": 0.0, "ap_0.125": 0.0}


def test_set_prediction_run(tmp_path):
    args = parse("--dataset", "sprites", "--task", "set-prediction", "--preset", "tiny", "--steps", "6",
                 "--batch-size", "4", "--eval-size", "16", "--threads", "1", "--seeds", "0,1", "--out", str(tmp_path))
    assert args.func(args) == 0
    res = json.loads((tmp_path / "results" / "slots_sprites_set_prediction.json").read_text())
    assert set(res["median"]) >= {"ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125"}
    assert [r["seed"] for r in res["per_seed"]] == [0, 1]
    assert all(0 <= res["median"][k] <= 1 for k in res["median"] if k.startswith("ap_"))


@pytest.mark.slow
def test_data_parallel_two_ranks_gloo(tmp_path):
    """`--nproc 2` starts two ranks with torchrun (gloo on CPU) that train one model on the split batch."""
    rc, err = _cli("--dataset", "tetrominoes-mini", "--preset", "tiny", "--steps", "4", "--batch-size", "8",
                   "--eval-size", "8", "--ckpt-every", "2", "--no-baseline", "--device", "cpu", "--threads", "1",
                   "--nproc", "2", "--out", str(tmp_path))
    assert rc == 0, err[-3000:]
    cfg = (tmp_path / "config.yaml").read_text()
    assert "world_size: 2" in cfg
    assert (tmp_path / "checkpoints" / "seed0" / "step00000004.pt").exists()
    assert json.loads((tmp_path / "results" / "slots_tetrominoes-mini_discovery.json").read_text())["per_seed"]


@pytest.mark.slow
def test_sigterm_to_nproc_command_leaves_no_rank_running(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    parent = subprocess.Popen([sys.executable, "-m", "launcher.cli", "downstream", "slots", "--dataset",
                               "tetrominoes-mini", "--preset", "tiny", "--steps", "1000000", "--batch-size", "4",
                               "--log-every", "5", "--no-baseline", "--device", "cpu", "--threads", "1",
                               "--nproc", "2", "--out", str(out)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ranks() -> list[int]:  # processes whose command line names this run's directory, but the parent
        pids = []
        for proc_dir in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if str(out).encode() in cmdline and int(proc_dir.name) != parent.pid:
                pids.append(int(proc_dir.name))
        return pids

    try:
        deadline = time.monotonic() + 120
        log = out / "logs" / "slots.log"
        while not (log.exists() and " step " in log.read_text()):  # both ranks are training
            assert parent.poll() is None and time.monotonic() < deadline, "the ranks did not start training"
            time.sleep(0.5)
        assert len(ranks()) >= 3  # torchrun and its two ranks
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while ranks() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ranks() == []
    finally:
        parent.kill()
        for pid in ranks():
            os.kill(pid, signal.SIGKILL)


def test_nproc_that_does_not_split_the_batch_is_refused_before_any_rank_starts(tmp_path):
    rc, err = _cli("--dataset", "tetrominoes-mini", "--preset", "tiny", "--steps", "4", "--batch-size", "8",
                   "--nproc", "3", "--device", "cpu", "--out", str(tmp_path / "run"))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--batch-size 8 with --nproc 3 (rule: the global batch splits evenly over the ranks)" in err
    assert not (tmp_path / "run").exists()


def test_ranks_get_the_same_options():
    argv = ["--dataset", "sprites", "--seeds", "0,2", "--lr", "1e-3", "--implicit-grad", "--no-prefetch",
            "--time-limit", "6", "--warmup-steps", "10", "--out", "runs/x", "--nproc", "2", "--compile"]
    args = parse(*argv)
    again = parse(*slots.rank_argv(args))
    assert "--nproc" not in slots.rank_argv(args) and again.nproc == 1
    assert {k: v for k, v in vars(again).items() if k != "nproc"} == {k: v for k, v in vars(args).items()
                                                                         if k != "nproc"}


def _cli(*argv):
    """`python -m launcher.cli downstream slots ...` in a child process: exit code and stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "downstream", "slots", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def test_run_directory_refuses_other_options_and_resumes_with_more_steps(tmp_path, caplog):
    """A run directory holds one run: a rerun with another preset, dataset, task or model option is refused
    in one line, before RUN/config.yaml is rewritten; a larger --steps resumes (another learning rate too,
    said in the log), a smaller one evaluates."""
    common = ["--dataset", "tetrominoes-mini", "--preset", "tiny", "--batch-size", "4", "--eval-size", "8",
              "--threads", "1", "--no-baseline", "--seeds", "0", "--out", str(tmp_path)]
    first = parse(*common, "--steps", "2")
    assert first.func(first) == 0
    config = (tmp_path / "config.yaml").read_text()
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    rc, err = _cli(*common, "--steps", "2", "--preset", "cpu")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--preset cpu" in err and "--preset tiny" in err and "another --out" in err
    assert (tmp_path / "config.yaml").read_text() == config
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files  # nothing written
    for flag, saved in ((["--dataset", "sprites"], "--dataset tetrominoes-mini"),
                        (["--task", "set-prediction"], "--task discovery"),
                        (["--implicit-grad"], "leave out --implicit-grad"), (["--num-slots", "6"], "--num-slots 4")):
        again = parse(*common, "--steps", "2", *flag)
        with pytest.raises(ConfigError, match=saved):
            again.func(again)
    assert (tmp_path / "config.yaml").read_text() == config
    more = parse(*common, "--steps", "3", "--time-limit", "5", "--eval-iters", "4", "--lr", "5e-4")
    with caplog.at_level("WARNING", logger="mnemos.slots"):
        assert more.func(more) == 0  # resume-compatible options
    note = "another recipe than its checkpoints were trained with: --lr 0.0005 (was --lr 0.0004)"
    assert note in caplog.text and note in (tmp_path / "logs" / "slots.log").read_text()  # the run's own log too
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "seed0").glob("*.pt")) == ["step00000002.pt",
                                                                                         "step00000003.pt"]
    state = torch.load(tmp_path / "checkpoints" / "seed0" / "step00000003.pt", weights_only=True)
    assert state["options"]["preset"] == "tiny" and state["options"]["warmup_steps"] == 1
    assert state["options"]["lr"] == 5e-4  # the recipe of the session that saved it
    assert state["train_seconds"] > 0 and np.isfinite(state["train_loss"])
    # a smaller --steps evaluates the checkpoint, and the report says so (not a --time-limit stop)
    fewer = parse(*common, "--steps", "1", "--lr", "5e-4")
    assert fewer.func(fewer) == 0
    md = (tmp_path / "results" / "slots_tetrominoes-mini_discovery.md").read_text()
    assert "already at step 3, past --steps 1: evaluated only" in md and "time-limit" not in md
    res = json.loads((tmp_path / "results" / "slots_tetrominoes-mini_discovery.json").read_text())
    seed = res["per_seed"][0]
    assert seed["steps"] == 3 and seed["final_train_loss"] == pytest.approx(state["train_loss"])
    assert seed["train_seconds"] == pytest.approx(state["train_seconds"], abs=0.1)  # the sessions that trained


def test_run_directory_of_an_older_version_is_checked_by_its_shapes(tmp_path):
    """Checkpoints without recorded options (an older version): RUN/config.yaml counts where its options fit
    the checkpoint; one that the older version rewrote for a run it then could not load does not."""
    import yaml
    common = ["--dataset", "tetrominoes-mini", "--preset", "tiny", "--batch-size", "4", "--eval-size", "8",
              "--threads", "1", "--no-baseline", "--seeds", "0", "--out", str(tmp_path)]
    first = parse(*common, "--steps", "1")
    assert first.func(first) == 0
    ckpt = tmp_path / "checkpoints" / "seed0" / "step00000001.pt"
    state = torch.load(ckpt, weights_only=True)
    torch.save({k: state[k] for k in ("model", "optimizer", "step")}, ckpt)  # what the older version saved
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(cfg, num_slots=None, warmup_steps=None)))
    with pytest.raises(ConfigError, match=r"--iters 2 does not match .* --iters 3 \(.*config.yaml"):
        slots_run.check_resumable(tmp_path, parse(*common, "--steps", "2", "--iters", "2"))
    with pytest.raises(ConfigError, match="does not fit the model these options build"):
        slots_run.check_resumable(tmp_path, parse(*common, "--steps", "2", "--preset", "cpu"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(cfg, preset="cpu")))  # rewritten, then it crashed
    again = parse(*common, "--steps", "2")
    assert again.func(again) == 0  # resumes: the checkpoint, not that config.yaml, says what the run is
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["preset"] == "tiny"
    (tmp_path / "config.yaml").unlink()  # the new checkpoints record their options
    with pytest.raises(ConfigError, match=r"--preset cpu does not match .* --preset tiny \(.*step0+2\.pt"):
        slots_run.check_resumable(tmp_path, parse(*common, "--steps", "3", "--preset", "cpu"))


def test_steps_text_says_why_a_seed_has_other_steps():
    assert slots_run._steps_text(5, [{"seed": 0, "steps": 5}]) == "5 steps"
    assert slots_run._steps_text(5, [{"seed": 0, "steps": 2}]) == "2 of 5 steps (stopped by --time-limit)"
    assert slots_run._steps_text(500, [{"seed": 0, "steps": 1801}]) == \
        "already at step 1801, past --steps 500: evaluated only"
    mixed = slots_run._steps_text(500, [{"seed": 0, "steps": 1801}, {"seed": 1, "steps": 500}])
    assert mixed == "seed 0: already at step 1801, past --steps 500: evaluated only; seed 1: 500 steps"


def test_device_is_checked_while_parsing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("--device", "tpu", "--out", str(tmp_path))
    assert exit_.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
    assert parse("--device", "cpu", "--out", str(tmp_path)).device == "cpu"
