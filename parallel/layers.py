"""Megatron-style tensor-parallel layers (Shoeybi et al. 2019, Section 3; Korthikanti et al. 2022).

Each layer holds only its local shard, takes its TP group (and, for building on the meta device
without processes, its rank and size) as arguments, and exposes the same attribute names as the
torch layer it replaces (`weight`, `bias`, `in_features`, `out_features`) with *local* sizes, so model
code that reads `qkv.out_features` sees the local head count.

Every sharded parameter is marked the way DeepSpeed and Megatron tools expect:
  p.tensor_model_parallel = True      (DeepSpeed's `is_model_parallel_parameter`: its grad-norm sums
                                       these over the TP group and counts replicated ones once)
  p.partition_dim, p.partition_stride  (Megatron's names)
  p.tp_shard = Shard(...)              (how to cut this rank's slice from the full TP=1 tensor and back)
Replicated parameters whose gradient comes from TP-divergent data (LayerNorm under sequence
parallelism) carry `p.sequence_parallel = True`; their gradient is all-reduced in backward by
`copy_to_tp_region`, so no extra hook is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from parallel import comm


@dataclass(frozen=True)
class Shard:
    """This parameter is slice `rank` of `size` of a full tensor of `full_shape` along `dim`.

    `parts > 1` means the dimension stacks `parts` equal blocks (qkv's [W_q; W_k; W_v]) each split
    separately, so rank r holds [W_q[r]; W_k[r]; W_v[r]]: its own heads of q, k and v."""
    dim: int
    rank: int
    size: int
    full_shape: tuple
    parts: int = 1

    def local_shape(self) -> tuple:
        shape = list(self.full_shape)
        shape[self.dim] //= self.size
        return tuple(shape)

    def slice(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the full tensor (a view when parts == 1)."""
        if tuple(full.shape) != tuple(self.full_shape):
            raise ValueError(f"full tensor shape {tuple(full.shape)} != expected {self.full_shape}")
        blocks = full.unflatten(self.dim, (self.parts, -1))  # (.., parts, n/parts, ..)
        local = blocks.chunk(self.size, dim=self.dim + 1)[self.rank]
        return local.flatten(self.dim, self.dim + 1)

    @staticmethod
    def merge(shards: list[torch.Tensor], spec: "Shard") -> torch.Tensor:
        """Inverse of `slice`: the full tensor from every rank's slice, in rank order."""
        blocks = [s.unflatten(spec.dim, (spec.parts, -1)) for s in shards]
        return torch.cat(blocks, dim=spec.dim + 1).flatten(spec.dim, spec.dim + 1)


def mark_sharded(p: nn.Parameter, shard: Shard) -> nn.Parameter:
    p.tensor_model_parallel = True
    p.partition_dim = shard.dim
    p.partition_stride = 1
    p.tp_shard = shard
    return p


def _param(shape, device, dtype, shard: Shard | None = None) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
    return mark_sharded(p, shard) if shard is not None else p


def _check_divides(what: str, n: int, size: int, parts: int = 1) -> None:
    if n % (parts * size) != 0:
        raise ValueError(f"{what}={n} is not divisible by {parts} x tp {size} (rule: tp must divide it)")


class ColumnParallelLinear(nn.Module):
    """Y = X A with A split by columns: rank r computes Y_r = X A_r (Megatron eq. 3).

    Input modes: "replicated" (X identical on TP ranks: f = copy_to_tp_region), "sequence" (X sharded
    along the sequence: all-gather forward, reduce-scatter backward), "gathered" (an enclosing module
    already all-gathered the sequence: no communication here). Output stays sharded unless
    `gather_output`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group, tp_rank: int,
                 tp_size: int, fused_parts: int = 1, input_mode: str = "replicated", gather_output: bool = False,
                 device=None, dtype=None):
        super().__init__()
        _check_divides("out_features", out_features, tp_size, fused_parts)
        if input_mode not in ("replicated", "sequence", "gathered"):
            raise ValueError(f"input_mode={input_mode!r} (choices: replicated, sequence, gathered)")
        self.group, self.input_mode, self.gather_output = group, input_mode, gather_output
        self.in_features, self.out_features = in_features, out_features // tp_size
        self.full_out_features = out_features
        w = Shard(0, tp_rank, tp_size, (out_features, in_features), fused_parts)
        self.weight = _param(w.local_shape(), device, dtype, w)
        if bias:
            b = Shard(0, tp_rank, tp_size, (out_features,), fused_parts)
            self.bias = _param(b.local_shape(), device, dtype, b)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, in) replicated, or (B, T/tp, in) under "sequence" -> (B, T, out/tp)
        if self.input_mode == "replicated":
            x = comm.copy_to_tp_region(x, self.group)
        elif self.input_mode == "sequence":
            x = comm.gather_from_sequence_region(x, self.group, grad_is_partial=True)
        y = F.linear(x, self.weight, self.bias)
        return comm.gather_from_tp_region(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} (of {self.full_out_features}), "
                f"bias={self.bias is not None}, input={self.input_mode}")


class RowParallelLinear(nn.Module):
    """Y = X A with A split by rows and X by columns: Y = sum_r X_r A_r (all-reduce, Megatron's g), or
    reduce-scatter along the sequence under sequence parallelism. The bias is replicated and added
    once, after the reduction."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group, tp_rank: int,
                 tp_size: int, sequence_parallel: bool = False, device=None, dtype=None):
        super().__init__()
        _check_divides("in_features", in_features, tp_size)
        self.group, self.sequence_parallel = group, sequence_parallel
        self.in_features, self.out_features = in_features // tp_size, out_features
        self.full_in_features = in_features
        w = Shard(1, tp_rank, tp_size, (out_features, in_features))
        self.weight = _param(w.local_shape(), device, dtype, w)
        if bias:
            self.bias = _param((out_features,), device, dtype)
            if sequence_parallel:
                self.bias.sequence_parallel = True
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, in/tp) -> (B, T, out), or (B, T/tp, out) under sequence parallelism
        y = F.linear(x, self.weight)
        if self.sequence_parallel:
            y = comm.reduce_scatter_to_sequence_region(y, self.group)
            bias = None if self.bias is None else comm.copy_to_tp_region(self.bias, self.group)
        else:
            y = comm.reduce_from_tp_region(y, self.group)
            bias = self.bias
        return y if bias is None else y + bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (of {self.full_in_features}), out_features={self.out_features}, "
                f"bias={self.bias is not None}, sequence_parallel={self.sequence_parallel}")


