"""GPT-3's token-based schedules (App. B): LR warmup + cosine decay to 10%, and the batch-size ramp."""

from __future__ import annotations

import math

from launcher.config import RunConfig


def learning_rate(cfg: RunConfig, tokens_seen: int) -> float:
    """Linear warmup over warmup_tokens, cosine (or linear) decay to min_lr_ratio x peak at decay_tokens,
    then flat."""
    peak = cfg.optim.lr
    s = cfg.schedule
    if s.warmup_tokens and tokens_seen < s.warmup_tokens:
        return peak * (tokens_seen + 1) / s.warmup_tokens
    if s.decay_tokens <= s.warmup_tokens:
        return peak
    progress = min(1.0, (tokens_seen - s.warmup_tokens) / (s.decay_tokens - s.warmup_tokens))
    floor = cfg.optim.min_lr_ratio
    if s.decay_shape == "linear":
        return peak * (floor + (1 - floor) * (1 - progress))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def global_batch_size(cfg: RunConfig, tokens_seen: int, dp: int) -> int:
    """Sequences in this step's global batch: GPT-3 ramps linearly from a small batch to the full one.

    Rounded down to a multiple of micro_batch x dp so every rank runs whole micro-batches.
    """
    full = cfg.train.global_batch_size
    s = cfg.schedule
    if not s.batch_ramp_tokens or tokens_seen >= s.batch_ramp_tokens:
        return full
    seq = cfg.data.seq_len
    start = s.batch_ramp_start_tokens / seq
    target = start + (full - start) * tokens_seen / s.batch_ramp_tokens
    unit = cfg.train.micro_batch_size * dp
    return int(min(full, max(unit, (target // unit) * unit)))
