"""MIL with Hopfield pooling on the real Tiger/Fox bags, CI-sized protocol (1 repetition, 2 folds, tiny grid)."""

import json
import re

import numpy as np
import pytest
import torch

from evaluation.downstream import mil


def test_loader_pads_bags_and_keeps_folds(shared_data):
    data = mil.load_mil_npz(shared_data / "mil" / "tiger.npz")
    raw = np.load(shared_data / "mil" / "tiger.npz")
    assert data.n_bags == 200 and data.folds.shape == (5, 10, 200)
    assert int((~data.mask).sum()) == len(raw["instances"])
    b = int(raw["bag_id"][0])
    assert torch.allclose(data.bags[b, 0], torch.from_numpy(raw["instances"][0]))
    # every bag is in exactly one test fold per repetition
    assert ((~data.folds).sum(axis=1) == 1).all()


def test_model_ignores_padding():
    torch.manual_seed(0)
    net = mil.MILNet(10, mil.MILConfig(hidden=8, layers=1, heads=2, head_dim=4))
    net.eval()
    x, m = torch.randn(2, 3, 10), torch.zeros(2, 3, dtype=torch.bool)
    xp = torch.cat([x, torch.randn(2, 4, 10) * 50], 1)
    mp = torch.cat([m, torch.ones(2, 4, dtype=torch.bool)], 1)
    assert torch.allclose(net(x, m), net(xp, mp), atol=1e-5)


def test_ci_protocol_on_tiger_learns(shared_data):
    data = mil.load_mil_npz(shared_data / "mil" / "tiger.npz")
    res = mil.run_protocol(data, repetitions=1, folds=2, grid="tiny", inner_folds=2, seed=0)
    assert len(res["per_fold"]) == 2 and res["fold_source"].startswith("stratified")
    assert res["auc_mean"] > 0.75, res["auc_mean"]


def test_cli_writes_json_markdown_and_tensorboard(shared_data, tmp_path):
    from launcher.cli import main
    out = tmp_path / "run"
    assert main(["downstream", "mil", "--dataset", str(shared_data / "mil" / "fox.npz"),
                 "--repetitions", "1", "--folds", "2", "--grid", "tiny", "--inner-folds", "2", "--out", str(out)]) == 0
    text = (out / "results" / "mil.json").read_text()
    res = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in mil.json: JSON has no NaN/Infinity"))
    res = res["results"][0]
    assert res["dataset"] == "fox" and res["paper_auc"] == 64.05 and 0.0 <= res["auc_mean"] <= 1.0
    # one repetition: no SE over repetitions, written as null and said in the table as in the log
    assert res["auc_se_repetitions"] is None
    md = (out / "results" / "mil.md").read_text()
    assert f"| fox | {100 * res['auc_mean']:.2f} ± - (one repetition) |" in md and "nan" not in md
    assert any((out / "tensorboard").iterdir()) and (out / "config.yaml").exists()
    # the tiny grid has one configuration: no inner CV ran, and neither the table nor the JSON claims one
    assert "| tiny grid: no inner CV (one configuration) |" in md and "inner 2-fold" not in md
    assert res["inner_folds"] is None and all(f["inner_auc"] == [None] for f in res["per_fold"])
    # --folds 2 is not the file's 10: the table says whose folds were used, and why
    assert "1x2, stratified (seeded; fox.npz holds 5x10 folds, --folds is 2) |" in md
    assert not (out / "logs").exists()  # nothing is logged to a file: no empty logs/ folder


def test_fold_counts_the_bags_cannot_fill_stop_before_the_run(shared_data, tmp_path, capsys):
    from launcher.cli import main
    out = tmp_path / "run"
    tiger = str(shared_data / "mil" / "tiger.npz")  # 100 positive and 100 negative bags
    assert main(["downstream", "mil", "--dataset", tiger, "--folds", "101", "--out", str(out)]) == 2
    assert re.search(r"mil: --folds 101 \(rule: at most 100, the bags of the smaller class", capsys.readouterr().err)
    assert main(["downstream", "mil", "--dataset", tiger, "--folds", "10", "--inner-folds", "91",
                 "--out", str(out)]) == 2
    assert re.search(r"mil: --inner-folds 91 \(rule: at most 90,", capsys.readouterr().err)
    assert not out.exists()