class VocabParallelEmbedding(nn.Module):
    """Embedding with rows split over TP ranks: rank r owns ids [r V/tp, (r+1) V/tp); other ids look up
    zeros, and the sum over ranks (all-reduce, or reduce-scatter along the sequence) assembles the
    embedding (Megatron Section 3, "input embedding")."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, group, tp_rank: int, tp_size: int,
                 sequence_parallel: bool = False, device=None, dtype=None):
        super().__init__()
        _check_divides("num_embeddings (vocabulary)", num_embeddings, tp_size)
        self.group, self.sequence_parallel = group, sequence_parallel
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.num_embeddings_per_partition = num_embeddings // tp_size
        self.vocab_start = tp_rank * self.num_embeddings_per_partition
        w = Shard(0, tp_rank, tp_size, (num_embeddings, embedding_dim))
        self.weight = _param(w.local_shape(), device, dtype, w)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # idx: (B, T) -> (B, T, d), or (B, T/tp, d) under sequence parallelism
        local = idx - self.vocab_start
        outside = (local < 0) | (local >= self.num_embeddings_per_partition)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return comm.reduce_scatter_to_sequence_region(out, self.group)
        return comm.reduce_from_tp_region(out, self.group)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings_per_partition} of {self.num_embeddings} rows from {self.vocab_start}, "
                f"dim={self.embedding_dim}, sequence_parallel={self.sequence_parallel}")


class VocabParallelHead(nn.Module):
    """Output projection onto this rank's vocabulary slice: logits (B, T, V/tp), never gathered; the
    loss is `parallel.loss.lm_cross_entropy`. With `tied_weight` it shares the embedding's local shard
    (the same Parameter), so tying survives TP."""

    def __init__(self, in_features: int, vocab_size: int, bias: bool = False, *, group, tp_rank: int,
                 tp_size: int, tied_weight: nn.Parameter | None = None, sequence_parallel: bool = False,
                 device=None, dtype=None):
        super().__init__()
        _check_divides("vocab_size", vocab_size, tp_size)
        self.group, self.sequence_parallel = group, sequence_parallel
        self.in_features, self.out_features, self.full_out_features = in_features, vocab_size // tp_size, vocab_size
        if tied_weight is not None:
            if tuple(tied_weight.shape) != (vocab_size // tp_size, in_features):
                raise ValueError(f"tied weight shape {tuple(tied_weight.shape)} != local head shape "
                                 f"{(vocab_size // tp_size, in_features)}")
            self.weight = tied_weight
        else:
            w = Shard(0, tp_rank, tp_size, (vocab_size, in_features))
            self.weight = _param(w.local_shape(), device, dtype, w)
        if bias:
            b = Shard(0, tp_rank, tp_size, (vocab_size,))
            self.bias = _param(b.local_shape(), device, dtype, b)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d) replicated, or (B, T/tp, d) under sequence parallelism -> (B, T, V/tp)
        if self.sequence_parallel:
            x = comm.gather_from_sequence_region(x, self.group, grad_is_partial=True)
        else:
            x = comm.copy_to_tp_region(x, self.group)
        return F.linear(x, self.weight, self.bias)


class SequenceParallelLayerNorm(nn.LayerNorm):
    """LayerNorm on this rank's tokens (B, T/tp, d). Its weight and bias are replicated but see
    different tokens per rank, so their gradients are summed over the TP group (copy_to_tp_region's
    backward)."""

    def __init__(self, *args, group, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group
        for p in self.parameters():
            p.sequence_parallel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else comm.copy_to_tp_region(self.weight, self.group)
        b = None if self.bias is None else comm.copy_to_tp_region(self.bias, self.group)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


class SequenceParallelEmbedding(nn.Embedding):
    """A replicated embedding (learned positions, token types) whose output is wanted sharded along
    the sequence: looks up only this rank's slice of the ids' last (sequence) dimension; the weight's
    gradient is summed over the TP group."""

    def __init__(self, *args, group, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group
        self.weight.sequence_parallel = True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: (..., T) -> (..., T/tp, d)
        ids = comm.split(ids, ids.dim() - 1, self.group)
        return F.embedding(ids, comm.copy_to_tp_region(self.weight, self.group), self.padding_idx)
