"""Pruning keeps `checkpoint.keep_last` checkpoints a run can resume from: a corrupt or partial step
directory (skipped by the resume) must not take the place of a good one."""

from pathlib import Path

from parallel.checkpoint import CheckpointManager
from parallel.manifest import list_checkpoints, newest_valid, step_dirname, write_manifest


def _save(root: Path, step: int, complete: bool = True) -> Path:
    d = root / step_dirname(step)
    d.mkdir(parents=True)
    (d / "model_states.pt").write_bytes(bytes(range(256)) * 4)
    if complete:
        write_manifest(d, {"step": step})
    return d


def _steps(root: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in list_checkpoints(root)]


def test_a_partial_directory_does_not_count_toward_keep_last(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step)
    _save(tmp_path, 40, complete=False)  # a save that died before its manifest
    _save(tmp_path, 50)
    CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=2)._prune()
    assert _steps(tmp_path) == [50, 40, 30]  # two loadable ones; the partial one is newer, left alone


def test_a_truncated_file_makes_a_checkpoint_not_count(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step)
    shard = tmp_path / step_dirname(30) / "model_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=2)._prune()
    assert _steps(tmp_path) == [30, 20, 10]


def test_a_checkpoint_the_resume_found_corrupt_does_not_count_and_goes_once_older(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step)
    shard = tmp_path / step_dirname(30) / "model_states.pt"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0xFF  # same size, wrong sha256: only full verification sees it
    shard.write_bytes(bytes(data))
    mgr = CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=2)
    assert newest_valid(tmp_path, skipped=mgr.corrupt) == tmp_path / step_dirname(20)
    assert mgr.corrupt == {step_dirname(30)}
    mgr._prune()
    assert _steps(tmp_path) == [30, 20, 10]
    _save(tmp_path, 40)
    _save(tmp_path, 50)
    mgr._prune()  # 50 and 40 are the two kept; the corrupt 30 is older than both and can never be resumed
    assert _steps(tmp_path) == [50, 40]
    assert mgr.corrupt == set()


def test_milestones_are_kept_only_when_loadable(tmp_path):
    for step in (100, 150, 200, 250, 300):
        _save(tmp_path, step)
    (tmp_path / step_dirname(100) / "manifest.json").unlink()  # milestone 100 never finished
    CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=2, keep_every_steps=100)._prune()
    assert _steps(tmp_path) == [300, 250, 200]
