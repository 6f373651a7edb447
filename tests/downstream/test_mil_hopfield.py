"""MIL with Hopfield pooling on the real Tiger/Fox bags, CI-sized protocol (1 repetition, 2 folds, tiny grid)."""

import json

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
    import argparse
    from evaluation.downstream import cli as dcli
    parser = argparse.ArgumentParser()
    dcli.register(parser.add_subparsers())
    out = tmp_path / "run"
    args = parser.parse_args(["downstream", "mil", "--dataset", str(shared_data / "mil" / "fox.npz"),
                              "--repetitions", "1", "--folds", "2", "--grid", "tiny", "--inner-folds", "2",
                              "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads((out / "results" / "mil.json").read_text())["results"][0]
    assert res["dataset"] == "fox" and res["paper_auc"] == 64.05 and 0.0 <= res["auc_mean"] <= 1.0
    assert "fox" in (out / "results" / "mil.md").read_text()
    assert any((out / "tensorboard").iterdir()) and (out / "config.yaml").exists()


def test_fold_counts_the_bags_cannot_fill_stop_before_the_run(shared_data, tmp_path):
    from launcher.cli import main
    out = tmp_path / "run"
    tiger = str(shared_data / "mil" / "tiger.npz")  # 100 positive and 100 negative bags
    with pytest.raises(SystemExit, match=r"mil: --folds 101 \(rule: at most 100, the bags of the smaller class"):
        main(["downstream", "mil", "--dataset", tiger, "--folds", "101", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"mil: --inner-folds 91 \(rule: at most 90,"):
        main(["downstream", "mil", "--dataset", tiger, "--folds", "10", "--inner-folds", "91", "--out", str(out)])
    assert not out.exists()
