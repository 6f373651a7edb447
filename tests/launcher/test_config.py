import os
import subprocess
import sys

import pytest
import yaml

from launcher.config import ConfigError, load_config


def _load(*overrides):
    return load_config(None, list(overrides))


def test_overrides_parse_types():
    cfg = _load("optim.lr=3e-4", "parallel.zero_stage=2", "logging.tensorboard=false", "data.train=[a,b]")
    assert cfg.optim.lr == 3e-4 and cfg.parallel.zero_stage == 2 and cfg.logging.tensorboard is False
    assert cfg.data.train == ["a", "b"]


def test_preset_expands_and_explicit_fields_win():
    cfg = _load("model.preset=gpt3-small", "model.n_layer=2")
    assert cfg.model.d_model == 768 and cfg.model.n_layer == 2


@pytest.mark.parametrize("override, words", [
    ("model.d_modle=64", ["model.d_modle", "unknown key", "(did you mean model.d_model?)"]),
    ("parallel.zero=2", ["parallel.zero: unknown key", "(did you mean parallel.zero_stage?)"]),
    ("trian.max_steps=2", ["trian: unknown key", "(did you mean train?)"]),
    ("model.n_head=5", ["model.n_head=5", "model.d_model=64", "d_model % n_head"]),
    ("optim.lr=-1", ["optim.lr", "-1", "greater than 0"]),
    ("model.preset=gpt3-huge", ["model.preset", "gpt3-huge", "choices"]),
    ("parallel.zero_stage=4", ["parallel.zero_stage", "4"]),
])
def test_invalid_values_name_field_value_and_rule(override, words):
    with pytest.raises(ConfigError) as err:
        _load(override)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_cross_section_rules(tmp_path):
    cfg = _load("train.global_batch_size=10", "train.micro_batch_size=4", f"data.train=[{tmp_path}/x]")
    with pytest.raises(ConfigError, match=r"train.global_batch_size=10 must be a multiple of train.micro_batch_size=4"):
        cfg.check_cross_sections(1)
    cfg = _load("train.global_batch_size=8", f"data.train=[{tmp_path}/missing]")
    with pytest.raises(ConfigError, match=r"data.train entry .*missing.bin does not exist"):
        cfg.check_cross_sections(1)
    cfg = _load("parallel.tp=3", f"data.train=[{tmp_path}/x]")
    with pytest.raises(ConfigError, match=r"parallel.tp=3 must divide"):
        cfg.check_cross_sections(6)


def test_a_shard_directory_given_as_a_prefix_is_named_with_its_shards(tmp_path, tiny_data):
    """`data.train=[OUT]` with a tokenize output directory: the error names its shards and the blend route."""
    import shutil
    shards = tmp_path / "shards"
    shards.mkdir()
    for ext in (".bin", ".idx"):
        shutil.copy(tiny_data["train"] + ext, shards / f"shard_00000{ext}")
    cfg = _load("train.global_batch_size=8", f"data.train=[{shards}]")
    with pytest.raises(ConfigError, match=rf"is a directory of 1 shard\(s\): list their prefixes \({shards}/shard_00000"):
        cfg.check_cross_sections(1)
    cfg = _load("train.global_batch_size=8", f"data.train=[{tmp_path}]")
    with pytest.raises(ConfigError, match="is a directory holding no shards"):
        cfg.check_cross_sections(1)


def test_cli_rejects_bad_config_before_spawning_anything(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "model": {"n_head": 3}}))
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "train", str(cfg_file), "--nproc", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "model.n_head=3" in proc.stderr and "d_model % n_head" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written, no rank started


def test_yaml_that_does_not_parse_is_a_config_error_with_its_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("run_dir: runs/x\nmodel: {n_layer: 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML: line 3, column 1: expected ',' or '}'"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"--set optim.lr='\[1,': not valid YAML: line 1"):
        _load("optim.lr=[1,")



def _blend(shards, out, seq_len=16, tokenizer=None):
    import numpy as np

    from data.blend import DatasetSpec, build_blend
    from data.indexed import IndexedDatasetBuilder
    rng = np.random.default_rng(0)
    for name in ("web", "books"):
        with IndexedDatasetBuilder(str(shards / name / "shard_00000"), np.uint16) as b:
            for _ in range(60):
                b.add_document(np.append(rng.integers(3, 500, rng.integers(20, 60)), 2))
    specs = [DatasetSpec.parse(f"web=0.7:{shards}/web"), DatasetSpec.parse(f"books=0.3:{shards}/books")]
    return build_blend(specs, seq_len, 2, str(out), split=(90, 10, 0), tokenizer=tokenizer)


