"""`perf.compile` (torch.compile of the model inside the DeepSpeed engine, inductor) trains the same
losses as eager, through `mnemos train` on CPU (inductor's C++ backend; needs gcc)."""

import shutil

import numpy as np
import pytest

from tests.launcher.conftest import run_train, write_config
from tests.step_log import step_losses


def _run(tmp_path, shards, name, **perf):
    cfg = write_config(tmp_path / f"{name}.yaml", tmp_path / name, shards,
                       model={"n_layer": 2, "d_model": 32, "n_head": 2, "n_ctx": 32},
                       data={"seq_len": 32}, train={"max_steps": 3, "global_batch_size": 4, "micro_batch_size": 2,
                                                    "log_every_steps": 1},
                       perf=perf)
    proc = run_train(cfg, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return tmp_path / name, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def eager(tiny_data, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("eager"), tiny_data, "eager")[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="inductor on CPU compiles C++ and needs a C compiler")
@pytest.mark.parametrize("chunk", [0, 24])  # also with the chunked loss (its head output is a NamedTuple)
def test_compiled_model_trains_the_eager_losses(tiny_data, tmp_path, eager, chunk):
    compiled, out = _run(tmp_path, tiny_data, "compiled", compile=True, loss_chunk_tokens=chunk)
    assert "perf.compile: model compiled with torch.compile (inductor)" in out and "is_compiled=True" in out
    a, b = step_losses(compiled), step_losses(eager)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    # inductor fuses and reorders fp32 arithmetic: equal to rounding, not bit for bit
    np.testing.assert_allclose([a[s] for s in (1, 2, 3)], [b[s] for s in (1, 2, 3)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([step_losses(compiled, "grad_norm")[s] for s in (1, 2, 3)],
                               [step_losses(eager, "grad_norm")[s] for s in (1, 2, 3)], rtol=1e-4)
