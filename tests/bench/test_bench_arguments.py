"""The bench scripts refuse what cannot run here, and bad values, in one line with exit code 2, before
anything is timed or written (as `mnemos` commands do)."""

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(name: str, argv: list[str], capsys) -> str:
    """The error line of a refused run."""
    with pytest.raises(SystemExit) as stop:
        bench(name).main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@NO_CUDA
@pytest.mark.parametrize("name, argv", [("hopfield_layers", ["--device", "cuda"]),
                                        ("train_throughput", ["--device", "cuda", "--smoke"])])
def test_cuda_without_cuda_is_refused(tmp_path, capsys, name, argv):
    out = tmp_path / "r.json"
    line = refused(name, [*argv, "--out", str(out)], capsys)
    assert "--device cuda (rule: needs a CUDA GPU" in line
    assert not out.exists()


@pytest.mark.parametrize("name, argv, message", [
    ("hopfield_layers", ["--steps", "a,b"], "argument --steps: each item must be an integer >= 0, got 'a' (in 'a,b')"),
    ("hopfield_layers", ["--heads", "7"], "--heads 7 (rule: must divide --d 256"),
    ("hopfield_layers", ["--repeats", "0"], "argument --repeats: must be an integer >= 1, got 0"),
    ("train_throughput", ["--smoke", "--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    ("train_throughput", ["--smoke", "--lr", "0"], "argument --lr: must be a number > 0, got 0"),
    ("train_throughput", ["--smoke", "--device", "gpu"], "argument --device: must be cpu or cuda[:N], got 'gpu'"),
    ("train_throughput", ["--sizes", "gpt3-huge"], "argument --sizes: invalid choice: 'gpt3-huge'"),
])
def test_bad_value_is_refused_in_one_line(tmp_path, capsys, name, argv, message):
    out = tmp_path / "r.json"
    assert message in refused(name, [*argv, "--out", str(out)], capsys)
    assert not out.exists()


@NO_CUDA
def test_cuda_only_variant_on_cpu_is_refused_before_the_output_is_touched(tmp_path, capsys):
    out = tmp_path / "train_throughput_cpu_smoke.json"
    out.write_text('{"kept": true}\n')
    line = refused("train_throughput", ["--smoke", "--variants", "mnemos-eager", "mnemos-fast-cudnn",
                                        "--out", str(out)], capsys)
    assert "--variants mnemos-fast-cudnn (rule: needs a CUDA device" in line
    assert out.read_text() == '{"kept": true}\n'


def test_layer_175b_tp_that_does_not_divide_the_heads_is_refused(tmp_path, capsys):
    out = tmp_path / "r.json"
    line = refused("layer_175b", ["--tp", "7", "--out", str(out)], capsys)
    assert "--tp 7 (rule: must divide n_head 96 and d_ff 49152 of gpt3-175b" in line
    assert not out.exists()


def test_layer_175b_smoke_reports_small_rates_without_rounding_them_to_zero(tmp_path, capsys):
    """A CPU runs the tiny smoke layer at GFLOP/s: the log and the JSON must not say 0 TFLOP/s."""
    import json
    import re
    out = tmp_path / "smoke.json"
    assert bench("layer_175b").main(["--smoke", "--iters", "1", "--warmup", "0", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert not re.search(r"(?<![\d.])0(\.0)? TFLOP/s", log), log
    assert re.search(r"matmul ceiling: [\d.]+ [GT]FLOP/s", log)
    record = json.loads(out.read_text())
    rates = [t["model_tflops"] for t in record["timings"].values()] + [record["matmul_ceiling_tflops"]]
    assert all(r > 0 for r in rates), rates


def test_data_reader_help_runs_nothing_and_writes_nothing(capsys):
    results = BENCH / "results" / "data_reader.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    with pytest.raises(SystemExit) as stop:
        bench("data_reader").main(["--help"])
    assert stop.value.code == 0
    assert "--out" in capsys.readouterr().out
    assert (results.stat().st_mtime_ns if results.exists() else None) == before


def test_data_reader_writes_out_and_removes_its_small_files(tmp_path, monkeypatch, shared_data):
    import json
    import tempfile
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mkdtemp puts the bench's small files
    out = tmp_path / "reader.json"
    assert bench("data_reader").main(["--workloads", "many_small_txt", "--files", "2", "--repeat", "1",
                                      "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert list(record["workloads"]) == ["many_small_txt"] and record["workloads"]["many_small_txt"]["files"] == 2
    assert list(scratch.iterdir()) == []


def test_data_reader_bad_workload_is_refused(tmp_path, capsys):
    out = tmp_path / "r.json"
    line = refused("data_reader", ["--workloads", "parquet", "--out", str(out)], capsys)
    assert "argument --workloads: must be comma-separated names of many_small_txt, large_txt, jsonl, got 'parquet'" in line
    assert not out.exists()
