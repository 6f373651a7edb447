"""Language-model loss over (possibly vocabulary-sharded) logits.

Under TP each rank holds logits for its vocabulary slice (B, T, V/tp). The vocab-parallel
cross-entropy (Megatron) never gathers full-vocabulary logits: it all-reduces three per-token scalars
(the max, the target's logit, the sum of exponentials) over the TP group.

Chunked loss (`perf.loss_chunk_tokens`): the LM head is swapped for `LazyLogitsHead`, which returns its
input and weight (`LazyLogits`) instead of logits; `lm_cross_entropy` then runs the head matmul and
the cross-entropy a chunk of tokens at a time, in forward and again in backward, so the (tokens x
vocab) fp32 logits of the whole micro-batch never exist. At GPT-3 shapes (8 x 2048 tokens, 50304
words) those are 3.3 GB in fp32, plus as much again for their gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
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


def lm_cross_entropy(logits: "torch.Tensor | LazyLogits", targets: torch.Tensor, topology: Topology,
                     ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy. logits (B, T, V_local) or `LazyLogits` (chunked), targets (B, T)."""
    if isinstance(logits, LazyLogits):
        return chunked_lm_cross_entropy(logits, targets, topology, ignore_index)
    flat_logits = logits.float().reshape(-1, logits.size(-1))
    flat_targets = targets.reshape(-1)
    if topology.tp == 1:
        return F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index)
    vocab_start = topology.tp_rank * logits.size(-1)
    per_token = vocab_parallel_cross_entropy(flat_logits, flat_targets, topology.tp_group, vocab_start,
                                             ignore_index)
    return per_token.sum() / (flat_targets != ignore_index).sum()


# ---- chunked head + cross-entropy ------------------------------------------------------------------

class LazyLogits(NamedTuple):
    """Logits not computed yet: logits = hidden @ weight.T (+ bias), (B, T, V_local). A NamedTuple so
    DeepSpeed's output hooks and torch.compile pass it through like a tuple of tensors."""
    hidden: torch.Tensor            # (B, T, d), already gathered/copied for the TP head
    weight: torch.Tensor            # (V_local, d)
    bias: torch.Tensor | None
    chunk_tokens: int


class LazyLogitsHead(nn.Module):
    """Stands in for the LM head (nn.Linear or VocabParallelHead): the same parameters under the same
    names (`weight`, `bias`; tied weights stay tied), the same TP input communication, but forward
    returns `LazyLogits` for the chunked loss instead of the (B, T, V_local) logits."""

    def __init__(self, head: nn.Module, chunk_tokens: int):
        super().__init__()
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens={chunk_tokens} (rule: a positive number of tokens per chunk)")
        self.chunk_tokens = chunk_tokens
        self.weight = head.weight  # the same Parameter object: tying and TP shard marks survive
        self.bias = head.bias
        self.group = getattr(head, "group", None)
        self.sequence_parallel = getattr(head, "sequence_parallel", False)

    def forward(self, x: torch.Tensor) -> LazyLogits:
        # x: (B, T, d) replicated, or (B, T/tp, d) under sequence parallelism (VocabParallelHead's input)
        if self.sequence_parallel:
            x = comm.gather_from_sequence_region(x, self.group, grad_is_partial=True)
        else:
            x = comm.copy_to_tp_region(x, self.group)  # backward all-reduces the partial input grads
        return LazyLogits(x, self.weight, self.bias, self.chunk_tokens)


