"""Bad numbers on the downstream commands stop at parse time, naming the option, the rule and the value,
before a run directory is made."""

import re

import pytest

from launcher.cli import main as mnemos


@pytest.mark.parametrize("command, option, value, message", [
    ("slots", "--batch-size", "0", "argument --batch-size: must be an integer >= 1, got 0"),
    ("slots", "--iters", "0", "argument --iters: must be an integer >= 1, got 0"),
    ("slots", "--eval-size", "0", "argument --eval-size: must be an integer >= 1, got 0"),
    ("slots", "--lr", "-0.001", "argument --lr: must be a number > 0, got -0.001"),
    ("slots", "--seeds", "0,x", "argument --seeds: each item must be an integer >= 0, got 'x' (in '0,x')"),
    ("slots", "--seeds", "1,2,1", "argument --seeds: must not repeat an item, got '1,2,1'"),
    ("slots", "--time-limit", "-5", "argument --time-limit: must be a number >= 0, got -5"),
    ("mil", "--folds", "1", "argument --folds: must be an integer >= 2, got 1"),
    ("repertoire", "--witness-rates", "0.01,1.5",
     "argument --witness-rates: each item must be a number in [0, 1], got 1.5 (in '0.01,1.5')"),
    ("repertoire", "--epochs", "ten", "argument --epochs: must be an integer >= 1, got 'ten'"),
    ("repertoire", "--witness-rates", "0.01,0.01", "argument --witness-rates: must not repeat an item, got '0.01,0.01'"),
    ("repertoire", "--motif", "XZ1", "argument --motif: must be amino-acid letters of ACDEFGHIKLMNPQRSTVWY (upper "
                                     "case), got 'XZ1'"),
    ("repertoire", "--motif", "slgy", "argument --motif: must be amino-acid letters of ACDEFGHIKLMNPQRSTVWY (upper "
                                      "case), got 'slgy'"),
    ("repertoire", "--motif", "", "argument --motif: must be at least one amino-acid letter of ACDEFGHIKLMNPQRSTVWY, "
                                  "got ''"),
    ("bert-heads", "--mass", "0", "argument --mass: must be a number in (0, 1], got 0"),
    ("toy", "--steps", "0", "argument --steps: must be an integer >= 1, got 0"),
])
def test_bad_number_is_refused_before_the_run_starts(tmp_path, capsys, command, option, value, message):
    bags = tmp_path / "bags.npz"
    bags.touch()  # the path must exist; its content is not read when an option is refused
    required = {"mil": ["--dataset", str(bags)], "bert-heads": ["--init", "random"]}.get(command, [])
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        mnemos(["downstream", command, *required, option, value, "--out", str(out)])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command, option", [("mil", "--dataset"), ("repertoire", "--metadata"),
                                             ("bert-heads", "--attention")])
def test_missing_input_file_is_refused_before_the_run_starts(tmp_path, capsys, command, option):
    out = tmp_path / "run"
    missing = str(tmp_path / "typo.npz")
    with pytest.raises(SystemExit) as stop:
        mnemos(["downstream", command, option, missing, "--out", str(out)])
    assert stop.value.code == 2
    assert f"argument {option}: no such file or directory: '{missing}'" in capsys.readouterr().err
    assert not out.exists()


