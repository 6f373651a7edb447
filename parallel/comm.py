"""All tensor-parallel communication: small autograd functions whose backward is the conjugate collective.

Megatron-LM's f/g operators (Shoeybi et al. 2019, Section 3, Figure 3) and their sequence-parallel
counterparts (Korthikanti et al. 2022, Section 4.2.2):

    function                      forward                       backward
    copy_to_tp_region             identity                      all-reduce          ("f")
    reduce_from_tp_region         all-reduce                    identity            ("g")
    scatter_to_tp_region          keep own slice of last dim    all-gather last dim
    gather_from_tp_region         all-gather last dim           keep own slice
    scatter_to_sequence_region    keep own slice of seq dim     all-gather seq dim
    gather_from_sequence_region   all-gather seq dim            reduce-scatter seq dim ("g-bar")
    reduce_scatter_to_sequence    reduce-scatter seq dim        all-gather seq dim   ("g-bar" conjugate)

Every function takes the process group as an argument; `group=None` means "a TP group of one rank" and
every function is then the identity (no communication, no torch.distributed needed). Activations are
(B, T, ...) in mnemos, so the sequence dimension is 1.

This is the only module of `parallel/` that calls torch.distributed collectives.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SEQ_DIM = 1

# torch >= 2.10 renamed the flat-tensor collectives; keep working on the older names (torch >= 2.4).
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class MissingGroup:
    """Stands for a TP group of `size` ranks that was not created (a model built for shape checks or
    initialisation only). Building and initialising work; any communication raises."""

    def __init__(self, size: int):
        self.size = size

    def fail(self):
        raise RuntimeError(f"this tensor-parallel layer (tp={self.size}) has no process group: call "
                           f"topology.init_groups() after torch.distributed is initialised, before build_model")


def group_size(group) -> int:
    if isinstance(group, MissingGroup):
        group.fail()
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    if isinstance(group, MissingGroup):
        group.fail()
    return 0 if group is None else dist.get_rank(group)


# ---- raw collectives (no autograd) -------------------------------------------------------------

def all_reduce(x: torch.Tensor, group, op: str = "sum") -> torch.Tensor:
    """All-reduce a copy of `x` (sum or max) and return it."""
    if group_size(group) == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op], group=group)
    return x


def all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim`, in rank order."""
    n = group_size(group)
    if n == 1:
        return x
    moved = x.movedim(dim, 0).contiguous()
    out = torch.empty((n * moved.shape[0],) + tuple(moved.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_flat(out, moved, group=group)
    return out.movedim(0, dim)


def split(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's equal slice of `x` along `dim` (no communication)."""
    n = group_size(group)
    if n == 1:
        return x
    if x.shape[dim] % n != 0:
        raise ValueError(f"cannot split dimension {dim} of size {x.shape[dim]} over {n} tensor-parallel ranks "
                         f"(rule: size % tp == 0)")
    return x.chunk(n, dim=dim)[group_rank(group)].contiguous()


def reduce_scatter(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Sum over ranks, then keep this rank's slice along `dim`."""
    n = group_size(group)
    if n == 1:
        return x
    if x.shape[dim] % n != 0:
        raise ValueError(f"cannot reduce-scatter dimension {dim} of size {x.shape[dim]} over {n} ranks "
                         f"(rule: size % tp == 0)")
    moved = x.movedim(dim, 0).contiguous()
    out = torch.empty((moved.shape[0] // n,) + tuple(moved.shape[1:]), dtype=x.dtype, device=x.device)
    _reduce_scatter_flat(out, moved, group=group)
    return out.movedim(0, dim)


# ---- autograd functions -------------------------------------------------------------------------

class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return all_reduce(g, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return split(x, -1, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather(g, -1, ctx.group), None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather(x, -1, group)

    @staticmethod
    def backward(ctx, g):
        return split(g, -1, ctx.group), None


class _ScatterToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return split(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather(g, SEQ_DIM, ctx.group), None


class _GatherFromSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, grad_is_partial):
        ctx.group, ctx.grad_is_partial = group, grad_is_partial
        return all_gather(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, g):
        if ctx.grad_is_partial:  # the consumer is a TP-sharded layer: each rank holds a partial sum
            return reduce_scatter(g, SEQ_DIM, ctx.group), None, None
        return split(g, SEQ_DIM, ctx.group), None, None


class _ReduceScatterToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return reduce_scatter(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather(g, SEQ_DIM, ctx.group), None


def copy_to_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    """f: identity forward, all-reduce backward (input of a column-parallel layer; replicated params
    used on TP-divergent data under sequence parallelism)."""
    return x if group_size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    """g: all-reduce forward, identity backward (output of a row-parallel layer)."""
    return x if group_size(group) == 1 else _ReduceFromTP.apply(x, group)


def scatter_to_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    """Keep this rank's slice of the last dimension; all-gather in backward."""
    return x if group_size(group) == 1 else _ScatterToTP.apply(x, group)


def gather_from_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    """All-gather the last dimension; keep this rank's slice in backward."""
    return x if group_size(group) == 1 else _GatherFromTP.apply(x, group)


def scatter_to_sequence_region(x: torch.Tensor, group) -> torch.Tensor:
    """Keep this rank's slice of the sequence dimension; all-gather in backward."""
    return x if group_size(group) == 1 else _ScatterToSeq.apply(x, group)


def gather_from_sequence_region(x: torch.Tensor, group, grad_is_partial: bool = True) -> torch.Tensor:
    """All-gather the sequence dimension. Backward: reduce-scatter when the consumer is TP-sharded (its
    input gradient is a partial sum per rank), else keep this rank's slice."""
    return x if group_size(group) == 1 else _GatherFromSeq.apply(x, group, grad_is_partial)


def reduce_scatter_to_sequence_region(x: torch.Tensor, group) -> torch.Tensor:
    """Sum partial outputs over the TP group and keep this rank's sequence slice; all-gather in backward."""
    return x if group_size(group) == 1 else _ReduceScatterToSeq.apply(x, group)
