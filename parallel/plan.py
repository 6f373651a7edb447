"""Declarative tensor-parallel plans: `{module-name pattern: style}` applied to a meta-device model.

`parallelize(model, topology, cfg)` walks the plan of the model's architecture; every pattern must
match at least one module (a renamed layer fails loudly instead of silently staying replicated). A
`*` matches exactly one component of a dotted module name. Styles swap in the layers of
`parallel.layers` with local shapes (same attribute and parameter names, so the model code and the
parameter names are unchanged), or adjust a module in place (RNG region, sequence gather).

Adding a model = adding a dict here: e.g. a BERT plan maps its attention/MLP linears to
`Column`/`Row`, its word embedding to `VocabEmbedding`, its MLM decoder to `VocabHead(tie=...)`.

Styles only build modules; weights are initialised later by `parallel.build` from the seed, so a TP
run holds exactly the slices of the TP=1 weights.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

import torch.nn as nn

from parallel import comm
from parallel.layers import (ColumnParallelLinear, RowParallelLinear, SequenceParallelEmbedding,
                             SequenceParallelLayerNorm, VocabParallelEmbedding, VocabParallelHead)
from parallel.rng import RNGTracker, TrackedDropout
from parallel.topology import Topology

log = logging.getLogger(__name__)


@dataclass
class PlanContext:
    model: nn.Module
    topology: Topology
    group: object  # the TP process group, or None when it is not created (meta builds, tp == 1)
    sequence_parallel: bool
    tracker: RNGTracker

    @property
    def tp_rank(self) -> int:
        return self.topology.tp_rank

    @property
    def tp_size(self) -> int:
        return self.topology.tp


def _factory(old: nn.Module) -> dict:
    p = next(old.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


# ---- styles ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """nn.Linear -> ColumnParallelLinear. `fused=3` for a stacked [W_q; W_k; W_v]: each of q, k, v is
    split per head. `input_gathered_by_parent`: under sequence parallelism the enclosing module
    (see `TPRegion(gather_sequence=True)`) already all-gathered the sequence."""
    fused: int = 1
    input_gathered_by_parent: bool = False

    def apply(self, old: nn.Linear, ctx: PlanContext) -> nn.Module:
        mode = "replicated"
        if ctx.sequence_parallel:
            mode = "gathered" if self.input_gathered_by_parent else "sequence"
        return ColumnParallelLinear(old.in_features, old.out_features, old.bias is not None, group=ctx.group,
                                    tp_rank=ctx.tp_rank, tp_size=ctx.tp_size, fused_parts=self.fused,
                                    input_mode=mode, **_factory(old))


@dataclass(frozen=True)
class Row:
    """nn.Linear -> RowParallelLinear (input sharded on its last dim, output reduced)."""

    def apply(self, old: nn.Linear, ctx: PlanContext) -> nn.Module:
        return RowParallelLinear(old.in_features, old.out_features, old.bias is not None, group=ctx.group,
                                 tp_rank=ctx.tp_rank, tp_size=ctx.tp_size,
                                 sequence_parallel=ctx.sequence_parallel, **_factory(old))


@dataclass(frozen=True)
class VocabEmbedding:
    """nn.Embedding (token ids) -> VocabParallelEmbedding."""

    def apply(self, old: nn.Embedding, ctx: PlanContext) -> nn.Module:
        return VocabParallelEmbedding(old.num_embeddings, old.embedding_dim, group=ctx.group, tp_rank=ctx.tp_rank,
                                      tp_size=ctx.tp_size, sequence_parallel=ctx.sequence_parallel,
                                      **_factory(old))


@dataclass(frozen=True)
class VocabHead:
    """nn.Linear onto the vocabulary -> VocabParallelHead. `tie` names the embedding module whose
    weight the TP=1 model shares with this head; the parallel head then shares that embedding's local
    shard (the embedding's pattern must come first in the plan)."""
    tie: str | None = None

    def apply(self, old: nn.Linear, ctx: PlanContext) -> nn.Module:
        tied = None
        if self.tie is not None:
            emb = ctx.model.get_submodule(self.tie)
            if not isinstance(emb, VocabParallelEmbedding):
                raise ValueError(f"VocabHead(tie={self.tie!r}): {self.tie} must be parallelized as VocabEmbedding "
                                 f"before the head (put its pattern first in the plan)")
            tied = emb.weight
        return VocabParallelHead(old.in_features, old.out_features, old.bias is not None, group=ctx.group,
                                 tp_rank=ctx.tp_rank, tp_size=ctx.tp_size, tied_weight=tied,
                                 sequence_parallel=ctx.sequence_parallel, **_factory(old))


@dataclass(frozen=True)
class ReplicatedEmbedding:
    """A replicated embedding read along the sequence (learned positions, token types): unchanged
    without sequence parallelism, looks up only this rank's tokens with it."""

    def apply(self, old: nn.Embedding, ctx: PlanContext) -> nn.Module:
        if not ctx.sequence_parallel:
            return old
        return SequenceParallelEmbedding(old.num_embeddings, old.embedding_dim, old.padding_idx,
                                         group=ctx.group, **_factory(old))


@dataclass(frozen=True)
class Norm:
    """LayerNorm in a replicated region: unchanged, or sequence-parallel under sequence parallelism."""

    def apply(self, old: nn.LayerNorm, ctx: PlanContext) -> nn.Module:
        if not ctx.sequence_parallel:
            return old
        return SequenceParallelLayerNorm(old.normalized_shape, eps=old.eps,
                                         elementwise_affine=old.elementwise_affine,
                                         bias=getattr(old, "bias", None) is not None, group=ctx.group,
                                         **_factory(old))


@dataclass(frozen=True)
class Dropout:
    """nn.Dropout on activations outside TP-sharded regions: drawn from the default stream (identical on
    TP ranks, even when called inside a `TPRegion`), or from the TP stream under sequence parallelism
    (each rank holds different tokens)."""

    def apply(self, old: nn.Dropout, ctx: PlanContext) -> nn.Module:
        return TrackedDropout(old.p, ctx.tracker, "tp" if ctx.sequence_parallel else "shared")


@dataclass(frozen=True)
class TPRegion:
    """A module whose inside works on TP-sharded activations (attention over this rank's heads): its
    forward runs under the tracked TP RNG stream, so dropout inside it (e.g. attention dropout inside
    scaled_dot_product_attention) differs per TP rank and is reproducible. `gather_sequence`: under
    sequence parallelism, all-gather the module's first input along the sequence on entry (its
    first layer must then be `Column(input_gathered_by_parent=True)`); for modules that read the
    sequence length from their input."""
    gather_sequence: bool = False

    def apply(self, module: nn.Module, ctx: PlanContext) -> nn.Module:
        # Same object, same parameter names; its class becomes a subclass whose forward wraps the original.
        module.__class__ = _tp_region_class(type(module))
        module._tp_region = (self.gather_sequence and ctx.sequence_parallel, ctx.group, ctx.tracker)
        return module


@functools.cache
def _tp_region_class(cls: type) -> type:
    def forward(self, x, *args, **kwargs):
        gather, group, tracker = self._tp_region
        if gather:
            x = comm.gather_from_sequence_region(x, group, grad_is_partial=True)
        with tracker.fork():
            return cls.forward(self, x, *args, **kwargs)

    return type(f"TPRegion{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})


@dataclass(frozen=True)
class ShardParams:
    """Split bare parameters of a module (not a whole layer) over TP ranks along `dim`, e.g. BERT's
    vocabulary-sized MLM output bias added to vocab-parallel logits."""
    names: tuple = ("bias",)
    dim: int = 0

    def apply(self, module: nn.Module, ctx: PlanContext) -> nn.Module:
        from parallel.layers import Shard, _param
        for name in self.names:
            old = module._parameters.get(name)
            if old is None:
                raise ValueError(f"ShardParams: {type(module).__name__} has no parameter {name!r}")
            shard = Shard(self.dim, ctx.tp_rank, ctx.tp_size, tuple(old.shape))
            if old.shape[self.dim] % ctx.tp_size:
                raise ValueError(f"ShardParams: {name} dimension {self.dim} of size {old.shape[self.dim]} is not "
                                 f"divisible by tp {ctx.tp_size}")
            module._parameters[name] = _param(shard.local_shape(), old.device, old.dtype, shard)
        return module


# ---- plans -------------------------------------------------------------------------------------

GPT_PLAN: dict[str, object] = {
    "wte": VocabEmbedding(),
    "wpe": ReplicatedEmbedding(),
    "drop": Dropout(),
    "blocks.*.ln_1": Norm(),
    "blocks.*.attn": TPRegion(gather_sequence=True),  # attention reads T from its input
    "blocks.*.attn.qkv": Column(fused=3, input_gathered_by_parent=True),  # q, k, v each split per head
    "blocks.*.attn.proj": Row(),
    "blocks.*.attn.resid_drop": Dropout(),
    "blocks.*.ln_2": Norm(),
    "blocks.*.mlp.fc": Column(),
    "blocks.*.mlp.proj": Row(),
    "blocks.*.mlp.drop": Dropout(),
    "ln_f": Norm(),
    "lm_head": VocabHead(tie="wte"),
}

# BertForPreTraining (model/bert.py). Post-LN blocks; the pooler reads token 0 and the MLM head gathers
# masked positions across the sequence, so sequence parallelism is not offered for BERT.
BERT_PLAN: dict[str, object] = {
    "bert.wte": VocabEmbedding(),
    "bert.drop": Dropout(),
    "bert.blocks.*.attn": TPRegion(),
    "bert.blocks.*.attn.qkv": Column(fused=3),
    "bert.blocks.*.attn.proj": Row(),
    "bert.blocks.*.attn.resid_drop": Dropout(),
    "bert.blocks.*.mlp.fc": Column(),
    "bert.blocks.*.mlp.proj": Row(),
    "bert.blocks.*.mlp.drop": Dropout(),
    "mlm.decoder": VocabHead(tie="bert.wte"),
    "mlm": ShardParams(("bias",)),  # the output bias follows the vocabulary shard of the logits
}

PLANS: dict[str, dict[str, object]] = {"gpt": GPT_PLAN, "bert": BERT_PLAN}
SEQUENCE_PARALLEL_ARCHS = {"gpt"}


def _pattern(p: str) -> re.Pattern:
    return re.compile("^" + r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in p.split(".")) + "$")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def apply_plan(model: nn.Module, plan: dict[str, object], ctx: PlanContext) -> nn.Module:
    names = [n for n, _ in model.named_modules() if n]
    for pattern, style in plan.items():
        rx = _pattern(pattern)
        matched = [n for n in names if rx.match(n)]
        if not matched:
            raise ValueError(f"tensor-parallel plan pattern {pattern!r} matches no module of "
                             f"{type(model).__name__} (rule: every pattern must match; was a layer renamed?)")
        for name in matched:
            old = model.get_submodule(name)
            new = style.apply(old, ctx)
            if new is not old:
                _set_submodule(model, name, new)
    return model


def parallelize(model: nn.Module, topology: Topology, cfg) -> nn.Module:
    """Apply the architecture's plan to a model built on the meta device (before materialisation).

    `cfg` is the RunConfig (reads model.arch and parallel.sequence_parallel). Returns the same model
    object, with a `RNGTracker` attached (see `parallel.rng.tracker_of`)."""
    arch = cfg.model.arch
    if arch not in PLANS:
        raise ValueError(f"model.arch={arch!r} has no tensor-parallel plan (plans: {', '.join(PLANS)})")
    if any(p.device.type != "meta" for p in model.parameters()):
        raise ValueError("parallelize() expects a model built on the meta device (build, parallelize, then init)")
    topology.check_model(cfg.model)
    sp = bool(cfg.parallel.sequence_parallel)
    if sp and topology.tp == 1:
        log.warning("parallel.sequence_parallel=true has no effect with parallel.tp=1; running without it")
        sp = False
    if sp and arch not in SEQUENCE_PARALLEL_ARCHS:
        raise ValueError(f"parallel.sequence_parallel=true is not supported for model.arch={arch!r} "
                         f"(supported: {', '.join(sorted(SEQUENCE_PARALLEL_ARCHS))}; rule: BERT's pooler and MLM "
                         f"gather read tokens across the whole sequence)")
    # Built without process groups (meta shape checks, init tests), the layers get a placeholder that
    # raises on first communication instead of silently skipping the reductions.
    group = topology._groups.get("tp")
    if group is None:
        group = comm.MissingGroup(topology.tp)
    tracker = RNGTracker()
    ctx = PlanContext(model=model, topology=topology, group=group, sequence_parallel=sp, tracker=tracker)
    apply_plan(model, PLANS[arch], ctx)
    model._mnemos_rng_tracker = tracker
    model._mnemos_tp = {"tp": topology.tp, "tp_rank": topology.tp_rank, "sequence_parallel": sp}
    return model