def test_data_blend_fills_train_weights_valid_and_tokenizer(tmp_path, tiny_data):
    summary = _blend(tmp_path / "shards", tmp_path / "blend", tokenizer=tiny_data["tokenizer"])
    cfg = _load(f"data.blend={tmp_path}/blend", "data.seq_len=16")
    assert cfg.data.train == summary["config"]["data.train"] and len(cfg.data.train) == 2
    assert cfg.data.weights == summary["config"]["data.weights"]
    assert cfg.data.valid == summary["config"]["data.valid"]
    assert cfg.data.tokenizer == os.path.abspath(tiny_data["tokenizer"])  # GPT training needs its end-of-text id
    cfg.check_cross_sections(1)  # the shards are there
    # a resumed run's config.yaml holds the blend and the lists it filled in: they agree, so it loads again
    cfg_file = tmp_path / "resumed.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": cfg.data.model_dump()}))
    assert load_config(cfg_file).data == cfg.data


def test_data_blend_made_elsewhere_is_found_from_another_directory(tmp_path, monkeypatch, tiny_data):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _blend(tmp_path / "shards", "blend", tokenizer=tiny_data["tokenizer"])  # relative: prefixes read blend/train/..
    monkeypatch.chdir(tmp_path)
    cfg = _load("data.blend=work/blend/blend.json", "data.seq_len=16")
    assert cfg.data.train == ["work/blend/train/web", "work/blend/train/books"]
    cfg.check_cross_sections(1)


def test_gpt_training_without_a_tokenizer_stops_before_any_rank(tmp_path):
    """A blend made from shards that name no tokenizer (and no --tokenizer) leaves data.tokenizer empty: the
    ranks needed it for the end-of-text id and failed one by one after the launch."""
    _blend(tmp_path / "shards", tmp_path / "blend")
    cfg = _load(f"data.blend={tmp_path}/blend", "data.seq_len=16")
    with pytest.raises(ConfigError, match=r"data.tokenizer=None \(rule: GPT training needs the sentencepiece model"):
        cfg.check_cross_sections(1)


@pytest.mark.parametrize("overrides, words", [
    (["data.seq_len=32"], ["data.seq_len=32", "built for 16", "--seq-len"]),
    (["data.seq_len=16", "data.train=[x]"], ["data.train is given", "one of the two"]),
])
def test_data_blend_conflicts_name_the_fields(tmp_path, overrides, words):
    _blend(tmp_path / "shards", tmp_path / "blend")
    with pytest.raises(ConfigError) as err:
        _load(f"data.blend={tmp_path}/blend", *overrides)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    with pytest.raises(ConfigError, match=r"data.blend=.*nowhere.*no blend.json there"):
        _load(f"data.blend={tmp_path}/nowhere")


def test_a_vocabulary_smaller_than_the_data_is_refused(tiny_data):
    """Under TP the vocab-parallel embedding gives ids beyond the table zero vectors: training would run on
    wrong inputs without an error, so a too-small model.vocab_size stops before any rank starts, and a
    shard id beyond it stops the first step."""
    import numpy as np

    from launcher.objectives import GPTObjective
    cfg = _load(f"data.tokenizer={tiny_data['tokenizer']}", f"data.train=[{tiny_data['train']}]",
                "model.vocab_size=256")
    with pytest.raises(ConfigError, match=r"model.vocab_size=256 is smaller than the 512 pieces of data.tokenizer"
                                          r".*model.vocab_size=512\)"):
        cfg.check_cross_sections(1)
    objective = GPTObjective(cfg, topology=None)
    assert objective.collate([np.array([1, 255, 2])], "cpu")["target"].tolist() == [[255, 2]]
    with pytest.raises(ConfigError, match=r"token id 300 in the training data, but model.vocab_size=256"):
        objective.collate([np.array([1, 300, 2])], "cpu")