def test_set_prediction_needs_a_slot_per_object(tmp_path, capsys):
    out = tmp_path / "run"
    assert mnemos(["downstream", "slots", "--dataset", "sprites", "--task", "set-prediction", "--num-slots", "3",
                   "--out", str(out)]) == 2  # refused in one line
    assert re.search(r"--num-slots 3 \(rule: set prediction needs a slot for each of the up to 4 objects of "
                     r"sprites\)", capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("command, option, name, content, message", [
    ("mil", "--dataset", "bags.npz", b"instances,bag_id\n", "mil: {path}: not an npz archive"),
    ("bert-heads", "--attention", "attn.npy", b"not numpy", "bert-heads: {path}: not a .npy array"),
    ("bert-heads", "--attention", "attn.pt", b"not torch", "bert-heads: {path}: not a file of tensors that "
                                                           "torch.load(weights_only=True) reads"),
])
def test_an_input_file_of_another_format_is_named_before_the_run_starts(tmp_path, command, option, name, content,
                                                                         message, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "run"
    assert mnemos(["downstream", command, option, str(path), "--out", str(out)]) == 2  # refused in one line
    assert re.search(re.escape(message.format(path=path)), capsys.readouterr().err)
    assert not out.exists()


def test_attention_of_the_wrong_shape_is_named_before_the_run_starts(tmp_path, capsys):
    import numpy as np
    np.save(tmp_path / "attn.npy", np.full((2, 3, 4), 0.25, np.float32))
    out = tmp_path / "run"
    assert mnemos(["downstream", "bert-heads", "--attention", str(tmp_path / "attn.npy"), "--out", str(out)]) == 2
    assert re.search(r"bert-heads: attention must be \(layers, heads, N, N\) or \(layers, B, heads, N, N\), "
                     r"got \(2, 3, 4\)", capsys.readouterr().err)
    assert not out.exists()


TRAINING_CONFIG = "model:\n  arch: bert\n  preset: bert-tiny\ntrain:\n  steps: 100\n"


@pytest.mark.parametrize("command, required", [
    ("toy", []),
    ("bert-heads", ["--init", "random", "--text", "TEXT"]),
    ("mil", ["--dataset", "BAGS"]),
    ("repertoire", []),
])
def test_out_holding_another_runs_config_is_refused(tmp_path, capsys, command, required):
    """`--out RUN` of a training run (or of another downstream task) must not have its config.yaml replaced."""
    (tmp_path / "t.txt").write_text("some text\n")
    (tmp_path / "bags.npz").touch()
    required = [{"TEXT": str(tmp_path / "t.txt"), "BAGS": str(tmp_path / "bags.npz")}.get(a, a) for a in required]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(TRAINING_CONFIG)
    assert mnemos(["downstream", command, *required, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"downstream {command}: --out {run} holds a config.yaml of another run" in err
    assert len(err.strip().splitlines()) == 1
    assert (run / "config.yaml").read_text() == TRAINING_CONFIG
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_rerun_of_the_same_task_into_its_directory_works_and_another_task_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert mnemos(["downstream", "toy", "--task", "latch", "--steps", "1", "--out", str(run)]) == 0
    assert mnemos(["downstream", "toy", "--task", "latch", "--steps", "2", "--out", str(run)]) == 0
    assert "steps: 2" in (run / "config.yaml").read_text()
    before = (run / "config.yaml").read_text()
    assert mnemos(["downstream", "bert-heads", "--init", "random", "--text", str(run / "config.yaml"),
                   "--out", str(run)]) == 2
    assert "holds a config.yaml of another run" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before


def test_run_dir_of_an_earlier_version_is_still_the_tasks_own(tmp_path):
    """config.yaml written before `downstream_task` was recorded: the same option names mean the same task."""
    import yaml
    from evaluation.downstream.hopfield_common import RunDir
    config = {"log_level": "INFO", "command": "downstream", "task": "all", "steps": 3, "out": str(tmp_path)}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    RunDir.create(tmp_path, config, "toy")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["downstream_task"] == "toy"


@pytest.mark.parametrize("options, message", [
    (["--motif", "ACDEFGH"], "repertoire: --motif ACDEFGH has 7 letters (rule: at most 6, the variable middle of "
                             "the shortest simulated sequence, 10 residues minus 'CAS' and 'F')"),
    (["--kernels", "5", "--seed-kernels", "16"], "repertoire: --seed-kernels 16 (rule: at most --kernels 5; seeded kernels are a subset of "
                         "the kernels)"),
])
def test_repertoire_settings_that_cannot_run_are_refused_before_simulating(tmp_path, options, message, capsys):
    out = tmp_path / "run"
    assert mnemos(["downstream", "repertoire", *options, "--out", str(out)]) == 2  # refused in one line
    assert re.search(re.escape(message), capsys.readouterr().err)
    assert not out.exists()


def test_witness_rate_zero_implants_no_witness_and_a_six_letter_motif_fits():
    from evaluation.downstream.repertoire_data import SimConfig, simulate_repertoires
    none = simulate_repertoires(SimConfig(n_repertoires=6, sequences_per_repertoire=20, witness_rate=0.0))
    assert [r.witnesses for r in none] == [0] * 6
    some = simulate_repertoires(SimConfig(n_repertoires=6, sequences_per_repertoire=20, witness_rate=0.1,
                                          motif="ACDEFG"))
    assert {r.witnesses for r in some if r.label == 1} == {2}
    assert all(sum("ACDEFG" in s for s in r.sequences) >= 2 for r in some if r.label == 1)


def test_results_json_has_null_where_a_value_is_not_finite(tmp_path):
    import json
    import math

    import numpy as np
    from evaluation.downstream.hopfield_common import RunDir, mean_pm_se, write_results
    run = RunDir.create(tmp_path / "run", {"command": "downstream"}, "toy")
    payload = {"a": float("nan"), "b": [np.float32("nan"), 1.5, np.float64("inf")], "c": np.array([np.nan, 2.0]),
               "d": {"e": (float("-inf"), 3)}}
    j, m = write_results(run, "x", payload, ["what", "value"], [["nan", float("nan")], ["one", 0.25]], "title")
    back = json.loads(j.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert back == {"a": None, "b": [None, 1.5, None], "c": [None, 2.0], "d": {"e": [None, 3]}}
    assert "| nan | - |" in m.read_text() and "| one | 0.2500 |" in m.read_text()
    assert mean_pm_se(0.896, float("nan"), scale=100) == "89.60 ± - (one repetition)"
    assert mean_pm_se(0.5, 0.01, ".3f") == "0.500 ± 0.010" and mean_pm_se(math.nan, 0.1) == "-"
