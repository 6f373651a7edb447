"""`mnemos ckpt inspect|verify` and corrupt-checkpoint handling: a truncated shard, a flipped byte and a
missing manifest are each reported clearly and the previous checkpoint is the one a resume uses."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.launcher.conftest import build_shards, run_train, write_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_run")
    shards = build_shards(shared_data, tmp / "data")
    cfg = write_config(tmp / "c.yaml", tmp / "run", shards, model={"n_ctx": 32}, data={"seq_len": 32},
                       train={"max_steps": 4}, checkpoint={"every_steps": 2, "keep_last": 3, "save_at_end": True})
    proc = run_train(cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "run"


def _cli(*args):
    """`mnemos ckpt ARGS` in this process (what the console script runs), output captured."""
    import contextlib
    import io
    from launcher.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["ckpt", *map(str, args)])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def _largest_shard(ckpt: Path) -> Path:
    return max(ckpt.glob("*.pt"), key=lambda p: p.stat().st_size)


def _truncate(ckpt):
    p = _largest_shard(ckpt)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "truncated?"


def _flip(ckpt):
    p = _largest_shard(ckpt)
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x01
    p.write_bytes(bytes(data))
    return "fails its sha256 checksum"


def _drop_manifest(ckpt):
    (ckpt / "manifest.json").unlink()
    return "no manifest.json (the save did not finish)"


def test_inspect_shows_layout_step_tokens_sizes_and_checksums(run):
    proc = _cli("inspect", run / "checkpoints" / "step_00000004")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for want in ("format      deepspeed-sharded  (gpt)", "step        4   tokens 1024",
                 "layout      tp=1 dp=1 zero=0 world=1", "n_layer=2 d_model=64", "parameters)", "size ",
                 "checksums   OK"):
        assert want in out, (want, out)
    info = json.loads(_cli("inspect", run, "--json").stdout)
    assert [i["step"] for i in info] == [4, 2]
    assert info[0]["checksum_ok"] and info[0]["bytes"] == sum(info[0]["bytes_by_kind"].values())
    assert info[0]["layout"] == {"tp": 1, "dp": 1, "zero_stage": 0, "world_size": 1}


@pytest.mark.parametrize("damage", [_truncate, _flip, _drop_manifest], ids=["truncated", "flipped", "no-manifest"])
def test_corruption_is_detected_and_the_previous_checkpoint_used(run, tmp_path, damage):
    from parallel.manifest import newest_valid
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    expected = damage(copy / "checkpoints" / "step_00000004")
    proc = _cli("verify", copy)
    assert proc.returncode == 1
    assert "step_00000004: CORRUPT: step_00000004:" in proc.stdout and expected in proc.stdout, proc.stdout
    assert "step_00000002: OK" in proc.stdout
    assert f"a resume would use: {copy / 'checkpoints' / 'step_00000002'}" in proc.stdout
    assert newest_valid(copy / "checkpoints") == copy / "checkpoints" / "step_00000002"


@pytest.mark.slow
def test_training_resumes_from_the_previous_checkpoint_after_truncation(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = copy / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(run), str(copy)))
    _truncate(copy / "checkpoints" / "step_00000004")
    proc = run_train(cfg, "--set", "train.max_steps=5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "skipping checkpoint" in out and "truncated?" in out
    assert "resumed from" in out and "step_00000002 at step 2" in out


def test_verify_ok_and_weights_only_loading(run):
    proc = _cli("verify", run / "checkpoints" / "step_00000004")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK")
    # every file of a checkpoint loads without unpickling code (safe_load = weights_only=True)
    from parallel.reshard import safe_load
    for f in (run / "checkpoints" / "step_00000004").glob("*.pt"):
        safe_load(f)


def test_a_pickled_payload_is_refused(tmp_path):
    """A checkpoint file carrying an object whose unpickling would run code is rejected, not executed."""
    import pickle
    from parallel.reshard import safe_load

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        safe_load(path)


def test_reshard_refuses_to_replace_a_checkpoint(run, tmp_path):
    assert _cli("reshard", run, "--out", tmp_path / "universal").returncode == 0
    again = _cli("reshard", run, "--out", tmp_path / "universal")
    assert again.returncode == 2
    assert "step_00000004 exists (rule: the target checkpoint must be new" in again.stderr


def test_a_failed_torch_export_leaves_the_file_at_out_as_it_was(run, tmp_path, monkeypatch):
    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier export")

    def disk_full(obj, path):
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _cli("export-torch", run, "--out", out)
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left behind


def _one_line_error(proc, want: str) -> None:
    """Exit code 2, the reason in one `mnemos...` line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mnemos")]
    assert len(lines) == 1 and want in lines[0], proc.stderr


