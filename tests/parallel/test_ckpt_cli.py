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
