"""BERT through `mnemos train` (DeepSpeed on gloo): ZeRO-1/2/3 on two ranks reproduce ZeRO-0 on one."""

import numpy as np
import pytest

from data.bert_samples import BERT_SYMBOLS
from tests.launcher.conftest import run_train, write_config
from tests.step_log import step_losses


@pytest.fixture(scope="module")
def bert_shards(shared_data, tmp_path_factory):
    from data.indexed import IndexedDatasetBuilder
    from data.tokenizer import Tokenizer, train_tokenizer
    out = tmp_path_factory.mktemp("bert_zero")
    lines = [x.strip() for x in (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8")
             .splitlines() if len(x.strip()) > 20 and not x.strip().startswith("=")]
    docs = ["\n".join(lines[k:k + 8]) for k in range(0, 400, 8)]
    (out / "tok.txt").write_text("\n".join(docs))
    model = train_tokenizer([str(out / "tok.txt")], str(out / "sp"), 512, user_defined_symbols=BERT_SYMBOLS)
    tok = Tokenizer(model)
    shards = {"tokenizer": model, "vocab_size": 512}
    for split, part in (("train", docs[:40]), ("valid", docs[40:])):
        with IndexedDatasetBuilder(str(out / split), np.uint16) as b:
            for ids in tok.encode_batch(part):
                b.add_document(np.array(ids + [tok.eos_id]))
        shards[split] = str(out / split)
    return shards


def _train(tmp_path, shards, name, nproc, stage):
    cfg = write_config(tmp_path / f"{name}.yaml", tmp_path / name, shards,
                       model={"arch": "bert", "layer_norm_eps": 1e-12},
                       data={"seq_len": 32}, train={"max_steps": 4, "log_every_steps": 1},
                       optim={"beta2": 0.999, "weight_decay": 0.01}, parallel={"zero_stage": stage})
    proc = run_train(cfg, nproc=nproc)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return step_losses(tmp_path / name)


@pytest.mark.slow
def test_bert_zero_stages_match_zero0(bert_shards, tmp_path):
    ref = _train(tmp_path, bert_shards, "z0", 1, 0)
    assert sorted(ref) == [1, 2, 3, 4] and ref[4] < ref[1]
    for stage in (1, 2, 3):
        losses = _train(tmp_path, bert_shards, f"z{stage}", 2, stage)
        np.testing.assert_allclose([losses[s] for s in range(1, 5)], [ref[s] for s in range(1, 5)], rtol=1e-5,
                                   err_msg=f"ZeRO-{stage} on 2 ranks vs ZeRO-0 on 1")


@pytest.mark.slow
def test_two_phase_sequence_length_through_mnemos_train_resumes_across_the_boundary(bert_shards, tmp_path):
    """bert.short_seq_len 16 for the first half of 8 steps, then data.seq_len 32. Resuming from the
    run's own step-3 checkpoint (before the switch; as after a preemption, max_steps unchanged) gives
    the uninterrupted run's losses exactly."""
    import shutil

    def config(name):
        return write_config(tmp_path / f"{name}.yaml", tmp_path / name, bert_shards,
                            model={"arch": "bert", "layer_norm_eps": 1e-12, "dropout": 0.1},
                            data={"seq_len": 32}, train={"max_steps": 8, "log_every_steps": 1},
                            bert={"short_seq_len": 16, "short_seq_fraction": 0.5},
                            checkpoint={"every_steps": 3, "keep_last": 5})
    full = run_train(config("full"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "BERT sequence length 16 -> 32" in full.stdout + full.stderr
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000003",
                    tmp_path / "resumed" / "checkpoints" / "step_00000003")
    again = run_train(config("resumed"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at step 3" in again.stdout + again.stderr
    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "resumed")
    assert sorted(b) == [4, 5, 6, 7, 8]
    assert [a[s] for s in range(4, 9)] == [b[s] for s in range(4, 9)]


@pytest.mark.slow
def test_bert_tp2_checkpoint_continues_at_tp1_with_the_same_losses(bert_shards, tmp_path):
    """A BERT run saved under TP=2 (2 ranks, ZeRO-1) resumes resharded into TP=1 x DP=2 (ZeRO-2): the
    next five losses are the uninterrupted TP=2 run's, and the data stream continues where it stopped."""
    import json
    import shutil

    def config(name, tp, stage):
        return write_config(tmp_path / f"{name}.yaml", tmp_path / name, bert_shards,
                            model={"arch": "bert", "layer_norm_eps": 1e-12},
                            data={"seq_len": 32}, train={"max_steps": 8, "log_every_steps": 1},
                            optim={"beta2": 0.999, "weight_decay": 0.01},
                            parallel={"tp": tp, "zero_stage": stage},
                            checkpoint={"every_steps": 3, "keep_last": 5})
    full = run_train(config("tp2", 2, 1), nproc=2)
    assert full.returncode == 0, full.stdout[-4000:] + full.stderr[-4000:]
    (tmp_path / "tp1" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "tp2" / "checkpoints" / "step_00000003",
                    tmp_path / "tp1" / "checkpoints" / "step_00000003")
    again = run_train(config("tp1", 1, 2), nproc=2)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "saved tp=2 dp=1 zero=1 -> now tp=1 dp=2 zero=2" in again.stdout + again.stderr
    a, b = step_losses(tmp_path / "tp2"), step_losses(tmp_path / "tp1")
    assert sorted(b) == [4, 5, 6, 7, 8]  # nothing repeated, nothing skipped
    np.testing.assert_allclose([b[s] for s in range(4, 9)], [a[s] for s in range(4, 9)], rtol=1e-4)
    summary = json.loads((tmp_path / "tp1" / "results" / "train_summary.json").read_text())
    assert summary["consumed_samples"] == 8 * 8
