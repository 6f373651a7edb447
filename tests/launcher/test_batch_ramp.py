"""GPT-3's batch-size ramp through `mnemos train`: the accumulation boundary moves with the batch size,
a resumed run continues the uninterrupted curve, and prefetching (`perf.prefetch`) trains on the same
batches while the size changes."""

import pytest

from tests.launcher.test_perf_train import _run
from tests.step_log import step_losses, step_records

# 4 x 64-token sequences at first, 16 after 3 full batches of tokens: sizes 4,4,4,4,8,8,12,12,16,16
COMMON = dict(model={"attn_pattern": "alternating", "local_window": 16},
              train={"max_steps": 10, "global_batch_size": 16, "micro_batch_size": 4},
              schedule={"batch_ramp_tokens": 16 * 64 * 3, "batch_ramp_start_tokens": 4 * 64})
STOP_AT_4 = dict(COMMON, train={**COMMON["train"], "max_steps": 4})


@pytest.fixture(scope="module")
def ramp_run(tiny_data, tmp_path_factory):
    run = _run(tmp_path_factory.mktemp("ramp"), tiny_data, "ramp", **COMMON)
    sizes = [r["batch_size"] for r in step_records(run) if r.get("split") == "train"]
    assert sizes == [4, 4, 4, 4, 8, 8, 12, 12, 16, 16]
    return run


def test_the_data_budget_counts_the_ramp(ramp_run):
    """The summary's (and the start line's) samples to read are the batches the run trained on, ramp included."""
    data = _summary(ramp_run)["data"]
    assert data["samples_to_read"] == 88 and data["epochs"] == round(88 / data["train_samples"], 4)


def _stopped_and_resumed(tmp_path, tiny_data, name, **extra):
    _run(tmp_path, tiny_data, name, checkpoint={"save_at_end": True}, **STOP_AT_4, **extra)
    return _run(tmp_path, tiny_data, name, **COMMON, **extra)


def test_resume_during_the_ramp_continues_the_same_curve(tiny_data, tmp_path, ramp_run):
    """DeepSpeed counts micro-steps since the process started; with 2 then 3 micro-batches per step its
    own boundary fell inside step 7 (after 8 micro-steps), and at a different place after a resume. The
    trainer now marks the last micro-batch of each step as the boundary."""
    resumed = _stopped_and_resumed(tmp_path, tiny_data, "resumed")
    for key in ("loss", "grad_norm"):
        assert step_losses(resumed, key) == step_losses(ramp_run, key)


def test_prefetch_trains_on_the_same_batches_during_the_ramp_and_after_a_resume(tiny_data, tmp_path, ramp_run):
    """The next step's size is predicted from the ramp; after the resume the prefetched key no longer
    matches and the step collates itself. Losses and grad norms are bit-identical either way."""
    straight = _run(tmp_path, tiny_data, "prefetch", perf={"prefetch": True}, **COMMON)
    resumed = _stopped_and_resumed(tmp_path, tiny_data, "prefetch_resumed", perf={"prefetch": True})
    for run in (straight, resumed):
        for key in ("loss", "grad_norm"):
            assert step_losses(run, key) == step_losses(ramp_run, key)
    # every step but the first of a process trained on batches the worker had prepared
    assert _summary(straight)["prefetch"] == {"hits": 9, "misses": 1}
    assert _summary(resumed)["prefetch"] == {"hits": 5, "misses": 1}  # steps 5-10 of the second process


def _summary(run):
    import json
    return json.loads((run / "results" / "train_summary.json").read_text())


def test_prefetch_is_refused_for_bert():
    from launcher.config import RunConfig
    with pytest.raises(ValueError, match=r"perf.prefetch=True needs model.arch='gpt'"):
        RunConfig(model={"arch": "bert"}, perf={"prefetch": True})
