"""What `mnemos train` says before it spends the steps: how much of the data max_steps reads, and that asked-for
validation has no data to measure."""

from tests.launcher.conftest import run_train, write_config


def test_start_lines_name_the_epochs_and_missing_validation(tiny_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", tiny_data, data={"valid": []},
                       train={"max_steps": 2, "eval_every_steps": 1})
    proc = run_train(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "steps read 16 samples" in out and " epoch(s)" in out
    assert "no validation: data.valid is empty, so train.eval_every_steps=1 measures nothing" in out
    # with validation data, no such line
    cfg = write_config(tmp_path / "d.yaml", tmp_path / "run2", tiny_data, train={"max_steps": 2, "eval_every_steps": 1})
    proc = run_train(cfg)
    assert proc.returncode == 0 and "no validation" not in proc.stdout + proc.stderr
