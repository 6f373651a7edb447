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


def test_resume_refuses_a_tokenizer_or_shards_changed_under_the_same_path(tiny_data, tmp_path):
    """Retraining the tokenizer into the same --model-prefix, or tokenizing again into the same shard
    directory, kept every path in the config: the run resumed on other token ids without a word."""
    import shutil
    from tests.conftest import small_tokenizer_file
    data = dict(tiny_data, tokenizer=str(tmp_path / "tok.model"), train=str(tmp_path / "train"))
    shutil.copy(tiny_data["tokenizer"], data["tokenizer"])
    for ext in (".bin", ".idx"):
        shutil.copy(tiny_data["train"] + ext, data["train"] + ext)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "run", data, train={"max_steps": 2},
                       checkpoint={"save_at_end": True})
    assert run_train(cfg).returncode == 0
    shutil.copy(small_tokenizer_file(), data["tokenizer"])  # another 512-piece model, same path
    proc = run_train(cfg)
    assert proc.returncode == 2 and "is not the file the checkpoint" in proc.stderr, proc.stderr[-2000:]
    shutil.copy(tiny_data["tokenizer"], data["tokenizer"])
    for ext in (".bin", ".idx"):  # other documents under the train prefix
        shutil.copy(tiny_data["valid"] + ext, data["train"] + ext)
    proc = run_train(cfg)
    assert proc.returncode == 2 and f"data.train[0]={data['train']!r} holds" in proc.stderr, proc.stderr[-2000:]
    for ext in (".bin", ".idx"):  # restored: it resumes
        shutil.copy(tiny_data["train"] + ext, data["train"] + ext)
    assert run_train(cfg, "--set", "train.max_steps=3").returncode == 0
