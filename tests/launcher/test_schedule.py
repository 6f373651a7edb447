
import pytest
import torch

from launcher.config import ConfigError, load_config
from launcher.schedule import global_batch_size, learning_rate


def _cfg(*o):
    return load_config(None, list(o))


def test_lr_warmup_cosine_to_ten_percent_then_flat():
    cfg = _cfg("optim.lr=6e-4", "schedule.warmup_tokens=1000", "schedule.decay_tokens=11000")
    assert learning_rate(cfg, 500) == pytest.approx(3e-4, rel=1e-2)
    assert learning_rate(cfg, 1000) == pytest.approx(6e-4)
    mid = learning_rate(cfg, 6000)  # half-way through the cosine
    assert mid == pytest.approx(6e-4 * (0.1 + 0.9 * 0.5), rel=1e-6)
    assert learning_rate(cfg, 11000) == pytest.approx(6e-5)
    assert learning_rate(cfg, 10**9) == pytest.approx(6e-5)  # flat at 10% after the decay
    lrs = [learning_rate(cfg, t) for t in range(1000, 11001, 500)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_bert_linear_decay_to_zero():
    cfg = _cfg("optim.lr=1e-4", "optim.min_lr_ratio=0", "schedule.warmup_tokens=100",
               "schedule.decay_tokens=1100", "schedule.decay_shape=linear")
    assert learning_rate(cfg, 600) == pytest.approx(0.5e-4)
    assert learning_rate(cfg, 1100) == pytest.approx(0.0)


def test_gpt3_batch_ramp_is_linear_and_whole_micro_batches():
    cfg = _cfg("data.seq_len=128", "train.global_batch_size=256", "train.micro_batch_size=4",
               "schedule.batch_ramp_tokens=1000000", "schedule.batch_ramp_start_tokens=4096")
    dp = 2
    sizes = [global_batch_size(cfg, t, dp) for t in range(0, 1_100_000, 50_000)]
    assert sizes[0] == 32  # 4096 tokens / 128
    assert sizes[-1] == 256
    assert all(s % (4 * dp) == 0 for s in sizes)
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    half = global_batch_size(cfg, 500_000, dp)
    assert abs(half - (32 + 256) / 2) <= 8


def test_bf16_on_cpu_is_refused_not_silently_downgraded():
    from parallel.engine import check_precision_supported
    cfg = _cfg("precision.dtype=bf16")
    with pytest.raises(ConfigError, match="precision.dtype='bf16' needs a CUDA GPU"):
        check_precision_supported(cfg, torch.device("cpu"))


def test_weight_decay_skips_biases_and_layernorm():
    from model.gpt import GPT
    from parallel.engine import param_groups
    m = GPT(_cfg().model)
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(names[id(p)].endswith("weight") and "ln" not in names[id(p)] for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or "ln" in names[id(p)] for p in no_decay["params"])


def test_deepspeed_config_is_generated_from_the_run_config():
    from parallel.engine import deepspeed_config
    from parallel.topology import Topology
    cfg = _cfg("train.global_batch_size=32", "train.micro_batch_size=4", "parallel.zero_stage=3",
               "optim.grad_clip=1.0")
    ds = deepspeed_config(cfg, Topology(world_size=4, rank=0, tp=2))
    assert ds["train_batch_size"] == 32 and ds["gradient_accumulation_steps"] == 4  # 32 / (4 x dp 2)
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 1.0
