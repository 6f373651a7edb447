"""Activation checkpointing: each transformer block keeps only its input and recomputes its activations
in backward. Applied after `parallelize` and before the DeepSpeed wrap (torchtitan's order).

Two policies (`parallel.checkpoint_policy`):
  full       the block keeps its input only; backward re-runs the whole block (one extra forward).
  selective  op-level: the outputs of the matrix products and of the attention kernel are kept, the
             cheap memory-bound ops between them (LayerNorm, GELU, dropout, residual adds, reshapes)
             are recomputed. Backward then repeats no matmul FLOPs. The memory saved is what those
             ops would have held, e.g. GELU's 4 d_model-wide output and both LayerNorm outputs.
             This is torchtitan's op-level SAC, minus its save-every-other-matmul option.

The block's `forward` is replaced on the instance, so parameter names (and with them checkpoints and the
TP plan) do not change. Dropout replays the same masks in the recomputation: torch restores the default
RNG, and the TP RNG tracker, when present, restores its own streams.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

POLICIES = ("full", "selective")

# Ops whose outputs `selective` keeps: the FLOP-heavy ones. Everything else is recomputed.
_aten = torch.ops.aten
SAVED_OPS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default}
for _name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"):
    if hasattr(_aten, _name):
        SAVED_OPS.add(getattr(_aten, _name).default)


def _keep_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _combined(*context_fns):
    """One checkpoint context_fn from several: each returns (forward context, recompute context)."""

    def context_fn():
        pairs = [fn() for fn in context_fns]

        @contextlib.contextmanager
        def enter_all(contexts):
            with contextlib.ExitStack() as stack:
                for c in contexts:
                    stack.enter_context(c)
                yield

        return enter_all([f for f, _ in pairs]), enter_all([r for _, r in pairs])

    return context_fn


def apply_activation_checkpointing(model: nn.Module, policy: str = "full") -> int:
    """Checkpoint every `model.blocks[i]` with `policy` ("full" | "selective"); returns how many blocks
    were wrapped."""
    from parallel.rng import tracker_of

    if policy not in POLICIES:
        raise ValueError(f"checkpoint policy {policy!r} (choices: {', '.join(POLICIES)})")
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no `blocks`: activation checkpointing does not know "
                         f"what to recompute")
    tracker = tracker_of(model)
    context_fns = [] if tracker is None else [tracker.checkpoint_context_fn]
    if policy == "selective":
        context_fns.append(functools.partial(create_selective_checkpoint_contexts, _keep_matmuls))
    kwargs = {"use_reentrant": False}
    if context_fns:
        kwargs["context_fn"] = context_fns[0] if len(context_fns) == 1 else _combined(*context_fns)
    for block in blocks:
        plain_forward = type(block).forward.__get__(block)  # the class's forward, bound to this block
        block.forward = functools.partial(checkpoint, plain_forward, **kwargs)
    return len(blocks)
