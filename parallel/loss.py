"""Language-model loss over (possibly vocabulary-sharded) logits.

Under TP each rank holds logits for its vocabulary slice (B, T, V/tp). The vocab-parallel
cross-entropy (Megatron) never gathers full-vocabulary logits: it all-reduces three per-token scalars
(the max, the target's logit, the sum of exponentials) over the TP group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from parallel import comm
from parallel.topology import Topology


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, group, vocab_start, ignore_index):
        # logits: (N, V/tp) fp32, targets: (N,) global ids -> per-token loss (N,), 0 where ignored
        n_local = logits.size(-1)
        logits_max = comm.all_reduce(logits.max(dim=-1).values, group, op="max")
        shifted = logits - logits_max.unsqueeze(-1)  # stable softmax
        local_t = targets - vocab_start
        mine = (local_t >= 0) & (local_t < n_local)
        local_t = local_t.clamp(0, n_local - 1)
        target_logit = shifted.gather(-1, local_t.unsqueeze(-1)).squeeze(-1) * mine
        target_logit = comm.all_reduce(target_logit, group)
        exp = shifted.exp()
        sum_exp = comm.all_reduce(exp.sum(dim=-1), group)
        valid = targets != ignore_index
        loss = (sum_exp.log() - target_logit) * valid
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_t, mine, valid)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_t, mine, valid = ctx.saved_tensors
        g = (grad_loss * valid).unsqueeze(-1)
        grad = softmax * g  # d loss / d logit = softmax - onehot(target)
        grad.scatter_add_(-1, local_t.unsqueeze(-1), -(g * mine.unsqueeze(-1)))
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, group, vocab_start: int,
                                 ignore_index: int = -100) -> torch.Tensor:
    """Per-token cross-entropy from vocabulary-sharded logits (N, V/tp); same as F.cross_entropy(...,
    reduction='none') on the gathered logits."""
    return _VocabParallelCrossEntropy.apply(logits, targets, group, vocab_start, ignore_index)


def lm_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, topology: Topology,
                     ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy. logits (B, T, V_local), targets (B, T)."""
    flat_logits = logits.float().reshape(-1, logits.size(-1))
    flat_targets = targets.reshape(-1)
    if topology.tp == 1:
        return F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index)
    vocab_start = topology.tp_rank * logits.size(-1)
    per_token = vocab_parallel_cross_entropy(flat_logits, flat_targets, topology.tp_group, vocab_start,
                                             ignore_index)
    return per_token.sum() / (flat_targets != ignore_index).sum()