def use_chunked_loss(model: nn.Module, chunk_tokens: int) -> nn.Module:
    """Swap `model.lm_head` for a `LazyLogitsHead` (in place, before the DeepSpeed wrap)."""
    head = getattr(model, "lm_head", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no lm_head: the chunked loss is for the GPT decoder")
    model.lm_head = LazyLogitsHead(head, chunk_tokens)
    return model


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What autocast would run the head matmul in (the custom Function turns autocast off inside)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    # h: (n, d), w: (V_local, d), both in the compute dtype -> fp32 logits (n, V_local), like the plain
    # path's `lm_head(...)` followed by `.float()`
    return F.linear(h, w, None if b is None else b.to(h.dtype)).float()


class _ChunkedLMCrossEntropy(torch.autograd.Function):
    """Per-token CE of logits = hidden @ weight.T computed `chunk` tokens at a time. Saves only the
    inputs and one log-sum-exp per token; backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, group, vocab_start, chunk, ignore_index):
        # hidden: (N, d), weight: (V_local, d), targets: (N,) global ids -> per-token loss (N,), 0 if ignored
        dtype = _compute_dtype(hidden)
        n_local = weight.size(0)
        valid = targets != ignore_index
        local_t = targets - vocab_start
        mine = valid & (local_t >= 0) & (local_t < n_local)  # this rank holds the target's logit
        local_t = local_t.clamp(0, n_local - 1)
        lse = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
        target_logit = torch.empty_like(lse)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)  # one cast per pass, not per chunk
            for s in range(0, hidden.size(0), chunk):
                logits = _chunk_logits(hidden[s:s + chunk].to(dtype), w, bias)  # (n, V_local) fp32
                t = local_t[s:s + chunk]
                if group is None:
                    lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
                    target_logit[s:s + chunk] = logits.gather(-1, t[:, None])[:, 0]
                    continue
                # Megatron's vocab-parallel CE on this chunk: all-reduce max, sum of exp, target logit
                mx = comm.all_reduce(logits.max(dim=-1).values, group, op="max")
                sum_exp = comm.all_reduce((logits - mx[:, None]).exp().sum(dim=-1), group)
                lse[s:s + chunk] = mx + sum_exp.log()
                target_logit[s:s + chunk] = logits.gather(-1, t[:, None])[:, 0] * mine[s:s + chunk]
            if group is not None:
                target_logit = comm.all_reduce(target_logit, group)
        ctx.save_for_backward(hidden, weight, bias, local_t, mine, valid, lse)
        ctx.dtype, ctx.chunk = dtype, chunk
        return (lse - target_logit) * valid

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, bias, local_t, mine, valid, lse = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk
        g_tok = (grad_loss * valid).float()  # (N,)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for s in range(0, hidden.size(0), chunk):
                h = hidden[s:s + chunk].to(dtype)
                logits = _chunk_logits(h, w, bias)  # recomputed (n, V_local) fp32
                # d loss / d logit = g (softmax - onehot(target)); the onehot only where this rank owns it
                d = logits.sub_(lse[s:s + chunk, None]).exp_().mul_(g_tok[s:s + chunk, None])
                d.scatter_add_(-1, local_t[s:s + chunk, None],
                               -(g_tok[s:s + chunk] * mine[s:s + chunk])[:, None])
                d_c = d.to(dtype)
                grad_hidden[s:s + chunk] = (d_c @ w).to(hidden.dtype)
                grad_weight += (d_c.t() @ h).float()
                if grad_bias is not None:
                    grad_bias += d.sum(dim=0)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias, None, None, None, None, None


def chunked_lm_cross_entropy(lazy: LazyLogits, targets: torch.Tensor, topology: Topology,
                             ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy of `lazy`'s logits, never holding more than `chunk_tokens` rows of them.
    Equal to `lm_cross_entropy` on the materialised logits (TP=1 and vocab-parallel TP)."""
    hidden = lazy.hidden.reshape(-1, lazy.hidden.size(-1))  # (N, d)
    flat_targets = targets.reshape(-1)
    group = None if topology.tp == 1 else topology.tp_group
    vocab_start = topology.tp_rank * lazy.weight.size(0) if topology.tp > 1 else 0
    per_token = _ChunkedLMCrossEntropy.apply(hidden, lazy.weight, lazy.bias, flat_targets, group, vocab_start,
                                             lazy.chunk_tokens, ignore_index)
    return per_token.sum() / (flat_targets != ignore_index).sum()
