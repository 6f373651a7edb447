"""Activation checkpointing: each transformer block keeps only its input and recomputes its activations
in backward. Applied after `parallelize` and before the DeepSpeed wrap (torchtitan's order).

The block's `forward` is replaced on the instance, so parameter names (and with them checkpoints and the
TP plan) do not change. Dropout replays the same masks in the recomputation: torch restores the default
RNG, and the TP RNG tracker, when present, restores its own streams.
"""

from __future__ import annotations

import functools

import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every `model.blocks[i]`; returns how many blocks were wrapped."""
    from parallel.rng import tracker_of

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no `blocks`: activation checkpointing does not know "
                         f"what to recompute")
    tracker = tracker_of(model)
    kwargs = {"use_reentrant": False}
    if tracker is not None:
        kwargs["context_fn"] = tracker.checkpoint_context_fn
    for block in blocks:
        plain_forward = type(block).forward.__get__(block)  # the class's forward, bound to this block
        block.forward = functools.partial(checkpoint, plain_forward, **kwargs)
    return len(blocks)