def test_an_embedding_larger_than_the_tokenizer_needs_is_noted_with_its_cost(tiny_data, tmp_path, caplog):
    """A preset's 50304 rows with the user's own smaller tokenizer train rows no id reaches: say so and what
    fits, before the ranks start (a note, not an error: padding is allowed)."""
    from launcher.cli import main
    common = [f"data.tokenizer={tiny_data['tokenizer']}", f"data.train=[{tiny_data['train']}]", "data.valid=[]"]
    assert _load(*common, "model.vocab_size=512").unused_vocab_note() is None  # 512 pieces: nothing unused
    assert _load(*common, "model.vocab_size=640", "parallel.tp=1").unused_vocab_note().startswith(
        "model.vocab_size=640 has 128 embedding rows that no id of data.tokenizer=")
    (tmp_path / "c.yaml").write_text(f"run_dir: {tmp_path / 'run'}\nmodel: {{d_model: 64}}\n")
    args = ["train", str(tmp_path / "c.yaml"), "--dry-run", "--nproc", "2"]
    for item in common + ["model.vocab_size=2048"]:
        args += ["--set", item]
    with caplog.at_level("WARNING", logger="mnemos.train"):
        assert main(args) == 0
    assert ("model.vocab_size=2048 has 1536 embedding rows that no id of data.tokenizer=" in caplog.text
            and "0.1M parameters trained for nothing; --set model.vocab_size=512 fits the tokenizer" in caplog.text)


def test_bert_with_a_tokenizer_lacking_its_symbols_stops_before_the_ranks(tiny_data):
    cfg = _load("model.preset=bert-tiny", f"data.tokenizer={tiny_data['tokenizer']}",
                f"data.train=[{tiny_data['train']}]")
    with pytest.raises(ConfigError, match=r"cannot make BERT samples: .*no \[CLS\] piece.*--user-defined-symbols "
                                          r"\[CLS\],\[SEP\],\[MASK\]"):
        cfg.check_cross_sections(1)


def test_shards_from_another_tokenizer_are_refused(tiny_data, tmp_path):
    """Same size, other pieces: nothing else would notice. The tokenize output's shards.json names its model."""
    import json
    import shutil

    import numpy as np

    from data.indexed import IndexedDatasetBuilder
    with IndexedDatasetBuilder(str(tmp_path / "shards" / "shard_00000"), np.uint16) as b:
        b.add_document(np.arange(3, 100))
    other = tmp_path / "other.model"
    other.write_bytes(b"another sentencepiece model")
    (tmp_path / "shards" / "shards.json").write_text(json.dumps({"tokenizer": str(other)}))
    cfg = _load(f"data.tokenizer={tiny_data['tokenizer']}", f"data.train=[{tmp_path}/shards/shard_00000]")
    with pytest.raises(ConfigError, match=r"data.train entry .*shard_00000' was tokenized by .*other.model, not by "
                                          r"data.tokenizer="):
        cfg.check_cross_sections(1)
    shutil.copy(tiny_data["tokenizer"], tmp_path / "copy.model")  # the same model under another path is fine
    (tmp_path / "shards" / "shards.json").write_text(json.dumps({"tokenizer": str(tmp_path / "copy.model")}))
    cfg.check_cross_sections(1)


@pytest.mark.parametrize("word, expected", [("off", "off"), ("no", "off"), ("false", "off"), ("'off'", "off"),
                                            ("on", "micro_batch"), ("micro_batch", "micro_batch")])
def test_loss_check_off_as_yaml_reads_it(tmp_path, word, expected):
    """YAML 1.1 reads a bare `off` as False: `perf.loss_check: off` (README) means 'off', in a file and in --set."""
    path = tmp_path / "c.yaml"
    path.write_text(f"perf:\n  loss_check: {word}\n")
    assert load_config(path).perf.loss_check == expected
    assert _load(f"perf.loss_check={word}").perf.loss_check == expected
    cfg = load_config(path)  # and the resolved config written to RUN/config.yaml reads back the same
    assert yaml.safe_load(cfg.to_yaml())["perf"]["loss_check"] == expected


def test_loss_check_other_values_still_refused():
    with pytest.raises(ConfigError, match=r"perf.loss_check='sometimes'.*'micro_batch' or 'off'"):
        _load("perf.loss_check=sometimes")
