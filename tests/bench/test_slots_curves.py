"""bench/slots_curves.py reads the quick evaluations a real `mnemos downstream slots` run logs."""

import json

from evaluation.downstream.cli import task_parser
from tests.bench.test_bench_arguments import bench, refused


def _train(out, steps):
    args = task_parser("evaluation.downstream.slots").parse_args([
        "slots", "--dataset", "tetrominoes-mini", "--preset", "tiny", "--batch-size", "2", "--eval-size", "8",
        "--eval-every", "2", "--ckpt-every", "2", "--log-every", "2", "--threads", "1", "--no-baseline",
        "--seeds", "0,1", "--steps", str(steps), "--out", str(out)])
    assert args.func(args) == 0


def test_curves_of_a_run_by_seed_in_step_order(tmp_path, capsys):
    curves = bench("slots_curves")
    _train(tmp_path / "run", 5)
    got = curves.read_curves(tmp_path / "run")
    assert sorted(got) == [0, 1]
    for rows in got.values():
        assert [r["step"] for r in rows] == [2, 4]
        for r in rows:
            assert {"fg_ari", "fg_ari_attention", "mse"} <= set(r) and -1 <= r["fg_ari"] <= 1 and r["mse"] > 0

    # A resumed run that went back to an earlier checkpoint logs a step again: the later line wins.
    log = tmp_path / "run" / "logs" / "slots.log"
    log.write_text(log.read_text() + "12:00:00 INFO mnemos.slots: seed 1 step 4 quick eval (64 scenes): "
                   "fg_ari 0.5000, fg_ari_attention 0.2500, mse 0.1000\n")
    assert curves.read_curves(tmp_path / "run")[1][-1] == {"step": 4, "fg_ari": 0.5, "fg_ari_attention": 0.25,
                                                           "mse": 0.1}
    assert curves.value_at(curves.read_curves(tmp_path / "run")[1], 3) == got[1][0]["fg_ari"]
    assert curves.value_at(got[1], 6) is None  # not evaluated that far

    assert curves.main([str(tmp_path / "run"), "--at", "2,4", "--reach", "0.5", "--out",
                        str(tmp_path / "c.json")]) == 0
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["runs"][0]["recipe"]["preset"] == "tiny" and saved["runs"][0]["recipe"]["batch_size"] == 2
    assert saved["runs"][0]["seeds"]["1"][-1]["fg_ari"] == 0.5
    assert "| 1 | 4 |" in capsys.readouterr().out


def test_curves_refuse_a_folder_that_is_not_a_run(tmp_path, capsys):
    line = refused("slots_curves", [str(tmp_path)], capsys)
    assert str(tmp_path) in line and "logs/slots.log" in line
    line = refused("slots_curves", [str(tmp_path), "--at", "5k"], capsys)
    assert "--at '5k'" in line