def test_a_bag_file_off_the_format_is_refused_with_the_rule(shared_data, tmp_path, capsys):
    """Labels in -1/+1 (common in MIL collections) trained silently against a 0/1 loss and scored a wrong AUC;
    ids off by an offset, empty bags and folds of another size must stop before the run, too."""
    from launcher.cli import main
    z = np.load(shared_data / "mil" / "tiger.npz")
    x, bag_id, labels, folds = z["instances"], z["bag_id"], z["bag_label"], z["folds"]
    cases = {
        "plus_minus": (dict(bag_label=np.where(labels == 1, 1, -1)), r"bag_label holds \[-1, 1\] \(rule: 0 = negative"),
        "offset_ids": (dict(bag_id=bag_id + 1), r"bag_id holds 1\.\.200 \(rule: indices into bag_label, 0\.\.199\)"),
        "empty_bag": (dict(instances=x[bag_id != 5], bag_id=bag_id[bag_id != 5]), r"1 bag\(s\) without instances, "
                      r"e\.g\. bag 5"),
        "short_folds": (dict(folds=folds[:, :, :100]), r"folds \(5, 10, 100\) \(rule: \(repetitions, folds, 200\)"),
        "one_class": (dict(bag_label=np.ones_like(labels)), r"every bag has label 1 \(rule: both classes"),
    }
    out = tmp_path / "run"
    for name, (change, message) in cases.items():
        arrays = dict(instances=x, bag_id=bag_id, bag_label=labels, folds=folds) | change
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        assert main(["downstream", "mil", "--dataset", str(path), "--grid", "tiny", "--out", str(out)]) == 2
        assert re.search(f"mil: {path}: " + message, capsys.readouterr().err)
    assert not out.exists()


def test_a_directory_as_dataset_is_named_a_directory(tmp_path, capsys):
    from launcher.cli import main
    out = tmp_path / "run"
    assert main(["downstream", "mil", "--dataset", str(tmp_path), "--out", str(out)]) == 2  # refused in one line
    assert re.search(re.escape(f"mil: {tmp_path}: a directory, not an .npz file"), capsys.readouterr().err)
    assert not out.exists()


def test_more_repetitions_than_the_file_holds_draw_folds_for_all_and_say_so(shared_data, caplog):
    """--repetitions 6 on a 5 x 10-fold file used to switch every repetition to seeded folds, recorded only
    as fold_source in the JSON."""
    data = mil.load_mil_npz(shared_data / "mil" / "tiger.npz")
    masks, source = mil.choose_folds(data, repetitions=5, folds=10, seed=0)
    assert source == "npz" and (masks == data.folds).all()
    with caplog.at_level("WARNING", logger="mnemos.downstream.mil"):
        masks, source = mil.choose_folds(data, repetitions=6, folds=10, seed=0)
    assert masks.shape == (6, 10, 200) and not (masks[:5] == data.folds).all()
    assert source == "stratified (seeded; tiger.npz holds 5x10 folds, --repetitions is 6)"
    assert "every repetition (6) uses stratified 10-fold splits drawn from --seed, not the file's folds" in caplog.text


def test_help_names_the_bag_files_that_exist(shared_data, capsys):
    """The help promised Tiger/Fox/Elephant npz files; ../shared/data/mil holds Tiger and Fox only."""
    from launcher.cli import main
    assert sorted(p.name for p in (shared_data / "mil").glob("*.npz")) == ["fox.npz", "tiger.npz"]
    with pytest.raises(SystemExit):
        main(["downstream", "--help"])
    text = capsys.readouterr().out
    assert "Elephant" not in text and "Tiger and Fox" in text