@pytest.mark.parametrize("command", ["inspect", "verify", "reshard", "export-hf", "export-torch"])
@pytest.mark.parametrize("where", ["missing", "missing-step", "file"])
def test_a_checkpoint_path_that_is_not_there_is_one_line_and_exit_code_2(run, tmp_path, command, where):
    """Every ckpt command answers a wrong DIR the same way (inspect and verify used to exit 1, and took a
    step_N name that does not exist for a corrupt checkpoint)."""
    path = {"missing": tmp_path / "nope", "missing-step": run / "checkpoints" / "step_00000099",
            "file": run / "checkpoints" / "latest"}[where]
    out = [] if command in ("inspect", "verify") else ["--out", tmp_path / ("out.pt" if command == "export-torch"
                                                                           else "out")]
    proc = _cli(command, path, *out)
    _one_line_error(proc, str(path))
    assert proc.stdout == "" and not (tmp_path / "out").exists() and not (tmp_path / "out.pt").exists()


def test_inspect_and_verify_of_a_directory_without_checkpoints_exit_2(run, tmp_path):
    for command in ("inspect", "verify"):
        _one_line_error(_cli(command, tmp_path), f"no checkpoint under {tmp_path}")


@pytest.mark.parametrize("tp", [3, 8])
def test_reshard_to_a_tp_the_model_cannot_split_is_one_line_and_writes_nothing(run, tmp_path, tp):
    proc = _cli("reshard", run / "checkpoints" / "step_00000004", "--out", tmp_path / "universal", "--tp", tp)
    _one_line_error(proc, f"mnemos ckpt reshard: parallel.tp={tp} must divide model.n_head=4 (rule: attention heads")
    assert not (tmp_path / "universal").exists()


def test_import_hf_of_what_is_no_transformers_directory_is_one_line(run, tmp_path):
    """A mnemos run, a file, a directory without safetensors or of another model type: exit 2, nothing written."""
    config = run.parent / "c.yaml"
    target = ["--config", config, "--set", f"run_dir={tmp_path / 'new_run'}"]
    _one_line_error(_cli("import-hf", run, *target),
                    f"{run} is not a transformers directory (no config.json); it is a mnemos run or checkpoint")
    _one_line_error(_cli("import-hf", config, *target), f"{config}: not a directory")
    _one_line_error(_cli("import-hf", tmp_path / "nope", *target), f"{tmp_path / 'nope'}: no such directory")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"pickled")
    _one_line_error(_cli("import-hf", tmp_path / "bin", *target), "no *.safetensors weights")
    (tmp_path / "bin" / "model.safetensors").write_bytes(b"")
    (tmp_path / "bin" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _one_line_error(_cli("import-hf", tmp_path / "bin", *target),
                    "mnemos ckpt import-hf: model_type='llama': only gpt2 and bert directories can be imported")
    assert not (tmp_path / "new_run").exists()


def test_export_hf_with_a_tokenizer_that_is_no_sentencepiece_model_is_one_line(run, tmp_path):
    proc = _cli("export-hf", run, "--out", tmp_path / "hf", "--tokenizer", run.parent / "c.yaml")
    _one_line_error(proc, "c.yaml is not a sentencepiece model")
    assert not (tmp_path / "hf").exists()
