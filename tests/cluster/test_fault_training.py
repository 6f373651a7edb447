"""A rank killed mid-training: the local launch fails fast (no hang) and the next start resumes from
the last complete checkpoint and ends exactly where an uninterrupted run ends."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.launch import child_pids
from tests.step_log import step_losses

REPO = Path(__file__).resolve().parents[2]


def _train(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "train", str(cfg), "--nproc", "2"], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _rank_pids(proc: subprocess.Popen) -> list[int]:
    """torchrun is the launcher's child; the ranks are torchrun's children."""
    for agent in child_pids(proc.pid):
        ranks = child_pids(agent)
        if ranks:
            return ranks
    return []


@pytest.mark.slow
def test_killed_rank_fails_fast_and_restart_resumes_from_last_checkpoint(tmp_path, shared_data):
    from tests.launcher.conftest import build_shards, write_config
    data = build_shards(shared_data, tmp_path / "data", train_bytes=100_000)
    steps = 150
    common = dict(train={"max_steps": steps, "log_every_steps": 50}, checkpoint={"every_steps": 25, "save_at_end": True})
    straight = _train(write_config(tmp_path / "straight.yaml", tmp_path / "straight", data, **common))
    assert straight.wait(timeout=300) == 0, straight.stdout.read()[-3000:]

    cfg = write_config(tmp_path / "crash.yaml", tmp_path / "crash", data, **common)
    proc = _train(cfg)
    deadline = time.monotonic() + 180
    while max(step_losses(tmp_path / "crash", while_running=True), default=0) < 60:
        assert proc.poll() is None and time.monotonic() < deadline, "training did not get going"
        time.sleep(0.2)
    ranks = _rank_pids(proc)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)  # one rank dies mid-step
    t0 = time.monotonic()
    rc = proc.wait(timeout=120)
    elapsed = time.monotonic() - t0
    out = proc.stdout.read()
    assert rc != 0, out[-3000:]
    assert elapsed < 60, f"the job took {elapsed:.0f}s to fail after a rank died"
    died_at = max(step_losses(tmp_path / "crash", while_running=True))
    assert died_at < steps

    again = _train(tmp_path / "crash" / "config.yaml")
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out[-3000:]
    m = re.search(r"resumed from \S*step_(\d+)", out)
    assert m, out[-3000:]
    resumed_from = int(m.group(1))  # the last complete checkpoint (one being written at the kill is skipped)
    assert resumed_from % 25 == 0 and died_at - 50 <= resumed_from <= died_at
    a, b = step_losses(tmp_path / "crash"), step_losses(tmp_path / "straight")
    assert sorted(a) == list(range(1, steps + 1))
    assert [a[s] for s in range(1, steps + 1)] == [b[s] for s in range(1, steps + 1)]
