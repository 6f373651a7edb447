"""Faults during training: NaN/spike steps are skipped, repeated ones roll back, hangs exit non-zero."""

import json
import os

import pytest

from launcher.faults import HANG_EXIT_CODE, LossGuard, StopFlag
from tests.launcher.conftest import run_train, write_config
from tests.step_log import step_losses, step_records


def _events(run_dir):
    return [rec for rec in step_records(run_dir) if "event" in rec]


def test_loss_guard_flags_nan_and_spikes_only_after_history():
    g = LossGuard(spike_zscore=4, min_history=5)
    assert g.reason(float("nan")) == "non_finite_loss" and g.reason(float("inf")) == "non_finite_loss"
    assert g.reason(100.0) is None  # no history yet: cannot call it a spike
    for x in [3.0, 3.1, 2.9, 3.05, 2.95]:
        g.record(x)
    assert g.reason(3.2) is None
    assert g.reason(30.0) == "loss_spike"
    g2 = LossGuard(spike_zscore=4, min_history=5)
    g2.load_state_dict(g.state_dict())
    assert g2.reason(30.0) == "loss_spike"


def test_nan_step_is_skipped_and_training_continues(tiny_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_data, faults={"spike_zscore": 6.0})
    env = dict(os.environ, MNEMOS_FAULT_LOSS_AT_WINDOWS="4:nan")
    proc = run_train(cfg, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = step_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 11)) and all(v == v for v in losses.values())  # no NaN logged
    events = _events(tmp_path / "run")
    assert [e["event"] for e in events] == ["non_finite_loss"]
    summary = json.loads((tmp_path / "run" / "results" / "train_summary.json").read_text())
    assert summary["consumed_samples"] == 10 * 8  # the skipped window is not counted as trained


def test_repeated_bad_steps_roll_back_to_checkpoint_and_skip_the_window(tiny_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_data,
                       faults={"rollback_after": 2, "spike_zscore": 5.0}, checkpoint={"every_steps": 3})
    env = dict(os.environ, MNEMOS_FAULT_LOSS_AT_WINDOWS="5:nan,6:nan")
    proc = run_train(cfg, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(tmp_path / "run")
    kinds = [e["event"] for e in events]
    assert kinds == ["non_finite_loss", "non_finite_loss", "rollback"], kinds
    rollback = events[-1]
    assert rollback["checkpoint"].endswith("step_00000003")
    assert rollback["skipped_samples"] == 3 * 8  # windows 4 (trained, then undone), 5 and 6
    summary = json.loads((tmp_path / "run" / "results" / "train_summary.json").read_text())
    assert summary["step"] == 10 and summary["status"] == "finished"


@pytest.mark.slow
def test_hang_watchdog_dumps_stacks_and_exits_nonzero(tiny_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_data, faults={"hang_minutes": 0.1})
    env = dict(os.environ, MNEMOS_FAULT_HANG_AT_WINDOW="3")
    proc = run_train(cfg, env=env, timeout=300)
    assert proc.returncode == HANG_EXIT_CODE
    dump = (tmp_path / "run" / "logs" / "hang_rank0.txt").read_text()
    assert "no training progress" in dump and "train_step" in dump


def test_the_stop_flag_keeps_the_first_signal():
    """At a Slurm time limit SIGUSR1 comes first and SIGTERM may follow while the ranks save: the run was
    stopped by the notice (to be requeued), not terminated."""
    import signal
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        flag = StopFlag().install()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested and flag.signal_name == "SIGUSR1"
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
