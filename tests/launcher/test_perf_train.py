"""Fast paths through `mnemos train` (issue #11) give the plain path's logged losses and grad norms."""

import numpy as np
import pytest

from tests.launcher.conftest import run_train, step_losses, write_config


def _run(tmp_path, shards, name, nproc=1, **sections):
    cfg = write_config(tmp_path / f"{name}.yaml", tmp_path / name, shards, **sections)
    proc = run_train(cfg, nproc=nproc)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return tmp_path / name


def _assert_same_curve(run, ref, steps=10, rtol=1e-5):
    for key in ("loss", "grad_norm"):
        a, b = step_losses(run, key), step_losses(ref, key)
        assert sorted(a) == sorted(b) == list(range(1, steps + 1))
        np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=rtol, err_msg=key)


@pytest.fixture(scope="module")
def plain_run(tiny_data, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("plain"), tiny_data, "plain", model={"attn_pattern": "alternating",
                                                                             "local_window": 16})


def test_chunked_loss_training_matches_plain(tiny_data, tmp_path, plain_run):
    run = _run(tmp_path, tiny_data, "chunked", model={"attn_pattern": "alternating", "local_window": 16},
               perf={"loss_chunk_tokens": 48})  # 4 x 64 tokens per micro-batch: 6 chunks, the last short
    _assert_same_curve(run, plain_run)


@pytest.mark.slow
def test_chunked_loss_with_zero2_on_two_ranks_matches_plain(tiny_data, tmp_path, plain_run):
    run = _run(tmp_path, tiny_data, "chunked_z2", nproc=2, parallel={"zero_stage": 2},
               model={"attn_pattern": "alternating", "local_window": 16}, perf={"loss_chunk_tokens": 100})
    _assert_same_curve(run, plain_run, rtol=1e-4)
